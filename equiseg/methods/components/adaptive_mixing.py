"""Hardness-adaptive strong augmentations (HagSeg §2.3.1, Eq. 8-9), on batches of tensors.

- :func:`intensity_mix`: x_I = e·x_strong + (1 - e)·x_weak per image (Eq. 8 as the authors' code
  and their correction of the paper, issues #1/#4: the paper's γ on the strong image is a typo), so
  hard images (small easiness e) are perturbed less. Normalisation x ↦ (x - μ)/σ is affine per
  channel, so interpolating normalised tensors equals normalising the interpolated RGB images.
- :func:`hard_easy_partners`: the hard-easy pairs of Eq. 9 (k-th hardest with k-th easiest).
- :func:`side_fraction_boxes`: the authors' CutMix boxes (one side fraction per batch).
- :func:`bernoulli`: one draw deciding whether CutMix fires (probability 1 - γ̄ in HagSeg).

Pasting itself (images, pseudo-labels, confidences and padding through one mask) is
:func:`equiseg.methods.components.mixing.paste`.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...data.augment import box_masks
from .rng import uniform

CUTMIX_SIDE_RANGE = (0.1, 0.9)
"""Range of the box side as a fraction of the crop side (authors' ``use_cutmix_range``)."""
CENTRE_MARGIN = 16
"""Box centres are drawn in [S / 16, S) on each axis (authors' ``rand_bbox_by_v``)."""


def intensity_mix(strong: torch.Tensor, weak: torch.Tensor, easiness: torch.Tensor) -> torch.Tensor:
    """Eq. 8 (corrected): e_i·strong_i + (1 - e_i)·weak_i for (B, 3, H, W) images, e (B,)."""
    e = easiness.detach().to(strong.dtype).view(-1, 1, 1, 1)
    return e * strong + (1.0 - e) * weak


def hard_easy_partners(easiness: torch.Tensor) -> torch.Tensor:
    """For each image, the index of its CutMix partner (Eq. 9): images sorted from hardest to
    easiest, the k-th hardest paired with the k-th easiest, mutually (an involution; with an odd
    batch the median image is its own partner, i.e. not mixed). Ties keep batch order (stable sort).
    (B,) long, CPU.

    Ranked on the easiness e, as the authors (on -e): γ = 1 - e in float32 collapses easiness
    values near 0 (e = 2e-8 and 1e-8 both give γ = 1) and would pair them differently."""
    order = torch.sort(easiness.detach().cpu(), stable=True).indices
    partners = torch.empty_like(order)
    partners[order] = order.flip(0)
    return partners


def side_fraction_boxes(batch: int, height: int, width: int, generator: torch.Generator,
                        side_range: tuple[float, float] = CUTMIX_SIDE_RANGE,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """(B, H, W) bool CutMix boxes, True inside, as the authors' ``rand_bbox_by_v``.

    One side fraction v ~ U(side_range) for the whole batch; each image's box has sides int(v·H)
    and int(v·W) (rounded down to even), centred at a point uniform in [H/16, H) × [W/16, W), and
    is clipped to the image, so its area is at most v² of the crop.
    """
    low, high = side_range
    if not 0 < low <= high <= 1:
        raise ValueError(f"CutMix side range must satisfy 0 < min <= max <= 1, got {side_range}")
    u = uniform((1 + 2 * batch,), generator, torch.device("cpu"))
    v = low + (high - low) * u[0]
    half_h, half_w = int(v * height) // 2, int(v * width) // 2
    first_y, first_x = height // CENTRE_MARGIN, width // CENTRE_MARGIN
    centre_y = (first_y + u[1:1 + batch] * (height - first_y)).floor().long()
    centre_x = (first_x + u[1 + batch:] * (width - first_x)).floor().long()
    top, bottom = (centre_y - half_h).clamp(0, height), (centre_y + half_h).clamp(0, height)
    left, right = (centre_x - half_w).clamp(0, width), (centre_x + half_w).clamp(0, width)
    inside = box_masks(top, bottom, left, right, height, width)
    return inside.to(device) if device is not None else inside


def bernoulli(probability: float, generator: torch.Generator) -> bool:
    """True with ``probability``: one U[0, 1) draw from the run's generator is below it."""
    return bool(uniform((1,), generator, torch.device("cpu")).item() < probability)
