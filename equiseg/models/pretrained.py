"""Strict loading of ImageNet backbone checkpoints.

Supported layouts (``layout`` argument, or ``"auto"`` to recognise it from the keys):

``torchvision_resnet``
    torchvision's ``resnet50``/``resnet101`` files (7x7 stem, key ``conv1.weight``).
``deep_stem_resnet``
    The 3-conv-stem ``resnet50s``/``resnet101s`` files of PyTorch-Encoding, used by U2PL, AEL and
    UniMatch (keys ``conv1.0.weight`` ... ``conv1.6.weight``).
``torchvision_mobilenet_v2``
    torchvision's ``mobilenet_v2`` file (keys ``features.N...``, ``classifier.1.*``).

Before matching, a checkpoint is unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}`` and
a ``module.`` (DDP) and/or ``backbone.`` prefix shared by *every* key is stripped. Then the keys
of :data:`DROPPED_KEYS` for the layout are removed: that list, not ``strict=False``, is the only way
a checkpoint entry goes unused. Everything else must match the model exactly: any missing key,
unexpected key or shape mismatch raises :class:`~equiseg.errors.WeightsError` naming the file and
the keys. The one tolerated gap is a missing BatchNorm ``num_batches_tracked`` counter (old
checkpoints, e.g. torchvision's original ResNet files, predate it; it does not affect the
forward pass with BN momentum set), which keeps the model's value.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..errors import WeightsError

LAYOUTS = ("torchvision_resnet", "deep_stem_resnet", "torchvision_mobilenet_v2")

DROPPED_KEYS: dict[str, dict[str, str]] = {
    # layout -> {key prefix: why the backbone does not use it}
    "torchvision_resnet": {"fc.": "ImageNet classifier; segmentation backbones have no fc layer"},
    "deep_stem_resnet": {"fc.": "ImageNet classifier; segmentation backbones have no fc layer"},
    "torchvision_mobilenet_v2": {
        "features.18.": "1x1 conv 320->1280 feeding only the ImageNet classifier; DeepLabv3+ taps "
        "the 320-channel features[17] (see equiseg.models.mobilenetv2)",
        "classifier.": "ImageNet classifier",
    },
}

WRAPPER_KEYS = ("state_dict", "model")
"""Keys under which training scripts nest the state dict (``{"state_dict": sd, "epoch": ...}``)."""
SHARED_PREFIXES = ("module.", "backbone.")
"""Prefixes stripped when every key carries them (DDP wrapping; a backbone saved from a bigger model)."""
OPTIONAL_KEY_SUFFIX = "num_batches_tracked"
MAX_LISTED_KEYS = 5

_STEM_KEYS = {
    "torchvision_resnet": "conv1.weight",
    "deep_stem_resnet": "conv1.0.weight",
    "torchvision_mobilenet_v2": "features.0.0.weight",
}
_FAMILY = {
    "torchvision_resnet": "ResNet",
    "deep_stem_resnet": "ResNet",
    "torchvision_mobilenet_v2": "MobileNetV2",
}


@dataclass
class LoadedWeights:
    """What :func:`load_backbone_weights` did, for logging."""

    source: str
    layout: str
    dropped: list[str] = field(default_factory=list)
    """Checkpoint keys left unused through :data:`DROPPED_KEYS`."""
    kept_model_values: list[str] = field(default_factory=list)
    """Model keys absent from the checkpoint that are allowed to be (``num_batches_tracked``)."""


def load_backbone_weights(
    backbone: nn.Module,
    path_or_state_dict: Union[str, Path, Mapping[str, Any]],
    layout: str = "auto",
) -> LoadedWeights:
    """Load an ImageNet checkpoint into ``backbone`` strictly; see the module docstring.

    ``backbone`` must expose ``weights_layout`` (the layout that fits it), as
    :class:`~equiseg.models.resnet.ResNet` and :class:`~equiseg.models.mobilenetv2.MobileNetV2` do.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown weights layout '{layout}'; choose 'auto' or one of {', '.join(LAYOUTS)}")
    model_layout = getattr(backbone, "weights_layout", None)
    if model_layout not in LAYOUTS:
        raise WeightsError(f"{type(backbone).__name__} does not declare a supported weights_layout")

    if isinstance(path_or_state_dict, Mapping):
        source, raw = "<in-memory state dict>", path_or_state_dict
    else:
        source, raw = str(path_or_state_dict), _read(Path(path_or_state_dict))
    state = _strip_shared_prefixes(_unwrap(raw, source))

    detected = _detect_layout(state)
    if layout == "auto":
        if detected is None:
            raise WeightsError(
                f"cannot tell the layout of weights {source}: expected exactly one of the stem keys "
                f"{', '.join(_STEM_KEYS.values())} (first keys: {_few(list(state))}); "
                f"pass an explicit layout"
            )
        layout = detected
    elif detected is not None and detected != layout:
        raise WeightsError(f"weights {source} were requested as '{layout}' but their keys look like '{detected}'")
    _check_layout_fits_model(source, layout, model_layout, backbone)

    drop_prefixes = tuple(DROPPED_KEYS[layout])
    dropped = [k for k in state if k.startswith(drop_prefixes)]
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}

    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    kept = [k for k in missing if k.endswith(OPTIONAL_KEY_SUFFIX)]
    missing = [k for k in missing if not k.endswith(OPTIONAL_KEY_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
        raise WeightsError(
            f"weights {source} (layout {layout}) do not match the {_describe(backbone)} backbone: "
            + "; ".join(parts)
            + _depth_hint(state, expected)
        )

    for k in kept:
        state[k] = expected[k]
    backbone.load_state_dict(state, strict=True)
    return LoadedWeights(source=source, layout=layout, dropped=dropped, kept_model_values=kept)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/non-tensor pickles
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(
            f"cannot read weights file {path} (corrupt, or not a tensor-only checkpoint): "
            f"{type(exc).__name__}: {first_line}"
        ) from exc


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise WeightsError(
                f"weights {source} are not a state dict: entry '{bad}' is a {type(obj[bad]).__name__}, "
                f"not a tensor, and there is no {' / '.join(repr(k) for k in WRAPPER_KEYS)} entry to unwrap"
            )
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"weights {source} hold no state dict (got {type(obj).__name__})")
    return {str(k): v for k, v in obj.items()}


def _strip_shared_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in SHARED_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _detect_layout(state: Mapping[str, torch.Tensor]) -> str | None:
    found = [layout for layout, key in _STEM_KEYS.items() if key in state]
    return found[0] if len(found) == 1 else None


def _check_layout_fits_model(source: str, layout: str, model_layout: str, backbone: nn.Module) -> None:
    if layout == model_layout:
        return
    if _FAMILY[layout] != _FAMILY[model_layout]:
        raise WeightsError(
            f"weights {source} are {_FAMILY[layout]} weights (layout {layout}) but the model's backbone "
            f"is {_describe(backbone)}; check model.backbone and model.pretrained"
        )
    if layout == "torchvision_resnet":
        raise WeightsError(
            f"weights {source} are torchvision-layout ResNet weights (one 7x7 stem conv, key 'conv1.weight') "
            f"but the model uses the deep 3-conv stem (model.deep_stem=true, keys conv1.0/conv1.3/conv1.6, "
            f"128-channel bn1), so its stem and layer1 cannot be initialised from them. Set "
            f"model.deep_stem=false, or use a deep-stem checkpoint (PyTorch-Encoding/U2PL/UniMatch resnet50s/101s)"
        )
    raise WeightsError(
        f"weights {source} are deep-stem ResNet weights (3-conv stem, key 'conv1.0.weight') but the model "
        f"uses torchvision's 7x7 stem (model.deep_stem=false). Set model.deep_stem=true, or use a "
        f"torchvision ResNet checkpoint"
    )


def _depth_hint(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """Name the likely cause when a ResNet-50 file meets a ResNet-101 model or vice versa."""
    file_blocks, model_blocks = _layer3_blocks(state), _layer3_blocks(expected)
    if file_blocks and model_blocks and file_blocks != model_blocks:
        return f" (the file's layer3 has {file_blocks} blocks, the model's {model_blocks}: a different ResNet depth)"
    return ""


def _layer3_blocks(state: Mapping[str, Any]) -> int:
    indices = {int(k.split(".")[1]) for k in state if k.startswith("layer3.") and k.split(".")[1].isdigit()}
    return max(indices) + 1 if indices else 0


def _describe(backbone: nn.Module) -> str:
    name = type(backbone).__name__
    depth = getattr(backbone, "depth", None)
    if depth is not None:
        name += f"-{depth}"
    if getattr(backbone, "deep_stem", False):
        name += " (deep stem)"
    return name


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    return shown + (f", ... ({len(items) - MAX_LISTED_KEYS} more)" if len(items) > MAX_LISTED_KEYS else "")
