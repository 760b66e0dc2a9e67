"""FixMatch [Sohn et al., NeurIPS 2020] for segmentation (as in UniMatch's FixMatch baseline).

The teacher pseudo-labels the weak view of each unlabeled image; pixels below the confidence
threshold τ (0.95) get no pseudo-label. The student sees the strong view (the batch's
``image_strong``: colour jitter, grayscale, blur) further CutMix-ed among the unlabeled images,
pseudo-labels mixed the same way. As FixMatch's L_u = 1/|Ω| Σ 𝟙(max p ≥ τ) ℓ_ce, the loss is
normalised by every valid pixel, so dropped pixels lower it. L = L_s + α L_u.

So FixMatch is CutMix-Seg (cutmix.py) with two defaults changed (τ, the normaliser) and the
photometric strong view, instead of the weak one, under the student's CutMix: one step, written once.
The teacher is the EMA teacher of the other methods; ``ema_momentum: 0`` makes it the current
student, i.e. the original FixMatch's self-labelling. ``strong_view`` sets the photometric view's
strengths (UniMatch's recipe by default).
"""
from __future__ import annotations

from typing import Literal

import torch

from pydantic import Field, model_validator

from ..config import Section
from ..data.augment import BLUR_P, BLUR_SIGMA, GRAYSCALE_P, JITTER_P, JITTER_STRENGTH, StrongPhotometric
from .base import register_method
from .components import LossDenominator, PseudoLabelConfig
from .cutmix import CutMix

FIXMATCH_THRESHOLD = 0.95


class StrongViewConfig(Section):
    """The photometric strong view (UniMatch / FixMatch-seg recipe by default). Its sigmas are in
    pixels of the images as loaded, so at ``data.image_scale`` 0.5 the same sigma blurs twice as
    much of the scene as at full resolution."""

    jitter_p: float = Field(JITTER_P, ge=0, le=1)
    """Probability of colour jitter."""
    jitter: tuple[float, float, float, float] = JITTER_STRENGTH
    """Strengths of brightness, contrast, saturation (factors in [1 - s, 1 + s]) and hue (a shift of
    at most this fraction of the colour circle), as torchvision's ColorJitter."""
    grayscale_p: float = Field(GRAYSCALE_P, ge=0, le=1)
    """Probability of turning the image grayscale."""
    blur_p: float = Field(BLUR_P, ge=0, le=1)
    """Probability of a Gaussian blur."""
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    """Range the blur's sigma (pixels) is drawn from."""

    @model_validator(mode="after")
    def _check(self) -> "StrongViewConfig":
        self.build()  # the augment checks its own arguments (ValueError: a config error naming them)
        return self

    def build(self) -> StrongPhotometric:
        return StrongPhotometric(self.jitter_p, self.jitter, self.grayscale_p, self.blur_p, self.blur_sigma)


class FixMatchConfig(PseudoLabelConfig):
    name: Literal["fixmatch"] = "fixmatch"
    confidence_threshold: float = Field(FIXMATCH_THRESHOLD, ge=0, le=1)
    """τ: pixels whose weak-view confidence is below it are left out of L_u."""
    loss_denominator: LossDenominator = "valid"
    """FixMatch's 1/|Ω|: every valid pixel counts in L_u's denominator."""
    strong_view: StrongViewConfig = StrongViewConfig()
    """The student's photometric view of the unlabeled images."""


@register_method
class FixMatch(CutMix):
    config_class = FixMatchConfig
    strong_view = True

    @classmethod
    def unlabeled_view(cls, cfg: FixMatchConfig) -> StrongPhotometric:
        return cfg.strong_view.build()

    def student_view(self, unlabeled: dict) -> torch.Tensor:
        """The strong view: photometric augmentation of the weak crop, from the data pipeline."""
        return unlabeled["image_strong"]
