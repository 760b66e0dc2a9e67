"""List files (``image [label]`` lines) and image/mask decoding: every problem is a
:class:`~equiseg.errors.DataError` naming the file (and line) at fault."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..errors import DataError, EquisegError
from .spec import DatasetSpec


PathLike = Union[str, os.PathLike]
_SHOW_AT_MOST = 5  # how many offending files an error message lists
_MASK_MODES = ("L", "P")  # single-channel 8-bit; P palette indices are the values (as VOC)


class OptionalDependencyError(EquisegError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""


class Pair(NamedTuple):
    """One sample: image path and label path (None when unknown), relative to a dataset root."""

    image: str
    label: Optional[str] = None


def first_items(items: Sequence[str]) -> str:
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


def as_pairs(items: Sequence[Any], with_labels: bool) -> list[Pair]:
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


