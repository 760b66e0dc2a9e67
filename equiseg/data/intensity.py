"""HagSeg's intensity-based strong augmentation (HagSeg Table 5, "Strong1"; iMAS ``augment_list``).

Two operations drawn **with replacement** from a pool of twelve are applied in sequence to the
weakly augmented crop. They are purely photometric, so the result keeps the crop's geometry and can
be interpolated pixel by pixel with the weak view (HagSeg Eq. 8, done in the method on normalised
tensors; see :func:`equiseg.methods.components.adaptive_mixing.intensity_mix`).

Ranges are those of the authors' code (iMAS ``augment_list``), which differ from Table 5 where noted:

============  ==============================  =========================================
op            magnitude (uniform over range)  Table 5
============  ==============================  =========================================
identity      --                              --
autocontrast  --                              --
equalize      --                              --
invert        --                              --
blur          Gaussian sigma in [0.1, 2.0] px  "Gaussian kernel" (range silent)
contrast      enhance factor in [0.1, 0.95]   [0.05, 0.95] (the code's commented-out "wide" list)
brightness    enhance factor in [0.1, 0.95]   [0.05, 0.95]
color         enhance factor in [0.1, 0.95]   [0.05, 0.95]
sharpness     enhance factor in [0.1, 0.95]   [0.05, 0.95]
posterize     bits in {4, ..., 7}             [4, 8] (8 bits is the identity)
solarize      threshold in {1, ..., 256}      [1, 256)
hue           shift in [-0.5, 0.5] of circle  [0.0, 0.5] (the code flips its sign at random)
============  ==============================  =========================================

The enhance factors are below 1, so those four ops only ever *reduce* contrast, brightness,
saturation or sharpness (as the authors' code). The authors scale every magnitude by a fixed
``modifier = 0.999``; the per-sample hardness modifier their datasets could load is dormant
(the missing ``hardness.py``), so magnitudes here are plain uniform draws (the 0.999 is dropped).

Functions take and return ``(H, W, 3)`` uint8 RGB arrays and draw from an explicit
``numpy.random.Generator``, like :mod:`equiseg.data.augment`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .augment import _to_pil, adjust_hue, gaussian_blur

NUM_OPS = 2
"""Operations applied per image (§2.3.1: "randomly select two kinds of image operations")."""
ENHANCE_RANGE = (0.1, 0.95)
"""Factor range of contrast, brightness, color and sharpness (authors' code; Table 5: 0.05)."""
BLUR_SIGMA = (0.1, 2.0)
POSTERIZE_BITS = (4, 7)
SOLARIZE_THRESHOLD = (1, 256)
MAX_HUE_SHIFT = 0.5

_UINT8_LEVELS = 256

# An op maps (PIL image, magnitude u in [0, 1), augment) to a PIL image; u is drawn for every op
# (used or not) so the number of draws per image is fixed.
Op = Callable[[Image.Image, float, "IntensityAugment"], Image.Image]


def _lerp(u: float, low: float, high: float) -> float:
    return low + (high - low) * u


def _int_in(u: float, low: int, high: int) -> int:
    """An integer uniform in ``[low, high]`` from ``u`` in ``[0, 1)``."""
    return min(high, low + int(u * (high - low + 1)))


OPS: dict[str, Op] = {
    "identity": lambda img, u, a: img,
    "autocontrast": lambda img, u, a: ImageOps.autocontrast(img),
    "equalize": lambda img, u, a: ImageOps.equalize(img),
    "invert": lambda img, u, a: ImageOps.invert(img),
    "blur": lambda img, u, a: _to_pil(gaussian_blur(np.asarray(img), _lerp(u, *a.blur_sigma))),
    "contrast": lambda img, u, a: ImageEnhance.Contrast(img).enhance(_lerp(u, *a.enhance_range)),
    "brightness": lambda img, u, a: ImageEnhance.Brightness(img).enhance(_lerp(u, *a.enhance_range)),
    "color": lambda img, u, a: ImageEnhance.Color(img).enhance(_lerp(u, *a.enhance_range)),
    "sharpness": lambda img, u, a: ImageEnhance.Sharpness(img).enhance(_lerp(u, *a.enhance_range)),
    "posterize": lambda img, u, a: ImageOps.posterize(img, _int_in(u, *a.posterize_bits)),
    # PIL inverts pixels >= threshold; a threshold of 256 leaves the image unchanged.
    "solarize": lambda img, u, a: ImageOps.solarize(img, _int_in(u, *a.solarize_threshold)),
    "hue": lambda img, u, a: adjust_hue(img, _lerp(u, -a.max_hue_shift, a.max_hue_shift)),
}
"""The twelve operations of Table 5, in the authors' ``augment_list`` order."""


class IntensityAugment:
    """``num_ops`` operations drawn with replacement from ``ops`` and applied in sequence.

    Args:
        num_ops: operations per image (HagSeg: 2).
        ops: names from :data:`OPS` forming the pool (default: all twelve).
        enhance_range: factor range of contrast / brightness / color / sharpness.
        blur_sigma: Gaussian blur sigma range, pixels.
        posterize_bits: inclusive range of bits kept by posterize.
        solarize_threshold: inclusive range of the solarize threshold (256 = no-op).
        max_hue_shift: largest hue rotation, a fraction of the colour circle (at most 0.5).
    """

    def __init__(self, num_ops: int = NUM_OPS, ops: Sequence[str] = tuple(OPS),
                 enhance_range: tuple[float, float] = ENHANCE_RANGE, blur_sigma: tuple[float, float] = BLUR_SIGMA,
                 posterize_bits: tuple[int, int] = POSTERIZE_BITS,
                 solarize_threshold: tuple[int, int] = SOLARIZE_THRESHOLD, max_hue_shift: float = MAX_HUE_SHIFT):
        unknown = [name for name in ops if name not in OPS]
        if unknown or not ops:
            raise ValueError(f"unknown intensity ops {unknown} (pool: {', '.join(OPS)})" if unknown
                             else "the intensity op pool is empty")
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not 0 <= enhance_range[0] <= enhance_range[1]:
            raise ValueError(f"enhance_range must satisfy 0 <= min <= max, got {enhance_range}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {blur_sigma}")
        if not 1 <= posterize_bits[0] <= posterize_bits[1] <= 8:
            raise ValueError(f"posterize_bits must satisfy 1 <= min <= max <= 8, got {posterize_bits}")
        if not 0 <= solarize_threshold[0] <= solarize_threshold[1] <= _UINT8_LEVELS:
            raise ValueError(f"solarize_threshold must lie in [0, 256], got {solarize_threshold}")
        if not 0 <= max_hue_shift <= 0.5:
            raise ValueError(f"max_hue_shift must be in [0, 0.5], got {max_hue_shift}")
        self.num_ops, self.ops = int(num_ops), tuple(ops)
        self.enhance_range, self.blur_sigma = tuple(enhance_range), tuple(blur_sigma)
        self.posterize_bits, self.solarize_threshold = tuple(posterize_bits), tuple(solarize_threshold)
        self.max_hue_shift = max_hue_shift

    def draw(self, rng: np.random.Generator) -> list[tuple[str, float]]:
        """The (op name, magnitude u) pairs for one image: ops with replacement, u ~ U[0, 1)."""
        chosen = rng.integers(0, len(self.ops), size=self.num_ops)
        magnitudes = rng.random(self.num_ops)
        return [(self.ops[i], float(u)) for i, u in zip(chosen, magnitudes)]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _to_pil(image)
        for name, u in self.draw(rng):
            img = OPS[name](img, u, self)
        out = np.asarray(img, dtype=np.uint8)
        return out.copy() if out is image else out

    def __repr__(self) -> str:
        return (f"IntensityAugment(num_ops={self.num_ops}, ops={list(self.ops)}, enhance_range={self.enhance_range}, "
                f"blur_sigma={self.blur_sigma}, posterize_bits={self.posterize_bits}, "
                f"solarize_threshold={self.solarize_threshold}, max_hue_shift={self.max_hue_shift})")
