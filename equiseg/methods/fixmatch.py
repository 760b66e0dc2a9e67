"""FixMatch [Sohn et al., NeurIPS 2020] for segmentation (as in UniMatch's FixMatch baseline).

The teacher pseudo-labels the weak view of each unlabeled image; pixels below the confidence
threshold τ (0.95) get no pseudo-label. The student sees the strong view (the batch's
``image_strong``: colour jitter, grayscale, blur) further CutMix-ed among the unlabeled images,
pseudo-labels mixed the same way. As FixMatch's L_u = 1/|Ω| Σ 𝟙(max p ≥ τ) ℓ_ce, the loss is
normalised by every valid pixel, so dropped pixels lower it. L = L_s + α L_u.

The teacher is the EMA teacher of the other methods; ``ema_momentum: 0`` makes it the current
student, i.e. the original FixMatch's self-labelling.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import StepOutput, register_method
from .components import LossDenominator, PseudoLabelConfig, TeacherStudentMethod, masked_mean, weighted_mean

FIXMATCH_THRESHOLD = 0.95


class FixMatchConfig(PseudoLabelConfig):
    name: Literal["fixmatch"] = "fixmatch"
    confidence_threshold: float = Field(FIXMATCH_THRESHOLD, ge=0, le=1)
    """τ: pixels whose weak-view confidence is below it are left out of L_u."""
    loss_denominator: LossDenominator = "valid"
    """FixMatch's 1/|Ω|: every valid pixel counts in L_u's denominator."""


@register_method
class FixMatch(TeacherStudentMethod):
    config_class = FixMatchConfig
    strong_view = True

    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        cfg, ignore = self.cfg, self.ctx.ignore_index
        self.observe_labeled(labeled)
        if self.in_warmup(iteration):
            return self.supervised_step(labeled)[0]
        x_l, y_l = labeled["image"], labeled["label"]

        # Pseudo-labels from the weak view, kept where confidence ≥ τ.
        with self.ctx.section("teacher"):
            y_hat = self.pseudo_labels(unlabeled["image"], unlabeled["valid"], cfg.confidence_threshold)
        # Strong view: photometric augmentation (from the data pipeline) + CutMix.
        with self.ctx.section("extras"):
            mixed, boxes = self.cutmix_among_batch(self.unlabeled_sample(unlabeled["image_strong"], y_hat))
        with self.ctx.section("student"):
            out_l, out_s = self.student_forward(x_l, mixed["image"])

        loss_s = self.labeled_loss(out_l, y_l)
        confident = mixed["label"] != ignore
        ce = self.unlabeled_pixel_loss(out_s["out"], mixed)
        denominator = self.unsupervised_denominator(mixed)
        loss_u = weighted_mean(ce, confident, denominator)
        loss = loss_s + cfg.alpha * loss_u
        logs = {"loss_sup": loss_s.detach(), "loss_unsup": loss_u.detach(),
                "pl_conf": masked_mean(mixed["confidence"], mixed["valid"]),
                "pl_ratio": masked_mean(confident.float(), mixed["valid"]),
                "mix_ratio": boxes.float().mean()}
        return StepOutput(loss=loss, logs=logs,
                          pseudo_targets=self.pseudo_targets(mixed, confident * cfg.alpha, denominator))
