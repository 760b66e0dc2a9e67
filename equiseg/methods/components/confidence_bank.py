"""AEL's confidence bank (§3.3, Eq. 4-7, 9-10) and the per-image class-presence banks that let
adaptive CutMix / Copy-Paste find images holding a sampled class.

Every bank is a registered buffer, so it moves with ``.to(device)`` and is saved in checkpoints,
and every update is reduced over DDP ranks first, so all ranks hold the same bank.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
from torch import nn

from ...parallel import all_gather_rows, all_reduce_sum

Indicator = Literal["confidence", "margin", "entropy"]
Pooling = Literal["image", "pixel"]
AbsentClass = Literal["keep", "decay"]


def pixel_indicator(probs: torch.Tensor, label: torch.Tensor, indicator: Indicator) -> torch.Tensor:
    """Per-pixel performance of the ground-truth class, (B, H, W); higher is better.

    confidence (Eq. 4): p^c, the predicted probability of the ground-truth class c.
    margin (Eq. 5): p^c - max_2(p), the gap to the second largest probability.
    entropy (Eq. 6): the bank stores 1 - H(p)/log C, a linear map of the entropy onto [0, 1] with
        higher = better, so that Eq. 9-10 (written for Conf) apply unchanged; since the EMA (Eq. 7)
        is linear, this equals the paper's entropy bank mapped the same way.
    """
    if indicator == "entropy":
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        return 1.0 - entropy / math.log(probs.shape[1])
    gt = label.clamp(0, probs.shape[1] - 1).unsqueeze(1)
    p_gt = probs.gather(1, gt).squeeze(1)
    if indicator == "confidence":
        return p_gt
    if indicator == "margin":
        return p_gt - probs.topk(2, dim=1).values[:, 1]
    raise ValueError(f"unknown indicator '{indicator}'")


def class_sums(values: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int,
               pooling: Pooling) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class (sum, count) whose ratio is the class's batch value.

    ``image`` (Eq. 4 as written): the mean over each image's pixels of class c, summed over the
    images holding c, and the number of such images. ``pixel`` (official code): the sum over all
    pixels of class c in the batch and their number.
    """
    b = label.shape[0]
    known = label != ignore_index
    cls = label.clamp(0, num_classes - 1)
    slot = (torch.arange(b, device=label.device).view(b, 1, 1) * num_classes + cls)[known]
    vals = values[known].to(torch.float64)
    sums = torch.zeros(b * num_classes, dtype=torch.float64, device=label.device).index_add_(0, slot, vals)
    counts = torch.zeros_like(sums).index_add_(0, slot, torch.ones_like(vals))
    sums, counts = sums.view(b, num_classes), counts.view(b, num_classes)
    if pooling == "pixel":
        return sums.sum(0), counts.sum(0)
    present = counts > 0
    image_means = torch.where(present, sums / counts.clamp_min(1), torch.zeros_like(sums))
    return image_means.sum(0), present.sum(0).to(torch.float64)


