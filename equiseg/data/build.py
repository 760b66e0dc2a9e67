"""From a config to the datasets of one run (used by the trainer and the CLI).

Resolution of ``data:`` keys:

- pool = ``data.train_list`` (through the definition, so VOC id lists work) or the definition's
  default ``train`` split; val = ``data.val_list`` or the default ``val`` split.
- labeled/unlabeled:
  ``data.labeled_list`` (+ optional ``data.unlabeled_list``, else the rest of the pool), both
  imported onto the pool with :func:`~equiseg.data.splits.import_split` (peer formats accepted);
  or ``data.labeled`` + ``data.fold`` through :func:`~equiseg.data.splits.make_split`;
  or neither: the whole pool is labeled (fully supervised) and there is no unlabeled data unless
  ``data.unlabeled_list`` is given.
- the labeled set gets the weak train transform; the unlabeled set gets the weak transform plus,
  when the method asks for it, the strong view (``image_strong``); val gets no geometry.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import DataError
from ..run_layout import RunLayout
from .check import ListToCheck, check_lists
from .definitions import DatasetDefinition, definition_from_config
from .io import Pair
from .list_dataset import ListDataset
from .spec import DatasetSpec
from .splits import complement, import_split, make_split, write_split
from .transforms import PhotometricAug, eval_transform, train_transform

log = logging.getLogger("equiseg")


@dataclass
class RunData:
    spec: DatasetSpec
    definition: DatasetDefinition
    root: Path
    labeled: ListDataset
    unlabeled: Optional[ListDataset]
    val: ListDataset
    split_meta: dict = field(default_factory=dict)


@dataclass
class SplitLists:
    root: Path
    pool: list[Pair]
    labeled: list[Pair]
    unlabeled: list[Pair]
    val: list[Pair]
    meta: dict


def resolve_split(data_cfg: Any, definition: Optional[DatasetDefinition] = None) -> SplitLists:
    """The pool, labeled, unlabeled and val pairs a ``data:`` config section describes."""
    d = data_cfg
    definition = definition or definition_from_config(d)
    root = definition.resolve_root(d.root)
    pool = definition.pairs_from_list(d.train_list, root) if d.train_list else definition.pairs(d.root, "train")
    val = definition.pairs_from_list(d.val_list, root) if d.val_list else definition.pairs(d.root, "val")
    meta: dict = {"dataset": d.dataset, "root": str(root), "pool": d.train_list or "default train split",
                  "pool_count": len(pool)}
    if d.labeled_list:
        labeled = import_split(d.labeled_list, root, definition, pool)
        meta.update(protocol="lists", labeled_list=d.labeled_list)
    elif d.labeled:
        labeled, _ = make_split(pool, d.labeled, d.fold)
        meta.update(protocol="hash-ranked", labeled_share=d.labeled, fold=d.fold)
    else:
        labeled = list(pool)
        meta.update(protocol="fully supervised")
    if d.unlabeled_list:
        unlabeled = import_split(d.unlabeled_list, root, definition, pool)
        meta["unlabeled_list"] = d.unlabeled_list
    elif d.labeled_list or d.labeled:
        unlabeled = complement(pool, labeled)
    else:
        unlabeled = []
    return SplitLists(root, pool, labeled, unlabeled, val, meta)


def check_run_files(d: Any, definition: DatasetDefinition, lists: SplitLists) -> int:
    """The start-up check (equiseg.data.check) of the train pool and the val list."""
    pool_name = d.train_list or f"the {d.dataset} train split under {lists.root}"
    val_name = d.val_list or f"the {d.dataset} val split under {lists.root}"
    to_check = [ListToCheck(pool_name, lists.pool), ListToCheck(val_name, lists.val)]
    return check_lists(lists.root, to_check, definition.spec)


def is_main_process() -> bool:
    """Rank 0 checks the files (the others would only repeat it); outside torchrun, the process."""
    import os

    return os.environ.get("RANK", "0") == "0"


def build_run_data(cfg: Any, strong_view: Union[bool, PhotometricAug] = False, needs_unlabeled: bool = False,
                   run_dir: Optional[Path] = None) -> RunData:
    """Datasets for a run; with ``run_dir`` the split is also written to ``run_dir/split``.

    Args:
        cfg: the run config (``cfg.data``; ``cfg.method.name`` for messages).
        strong_view: unlabeled samples carry ``image_strong`` (made by this augment when it is one,
            else by the default strong photometric view).
        needs_unlabeled: build the unlabeled dataset (an error when there is no unlabeled data).
        run_dir: where to write ``split/`` (labeled.txt, unlabeled.txt, split.json).
    """
    d = cfg.data
    definition = definition_from_config(d)
    lists = resolve_split(d, definition)
    if needs_unlabeled and not lists.unlabeled:
        raise DataError(f"method '{cfg.method.name}' trains on unlabeled images, but the {d.dataset} pool of "
                        f"{len(lists.pool)} images is all labeled: set data.labeled (e.g. '1/8') or "
                        "data.labeled_list / data.unlabeled_list")
    if d.check_files and is_main_process():
        check_run_files(d, definition, lists)
    if run_dir is not None:
        write_split(RunLayout(run_dir).split, lists.labeled, lists.unlabeled, lists.meta)
    spec = definition.spec
    labeled = ListDataset(lists.root, lists.labeled, spec, train_transform(d, spec, strong_view=False),
                          with_labels=True, image_scale=d.image_scale)
    unlabeled = None
    if needs_unlabeled:
        unlabeled = ListDataset(lists.root, lists.unlabeled, spec, train_transform(d, spec, strong_view=strong_view),
                                with_labels=False, image_scale=d.image_scale)
    val = ListDataset(lists.root, lists.val, spec, eval_transform(spec), with_labels=True, image_scale=d.image_scale)
    log.info("data: %s at %s, %d labeled / %d unlabeled / %d val (%s)", d.dataset, lists.root, len(labeled),
             len(lists.unlabeled), len(val), lists.meta["protocol"])
    return RunData(spec, definition, lists.root, labeled, unlabeled, val, lists.meta)


def build_eval_dataset(cfg: Any, list_file: Optional[str] = None) -> tuple[ListDataset, str]:
    """The evaluation set of a config and a description of its source: ``list_file`` when given,
    else ``data.val_list``, else the dataset's val split (no geometry, ``data.image_scale`` kept)."""
    d = cfg.data
    definition = definition_from_config(d)
    root = definition.resolve_root(d.root)
    source = list_file or d.val_list
    pairs = definition.pairs_from_list(source, root) if source else definition.pairs(d.root, "val")
    dataset = ListDataset(root, pairs, definition.spec, eval_transform(definition.spec), with_labels=True,
                          image_scale=d.image_scale)
    return dataset, source or "val split"
