"""The list dataset: ``image [label]`` pairs relative to a root, decoded, mapped to train ids
and transformed with a per-sample ``numpy.random.Generator`` (docs/design.md, "Data contract")."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..errors import DataError
from .io import Pair, PathLike, as_pairs, decode_image, decode_mask, first_items, map_mask, read_list_file, train_id_lut
from .spec import DatasetSpec
from .transforms import AUDIT_LABEL_KEY, eval_transform, resize_pair


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
            self._pairs = as_pairs(pairs_or_list_file, with_labels)
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
                            f"{first_items(missing)}")

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


