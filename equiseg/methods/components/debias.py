"""Debiased pseudo-labels (DebiasPL: Wang, Wu, Yu, "Debiased Learning from Naturally Imbalanced
Pseudo-Labels", CVPR 2022): the teacher's predictions are biased toward the classes it already
predicts often, and training on them makes the bias worse (on CamVid's short CPU schedule no
pixel of an unlabeled image is pseudo-labeled Bicyclist, and the student unlearns the class).
DebiasPL keeps p̂, an EMA of the teacher's mean class distribution on unlabeled data, and takes
pseudo-labels from the logit-adjusted prediction

    p̃ = softmax(log p − λ log p̂)

so a class the teacher rarely predicts gets a bonus proportional to how rare it is predicted.

With ``target='labeled'`` the same module is distribution alignment (ReMixMatch: Berthelot et al.,
ICLR 2020): p̃ = softmax(log p + λ (log π − log p̂)), π the EMA of the labeled batches' ground-truth
class distribution, so the pseudo-labels' class marginal is pulled to the labeled one rather than
to uniform. A class the teacher under-predicts relative to the labeled data (CamVid's Bicyclist)
is boosted, one it over-predicts damped, and the boost fades as the teacher catches up. Both
estimates start from their first batch (a uniform start would tilt the first steps toward the
frequent classes).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from .class_prior import RunningClassDistribution


DebiasTarget = Literal["uniform", "labeled"]


class PseudoLabelDebias(nn.Module):
    """p̂ (a buffer, so it is checkpointed and resumes) and the adjustment. ``strength``: λ;
    ``momentum``: of p̂'s EMA (DebiasPL: 0.999); ``target``: 'uniform' (DebiasPL: p̂ starts
    uniform) or 'labeled' (distribution alignment: p̂ starts at its first batch, and π is passed in)."""

    def __init__(self, num_classes: int, strength: float, momentum: float, target: DebiasTarget = "uniform"):
        super().__init__()
        self.strength, self.target = strength, target
        self.prior = RunningClassDistribution(num_classes, momentum, first_batch_sets=target == "labeled")

    @torch.no_grad()
    def update(self, probs: torch.Tensor, valid: torch.Tensor) -> None:
        """p̂ ← m p̂ + (1 − m) mean of ``probs`` (B, C, H, W) over the valid pixels of all processes."""
        mask = valid.to(probs.dtype).unsqueeze(1)
        self.prior.update((probs * mask).sum((0, 2, 3)))

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, valid: torch.Tensor,
                labeled_prior: Optional[RunningClassDistribution] = None) -> torch.Tensor:
        """Update p̂ with the teacher's ``probs``, then return p̃ = softmax(log p − λ log p̂)
        (DebiasPL) or softmax(log p + λ (log π − log p̂)) (distribution alignment, π = ``labeled_prior``)."""
        self.update(probs, valid)
        adjustment = -self.prior.log()
        if self.target == "labeled":
            adjustment = adjustment + labeled_prior.log()
        adjustment = self.strength * adjustment.to(probs.dtype)
        return (probs.clamp_min(1e-12).log() + adjustment.view(1, -1, 1, 1)).softmax(1)
