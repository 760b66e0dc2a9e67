"""Losses shared by the semi-supervised methods.

AEL's unsupervised losses are all one weighted mean of per-pixel cross-entropy (AEL §3.2-3.3):
Eq. 2 (weights 1 on pseudo-labeled pixels), Eq. 11 (weights 𝟙_ij from adaptive equalization
sampling), Eq. 12-13 (weights w_ij = max_c(p_ij^c)^γ 𝟙_ij, dynamic re-weighting). Each image is
normalised by the sum of its own weights and the images are averaged (the 1/N_u Σ_i of Eq. 12),
so pixels without a pseudo-label (weight 0) never enter a denominator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

Normalization = Literal["image", "batch"]


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """ℓ_ce per pixel, (B, H, W); 0 where ``target`` is ``ignore_index``."""
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")


def partial_label_cross_entropy(logits: torch.Tensor, target: torch.Tensor, candidates: torch.Tensor,
                                ignore_index: int) -> torch.Tensor:
    """−log Σ_{c ∈ S_j} q_j^c per pixel, (B, H, W), S_j = ``candidates`` (B, C, H, W) bool plus
    ``target``'s class (partial-label learning [Cour, Sapp, Taskar, JMLR 2011]); 0 where
    ``target`` is ``ignore_index``. With S_j = {target} it is ℓ_ce."""
    logits = logits.float()
    known = target != ignore_index
    one_hot = F.one_hot(target.masked_fill(~known, 0), logits.shape[1]).permute(0, 3, 1, 2).bool()
    in_set = candidates.bool() | one_hot
    loss = logits.logsumexp(1) - logits.masked_fill(~in_set, float("-inf")).logsumexp(1)
    return loss * known


def weighted_mean(values: torch.Tensor, weight: torch.Tensor, denominator: Optional[torch.Tensor] = None,
                  normalization: Normalization = "image") -> torch.Tensor:
    """Σ_j w_ij v_ij / Σ_j d_ij with d = w unless given.

    ``image``: per image, then averaged over the N images (Eq. 2, 11, 12); an image whose
    denominator is 0 contributes 0. ``batch``: one ratio over all pixels of the batch (the
    official AEL code).
    """
    weight = weight.to(values.dtype)
    denominator = weight if denominator is None else denominator.to(values.dtype)
    numerator = (weight * values).flatten(1).sum(1)
    denominator = denominator.flatten(1).sum(1)
    if normalization == "batch":
        numerator, denominator = numerator.sum(), denominator.sum()
        return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), numerator * 0)
    per_image = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), numerator * 0)
    return per_image.mean()


def normalized_weights(weight: torch.Tensor, denominator: Optional[torch.Tensor] = None,
                       normalization: Normalization = "image") -> torch.Tensor:
    """The factor a_ij of each value in :func:`weighted_mean` (the loss is Σ_ij a_ij v_ij): what
    share of the loss a pixel carries, for the pseudo-label audit's per-class weight shares."""
    weight = weight.float()
    denominator = weight if denominator is None else denominator.float()
    if normalization == "batch":
        total = denominator.sum()
        return weight / total if total > 0 else weight * 0
    per_image = denominator.flatten(1).sum(1).view(-1, *([1] * (weight.dim() - 1)))
    return torch.where(per_image > 0, weight / per_image.clamp_min(1e-12), weight * 0) / weight.shape[0]


def reweighting_weights(confidence: torch.Tensor, gamma: float) -> torch.Tensor:
    """Dynamic re-weighting modulating factor max_c(p_ij^c)^γ (Eq. 13, before 𝟙_ij)."""
    return confidence.detach().float().pow(gamma)


def equalization_sampling_mask(classes: torch.Tensor, rates: torch.Tensor, uniform: torch.Tensor,
                               ignore_index: int) -> torch.Tensor:
    """𝟙_ij of Eq. 11: pixel j of image i is kept with probability s^{c_ij} (Eq. 10), where c_ij is
    the pixel's class; ``uniform`` is a U[0,1) field of the same shape. Ignored pixels are dropped."""
    known = classes != ignore_index
    rate = rates.to(classes.device)[classes.clamp(0, rates.numel() - 1)]
    return known & (uniform < rate)


@dataclass(frozen=True)
class Ohem:
    """Online hard example mining as the official AEL code / PSPNet-style ``CriterionOhem``: keep
    pixels whose ground-truth probability is ≤ max(``threshold``, the ``min_kept``-th lowest one)."""

    threshold: float = 0.7
    min_kept: int = 100_000
    min_kept_fraction: Optional[float] = None
    """When set, min_kept is this fraction of the batch's labeled pixels (replaces ``min_kept``)."""

    def kept_at_least(self, num_valid: int) -> int:
        if self.min_kept_fraction is not None:
            return max(1, int(self.min_kept_fraction * num_valid))
        return self.min_kept


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, ohem: Ohem) -> torch.Tensor:
    ce = pixel_cross_entropy(logits, target, ignore_index)
    valid = target != ignore_index
    num_valid = int(valid.sum())
    min_kept = ohem.kept_at_least(num_valid)
    if num_valid == 0 or min_kept >= num_valid:
        return weighted_mean(ce, valid, normalization="batch")
    with torch.no_grad():
        gt = target.masked_fill(~valid, 0).unsqueeze(1)
        gt_prob = logits.float().softmax(1).gather(1, gt).squeeze(1)[valid]
        kth = gt_prob.kthvalue(max(min_kept, 1)).values if min_kept > 0 else gt_prob.new_tensor(0.0)
        threshold = torch.maximum(kth, gt_prob.new_tensor(ohem.threshold))
        hard = torch.zeros_like(valid)
        hard[valid] = gt_prob <= threshold
    return weighted_mean(ce, hard, normalization="batch")


def supervised_loss(outputs: dict, label: torch.Tensor, ignore_index: int, aux_weight: float,
                    ohem: Optional[Ohem] = None) -> torch.Tensor:
    """L_s (Eq. 1): pixel-wise cross-entropy on the ground truth, averaged over the labeled pixels of
    the batch; + ``aux_weight`` x the same on the aux head when the model has one; OHEM optional."""

    def ce(logits: torch.Tensor) -> torch.Tensor:
        if ohem is not None:
            return ohem_cross_entropy(logits, label, ignore_index, ohem)
        return F.cross_entropy(logits.float(), label, ignore_index=ignore_index)

    loss = ce(outputs["out"])
    if "aux" in outputs and aux_weight > 0:
        loss = loss + aux_weight * ce(outputs["aux"])
    return loss


def softmax_mse(student_logits: torch.Tensor, teacher_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean-Teacher consistency for segmentation (French et al. 2020): the squared distance between
    student and teacher class probabilities, summed over classes and averaged over valid pixels
    (per image, then over images)."""
    squared = (student_logits.float().softmax(1) - teacher_probs.detach()).pow(2).sum(1)
    return weighted_mean(squared, valid)


def sigmoid_rampup(iteration: int, length: int) -> float:
    """exp(-5 (1 - t/T)^2) for t < T, else 1 [Laine & Aila 2017; Tarvainen & Valpola 2017]."""
    if length <= 0 or iteration >= length:
        return 1.0
    phase = 1.0 - max(iteration, 0) / length
    return math.exp(-5.0 * phase * phase)
