"""Strong photometric augmentation and CutMix boxes, shared by the semi-supervised methods.

The strong view follows the UniMatch / FixMatch-for-segmentation recipe (colour jitter with
p=0.8, random grayscale with p=0.2, Gaussian blur with p=0.5), implemented with PIL and numpy so
that torchvision is not needed. Every function takes an explicit random generator, never global
RNG state, so a sample's augmentation is a function of its seed alone.

Photometric functions take and return ``(H, W, 3)`` uint8 RGB arrays; they never move pixels, so
a strong view keeps the geometry of the image it was made from.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

# UniMatch / FixMatch-seg strong-view recipe.
JITTER_P = 0.8
JITTER_STRENGTH = (0.5, 0.5, 0.5, 0.25)  # brightness, contrast, saturation, hue (torchvision ColorJitter)
GRAYSCALE_P = 0.2
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)

# CutMix box defaults (UniMatch ``obtain_cutmix_box``).
CUTMIX_P = 0.5
CUTMIX_AREA = (0.02, 0.4)
CUTMIX_RATIO = (0.3, 1 / 0.3)
_MAX_BOX_ATTEMPTS = 1000  # rejection sampling of box placements; acceptance is >10% for the defaults

_UINT8_LEVELS = 256


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return Image.fromarray(image, mode="RGB")


# --------------------------------------------------------------------------- photometric


def adjust_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate hue by ``shift`` (a fraction of the colour circle, in [-0.5, 0.5]), as torchvision."""
    h, s, v = img.convert("HSV").split()
    hue = np.asarray(h, dtype=np.uint8)
    # uint8 arithmetic wraps around the circle, which is exactly a hue rotation. The shift in levels
    # is truncated toward zero, as torchvision's and iMAS's np.uint8(shift * 255).
    hue = (hue.astype(np.int16) + int(shift * (_UINT8_LEVELS - 1))) % _UINT8_LEVELS
    h = Image.fromarray(hue.astype(np.uint8), mode="L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.5,
                 contrast: float = 0.5, saturation: float = 0.5, hue: float = 0.25) -> np.ndarray:
    """torchvision-style ColorJitter: the four adjustments in random order, each with a factor
    drawn uniformly from ``[1 - strength, 1 + strength]`` (hue: a shift in ``[-hue, hue]``).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        rng: source of all random draws.
        brightness, contrast, saturation: strength of each factor (0 disables it).
        hue: largest hue rotation as a fraction of the colour circle, at most 0.5.
    """
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue strength must be in [0, 0.5], got {hue}")
    img = _to_pil(image)
    # Draw all factors first so the number of draws does not depend on the order.
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)]
    hue_shift = rng.uniform(-hue, hue)
    for op in order:
        if op == 0 and brightness > 0:
            img = ImageEnhance.Brightness(img).enhance(factors[0])
        elif op == 1 and contrast > 0:
            img = ImageEnhance.Contrast(img).enhance(factors[1])
        elif op == 2 and saturation > 0:
            img = ImageEnhance.Color(img).enhance(factors[2])
        elif op == 3 and hue > 0:
            img = adjust_hue(img, hue_shift)
    return np.asarray(img, dtype=np.uint8)


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, as PIL ``convert('L')``) copied into three channels."""
    return np.asarray(_to_pil(image).convert("L").convert("RGB"), dtype=np.uint8)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (PIL's ``radius`` is the sigma)."""
    return np.asarray(_to_pil(image).filter(ImageFilter.GaussianBlur(radius=float(sigma))), dtype=np.uint8)


class StrongPhotometric:
    """The strong photometric view: jitter, grayscale and blur, each applied with its probability.

    Args:
        jitter_p: probability of colour jitter.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths, see :func:`color_jitter`.
        grayscale_p: probability of converting to grayscale.
        blur_p: probability of a Gaussian blur.
        blur_sigma: range the blur's sigma (pixels) is drawn from uniformly.
    """

    def __init__(self, jitter_p: float = JITTER_P, jitter: tuple[float, float, float, float] = JITTER_STRENGTH,
                 grayscale_p: float = GRAYSCALE_P, blur_p: float = BLUR_P,
                 blur_sigma: tuple[float, float] = BLUR_SIGMA):
        for name, p in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("blur_p", blur_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability, got {p}")
        if any(s < 0 for s in jitter) or jitter[3] > 0.5:
            raise ValueError(f"jitter strengths must be >= 0 and the hue's at most 0.5, got {list(jitter)}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {list(blur_sigma)}")
        self.jitter_p, self.jitter = jitter_p, tuple(jitter)
        self.grayscale_p, self.blur_p, self.blur_sigma = grayscale_p, blur_p, tuple(blur_sigma)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = image
        if rng.random() < self.jitter_p:
            out = color_jitter(out, rng, *self.jitter)
        if rng.random() < self.grayscale_p:
            out = to_grayscale(out)
        if rng.random() < self.blur_p:
            out = gaussian_blur(out, rng.uniform(*self.blur_sigma))
        return out.copy() if out is image else out

    def __repr__(self) -> str:
        return (f"StrongPhotometric(jitter_p={self.jitter_p}, jitter={self.jitter}, grayscale_p={self.grayscale_p}, "
                f"blur_p={self.blur_p}, blur_sigma={self.blur_sigma})")


# --------------------------------------------------------------------------- CutMix boxes


def _check_box_args(area: tuple[float, float], ratio: tuple[float, float], p: float) -> None:
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"area must satisfy 0 < min <= max <= 1, got {area}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability, got {p}")


