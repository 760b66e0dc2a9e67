"""Data layer: dataset specs and definitions, list datasets, paired transforms, strong
augmentation, CutMix boxes, split protocols and synthetic scenes (docs/design.md, "Data contract")."""
from .augment import StrongPhotometric, cutmix_box_mask, random_box_masks
from .definitions import DatasetDefinition, available_datasets, definition_from_config, get_dataset_definition
from .io import OptionalDependencyError, Pair, read_list_file, write_list_file
from .list_dataset import ListDataset
from .spec import IGNORE_INDEX, DatasetSpec
from .splits import import_split, make_split, parse_labeled, read_split, write_split
from .synthetic import SYNTHETIC_SPEC, make_synthetic_arrays, make_synthetic_dataset
from .transforms import eval_transform, train_transform

__all__ = [
    "IGNORE_INDEX", "DatasetSpec", "DatasetDefinition", "ListDataset", "OptionalDependencyError", "Pair",
    "available_datasets", "definition_from_config", "get_dataset_definition", "read_list_file", "write_list_file",
    "StrongPhotometric", "cutmix_box_mask", "random_box_masks", "import_split", "make_split", "parse_labeled",
    "read_split", "write_split", "SYNTHETIC_SPEC", "make_synthetic_arrays", "make_synthetic_dataset",
    "eval_transform", "train_transform",
]
