"""The EMA teacher of Mean Teacher [Tarvainen & Valpola 2017], used by every teacher-student method,
and the pseudo-labels it gives (AEL §3.2: teacher on the weakly augmented unlabeled view)."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import torch
from torch import nn

from ..base import unwrap

BufferMode = Literal["teacher", "copy", "ema"]
BatchNormMode = Literal["train", "eval"]


class EMATeacher(nn.Module):
    """A frozen copy of the student whose parameters follow an exponential moving average.

    Args:
        student: the student (DDP-wrapped or bare); the teacher starts as a deep copy of it.
        momentum: the EMA momentum ``m`` (decay once the warm-up is over).
        buffers: what happens to buffers (BatchNorm running statistics):
            ``teacher`` leaves them to the teacher's own train-mode forwards (the official AEL code),
            ``copy`` copies the student's after every update,
            ``ema`` averages floating-point buffers like the parameters (integer buffers are copied).
        bn_mode: mode of the teacher's forwards for pseudo-labelling: ``train`` (batch statistics
            and active dropout, as the official AEL code) or ``eval`` (running statistics).
    """

    def __init__(self, student: nn.Module, momentum: float, buffers: BufferMode = "teacher",
                 bn_mode: BatchNormMode = "train"):
        super().__init__()
        if buffers == "teacher" and bn_mode == "eval":
            raise ValueError("an eval-mode teacher never updates its own BatchNorm statistics: "
                             "use buffers 'copy' or 'ema' with teacher_bn 'eval'")
        self.model = copy.deepcopy(unwrap(student))
        self.model.requires_grad_(False)
        self.momentum = momentum
        self.buffers_mode = buffers
        self.bn_mode = bn_mode

    @staticmethod
    def decay(iteration: int, momentum: float) -> float:
        """``min(1 - 1/(t+1), m)``: the official warm-up, so the teacher tracks the student closely
        at first (t = 0 copies it) and averages over ~1/(1-m) steps later."""
        return min(1.0 - 1.0 / (iteration + 1), momentum)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """One EMA step after optimizer step ``iteration`` (0-based): θ_t ← d θ_t + (1 - d) θ_s."""
        d = self.decay(iteration, self.momentum)
        student = unwrap(student)
        teacher_params, student_params = list(self.model.parameters()), list(student.parameters())
        if len(teacher_params) != len(student_params):
            raise RuntimeError("teacher and student no longer have the same parameters")
        for t, s in zip(teacher_params, student_params):
            t.lerp_(s.detach(), 1.0 - d)
        if self.buffers_mode == "teacher":
            return
        for t, s in zip(self.model.buffers(), student.buffers()):
            if self.buffers_mode == "ema" and t.is_floating_point():
                t.lerp_(s, 1.0 - d)
            else:
                t.copy_(s)

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Become the student: parameters and buffers (BatchNorm statistics) alike."""
        self.model.load_state_dict(unwrap(student).state_dict())

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor,
                      autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                      ) -> torch.Tensor:
        """Softmax of the teacher's main head, (B, C, H, W) float32."""
        self.model.train(self.bn_mode == "train")
        with autocast():
            logits = self.model(images)["out"]
        return logits.float().softmax(dim=1)


@dataclass
class PseudoLabels:
    """Teacher predictions on (B) images, each (B,H,W) but ``probs`` (B,C,H,W).

    ``prediction``: argmax (``ignore_index`` on crop padding); ``label``: the pseudo-label ŷ, the
    prediction also set to ``ignore_index`` below the confidence threshold; ``confidence``: max
    probability; ``valid``: False on crop padding.
    """

    probs: torch.Tensor
    confidence: torch.Tensor
    prediction: torch.Tensor
    label: torch.Tensor
    valid: torch.Tensor

    def split(self, sizes: list[int]) -> list["PseudoLabels"]:
        fields = (self.probs, self.confidence, self.prediction, self.label, self.valid)
        return [PseudoLabels(*part) for part in zip(*(t.split(sizes) for t in fields))]


def make_pseudo_labels(probs: torch.Tensor, valid: torch.Tensor, threshold: Union[float, torch.Tensor],
                       ignore_index: int, top: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> PseudoLabels:
    """ŷ = argmax p, confidence = max p; pixels below ``threshold`` (a number, or a (C,) tensor of
    per-class thresholds indexed by the predicted class) or outside ``valid`` (crop padding) are set
    to ``ignore_index``. ``top``: ``probs.max(dim=1)`` when the caller has computed it already."""
    confidence, prediction = probs.max(dim=1) if top is None else top
    valid = valid.bool()
    if torch.is_tensor(threshold):
        threshold = threshold.to(probs.device, probs.dtype)[prediction]
    prediction = prediction.masked_fill(~valid, ignore_index)
    thresholded = torch.is_tensor(threshold) or threshold > 0
    label = prediction.masked_fill(confidence < threshold, ignore_index) if thresholded else prediction
    return PseudoLabels(probs=probs, confidence=confidence, prediction=prediction, label=label, valid=valid)
