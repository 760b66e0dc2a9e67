"""DST-CBC's class-balanced thresholds (Feng et al., 2020, Algorithm 1, Eq. 6), exact on float32
confidences: per class c, t_c is the ⌈α·n_c⌉-th largest confidence among the (sampled) pixels
predicted as c, and a pixel keeps its label ml only if its confidence mp ≥ t_ml.

Thresholds are float32 bit patterns (for p ≥ 0 they order exactly as p does), found with two
histogram passes so that images can be streamed and processes simply all-reduce counts.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Optional

import numpy as np
import torch

HIGH_BINS = (0x3F800000 >> 16) + 1
"""Bins of the top 16 bits of a float32 in [0, 1] (1.0 = 0x3F800000)."""
LOW_BINS = 1 << 16


def confidence_bits(mp: torch.Tensor) -> torch.Tensor:
    """The float32 bit pattern of each confidence (long): for p ≥ 0 it orders exactly as p does, so
    thresholds on it rank pixels exactly as the authors' float32 ``sorted`` (ties only where the
    float32 values tie)."""
    return mp.float().clamp(0, 1).contiguous().view(torch.int32).long()


def sample_pixels(shape: tuple[int, ...], ratio: float, seed: tuple[int, ...]) -> torch.Tensor:
    """A random boolean mask keeping about ``ratio`` of the pixels, a fixed function of ``seed``."""
    if ratio >= 1:
        return torch.ones(shape, dtype=torch.bool)
    return torch.from_numpy(np.random.default_rng(seed).random(shape) < ratio)


def high_histogram(ml: torch.Tensor, bits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Lines 7-8, ``r_j = concat(r_j, mp[ml == j])``, kept as counts over the top 16 bits of the
    float32 pattern: (C, HIGH_BINS)."""
    flat = ml.reshape(-1).long() * HIGH_BINS + (bits.reshape(-1) >> 16)
    return torch.bincount(flat, minlength=num_classes * HIGH_BINS).view(num_classes, HIGH_BINS)


def low_histogram(ml: torch.Tensor, bits: torch.Tensor, high: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts over the low 16 bits of the pixels whose top 16 bits equal their class's ``high`` bin
    (the bin holding the class's threshold): (C, LOW_BINS)."""
    ml, bits = ml.reshape(-1).long(), bits.reshape(-1)
    inside = (bits >> 16) == high.to(bits.device)[ml]
    flat = ml[inside] * LOW_BINS + (bits[inside] & 0xFFFF)
    return torch.bincount(flat, minlength=num_classes * LOW_BINS).view(num_classes, LOW_BINS)


def top_alpha_counts(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """⌈α·n⌉ per row (α·n computed exactly: 0.6 x 5 keeps 3, not ⌈3.0000000000000004⌉ = 4)."""
    ratio = Fraction(repr(float(alpha)))
    return torch.tensor([-(-ratio.numerator * int(n) // ratio.denominator) for n in counts.tolist()],
                        device=counts.device)


def kth_largest_bin(histogram: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the bin b holding the k-th largest element, and the rank of that element within b
    (k minus the elements in higher bins). Rows with k = 0 give b = 0."""
    at_least = histogram.flip(1).cumsum(1)   # at_least[j, i]: elements in bins ≥ last - i
    last = histogram.shape[1] - 1
    below = (at_least < k[:, None]).sum(1)
    b = (last - below).clamp_min(0)
    above = torch.where(below > 0, at_least.gather(1, (below - 1).clamp_min(0)[:, None])[:, 0],
                        torch.zeros_like(below))
    return torch.where(k > 0, b, torch.zeros_like(b)), k - above


class TopAlphaThresholds:
    """Lines 9-12 in two passes over the sampled pixels, exact on float32 confidences.

    Pass A counts the top 16 bits of each class's sampled confidences and finds, per class, the bin
    of its ⌈α·n⌉-th largest one; pass B counts the low 16 bits inside that bin only, which pins the
    exact value. Both are sums, so processes simply all-reduce them. t_c is a float32 bit pattern:
    a pixel is kept when ``confidence_bits(mp) ≥ t_ml``. A class with no sampled pixel, and every
    class at α = 1, gets t = 0 (keep all). ``per_class`` False (DST-C) ranks all pixels together."""

    def __init__(self, num_classes: int, alpha: float, per_class: bool = True, device: Any = "cpu"):
        self.num_classes, self.alpha, self.per_class = num_classes, alpha, per_class
        rows = num_classes if per_class else 1
        self.high = torch.zeros(rows, HIGH_BINS, dtype=torch.long, device=device)
        self.low = torch.zeros(rows, LOW_BINS, dtype=torch.long, device=device)
        self.high_bin: Optional[torch.Tensor] = None
        self.rank: Optional[torch.Tensor] = None

    def _rows(self, ml: torch.Tensor) -> torch.Tensor:
        return ml if self.per_class else torch.zeros_like(ml)

    def count_high(self, ml: torch.Tensor, bits: torch.Tensor) -> None:             # pass A
        self.high += high_histogram(self._rows(ml), bits, self.high.shape[0]).to(self.high.device)

    def finish_high(self) -> None:
        self.keep = top_alpha_counts(self.high.sum(1), self.alpha)
        self.high_bin, self.rank = kth_largest_bin(self.high, self.keep)

    def count_low(self, ml: torch.Tensor, bits: torch.Tensor) -> None:              # pass B
        self.low += low_histogram(self._rows(ml), bits, self.high_bin.to(bits.device),
                                  self.low.shape[0]).to(self.low.device)

    def thresholds(self) -> torch.Tensor:
        low_bin, _ = kth_largest_bin(self.low, self.rank)
        t = (self.high_bin << 16) | low_bin
        t = torch.where(self.keep > 0, t, torch.zeros_like(t))
        if self.alpha >= 1:
            t = torch.zeros_like(t)
        return t if self.per_class else t.expand(self.num_classes).clone()

    @property
    def sampled_pixels(self) -> int:
        return int(self.high.sum())


def class_balanced_thresholds(ml: torch.Tensor, mp: torch.Tensor, alpha: float, num_classes: int,
                              per_class: bool = True) -> torch.Tensor:
    """t_c (float32 bit patterns) from sampled pixels held in memory: both passes of
    :class:`TopAlphaThresholds` at once (offline labeling runs them over the stored maps)."""
    top = TopAlphaThresholds(num_classes, alpha, per_class)
    bits = confidence_bits(mp)
    top.count_high(ml, bits)
    top.finish_high()
    top.count_low(ml, bits)
    return top.thresholds()


def threshold_values(thresholds: torch.Tensor) -> list[float]:
    """The float32 confidences the bit-pattern thresholds stand for."""
    return thresholds.to(torch.int32).view(torch.float32).tolist()


def select_pseudo_labels(ml: torch.Tensor, bits: torch.Tensor, thresholds: torch.Tensor,
                         ignore_index: int) -> torch.Tensor:
    """Lines 13-18 (Eq. 6): Y = ml where mp ≥ t_ml (compared as float32 bit patterns), IGNORE elsewhere."""
    keep = bits >= thresholds.to(ml.device)[ml.long()]
    return torch.where(keep, ml.long(), torch.full_like(ml.long(), ignore_index))
