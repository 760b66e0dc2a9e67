"""The Cityscapes dataset definition."""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..io import OptionalDependencyError, Pair, PathLike, first_items
from ..spec import IGNORE_INDEX, DatasetSpec
from .base import DatasetDefinition, full_lut, register_dataset


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


@register_dataset
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
        id_lut, train_id_lut = full_lut(id_map), full_lut(train_id_map)
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
                            f"(labelIds or labelTrainIds): {first_items(missing)}")
        return pairs


