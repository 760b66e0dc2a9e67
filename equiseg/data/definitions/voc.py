"""The PASCAL VOC 2012 dataset definition."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ...errors import DataError
from ..io import Pair, PathLike, first_items, iter_list_fields
from ..spec import IGNORE_INDEX, DatasetSpec, default_palette
from .base import DatasetDefinition, full_lut, register_dataset


VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def _voc_spec(name: str) -> DatasetSpec:
    mapping = {i: i for i in range(len(VOC_CLASSES))}
    mapping[IGNORE_INDEX] = IGNORE_INDEX  # the 255 object borders are ignored
    return DatasetSpec(name, VOC_CLASSES, default_palette(len(VOC_CLASSES)), label_lut=full_lut(mapping))


def _read_ids(list_file: Path) -> list[str]:
    """Sample ids from a VOC-style list: bare ids, or lines whose first field is an image path."""
    return [Path(fields[0]).stem for _, fields in iter_list_fields(list_file, "'id' or 'image [label]'")]


@register_dataset
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


@register_dataset
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
                                          "see equiseg.data.definitions.voc.VOCAug) and data.train_list is not set")
        return self.pairs_from_list(list_file, root)

    def pairs_from_list(self, list_file: PathLike, root: PathLike, with_labels: bool = True) -> list[Pair]:
        ids = _read_ids(Path(list_file))
        val_file = self.resolve_root(root) / "ImageSets" / "Segmentation" / "val.txt"
        if val_file.is_file():
            # train_aug must exclude VOC val, or validation leaks into training.
            overlap = sorted(set(ids) & set(_read_ids(val_file)))
            if overlap:
                raise DataError(f"{list_file} contains {len(overlap)} VOC val image(s): {first_items(overlap)}; "
                                f"train_aug must exclude {val_file}")
        return self._id_pairs(ids, self.mask_dir)


