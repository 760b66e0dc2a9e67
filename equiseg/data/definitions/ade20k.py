"""The ADE20K dataset definition."""
from __future__ import annotations

from pathlib import Path

from ..io import Pair, PathLike
from ..spec import IGNORE_INDEX, DatasetSpec, default_palette
from .base import PNG, DatasetDefinition, full_lut, pair_by_stem, register_dataset


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


@register_dataset
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
                                     label_lut=full_lut(mapping)))

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
        return pair_by_stem(root, image_dir, mask_dir, (".jpg", ".jpeg"), PNG, f"ade20k {split}")