def cutmix_box_mask(h: int, w: int, rng: np.random.Generator, p: float = CUTMIX_P,
                    area: tuple[float, float] = CUTMIX_AREA,
                    ratio: tuple[float, float] = CUTMIX_RATIO) -> np.ndarray:
    """One CutMix box as an ``(h, w)`` bool mask (True inside the box), UniMatch style.

    Args:
        h, w: mask size in pixels.
        rng: source of all random draws.
        p: probability that a box is drawn at all; otherwise the mask is all False.
        area: range of the box area as a fraction of ``h * w`` (drawn uniformly).
        ratio: range of the box's height/width aspect ratio (drawn uniformly).

    As UniMatch, the ratio and the top-left corner are redrawn together until the box fits; after
    ``_MAX_BOX_ATTEMPTS`` misses (only possible for extreme arguments) the box is clipped instead.
    """
    _check_box_args(area, ratio, p)
    mask = np.zeros((h, w), dtype=bool)
    if rng.random() >= p:
        return mask
    size = rng.uniform(*area) * h * w
    for _ in range(_MAX_BOX_ATTEMPTS):
        r = rng.uniform(*ratio)
        box_w, box_h = int(math.sqrt(size / r)), int(math.sqrt(size * r))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if x + box_w <= w and y + box_h <= h:
            break
    else:
        box_w, box_h = min(box_w, w), min(box_h, h)
        x, y = min(x, w - box_w), min(y, h - box_h)
    mask[y:y + box_h, x:x + box_w] = True
    return mask


def box_masks(top: torch.Tensor, bottom: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
              height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool masks, True in rows [top, bottom) and columns [left, right) of each image:
    every CutMix box generator (UniMatch's here, CutMix-Seg's and iMAS's in the methods' components)
    draws its box coordinates and makes its masks here."""
    device = top.device
    ys = torch.arange(height, device=device, dtype=top.dtype).view(1, height, 1)
    xs = torch.arange(width, device=device, dtype=left.dtype).view(1, 1, width)
    return ((ys >= top.view(-1, 1, 1)) & (ys < bottom.view(-1, 1, 1))
            & (xs >= left.view(-1, 1, 1)) & (xs < right.view(-1, 1, 1)))


def random_box_masks(batch: int, h: int, w: int, generator: Optional[torch.Generator] = None,
                     p: float = 1.0, area: tuple[float, float] = CUTMIX_AREA,
                     ratio: tuple[float, float] = CUTMIX_RATIO,
                     device: Optional[torch.device] = None) -> torch.Tensor:
    """A batch of CutMix boxes as a ``(batch, h, w)`` bool tensor, for use inside methods.

    Args:
        batch: number of masks.
        h, w: mask size in pixels.
        generator: torch generator for every draw (its device is where the draws happen);
            None uses torch's default generator.
        p: per-sample probability of a box; samples without one get an all-False mask.
        area: range of the box area as a fraction of ``h * w`` (drawn uniformly).
        ratio: range of the box's height/width aspect ratio (drawn uniformly).
        device: device of the returned masks (default: the generator's device, else CPU).

    Vectorised: a box that would overflow is shrunk to fit rather than redrawn, and its
    corner is then uniform over the positions where it fits.
    """
    _check_box_args(area, ratio, p)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(5, batch, generator=generator, device=draw_device, dtype=torch.float32)
    box_area = (area[0] + (area[1] - area[0]) * u[0]) * h * w
    r = ratio[0] + (ratio[1] - ratio[0]) * u[1]
    box_w = torch.sqrt(box_area / r).floor().clamp(0, w)
    box_h = torch.sqrt(box_area * r).floor().clamp(0, h)
    x0 = (u[2] * (w - box_w + 1)).floor().clamp(max=w - box_w)
    y0 = (u[3] * (h - box_h + 1)).floor().clamp(max=h - box_h)
    on = u[4] < p
    masks = box_masks(y0, y0 + box_h, x0, x0 + box_w, h, w) & on.view(-1, 1, 1)
    return masks.to(device) if device is not None else masks
