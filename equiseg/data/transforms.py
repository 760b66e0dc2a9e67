"""Paired transforms: geometry applied identically to image, label and valid mask.

A transform is called as ``transform(sample, rng)`` on a dict of numpy arrays and returns the
(new) dict. Input keys:

- ``image``: ``(H, W, 3)`` uint8 RGB
- ``label``: ``(H, W)`` uint8 train ids / ignore (absent for unlabeled data)
- ``valid``: ``(H, W)`` bool, False where crop padding was added

:class:`StrongView` adds ``image_strong``; :class:`ToTensor` (always last) turns the dict into
the tensors of the data contract (docs/design.md). Every random draw comes from ``rng``.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .augment import StrongPhotometric
from .spec import IGNORE_INDEX, DatasetSpec

Sample = dict[str, Any]
# Keys that hold per-pixel arrays and therefore follow every geometric operation. ``audit_label``
# is an unlabeled image's ground truth, loaded only to score pseudo-labels (never trained on).
AUDIT_LABEL_KEY = "audit_label"
_IMAGE_KEYS = ("image", "image_strong")
_LABEL_KEYS = ("label", AUDIT_LABEL_KEY)
_MASK_KEYS = _LABEL_KEYS + ("valid",)


def _resize(sample: Sample, height: int, width: int) -> Sample:
    """Images bilinear (PIL antialiases when shrinking), label and valid nearest."""
    out = dict(sample)
    for key in _IMAGE_KEYS:
        if key in sample:
            out[key] = np.asarray(Image.fromarray(sample[key]).resize((width, height), Image.BILINEAR))
    for key in _MASK_KEYS:
        if key in sample:
            arr = sample[key]
            pil = Image.fromarray(arr.astype(np.uint8) if arr.dtype == bool else arr)
            resized = np.asarray(pil.resize((width, height), Image.NEAREST))
            out[key] = resized.astype(bool) if arr.dtype == bool else resized
    return out


def resize_pair(image: np.ndarray, label: Optional[np.ndarray],
                scale: float) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Scale an image (bilinear) and its label (nearest) by one factor; sizes round, at least 1 px."""
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    sample = {"image": image} if label is None else {"image": image, "label": label}
    sample = _resize(sample, nh, nw)
    return sample["image"], sample.get("label")


class Compose:
    def __init__(self, steps: Sequence[Callable[[Sample, np.random.Generator], Sample]]):
        self.steps = list(steps)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for step in self.steps:
            sample = step(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(s) for s in self.steps) + ")"


class RandomScale:
    """Rescale by a factor drawn uniformly from ``scale_range`` (image bilinear, masks nearest)."""

    def __init__(self, scale_range: tuple[float, float]):
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got {scale_range}")
        self.scale_range = (float(lo), float(hi))

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        s = rng.uniform(*self.scale_range)
        h, w = sample["image"].shape[:2]
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        return sample if (nh, nw) == (h, w) else _resize(sample, nh, nw)

    def __repr__(self) -> str:
        return f"RandomScale({self.scale_range})"


def _pad_to(sample: Sample, height: int, width: int, fill_rgb: np.ndarray, ignore_index: int) -> Sample:
    """Pad bottom/right up to at least ``(height, width)``: image with the mean colour (zero after
    normalisation), label with ignore, valid with False."""
    h, w = sample["image"].shape[:2]
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return sample
    out = dict(sample)
    for key in _IMAGE_KEYS:
        if key in sample:
            padded = np.empty((h + ph, w + pw, 3), dtype=np.uint8)
            padded[...] = fill_rgb
            padded[:h, :w] = sample[key]
            out[key] = padded
    for key in _LABEL_KEYS:
        if key in sample:
            out[key] = np.pad(sample[key], ((0, ph), (0, pw)), constant_values=ignore_index)
    out["valid"] = np.pad(sample["valid"], ((0, ph), (0, pw)), constant_values=False)
    return out


def _crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    out = dict(sample)
    for key in _IMAGE_KEYS + _MASK_KEYS:
        if key in sample:
            out[key] = sample[key][top:top + height, left:left + width]
    return out


class _CropBase:
    def __init__(self, size: tuple[int, int], mean: Sequence[float], ignore_index: int = IGNORE_INDEX):
        h, w = size
        if h < 1 or w < 1:
            raise ValueError(f"crop size must be positive, got {size}")
        self.size = (int(h), int(w))
        # The image is still uint8 here; the rounded mean normalises to (almost exactly) zero.
        self.fill = np.clip(np.round(np.asarray(mean, dtype=np.float64)), 0, 255).astype(np.uint8)
        self.ignore_index = ignore_index


