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

from typing import Literal

import torch
from torch import nn

from ...parallel import all_reduce_sum


DebiasTarget = Literal["uniform", "labeled"]
PRIOR_FLOOR = 1e-6
"""Smallest class frequency in the log ratio: a class absent from every labeled batch so far is
damped hard but finitely."""


class PseudoLabelDebias(nn.Module):
    """p̂ and π (buffers, so they are checkpointed and resume) and the adjustment. ``strength``: λ;
    ``momentum``: of the EMAs (DebiasPL: 0.999); ``target``: 'uniform' (DebiasPL) or 'labeled'
    (distribution alignment)."""

    def __init__(self, num_classes: int, strength: float, momentum: float, target: DebiasTarget = "uniform"):
        super().__init__()
        self.strength, self.momentum, self.target = strength, momentum, target
        self.register_buffer("prior", torch.full((num_classes,), 1.0 / num_classes))
        if target == "labeled":
            self.register_buffer("labeled_prior", torch.full((num_classes,), 1.0 / num_classes))
            # 0 until the first batch of each estimate, which then replaces the start value.
            self.register_buffer("seen", torch.zeros(2))

    def _ema(self, estimate: torch.Tensor, total: torch.Tensor, count: torch.Tensor, slot: int) -> None:
        momentum = self.momentum
        if self.target == "labeled":  # the first batch sets the estimate (momentum 0)
            momentum = self.momentum * self.seen[slot]
            self.seen[slot] = torch.where(count.view(()) > 0, 1.0, self.seen[slot])
        updated = momentum * estimate + (1 - momentum) * total / count.clamp_min(1)
        estimate.copy_(torch.where(count > 0, updated, estimate))  # no host sync in the step

    @torch.no_grad()
    def update(self, probs: torch.Tensor, valid: torch.Tensor) -> None:
        """p̂ ← m p̂ + (1 − m) mean of ``probs`` (B, C, H, W) over the valid pixels of all processes."""
        mask = valid.to(probs.dtype).unsqueeze(1)
        total, count = all_reduce_sum((probs * mask).sum((0, 2, 3)).float(), mask.sum().float().view(1))
        self._ema(self.prior, total, count, 0)

    @torch.no_grad()
    def observe_labeled(self, label: torch.Tensor, ignore_index: int) -> None:
        """π ← m π + (1 − m) class histogram of a labeled batch's ground truth (all processes)."""
        if self.target != "labeled":
            return
        classes = self.prior.numel()
        index = label.masked_fill(label == ignore_index, classes).flatten().long()  # ignored: an extra bin
        ones = torch.ones_like(index, dtype=torch.float)
        counts = torch.zeros(classes + 1, device=label.device).scatter_add_(0, index, ones)
        counts = counts[:classes].to(self.labeled_prior.device)  # scatter, not bincount: no host sync
        total, count = all_reduce_sum(counts, counts.sum().view(1))
        self._ema(self.labeled_prior, total, count, 1)

    @torch.no_grad()
    def forward(self, probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Update p̂ with the teacher's ``probs``, then return p̃ = softmax(log p − λ log p̂)
        (DebiasPL) or softmax(log p + λ (log π − log p̂)) (distribution alignment)."""
        self.update(probs, valid)
        adjustment = -self.prior.clamp_min(PRIOR_FLOOR).log()
        if self.target == "labeled":
            adjustment = adjustment + self.labeled_prior.clamp_min(PRIOR_FLOOR).log()
        adjustment = self.strength * adjustment.to(probs.dtype)
        return (probs.clamp_min(1e-12).log() + adjustment.view(1, -1, 1, 1)).softmax(1)
