"""Online class-balanced pseudo-label thresholds: the per-class top-α rule of CBST [Zou et al.,
ECCV 2018] and DST-CBC (Feng et al., 2020, Eq. 6), over a running window of the teacher's
predictions instead of a pass over the whole unlabeled set.

A single confidence bar τ (FixMatch's 0.95) keeps the pixels of the classes the teacher is sure
of and none of a rare class it predicts with 0.6: the student then only ever learns "not that
class" on those pixels (docs/semisup_cpu.md: Bicyclist's pseudo-label recall stays 0 on CamVid).
Ranking each predicted class on its own keeps the most confident fraction α of every class:

    t_c = the confidence above which a fraction α of the recent pixels predicted as c lie
    τ_c = min(τ, t_c)      ('lower': a rare class's bar drops, a frequent one keeps τ), or
    τ_c = t_c              ('replace': CBST / DST-CBC's rule, frequent classes' bars rise too)

Each class's confidences are kept as a histogram (``BINS`` bins over [0, 1]), an EMA over the
batches in which the class is predicted, so a rare class keeps its history between appearances.
Histograms are sums, so processes simply all-reduce them; nothing syncs with the host.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from ...parallel import all_reduce_sum

BINS = 1000


class RunningClassThresholds(nn.Module):
    """t_c from an EMA of per-class confidence histograms (a buffer, so it is checkpointed).
    ``fraction``: α, the share of each class's predicted pixels that may pass (an α of 1 passes all);
    ``momentum``: of each class's histogram EMA, counted in batches where the class is predicted;
    ``only_lower``: τ_c = min(τ, t_c), else t_c."""

    def __init__(self, num_classes: int, fraction: float, momentum: float, only_lower: bool = True):
        super().__init__()
        self.fraction, self.momentum, self.only_lower = fraction, momentum, only_lower
        self.register_buffer("histogram", torch.zeros(num_classes, BINS))

    @torch.no_grad()
    def update(self, confidence: torch.Tensor, prediction: torch.Tensor, valid: torch.Tensor) -> None:
        """Add one batch's valid pixels (confidence and predicted class, (B, H, W)) of all processes."""
        num_classes = self.histogram.shape[0]
        flat = prediction.long() * BINS + (confidence.float() * BINS).long().clamp_(0, BINS - 1)
        batch = torch.zeros(num_classes * BINS, device=confidence.device)
        # Padding counts with weight 0 (no boolean indexing, which would sync with the host on a GPU).
        batch.scatter_add_(0, flat.view(-1), valid.reshape(-1).to(batch.dtype))
        (batch,) = all_reduce_sum(batch.view(num_classes, BINS))
        seen = batch.sum(1, keepdim=True) > 0
        first = self.histogram.sum(1, keepdim=True) == 0
        updated = torch.where(first, batch, self.momentum * self.histogram + (1 - self.momentum) * batch)
        self.histogram.copy_(torch.where(seen, updated, self.histogram))

    def thresholds(self, tau: Union[float, torch.Tensor]) -> torch.Tensor:
        """τ_c = min(τ, t_c) (or t_c), t_c the lower edge of the bin where the top α of class c's
        mass is reached; τ for a class never predicted so far. ``tau``: a number or a (C,) tensor."""
        mass_at_or_above = self.histogram.flip(1).cumsum(1).flip(1)   # [c, b]: mass in bins ≥ b
        total = mass_at_or_above[:, :1]
        # The highest bin b whose mass at or above reaches α of the total (at least bin 0).
        reaches = mass_at_or_above >= self.fraction * total - 1e-6 * total
        top_bin = (reaches.sum(1) - 1).clamp_min(0)
        t = top_bin.float() / BINS
        tau = torch.as_tensor(tau, dtype=t.dtype, device=t.device).expand_as(t)
        return torch.where(total[:, 0] > 0, torch.minimum(tau, t) if self.only_lower else t, tau)

    @torch.no_grad()
    def forward(self, confidence: torch.Tensor, prediction: torch.Tensor, valid: torch.Tensor,
                tau: Union[float, torch.Tensor]) -> torch.Tensor:
        """Update with the teacher's max probability and argmax (B, H, W), then return the (C,) τ_c."""
        self.update(confidence, prediction, valid)
        return self.thresholds(tau)
