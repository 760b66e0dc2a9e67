"""CutMix-Seg [French et al., BMVC 2020] as AEL's basic framework (AEL §3.2).

A student and an EMA teacher. The teacher pseudo-labels the weakly augmented unlabeled images
(random resize + flip); the strong augmentation is CutMix among the unlabeled images of the batch,
applied consistently to images, pseudo-labels and confidences. The student learns from the labeled
images with their ground truth (Eq. 1) and from the mixed images with the mixed pseudo-labels
(Eq. 2); L = L_s + α L_u (Eq. 3). An optional confidence threshold drops uncertain pixels.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

from .base import StepOutput, register_method
from .components import PseudoLabelConfig, TeacherStudentMethod, masked_mean, weighted_mean


class CutMixConfig(PseudoLabelConfig):
    name: Literal["cutmix"] = "cutmix"


@register_method
class CutMix(TeacherStudentMethod):
    config_class = CutMixConfig

    def student_view(self, unlabeled: dict) -> torch.Tensor:
        """The unlabeled images the student's CutMix is made of: the weak view the teacher labels."""
        return unlabeled["image"]

    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        cfg, ignore = self.cfg, self.ctx.ignore_index
        self.observe_labeled(labeled)
        if self.in_warmup(iteration):
            return self.supervised_step(labeled)[0]
        x_l, y_l = labeled["image"], labeled["label"]

        # Ŷ: teacher pseudo-labels on the weakly augmented unlabeled images.
        with self.ctx.section("teacher"):
            y_hat = self.pseudo_labels(unlabeled["image"], unlabeled["valid"], cfg.confidence_threshold)
        # Strong augmentation: CutMix among the unlabeled images (Eq. 8, random I_1 and I_2).
        with self.ctx.section("extras"):
            mixed, boxes = self.cutmix_among_batch(self.unlabeled_sample(self.student_view(unlabeled), y_hat))
        with self.ctx.section("student"):
            out_l, out_u = self.student_forward(x_l, mixed["image"])

        loss_s = self.labeled_loss(out_l, y_l)                                  # Eq. 1
        pseudo_labeled = mixed["label"] != ignore
        denominator = self.unsupervised_denominator(mixed)
        loss_u = weighted_mean(self.unlabeled_pixel_loss(out_u["out"], mixed), pseudo_labeled,
                               denominator)                                     # Eq. 2
        loss = loss_s + cfg.alpha * loss_u                                      # Eq. 3
        logs = {"loss_sup": loss_s.detach(), "loss_unsup": loss_u.detach(),
                "pl_conf": masked_mean(mixed["confidence"], mixed["valid"]),
                "pl_ratio": masked_mean(pseudo_labeled.float(), mixed["valid"]),
                "mix_ratio": boxes.float().mean()}
        return StepOutput(loss=loss, logs=logs,
                          pseudo_targets=self.pseudo_targets(mixed, pseudo_labeled * cfg.alpha, denominator))
