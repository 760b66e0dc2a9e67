"""Debiased pseudo-labels (DebiasPL: Wang, Wu, Yu, "Debiased Learning from Naturally Imbalanced
Pseudo-Labels", CVPR 2022): the teacher's predictions are biased toward the classes it already
predicts often, and training on them makes the bias worse (on CamVid's short CPU schedule no
pixel of an unlabeled image is pseudo-labeled Bicyclist, and the student unlearns the class).
DebiasPL keeps p̂, an EMA of the teacher's mean class distribution on unlabeled data, and takes
pseudo-labels from the logit-adjusted prediction

    p̃ = softmax(log p − λ log p̂)

so a class the teacher rarely predicts gets a bonus proportional to how rare it is predicted.
"""
from __future__ import annotations

import torch
from torch import nn

from ...parallel import all_reduce_sum


class PseudoLabelDebias(nn.Module):
    """p̂ (a buffer, so it is checkpointed and resumes) and the adjustment. ``strength``: λ;
    ``momentum``: of p̂'s EMA (DebiasPL: 0.999)."""

    def __init__(self, num_classes: int, strength: float, momentum: float):
        super().__init__()
        self.strength, self.momentum = strength, momentum
        self.register_buffer("prior", torch.full((num_classes,), 1.0 / num_classes))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, valid: torch.Tensor) -> None:
        """p̂ ← m p̂ + (1 − m) mean of ``probs`` (B, C, H, W) over the valid pixels of all processes."""
        mask = valid.to(probs.dtype).unsqueeze(1)
        total, count = all_reduce_sum((probs * mask).sum((0, 2, 3)).float(), mask.sum().float().view(1))
        updated = self.momentum * self.prior + (1 - self.momentum) * total / count.clamp_min(1)
        self.prior.copy_(torch.where(count > 0, updated, self.prior))  # no host sync in the step

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Update p̂ with the teacher's ``probs``, then return p̃ = softmax(log p − λ log p̂)."""
        self.update(probs, valid)
        adjustment = self.strength * self.prior.clamp_min(1e-12).log().to(probs.dtype)
        return (probs.clamp_min(1e-12).log() - adjustment.view(1, -1, 1, 1)).softmax(1)
