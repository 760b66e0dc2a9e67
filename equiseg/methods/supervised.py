"""Supervised-only baseline: the labeled images and nothing else."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..config import MethodConfig
from .base import Method, StepOutput, register_method
from .components.losses import supervised_loss


class SupervisedConfig(MethodConfig):
    name: Literal["supervised"] = "supervised"
    aux_weight: float = Field(0.4, ge=0)
    """Weight of the auxiliary head's loss when the model has one (0.4 as in PSPNet/AEL)."""


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
