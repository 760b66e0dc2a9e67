"""Dataset definitions, one file each: a dataset's spec and on-disk layout. A new dataset is a
new file here whose class carries ``@register_dataset``; this package imports every file in it."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Optional, Sequence

from ...errors import DataError
from ...registry import DATASETS
from .base import DatasetDefinition, register_dataset


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def available_datasets() -> list[str]:
    return DATASETS.names()


def get_dataset_definition(name: str, classes: Optional[Sequence[str]] = None) -> DatasetDefinition:
    """The definition called ``name``; ``classes`` (``data.classes``) is required by ``folder`` only."""
    try:
        definition = DATASETS.get(name)
    except ValueError as err:
        raise DataError(str(err)) from None
    if definition.needs_classes:
        if not classes:
            raise DataError(f"dataset '{name}' needs its class names: set data.classes")
        return definition(classes)
    if classes:
        raise DataError(f"data.classes is only used by the 'folder' dataset; '{name}' defines its own classes")
    return definition()


def definition_from_config(data_cfg: Any) -> DatasetDefinition:
    return get_dataset_definition(data_cfg.dataset, data_cfg.classes)


__all__ = ["DatasetDefinition", "available_datasets", "definition_from_config", "get_dataset_definition",
           "register_dataset"]
