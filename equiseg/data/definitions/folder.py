"""The any folder dataset definition."""
from __future__ import annotations

from typing import Sequence

from ..io import Pair, PathLike, read_list_file
from ..spec import DatasetSpec
from .base import IMAGE_EXTS, PNG, DatasetDefinition, pair_by_stem, register_dataset


@register_dataset
class Folder(DatasetDefinition):
    """Any dataset of images plus single-channel masks holding train ids (0..C-1, 255 ignore)."""

    name = "folder"
    needs_classes = True
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
            return pair_by_stem(root, image_dir / split, mask_dir / split, IMAGE_EXTS, PNG, f"folder {split}")
        if split != "train":
            raise self.layout_error(root, f"no {split}.txt and no images/{split}/ folder; set data.val_list")
        return pair_by_stem(root, image_dir, mask_dir, IMAGE_EXTS, PNG, "folder train")


