"""What a dataset's labels mean: class names, colours, ignore value, tail classes, mapping of raw
mask values to train ids."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

IGNORE_INDEX = 255
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = IGNORE_INDEX
    tail_classes: tuple[str, ...] = ()
    """Rare classes reported separately as tail mIoU (AEL Table 4 style)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    label_lut: Optional[tuple[int, ...]] = field(default=None, repr=False)
    """256 entries mapping a raw mask value to a train id, ``ignore_index``, or -1 for a value
    that must never occur (an error). None means raw values are train ids already."""
    suffix_luts: tuple[tuple[str, tuple[int, ...]], ...] = field(default=(), repr=False)
    """``(file-name suffix, 256-entry LUT)`` pairs for datasets whose masks come in more than one
    encoding (Cityscapes ``*_labelIds.png`` vs ``*_labelTrainIds.png``); :meth:`lut_for` picks the
    first suffix a mask path ends with, else :meth:`lut_array`."""

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError(f"dataset '{self.name}' has no classes")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"dataset '{self.name}' has duplicate class names")
        if self.palette and len(self.palette) != len(self.class_names):
            raise ValueError(f"dataset '{self.name}': palette has {len(self.palette)} colours for {len(self.class_names)} classes")
        unknown = set(self.tail_classes) - set(self.class_names)
        if unknown:
            raise ValueError(f"dataset '{self.name}': tail classes {sorted(unknown)} are not class names")
        if self.label_lut is not None and len(self.label_lut) != 256:
            raise ValueError(f"dataset '{self.name}': label_lut must have 256 entries")
        for suffix, lut in self.suffix_luts:
            if len(lut) != 256:
                raise ValueError(f"dataset '{self.name}': LUT for '*{suffix}' must have 256 entries")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def tail_ids(self) -> list[int]:
        return [self.class_names.index(c) for c in self.tail_classes]

    def lut_array(self) -> np.ndarray:
        """int16 LUT over raw values 0..255 (identity for valid ids + ignore when no LUT is set)."""
        if self.label_lut is not None:
            return np.asarray(self.label_lut, dtype=np.int16)
        lut = np.full(256, -1, dtype=np.int16)
        lut[: self.num_classes] = np.arange(self.num_classes)
        lut[self.ignore_index] = self.ignore_index
        return lut

    def lut_for(self, mask_path: str) -> np.ndarray:
        """The LUT for one mask file: a matching ``suffix_luts`` entry, else :meth:`lut_array`."""
        for suffix, lut in self.suffix_luts:
            if str(mask_path).endswith(suffix):
                return np.asarray(lut, dtype=np.int16)
        return self.lut_array()

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 colour table; ignore is black, unlisted ids are grey."""
        table = np.full((256, 3), 128, dtype=np.uint8)
        colours = self.palette or default_palette(self.num_classes)
        table[: self.num_classes] = np.asarray(colours, dtype=np.uint8)
        table[self.ignore_index] = 0
        return table


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC bit-interleaved colour map, the field's usual default."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)
