"""Mean Teacher [Tarvainen & Valpola, NeurIPS 2017] for segmentation, the "MT" baseline of AEL
Tables 1-2.

The student is trained on the labeled images and to agree with an EMA teacher on the unlabeled
ones. As in the segmentation re-implementations (French et al. BMVC 2020, TorchSemiSeg), the
consistency is the squared distance between the student's and the teacher's class probabilities
(summed over classes, averaged over valid pixels), without mixing; both see the same weakly
augmented image, so they differ by weights and dropout. ``consistency: ce`` uses cross-entropy to
the teacher's argmax instead. Its weight follows a sigmoid ramp-up over ``rampup_iterations``.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import StepOutput, register_method
from .components import (TeacherStudentConfig, TeacherStudentMethod, masked_mean, pixel_cross_entropy,
                         sigmoid_rampup, softmax_mse, weighted_mean)


class MeanTeacherConfig(TeacherStudentConfig):
    name: Literal["mean_teacher"] = "mean_teacher"
    consistency: Literal["mse", "ce"] = "mse"
    """'mse' on softmax probabilities (Mean Teacher / CutMix-Seg's MT) or 'ce' to the teacher's argmax."""
    rampup_iterations: int = Field(0, ge=0)
    """Length of the sigmoid ramp-up exp(-5(1 - t/T)^2) of α (0: no ramp-up)."""


@register_method
class MeanTeacher(TeacherStudentMethod):
    config_class = MeanTeacherConfig

    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        cfg, ignore = self.cfg, self.ctx.ignore_index
        if self.in_warmup(iteration):
            return self.supervised_step(labeled)[0]
        x_l, y_l = labeled["image"], labeled["label"]
        x_u, valid_u = unlabeled["image"], unlabeled["valid"]

        # Teacher targets on the unlabeled images.
        with self.ctx.section("teacher"):
            teacher = self.pseudo_labels(x_u, valid_u)
        with self.ctx.section("student"):
            out_l, out_u = self.student_forward(x_l, x_u)

        loss_s = self.labeled_loss(out_l, y_l)
        if cfg.consistency == "mse":
            loss_u = softmax_mse(out_u["out"], teacher.probs, teacher.valid)
        else:
            ce = pixel_cross_entropy(out_u["out"], teacher.label, ignore)
            loss_u = weighted_mean(ce, teacher.label != ignore)
        weight = cfg.alpha * sigmoid_rampup(iteration - cfg.supervised_warmup, cfg.rampup_iterations)
        loss = loss_s + weight * loss_u
        logs = {"loss_sup": loss_s.detach(), "loss_unsup": loss_u.detach(), "unsup_weight": weight,
                "teacher_conf": masked_mean(teacher.confidence, teacher.valid)}
        # For the audit, the MSE target counts as the teacher's argmax on every valid pixel.
        trained = teacher.valid if cfg.consistency == "mse" else teacher.label != ignore
        return StepOutput(loss=loss, logs=logs,
                          pseudo_targets=self.pseudo_targets(self.unlabeled_sample(x_u, teacher), trained * weight))
