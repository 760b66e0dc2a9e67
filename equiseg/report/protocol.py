"""The experimental protocol of a run in words, from its config and split record.

Shared by ``equiseg report`` (run summary) and ``equiseg bench`` (the statement under the table),
so both describe a run the same way. Works on the raw config mapping, so an old run folder whose
config no longer validates still gets a summary.
"""
from __future__ import annotations

from typing import Any, Optional

from ..models.deeplabv3plus import DECODER_CHANNELS
from ..registry import METHODS


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _size(value: Any, separator: str = "x") -> str:
    return separator.join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def uses_unlabeled(method: str) -> bool:
    try:
        return METHODS.get(method).uses_unlabeled
    except ValueError:  # a method this version does not know: say nothing about unlabeled data
        return False


def _budget(config: dict[str, Any]) -> Optional[tuple[int, str]]:
    optim, method = _section(config, "optim"), _section(config, "method")
    per_run = optim.get("iterations")
    if not isinstance(per_run, int):
        return None
    try:
        return METHODS.get(method.get("name", "")).iteration_budget(method, per_run)
    except ValueError:  # a method this version does not know
        return per_run, str(per_run)


def iterations(config: dict[str, Any]) -> str:
    """``600``; a multi-round method adds its rounds: DST-CBC ``600 (round 0) + 5 x 120``."""
    budget = _budget(config)
    return budget[1] if budget else str(_section(config, "optim").get("iterations", "?"))


def total_iterations(config: dict[str, Any]) -> Optional[int]:
    """Optimiser steps of the whole run (all rounds of a multi-round method), or None when not a number."""
    budget = _budget(config)
    return budget[0] if budget else None


def labeled(data: dict[str, Any], split: dict[str, Any]) -> str:
    """``46 labeled (1/8 of 367, fold 0) / 321 unlabeled`` from split.json, else from the config."""
    count = (split.get("labeled") or {}).get("count")
    unlabeled_count = (split.get("unlabeled") or {}).get("count")
    if data.get("labeled_list"):
        how = f"list {data['labeled_list']}"
    elif data.get("labeled"):
        pool = f" of {split['pool_count']}" if split.get("pool_count") is not None else ""
        how = f"{data['labeled']}{pool}, fold {data.get('fold', 0)}"
    else:
        how = "all of the pool (fully supervised)"
    text = f"{count} labeled ({how})" if count is not None else how
    if unlabeled_count:
        text += f" / {unlabeled_count} unlabeled"
    return text


def batch(data: dict[str, Any], method: str) -> str:
    labeled_batch = data.get("batch_size", "?")
    if not uses_unlabeled(method):
        return f"{labeled_batch} labeled"
    unlabeled_batch = data.get("unlabeled_batch_size") or labeled_batch
    return f"{labeled_batch} labeled + {unlabeled_batch} unlabeled"


def model(config: dict[str, Any]) -> str:
    m = _section(config, "model")
    text = f"{m.get('arch', '?')} {m.get('backbone', '?')} OS{m.get('output_stride', '?')}"
    if m.get("head_channels") not in (None, DECODER_CHANNELS):
        text += f", {m['head_channels']}-channel head"
    pretrained = m.get("pretrained")
    return text + (f", ImageNet init {pretrained}" if pretrained else ", random init")


def evaluation(config: dict[str, Any]) -> str:
    e, data = _section(config, "eval"), _section(config, "data")
    mode = e.get("mode", "whole")
    text = mode
    if mode != "whole":
        text += f" {_size(e.get('crop_size') or data.get('crop_size'))}"
    return text + (" + flip" if e.get("flip") else "")


def eval_split(config: dict[str, Any], num_images: Optional[int] = None) -> str:
    """The evaluation set, with the image count when known and ``eval.max_images`` when it cut it."""
    text = str(_section(config, "data").get("val_list") or "val split")
    limit = _section(config, "eval").get("max_images")
    if limit:
        text += f", only its first {limit} images (eval.max_images)"
    if num_images is not None:
        text += f" ({num_images} images evaluated)"
    return text


def protocol_rows(config: dict[str, Any], split: Optional[dict[str, Any]] = None,
                  num_images: Optional[int] = None) -> dict[str, str]:
    """Ordered ``{label: text}`` describing what a run's numbers depend on (``num_images``: how many
    images the reported evaluation scored, when known)."""
    data, optim, run = _section(config, "data"), _section(config, "optim"), _section(config, "run")
    method = str(_section(config, "method").get("name", "?"))
    return {
        "dataset": str(data.get("dataset", "?")),
        "eval split": eval_split(config, num_images),
        "labeled": labeled(data, split or {}),
        "image scale": str(data.get("image_scale", 1.0)),
        "crop": f"{_size(data.get('crop_size', '?'))} (scale range {_size(data.get('scale_range', '?'), '-')}"
                f"{', flip' if data.get('flip', True) else ''})",
        "batch": batch(data, method),
        "iterations": iterations(config),
        "model": model(config),
        "optimiser": f"SGD lr {optim.get('lr', '?')} (head x{optim.get('head_lr_mult', '?')}), "
                     f"weight decay {optim.get('weight_decay', '?')}, warm-up {optim.get('warmup_iterations', 0)}",
        "evaluation": evaluation(config),
        "amp": str(_section(config, "train").get("amp", "off")),
        "seed": str(run.get("seed", "?")),
    }
