"""FixMatch [Sohn et al., NeurIPS 2020] for segmentation (as in UniMatch's FixMatch baseline).

The teacher pseudo-labels the weak view of each unlabeled image; pixels below the confidence
threshold τ (0.95) get no pseudo-label. The student sees the strong view (the batch's
``image_strong``: colour jitter, grayscale, blur) further CutMix-ed among the unlabeled images,
pseudo-labels mixed the same way. As FixMatch's L_u = 1/|Ω| Σ 𝟙(max p ≥ τ) ℓ_ce, the loss is
normalised by every valid pixel, so dropped pixels lower it. L = L_s + α L_u.

So FixMatch is CutMix-Seg (cutmix.py) with two defaults changed (τ, the normaliser) and the
photometric strong view, instead of the weak one, under the student's CutMix: one step, written once.
The teacher is the EMA teacher of the other methods; ``ema_momentum: 0`` makes it the current
student, i.e. the original FixMatch's self-labelling.
"""
from __future__ import annotations

from typing import Literal

import torch

from pydantic import Field

from .base import register_method
from .components import LossDenominator, PseudoLabelConfig
from .cutmix import CutMix

FIXMATCH_THRESHOLD = 0.95


class FixMatchConfig(PseudoLabelConfig):
    name: Literal["fixmatch"] = "fixmatch"
    confidence_threshold: float = Field(FIXMATCH_THRESHOLD, ge=0, le=1)
    """τ: pixels whose weak-view confidence is below it are left out of L_u."""
    loss_denominator: LossDenominator = "valid"
    """FixMatch's 1/|Ω|: every valid pixel counts in L_u's denominator."""


@register_method
class FixMatch(CutMix):
    config_class = FixMatchConfig
    strong_view = True

    def student_view(self, unlabeled: dict) -> torch.Tensor:
        """The strong view: photometric augmentation of the weak crop, from the data pipeline."""
        return unlabeled["image_strong"]
