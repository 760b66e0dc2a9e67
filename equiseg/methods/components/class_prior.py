"""Running class distributions of what a method trains on: π, the labeled batches' ground truth,
and q̂, the pseudo-labels L_u is given. Distribution alignment (debias.py) pulls the teacher
toward π; the logit-adjusted L_u (:class:`LogitAdjustment`) keeps L_u from teaching the student
q̂'s deviation from π.

Each is an EMA over batches (all-reduced across processes, no host sync), set by its first batch:
a uniform start would tilt the first steps toward the frequent classes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...parallel import all_reduce_sum

PRIOR_FLOOR = 1e-6
"""Smallest class frequency in a log: a class absent so far gets a large but finite log."""


def class_histogram(label: torch.Tensor, num_classes: int, ignore_index: int,
                    weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(C,) float pixel counts (or sums of ``weight``) of ``label`` without ``ignore_index``
    (scatter, not bincount: no host sync)."""
    index = label.masked_fill(label == ignore_index, num_classes).flatten().long()  # ignored: an extra bin
    values = (torch.ones_like(index, dtype=torch.float) if weight is None
              else weight.detach().float().flatten().to(label.device))
    return torch.zeros(num_classes + 1, device=label.device).scatter_add_(0, index, values)[:num_classes]


class RunningClassDistribution(nn.Module):
    """An EMA of a class distribution (buffers ``distribution`` and ``seen``, checkpointed)."""

    def __init__(self, num_classes: int, momentum: float, first_batch_sets: bool = True):
        super().__init__()
        self.momentum, self.first_batch_sets = momentum, first_batch_sets
        self.register_buffer("distribution", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("seen", torch.zeros(()))  # 0 until the first non-empty batch

    @torch.no_grad()
    def update(self, totals: torch.Tensor) -> None:
        """Add one batch of per-class totals (this process's; summed over processes here)."""
        totals, count = all_reduce_sum(totals.float().to(self.distribution.device), totals.sum().float().view(1))
        momentum = self.momentum * self.seen if self.first_batch_sets else self.momentum
        updated = momentum * self.distribution + (1 - momentum) * totals / count.clamp_min(1)
        self.distribution.copy_(torch.where(count > 0, updated, self.distribution))
        self.seen.copy_(torch.where(count.view(()) > 0, 1.0, self.seen))

    def update_labels(self, label: torch.Tensor, ignore_index: int, weight: Optional[torch.Tensor] = None) -> None:
        self.update(class_histogram(label, self.distribution.numel(), ignore_index, weight))

    def log(self) -> torch.Tensor:
        return self.distribution.clamp_min(PRIOR_FLOOR).log()


class LogitAdjustment(nn.Module):
    """Logit-adjusted L_u [Menon et al., "Long-tail learning via logit adjustment", ICLR 2021]:
    the student's logits in L_u are offset by δ = τ (log q̂ − log π) before the loss. A class the
    pseudo-labels hold less often than the labeled data (q̂ < π: a rare class the teacher never
    names) gets a negative offset, so L_u hardly pushes its logit down; a class they hold as
    often as the labeled data is untouched. The student's own logits thus learn the pseudo-labels'
    evidence without their class-prior shift, which would otherwise feed back through the teacher."""

    def __init__(self, num_classes: int, strength: float, momentum: float):
        super().__init__()
        self.strength = strength
        self.pseudo = RunningClassDistribution(num_classes, momentum)

    def offsets(self, pseudo_label: torch.Tensor, ignore_index: int, labeled_prior: RunningClassDistribution,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Update q̂ with this step's pseudo-labels (each pixel counted by its ``weight`` in L_u,
        e.g. AEL's equalization sampling and re-weighting); δ (C,) for the logits of L_u."""
        self.pseudo.update_labels(pseudo_label, ignore_index, weight)
        return self.strength * (self.pseudo.log() - labeled_prior.log())
