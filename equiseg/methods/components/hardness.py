"""Instance hardness of unlabeled images from teacher-student disagreement (HagSeg §2.2, Eq. 5-7).

For each image i, with the teacher's and the student's softmax on its weak view:

- ρ_i = (1/HW) Σ_j 𝟙(max_c p_i(j) ≥ τ), the high-confidence ratio of each model (Eq. 5-6);
- wIoU(z_ref, z_other) = Σ_c w_c IoU_c, the class-weighted IoU of the two argmax maps, where
  IoU_c = |ref=c ∧ other=c| / |ref=c ∨ other=c| is symmetric and the weights w_c are the pixel
  fractions of class c in the *reference* map (the only asymmetry);
- easiness e_i = ½ [ρ_i^t wIoU(z^t, z^s) + ρ_i^s wIoU(z^s, z^t)] and hardness γ_i = 1 - e_i ∈ [0, 1]
  (Eq. 7).

Maps are plain argmax maps, without confidence threshold (the authors' code). All images of the
batch are evaluated at once on the predictions' device: one ``bincount`` builds the (B, C, C)
confusion matrices.

Background exclusion: classes in ``excluded`` get weight 0 and the others are renormalised (the
authors' ``flag_cal_iou_ignore_bg``, which zeroes class index 0: VOC's background, but Cityscapes'
road). **Degenerate reference**: when a reference map holds no weighted class (e.g. all
background with background excluded), its weights are 0/0. ``empty_reference='hard'`` gives that
direction wIoU = 0 (the authors' code: NaN weights, ``nansum`` = 0), so an all-background crop
counts as maximally hard for that direction; ``'all_classes'`` falls back to weighting every
class, so two maps that agree on "all background" count as agreeing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch

EmptyReference = Literal["hard", "all_classes"]


def class_mask(names: Sequence[str], class_names: Sequence[str], key: str = "classes") -> torch.Tensor:
    """(C,) bool, True for the classes named in ``names`` (by name, never by index)."""
    class_names = list(class_names)
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"method.{key}: {unknown} are not class names of this dataset ({class_names})")
    return torch.tensor([c in set(names) for c in class_names], dtype=torch.bool)


def confidence_ratio(confidence: torch.Tensor, threshold: float, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ρ_i (Eq. 5-6): share of the pixels whose max probability is ≥ τ, per image, (B,).
    ``mask`` (B,H,W) restricts the pixels counted (None: all H×W, as the paper and code)."""
    confident = (confidence >= threshold).float()
    if mask is None:
        return confident.flatten(1).mean(1)
    mask = mask.float()
    return (confident * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def confusion_matrices(reference: torch.Tensor, other: torch.Tensor, num_classes: int,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, C) per-image pixel counts, rows = ``reference`` class, columns = ``other`` class."""
    b, c = reference.shape[0], num_classes
    image = torch.arange(b, device=reference.device).view(b, 1)
    index = (image * c + reference.flatten(1)) * c + other.flatten(1)
    if mask is not None:
        index = index[mask.flatten(1).bool()]
    return torch.bincount(index.flatten(), minlength=b * c * c).view(b, c, c)


def class_weighted_iou(confusion: torch.Tensor, weighted: torch.Tensor,
                       empty_reference: EmptyReference = "hard") -> torch.Tensor:
    """wIoU(ref = rows, other = columns) per image, (B,), from (B, C, C) confusion matrices.

    ``weighted`` (C,) bool: the classes that carry weight (False = excluded background)."""
    confusion = confusion.double()
    intersection = confusion.diagonal(dim1=1, dim2=2)
    reference_count, other_count = confusion.sum(2), confusion.sum(1)
    union = reference_count + other_count - intersection
    # A class absent from both maps has no IoU; its weight is 0 anyway (absent from the reference).
    iou = torch.where(union > 0, intersection / union.clamp_min(1), torch.zeros_like(union))
    counts = reference_count * weighted.to(confusion.device, confusion.dtype)
    total = counts.sum(1, keepdim=True)
    weights = counts / total.clamp_min(1)
    if empty_reference == "all_classes":
        all_weights = reference_count / reference_count.sum(1, keepdim=True).clamp_min(1)
        weights = torch.where(total > 0, weights, all_weights)
    elif empty_reference != "hard":
        raise ValueError(f"empty_reference must be 'hard' or 'all_classes', got {empty_reference!r}")
    # 'hard': an empty reference has all-zero weights, hence wIoU = 0.
    return (weights * iou).sum(1).float()


@dataclass
class Hardness:
    """Per-image results of Eq. 5-7, each (B,), detached."""

    hardness: torch.Tensor
    """γ = 1 - e (Eq. 7): large for hard images."""
    easiness: torch.Tensor
    """e = 1 - γ: what the authors' code calls "hardness"."""
    ratio_teacher: torch.Tensor
    """ρ^t (Eq. 6)."""
    ratio_student: torch.Tensor
    """ρ^s (Eq. 5)."""
    wiou_teacher: torch.Tensor
    """wIoU(z^t, z^s): teacher map as reference."""
    wiou_student: torch.Tensor
    """wIoU(z^s, z^t): student map as reference."""


@torch.no_grad()
def instance_hardness(teacher_probs: torch.Tensor, student_probs: torch.Tensor, threshold: float,
                      weighted: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                      empty_reference: EmptyReference = "hard") -> Hardness:
    """γ_i = 1 - ½ [ρ_i^t wIoU(z^t, z^s) + ρ_i^s wIoU(z^s, z^t)] for each image (Eq. 5-7).

    Args:
        teacher_probs, student_probs: (B, C, H, W) class probabilities on the weak view.
        threshold: τ of Eq. 5-6.
        weighted: (C,) bool, classes that carry wIoU weight (default: all).
        mask: (B, H, W) bool, pixels that count in ρ and wIoU (default: all H×W, as the paper).
        empty_reference: what a reference map with no weighted class gives (module docstring).
    """
    num_classes = teacher_probs.shape[1]
    if weighted is None:
        weighted = torch.ones(num_classes, dtype=torch.bool)
    confidence_t, z_t = teacher_probs.max(1)
    confidence_s, z_s = student_probs.max(1)
    rho_t = confidence_ratio(confidence_t, threshold, mask)                       # Eq. 6
    rho_s = confidence_ratio(confidence_s, threshold, mask)                       # Eq. 5
    confusion = confusion_matrices(z_t, z_s, num_classes, mask)                   # rows: teacher
    wiou_t = class_weighted_iou(confusion, weighted, empty_reference)             # wIoU(z^t, z^s)
    wiou_s = class_weighted_iou(confusion.transpose(1, 2), weighted, empty_reference)  # wIoU(z^s, z^t)
    easiness = 0.5 * (rho_t * wiou_t + rho_s * wiou_s)                            # Eq. 7
    return Hardness(hardness=1.0 - easiness, easiness=easiness, ratio_teacher=rho_t, ratio_student=rho_s,
                    wiou_teacher=wiou_t, wiou_student=wiou_s)