class RandomCrop(_CropBase):
    """Crop ``size = (height, width)`` at a uniform position, padding first when the image is
    smaller (image with the dataset mean colour, label with ``ignore_index``, valid False)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        ch, cw = self.size
        sample = _pad_to(sample, ch, cw, self.fill, self.ignore_index)
        h, w = sample["image"].shape[:2]
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return _crop(sample, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class CenterCrop(_CropBase):
    """Crop ``size = (height, width)`` at the centre, padding (bottom/right) when smaller."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        ch, cw = self.size
        sample = _pad_to(sample, ch, cw, self.fill, self.ignore_index)
        h, w = sample["image"].shape[:2]
        return _crop(sample, (h - ch) // 2, (w - cw) // 2, ch, cw)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class HorizontalFlip:
    """Mirror left-right with probability ``p`` (one draw per call, flip or not)."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        out = dict(sample)
        for key in _IMAGE_KEYS + _MASK_KEYS:
            if key in sample:
                out[key] = sample[key][:, ::-1]
        return out

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class StrongView:
    """Add ``image_strong``: the strong photometric aug of a copy of the current (already
    cropped and flipped) image, so both views share one geometry."""

    def __init__(self, augment: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None):
        self.augment = augment if augment is not None else StrongPhotometric()

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = dict(sample)
        out["image_strong"] = self.augment(np.ascontiguousarray(sample["image"]), rng)
        return out

    def __repr__(self) -> str:
        return f"StrongView({self.augment!r})"


class ToTensor:
    """Normalise images with the spec's mean/std (0-255 scale) into float32 ``(3, H, W)``; label
    to long ``(H, W)``, valid to bool ``(H, W)``. Always the last step."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def _normalize(self, image: np.ndarray) -> torch.Tensor:
        # One HWC→CHW copy into float32, then in-place ops: ~5x faster than numpy temporaries.
        h, w = image.shape[:2]
        out = torch.empty((3, h, w), dtype=torch.float32)
        with warnings.catch_warnings():
            # PIL-backed arrays are read-only; the tensor view is only read from, never written.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            source = torch.from_numpy(np.ascontiguousarray(image))
        out.copy_(source.permute(2, 0, 1))
        return out.sub_(self.mean).mul_(self.inv_std)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = dict(sample)
        for key in _IMAGE_KEYS:
            if key in sample:
                out[key] = self._normalize(sample[key])
        for key in _LABEL_KEYS:
            if key in sample:
                out[key] = torch.from_numpy(np.ascontiguousarray(sample[key]).astype(np.int64))
        out["valid"] = torch.from_numpy(np.ascontiguousarray(sample["valid"]).astype(bool))
        return out

    def __repr__(self) -> str:
        return "ToTensor()"


Normalize = ToTensor  # the two always go together at the end


def denormalize(image: torch.Tensor, spec: DatasetSpec) -> np.ndarray:
    """Inverse of :class:`ToTensor` for one ``(3, H, W)`` image: ``(H, W, 3)`` uint8 (for display)."""
    x = image.detach().cpu().float().numpy().transpose(1, 2, 0)
    x = x * np.asarray(spec.std, dtype=np.float32) + np.asarray(spec.mean, dtype=np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


PhotometricAug = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def train_transform(data_cfg: Any, spec: DatasetSpec, strong_view: Union[bool, PhotometricAug] = False,
                    strong_augment: Optional[PhotometricAug] = None) -> Compose:
    """Random scale (``data.scale_range``) → random crop (``data.crop_size`` as height, width) →
    flip (if ``data.flip``) → [strong view] → normalise.

    ``strong_view`` may also be a photometric augment itself (a method's own strong view, e.g.
    HagSeg's intensity pool, given as its ``Method.strong_view``); it is used when
    ``strong_augment`` is not given."""
    steps: list = [RandomScale(tuple(data_cfg.scale_range)),
                   RandomCrop(tuple(data_cfg.crop_size), spec.mean, spec.ignore_index)]
    if data_cfg.flip:
        steps.append(HorizontalFlip(0.5))
    if strong_view:
        if strong_augment is None and callable(strong_view):
            strong_augment = strong_view
        steps.append(StrongView(strong_augment))
    steps.append(ToTensor(spec.mean, spec.std))
    return Compose(steps)


def eval_transform(spec: DatasetSpec) -> Compose:
    """No geometry: evaluation sees whole images (the evaluator does any sliding/cropping)."""
    return Compose([ToTensor(spec.mean, spec.std)])