class ConfidenceBank(nn.Module):
    """Category-wise performance ``Conf`` (C,), an EMA over training steps (Eq. 7).

    Args:
        num_classes: C.
        momentum: τ of Eq. 7 (0.999 in the paper).
        indicator: confidence / margin / entropy (Eq. 4-6, Table 6).
        pooling: ``image`` (Eq. 4) or ``pixel`` (official code), see :func:`class_sums`.
        absent: a class absent from the (all-ranks) batch ``keep``s its value, or (official code)
            ``decay``s toward 0 as if its batch value were 0.
        init: initial value of every class (a float in [0, 1]), or ``random`` for U[0, 1) per
            class (official code; needs ``generator``).
    """

    def __init__(self, num_classes: int, ignore_index: int, momentum: float = 0.999,
                 indicator: Indicator = "confidence", pooling: Pooling = "image", absent: AbsentClass = "keep",
                 init: Union[float, Literal["random"]] = 0.0, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.momentum, self.indicator, self.pooling, self.absent = momentum, indicator, pooling, absent
        if init == "random":
            initial = torch.rand(num_classes, generator=generator, device=generator.device if generator else None)
        else:
            initial = torch.full((num_classes,), float(init))
        self.register_buffer("conf", initial.float().cpu())

    @torch.no_grad()
    def update(self, probs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Eq. 4-7 from the student's softmax ``probs`` (B,C,H,W) on labeled images with ground
        truth ``label`` (B,H,W). Returns the batch values (NaN for absent classes)."""
        values = pixel_indicator(probs.detach().float(), label, self.indicator)
        sums, counts = class_sums(values, label, self.num_classes, self.ignore_index, self.pooling)
        sums, counts = all_reduce_sum(sums, counts)
        present = counts > 0
        batch_conf = torch.where(present, sums / counts.clamp_min(1), torch.zeros_like(sums)).to(self.conf)
        present = present.to(self.conf.device)
        updated = self.momentum * self.conf + (1.0 - self.momentum) * batch_conf  # Eq. 7
        self.conf.copy_(updated if self.absent == "decay" else torch.where(present, updated, self.conf))
        return torch.where(present, batch_conf, torch.full_like(batch_conf, float("nan")))

    def sampling_distribution(self, allowed: Optional[torch.Tensor] = None, sqrt: bool = False) -> torch.Tensor:
        """r = Softmax(1 - Conf) (Eq. 9) over the ``allowed`` classes (others get 0); ``sqrt``
        gives the official code's Softmax(sqrt(1 - Conf)) for Copy-Paste."""
        deficiency = (1.0 - self.conf).clamp_min(0)
        logits = deficiency.sqrt() if sqrt else deficiency
        if allowed is not None:
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        return logits.softmax(0)

    def sampling_rates(self, beta: float) -> torch.Tensor:
        """s^c = [(1 - Conf^c) / max_c(1 - Conf^c)]^β (Eq. 10); all 1 while no class is deficient."""
        deficiency = (1.0 - self.conf).clamp_min(0)
        top = deficiency.max()
        if top <= 0:
            return torch.ones_like(deficiency)
        return (deficiency / top).pow(beta)

    def class_thresholds(self, tau: float) -> torch.Tensor:
        """Class-adaptive pseudo-label thresholds τ_c = τ · M(Conf^c / max_k Conf^k), M(x) = x / (2 - x):
        FlexMatch's normalised learning effect and convex warping [Zhang et al., NeurIPS 2021, Eq. 6-7],
        with the bank's Conf^c as the learning effect. The best-learned class keeps τ; a class the
        student is unsure of gets a lower bar, so its pixels can enter L_u at all. All τ while the
        bank is empty."""
        top = self.conf.max()
        if top <= 0:
            return torch.full_like(self.conf, tau)
        x = (self.conf / top).clamp(0, 1)
        return tau * x / (2.0 - x)


class ClassPresenceBank(nn.Module):
    """Which classes each image of a dataset holds: ``present`` (num_images, C) uint8, 1 where the
    image's latest seen label map (ground truth or teacher prediction) has at least ``min_ratio``
    of its H x W pixels in the class. Rows are overwritten each time an image is seen."""

    def __init__(self, num_images: int, num_classes: int, ignore_index: int):
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.register_buffer("present", torch.zeros(num_images, num_classes, dtype=torch.uint8))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, label: torch.Tensor, min_ratio: float) -> None:
        """Record the classes of label maps (B,H,W) of images ``indices`` (B,), on every rank."""
        b, h, w = label.shape
        known = label != self.ignore_index
        slot = (torch.arange(b, device=label.device).view(b, 1, 1) * self.num_classes
                + label.clamp(0, self.num_classes - 1))[known]
        counts = torch.bincount(slot, minlength=b * self.num_classes).view(b, self.num_classes)
        rows = ((counts > 0) & (counts >= min_ratio * h * w)).to(torch.uint8)
        indices, rows = all_gather_rows(torch.as_tensor(indices, device=label.device).view(-1), rows)
        self.present[indices.to(self.present.device)] = rows.to(self.present.device)

    def images_with(self, classes: torch.Tensor) -> torch.Tensor:
        """Indices of the images holding any of ``classes``."""
        hits = self.present[:, classes.to(self.present.device)].bool().any(1)
        return hits.nonzero(as_tuple=True)[0]

    def __len__(self) -> int:
        return self.present.shape[0]

