"""How a checkpoint file becomes a model: the one place that reads a checkpoint's weights
(eval, predict, the report's pictures and DST-CBC's labeler all come here)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import WeightsError


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        # Checkpoints hold RNG states and plain Python containers; all are safe to unpickle
        # with weights_only once numpy's RNG state types are allowed.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # corrupt or truncated file
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from None


def model_state_from_checkpoint(ckpt: dict, which: str = "auto") -> tuple[dict, str]:
    """The model weights stored in a checkpoint: a training checkpoint holds the student
    (``model``) and the method's evaluated model (``eval_model``); a best/exported file holds
    ``model`` only. ``which='auto'`` prefers the model the run reported."""
    if which == "auto":
        which = "eval_model" if "eval_model" in ckpt else "model"
    if which not in ckpt:
        raise WeightsError(f"checkpoint has no '{which}' weights (keys: {sorted(ckpt)})")
    return ckpt[which], which


def _describe(model_cfg: dict, classes: Optional[int]) -> str:
    return (f"{model_cfg.get('arch', '?')}/{model_cfg.get('backbone', '?')}"
            + (f" with {classes} classes" if classes is not None else ""))


def model_from_checkpoint(checkpoint: Union[str, Path], model_cfg: ModelConfig, num_classes: int,
                          weights: str = "auto", ckpt: Optional[dict] = None) -> tuple[nn.Module, dict, str]:
    """``(model in eval mode on the CPU, the checkpoint dict, which weights were loaded)``.

    A checkpoint of another architecture, backbone or class count is a
    :class:`~equiseg.errors.WeightsError` that says what the file holds and what the config asks
    for, read from the config stored in the checkpoint; other misfits are named too."""
    from . import build_model  # looked up at call time, so tests can substitute a tiny model

    ckpt = load_checkpoint(Path(checkpoint)) if ckpt is None else ckpt
    state, which = model_state_from_checkpoint(ckpt, weights)
    stored = (ckpt.get("config") or {}).get("model") or {}
    stored_classes = len(ckpt["class_names"]) if ckpt.get("class_names") else None
    asked = _describe(model_cfg.model_dump(), num_classes)
    if stored and (any(stored.get(k) != getattr(model_cfg, k) for k in ("arch", "backbone"))
                   or (stored_classes is not None and stored_classes != num_classes)):
        raise WeightsError(f"{checkpoint} is a {_describe(stored, stored_classes)}; the config asks for {asked}: "
                           "pass the run's own config.yaml (or --config of a matching run)")
    # Pretrained backbone weights are irrelevant here: the checkpoint overwrites them.
    model = build_model(model_cfg.model_copy(update={"pretrained": None}), num_classes)
    try:
        model.load_state_dict(state)  # strict: a mismatched checkpoint is an error
    except RuntimeError as exc:
        missing = getattr(exc, "args", [""])[0].count("Missing key")
        raise WeightsError(f"{checkpoint} does not fit a {asked} (its weights have other names or shapes"
                           f"{'' if not missing else ', keys missing'}); is it from another model config?") from None
    return model.eval(), ckpt, which
