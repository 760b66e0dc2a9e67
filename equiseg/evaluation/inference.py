"""Test-time inference: whole image, sliding window, or center crop, with optional flip.

All modes return softmax *probabilities*, shape (B, C, H, W), in float32. Averaging
probabilities (not logits) over overlapping windows and flips is what mmseg, AEL and UniMatch do;
the argmax of the average is the prediction.

The model follows the equiseg contract: ``model(x)`` returns a dict whose ``"out"`` entry holds
(B, C, H, W) logits at the input resolution.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("whole", "slide", "center")
DEFAULT_STRIDE_FRACTION = 2 / 3
"""Sliding-window stride as a fraction of the window when none is given (AEL / UniMatch)."""
PAD_VALUE = 0.0
"""Image padding in normalized space: 0 is the dataset mean colour, i.e. a neutral grey."""

Size = Union[int, Sequence[int]]
AutocastFactory = Callable[[], ContextManager]


def _pair(size: Size, what: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {size}")
    return int(h), int(w)


def default_stride(crop_size: Size) -> tuple[int, int]:
    """Two thirds of the window (floored, at least 1 pixel), as AEL / UniMatch."""
    h, w = _pair(crop_size, "crop_size")
    return max(1, int(h * DEFAULT_STRIDE_FRACTION)), max(1, int(w * DEFAULT_STRIDE_FRACTION))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows along one axis of ``length`` pixels (``length >= window``).

    Windows step by ``stride``; the last one is shifted back so that it ends exactly at the
    border (mmseg's ``slide_inference``), so every window has the full size and the axis is
    covered even when ``length - window`` is not a multiple of the stride.
    """
    if length < window:
        raise ValueError(f"axis of {length} pixels is shorter than the window {window}; pad first")
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    count = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(count)]


def sliding_windows(height: int, width: int, crop_size: Size, stride: Optional[Size] = None) -> list[tuple[int, int, int, int]]:
    """Windows ``(top, bottom, left, right)`` over an image of the given size.

    The image is first (conceptually) padded at the bottom/right to at least the window size,
    so boxes may reach beyond ``height``/``width`` for images smaller than the window.
    """
    ch, cw = _pair(crop_size, "crop_size")
    sh, sw = _pair(stride, "stride") if stride is not None else default_stride((ch, cw))
    ph, pw = max(height, ch), max(width, cw)
    return [(y, y + ch, x, x + cw) for y in window_starts(ph, ch, sh) for x in window_starts(pw, cw, sw)]


def center_crop_box(height: int, width: int, crop_size: Size) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a centered crop, clipped to the image (no padding)."""
    ch, cw = _pair(crop_size, "crop_size")
    ch, cw = min(ch, height), min(cw, width)
    top, left = (height - ch) // 2, (width - cw) // 2
    return top, top + ch, left, left + cw


def center_crop(tensor: torch.Tensor, crop_size: Size) -> torch.Tensor:
    """Center-crop the last two dimensions; use it on images, labels and masks alike so they
    stay aligned with the predictions of ``mode="center"``."""
    top, bottom, left, right = center_crop_box(tensor.shape[-2], tensor.shape[-1], crop_size)
    return tensor[..., top:bottom, left:right]


def _forward_probs(model: nn.Module, x: torch.Tensor, autocast: AutocastFactory, num_classes: Optional[int]) -> torch.Tensor:
    with autocast():
        out = model(x)
    logits = out["out"] if isinstance(out, dict) else out
    if logits.dim() != 4 or logits.shape[0] != x.shape[0] or logits.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"model output {tuple(logits.shape)} is not (B, C, H, W) logits at the input size {tuple(x.shape)}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"model predicts {logits.shape[1]} classes, expected {num_classes}")
    # Softmax in float32: under fp16/bf16 autocast the logits are low precision, and summing
    # many windows' probabilities in half precision loses accuracy.
    return torch.softmax(logits.float(), dim=1)


def _slide_probs(
    model: nn.Module, image: torch.Tensor, crop_size: Size, stride: Optional[Size], autocast: AutocastFactory, num_classes: Optional[int]
) -> torch.Tensor:
    b, _, h, w = image.shape
    ch, cw = _pair(crop_size, "crop_size")
    # Pad bottom/right so that every window is full-size (the model always sees crop_size inputs,
    # as in training); the padded border is cropped off the result.
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=PAD_VALUE)
    ph, pw = image.shape[-2:]
    probs: Optional[torch.Tensor] = None
    count = torch.zeros(1, 1, ph, pw, device=image.device, dtype=torch.float32)
    for top, bottom, left, right in sliding_windows(h, w, (ch, cw), stride):
        window = _forward_probs(model, image[:, :, top:bottom, left:right], autocast, num_classes)
        if probs is None:
            probs = torch.zeros(b, window.shape[1], ph, pw, device=image.device, dtype=torch.float32)
        probs[:, :, top:bottom, left:right] += window
        count[:, :, top:bottom, left:right] += 1
    assert probs is not None and bool((count > 0).all()), "sliding windows must cover the image"
    return (probs / count)[:, :, :h, :w]


def _probs_once(
    model: nn.Module,
    image: torch.Tensor,
    slide: bool,
    crop_size: Optional[Size],
    stride: Optional[Size],
    autocast: AutocastFactory,
    num_classes: Optional[int],
) -> torch.Tensor:
    if slide:
        return _slide_probs(model, image, crop_size, stride, autocast, num_classes)
    return _forward_probs(model, image, autocast, num_classes)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    mode: str = "whole",
    crop_size: Optional[Size] = None,
    stride: Optional[Size] = None,
    flip: bool = False,
    num_classes: Optional[int] = None,
    autocast: AutocastFactory = contextlib.nullcontext,
) -> torch.Tensor:
    """Class probabilities (B, C, H, W), float32, for a normalized image batch (B, 3, H, W).

    mode: ``whole`` = one forward on the full image; ``slide`` = ``crop_size`` windows every
    ``stride`` pixels (default 2/3 of the window), probabilities averaged where windows overlap;
    ``center`` = one forward on the center ``crop_size`` crop, and the result has the crop's
    size: crop the target with :func:`center_crop` to match.
    flip: also run the horizontally flipped image and average the two probability maps.
    autocast: a zero-argument factory of the mixed-precision context (``contextlib.nullcontext``
    for none), entered around each forward only.
    The model is run as is: put it in eval mode first (:func:`equiseg.evaluation.evaluate` does).
    """
    if mode not in MODES:
        raise ValueError(f"unknown inference mode '{mode}'; expected one of {MODES}")
    if mode in ("slide", "center") and crop_size is None:
        raise ValueError(f"mode '{mode}' needs a crop_size")
    if image.dim() != 4:
        raise ValueError(f"image batch must be (B, 3, H, W), got {tuple(image.shape)}")
    if mode == "center":
        # Crop before flipping: with an odd margin the crop of the mirrored image would be
        # shifted by a pixel relative to the mirrored crop.
        image = center_crop(image, crop_size)
    slide = mode == "slide"
    probs = _probs_once(model, image, slide, crop_size, stride, autocast, num_classes)
    if flip:
        flipped = _probs_once(model, image.flip(-1), slide, crop_size, stride, autocast, num_classes)
        probs = (probs + flipped.flip(-1)) / 2
    return probs


# The name used in the evaluation design brief; note that it returns probabilities.
predict_logits = predict_probs
