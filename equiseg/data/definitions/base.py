"""What a dataset definition is: a spec plus how to find its default splits on disk; and the
helpers definitions share."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ...errors import DataError
from ...registry import DATASETS
from ..io import Pair, PathLike, first_items, read_list_file
from ..list_dataset import ListDataset
from ..spec import DatasetSpec


def register_dataset(cls: type["DatasetDefinition"]) -> type["DatasetDefinition"]:
    """Class decorator: make the definition findable by its ``name`` (``data.dataset``)."""
    return DATASETS.register(cls.name, cls)


class DatasetDefinition:
    """A dataset's spec plus how to find its default splits on disk (see ``layout``)."""

    name: str = ""
    needs_classes: bool = False
    """Whether the user names the classes (``data.classes``), as for ``folder``."""
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


def list_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def pair_by_stem(root: Path, image_dir: Path, mask_dir: Path, image_exts: tuple[str, ...],
                  mask_exts: tuple[str, ...], what: str) -> list[Pair]:
    """Pair the files of two folders by stem; any file without a partner is an error."""
    images = {p.stem: p for p in list_files(image_dir, image_exts)}
    masks = {p.stem: p for p in list_files(mask_dir, mask_exts)}
    if not images:
        raise DataError(f"{what}: no images ({'/'.join(image_exts)}) in {image_dir}")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DataError(f"{what}: {len(no_mask)} image(s) in {image_dir} have no mask in {mask_dir}: {first_items(no_mask)}")
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DataError(f"{what}: {len(no_image)} mask(s) in {mask_dir} have no image in {image_dir}: "
                        f"{first_items(no_image)}")
    return [Pair(images[s].relative_to(root).as_posix(), masks[s].relative_to(root).as_posix()) for s in sorted(images)]


def full_lut(mapping: dict[int, int]) -> tuple[int, ...]:
    """256-entry LUT: the given raw→train-id entries, -1 (error) everywhere else."""
    lut = [-1] * 256
    for raw, tid in mapping.items():
        lut[raw] = tid
    return tuple(lut)


PNG = (".png",)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


