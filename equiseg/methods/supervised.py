"""Supervised-only baseline: the labeled images and nothing else."""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..config import MethodConfig
from .base import Method, StepOutput, register_method


class SupervisedConfig(MethodConfig):
    name: Literal["supervised"] = "supervised"
    aux_weight: float = Field(0.4, ge=0)
    """Weight of the auxiliary head's loss when the model has one (0.4 as in PSPNet/AEL)."""


def supervised_loss(outputs: dict, label: torch.Tensor, ignore_index: int, aux_weight: float) -> torch.Tensor:
    """Pixel-wise cross-entropy on the main head (+ ``aux_weight`` x the aux head's, if present)."""
    loss = F.cross_entropy(outputs["out"].float(), label, ignore_index=ignore_index)
    if "aux" in outputs and aux_weight > 0:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"].float(), label, ignore_index=ignore_index)
    return loss


@register_method
class Supervised(Method):
    config_class = SupervisedConfig
    uses_unlabeled = False

    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        x, y = labeled["image"], labeled["label"]
        with self.ctx.section("student"), self.ctx.autocast():
            outputs = self.student(x)
        loss = supervised_loss(outputs, y, self.ctx.ignore_index, self.cfg.aux_weight)
        return StepOutput(loss=loss, logs={"loss_sup": loss.detach()})
