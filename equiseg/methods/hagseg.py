"""HagSeg / iMAS: hardness-adaptive guidance [Zhao et al., ICLR'23 submission = CVPR'23 "iMAS"].

A student and an EMA teacher (Eq. 2, momentum 0.996). Each iteration, for every unlabeled image:

1. the teacher and the student (no gradient, BatchNorm in eval mode) predict its weak view; the
   teacher's thresholded argmax is the pseudo-label (τ = 0.95 VOC, 0.7 Cityscapes);
2. its hardness γ_i = 1 - ½[ρ^t wIoU(z^t, z^s) + ρ^s wIoU(z^s, z^t)] (Eq. 5-7), easiness e_i = 1 - γ_i;
3. intensity branch: two ops of the 12-op pool (data pipeline, ``image_strong``) interpolated with
   the weak view, x_I = e·x_strong + (1 - e)·x_weak: hard images are perturbed less (Eq. 8);
4. CutMix branch: with probability 1 - γ̄ (the batch's mean easiness), the weak views are CutMix-ed
   in hard-easy pairs, pseudo-labels and confidences with them (Eq. 9);
5. L_u (Eq. 10): each branch's per-image mean CE over the H×W pixels (pixels below τ count as 0),
   weighted by the detached easiness e_i, averaged over images; the branches averaged.
   L = L_x + λ_u L_u (Eq. 1), λ_u = 3.

Where the paper contradicts the authors' code and their own corrections, the code is followed
(docs/hagseg.md): Eq. 8 puts e (not γ) on the strong image; CutMix fires with probability 1 - γ̄
(not γ̄); Algorithm 1 line 7 is wrong twice (weight γ_i, student targets on the CutMix branch) and
Eq. 10 is right. Each hardness-adaptive part has a switch (the rows of Table 4).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from ..data.intensity import IntensityAugment
from .base import MethodContext, PseudoTargets, StepOutput, register_method, unwrap
from .components import (LogitAdjustedConfig, TeacherStudentMethod, make_pseudo_labels, masked_mean,
                         mixing_partners, paste, weighted_mean)
from .components.adaptive_mixing import (CUTMIX_SIDE_RANGE, bernoulli, hard_easy_partners, intensity_mix,
                                         side_fraction_boxes)
from .components.hardness import EmptyReference, class_mask, instance_hardness
from .components.mixing import select
from .components.teacher import BatchNormMode, BufferMode

VOC_THRESHOLD = 0.95
"""τ on VOC (§3.2, Fig. 2b); Cityscapes uses 0.7."""
UNSUPERVISED_WEIGHT = 3.0
"""λ_u (§3.2: "we set λ_u = 3 for all runs")."""
EMA_MOMENTUM = 0.996
"""α of Eq. 2."""
STANDARD_CUTMIX_PROB = 0.5
"""Trigger probability of standard (not hardness-adaptive) CutMix (authors' ``use_cutmix_trigger_prob``)."""


class HagSegConfig(LogitAdjustedConfig):
    name: Literal["hagseg"] = "hagseg"
    alpha: float = Field(UNSUPERVISED_WEIGHT, ge=0)
    """λ_u of Eq. 1: L = L_x + λ_u L_u (§3.2: 3)."""
    ema_momentum: float = Field(EMA_MOMENTUM, ge=0, lt=1)
    """α of Eq. 2 (0.996); decay min(1 - 1/(t+1), α) as the authors' code after its first epoch."""
    ema_buffers: BufferMode = "ema"
    """The authors' code averages the BatchNorm buffers like the parameters."""
    teacher_bn: BatchNormMode = "eval"
    """The teacher predicts in eval mode (running statistics), as in the authors' code."""
    student_forward: Literal["separate", "joint"] = "joint"
    """One student forward over all images (the authors' code)."""

    confidence_threshold: float = Field(VOC_THRESHOLD, ge=0, le=1)
    """τ: the pseudo-label threshold of Eq. 10 and the high-confidence threshold of ρ (Eq. 5-6)."""

    # -- Table 4's switches
    hardness_loss: bool = True
    """Eq. 10: weight each image's unsupervised loss by its easiness 1 - γ_i; False: weight 1 (Eq. 4)."""
    intensity_branch: bool = True
    """The intensity-augmented branch A_s^I (two ops of the Table 5 pool on the weak crop)."""
    hardness_intensity: bool = True
    """Eq. 8: x_I = e·x_strong + (1 - e)·x_weak; False: x_I = x_strong."""
    cutmix_branch: bool = True
    """The CutMix branch A_s^C (CutMix among the weak views of the batch)."""
    hardness_cutmix: bool = True
    """Eq. 9: fire with probability 1 - γ̄ and pair hard with easy images; False: fire with
    ``cutmix_prob`` and pair at random."""
    cutmix_prob: float = Field(STANDARD_CUTMIX_PROB, ge=0, le=1)
    """Trigger probability of standard CutMix (``hardness_cutmix: false`` only)."""
    cutmix_side_range: tuple[float, float] = CUTMIX_SIDE_RANGE
    """Box side as a fraction of the crop side, drawn once per batch (authors' code: 0.1-0.9)."""

    # -- hardness evaluation (Eq. 5-7)
    background_classes: list[str] = Field(default_factory=list)
    """Class names given no weight in wIoU (per dataset, by name; the authors ignore class 0:
    VOC 'background', and on Cityscapes 'road')."""
    empty_reference: EmptyReference = "hard"
    """A reference map with no weighted class: wIoU 0 ('hard', the authors' code) or weighted over
    every class ('all_classes'); see equiseg.methods.components.hardness."""
    count_padding: bool = True
    """Crop padding counts in ρ, in the wIoU maps and in the H×W of Eq. 10's normaliser (the paper
    and the authors' code); False restricts all three to valid pixels. Padding never gets a
    pseudo-label either way."""

    # -- other behaviours of the authors' code
    weak_view_bn: bool = True
    """The weak view joins the student's joint forward without a loss, for BatchNorm batch
    statistics only (the authors' code); needs ``student_forward: joint``."""
    teacher_copy_iterations: int = Field(0, ge=0)
    """The teacher copies the student (EMA decay 0) for this many iterations: the authors' code does
    so for the whole first epoch (set it to |D_u| / B_u)."""

    @model_validator(mode="after")
    def _check(self) -> "HagSegConfig":
        low, high = self.cutmix_side_range
        if not 0 < low <= high <= 1:
            raise ValueError(f"cutmix_side_range must satisfy 0 < min <= max <= 1, got {self.cutmix_side_range}")
        if self.weak_view_bn and self.student_forward != "joint":
            raise ValueError("weak_view_bn only affects a joint student forward: set student_forward 'joint' "
                             "or weak_view_bn false")
        return self


@register_method
class HagSeg(TeacherStudentMethod):
    config_class = HagSegConfig
    # The unlabeled samples' ``image_strong``: HagSeg's 12-op intensity pool applied to the weak
    # crop (same geometry), made in the data pipeline (see equiseg.data.intensity).
    strong_view = IntensityAugment()

    def __init__(self, cfg: HagSegConfig, student: nn.Module, ctx: MethodContext):
        super().__init__(cfg, student, ctx)
        excluded = class_mask(cfg.background_classes, ctx.class_names, "background_classes") \
            if cfg.background_classes else torch.zeros(ctx.num_classes, dtype=torch.bool)
        self.weighted_classes = ~excluded

    @torch.no_grad()
    def student_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """p^s (Eq. 5): the student's softmax with BatchNorm in eval mode, no gradient."""
        student = unwrap(self.student)
        was_training = student.training
        student.eval()
        try:
            with self.ctx.autocast():
                logits = student(images)["out"]
        finally:
            student.train(was_training)
        return logits.float().softmax(dim=1)

    def cutmix_probability(self, easiness: torch.Tensor) -> float:
        """Eq. 9's trigger: the batch's mean easiness 1 - γ̄ (the authors' code; the paper's "γ̄" is
        inconsistent with its own "uniform draw higher than γ̄"), or ``cutmix_prob`` for standard CutMix."""
        return float(easiness.mean()) if self.cfg.hardness_cutmix else self.cfg.cutmix_prob

    def unlabeled_loss(self, logits: torch.Tensor, target: dict,
                       image_weight: torch.Tensor) -> tuple[torch.Tensor, PseudoTargets]:
        """One branch of Eq. 10: (1/B) Σ_i w_i (1/HW) Σ_j 𝟙(max p^t ≥ τ) H(p̂_i(j), p^t_i(j))."""
        pseudo_labeled = target["label"] != self.ctx.ignore_index
        weight = pseudo_labeled * image_weight.view(-1, 1, 1)
        # H(p̂, p^t); with unlabeled_logit_adjustment, on offset logits (q̂ then counts each branch's pixels)
        ce = self.unlabeled_pixel_loss(logits, target, weight)
        denominator = torch.ones_like(target["valid"]) if self.cfg.count_padding else target["valid"]
        return weighted_mean(ce, weight, denominator=denominator), self.pseudo_targets(target, weight, denominator)

    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        cfg = self.cfg
        self.observe_labeled(labeled)
        if self.in_warmup(iteration):
            return self.supervised_step(labeled)[0]
        x_l, y_l = labeled["image"], labeled["label"]
        u_w, valid = unlabeled["image"], unlabeled["valid"]
        batch, height, width = valid.shape

        # Eq. 5-6: teacher and student predictions on the weak view; ŷ = the teacher's pseudo-labels.
        with self.ctx.section("teacher"):
            p_t = self.teacher.probabilities(u_w, self.ctx.autocast)
            p_s = self.student_probabilities(u_w)
            y_hat = make_pseudo_labels(p_t, valid, cfg.confidence_threshold, self.ctx.ignore_index)
        # Eq. 7: hardness γ_i and easiness e_i = 1 - γ_i, one per image.
        with self.ctx.section("extras"):
            h = instance_hardness(p_t, p_s, cfg.confidence_threshold, self.weighted_classes,
                                  mask=None if cfg.count_padding else valid, empty_reference=cfg.empty_reference)
            gamma, e = h.hardness, h.easiness
            weak = self.unlabeled_sample(u_w, y_hat)
            branches: dict[str, dict] = {}
            logs: dict[str, torch.Tensor | float] = {}
            if cfg.intensity_branch:
                # Eq. 8 (corrected): A_s^I(u) = e·u_strong + (1 - e)·u_weak, with the weak view's ŷ.
                u_s = unlabeled["image_strong"]
                u_I = intensity_mix(u_s, u_w, e) if cfg.hardness_intensity else u_s
                branches["intensity"] = {**weak, "image": u_I}
            if cfg.cutmix_branch:
                # Eq. 9: triggered with probability 1 - γ̄ (the mean easiness), hard-easy pairs.
                trigger = self.cutmix_probability(e)
                fired = bernoulli(trigger, self.generator)
                logs.update(cutmix_trigger=trigger, cutmix_fired=float(fired))
                if fired:
                    partners = (hard_easy_partners(e) if cfg.hardness_cutmix
                                else mixing_partners(batch, self.generator))
                    boxes = side_fraction_boxes(batch, height, width, self.generator, cfg.cutmix_side_range,
                                                device=valid.device)
                    # A_s^C(u_m) = M_m ⊙ u_n + (1 - M_m) ⊙ u_m, and ŷ, confidences, padding alike.
                    branches["cutmix"] = paste(boxes, weak, select(weak, partners))
                    logs["mix_ratio"] = boxes.float().mean()
            if not branches:
                # No strong branch this step: the student learns the weak view itself.
                branches["weak"] = weak

        with self.ctx.section("student"):
            bn_only = cfg.weak_view_bn and "weak" not in branches
            inputs = [x_l] + ([u_w] if bn_only else []) + [b["image"] for b in branches.values()]
            outputs = self.student_forward(*inputs)
        out_l, out_u = outputs[0], outputs[-len(branches):]

        # Eq. 10: per-image losses weighted by the detached easiness, branches averaged; Eq. 1.
        image_weight = e.detach() if cfg.hardness_loss else torch.ones_like(e)
        branch_results = {name: self.unlabeled_loss(out["out"], target, image_weight)
                          for (name, target), out in zip(branches.items(), out_u)}
        branch_losses = {name: loss for name, (loss, _) in branch_results.items()}
        loss_u = torch.stack(list(branch_losses.values())).mean()
        loss_x = self.labeled_loss(out_l, y_l)                      # Eq. 3
        loss = loss_x + cfg.alpha * loss_u                                    # Eq. 1

        confident = y_hat.label != self.ctx.ignore_index
        logs.update({"loss_sup": loss_x.detach(), "loss_unsup": loss_u.detach(),
                     **{f"loss_{name}": value.detach() for name, value in branch_losses.items()},
                     "hardness_mean": gamma.mean(), "hardness_std": gamma.std(correction=0),
                     "rho_teacher": h.ratio_teacher.mean(), "rho_student": h.ratio_student.mean(),
                     "wiou_teacher": h.wiou_teacher.mean(), "wiou_student": h.wiou_student.mean(),
                     "pl_conf": masked_mean(y_hat.confidence, valid),
                     "pl_ratio": masked_mean(confident.float(), valid)})
        targets = PseudoTargets.concat([t for _, t in branch_results.values()],
                                       [cfg.alpha / len(branch_results)] * len(branch_results))
        return StepOutput(loss=loss, logs=logs, pseudo_targets=targets)

    def ema_step(self, iteration: int):
        # The authors' teacher is the student (decay 0) for the first epoch; EMATeacher's decay at
        # step 0 is 0, so those iterations update as step 0. Then decay min(1 - 1/(t+1), α).
        step = super().ema_step(iteration)
        return None if step is None else (0 if step < self.cfg.teacher_copy_iterations else step)
