"""The synthetic dataset definition."""
from __future__ import annotations

from ...errors import DataError
from ..io import Pair, PathLike, read_list_file
from ..synthetic import SYNTHETIC_CLASSES_FILE, SYNTHETIC_SPEC
from .base import DatasetDefinition, register_dataset


@register_dataset
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


