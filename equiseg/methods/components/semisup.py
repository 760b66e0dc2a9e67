"""The teacher-student core shared by ``mean_teacher``, ``cutmix``, ``fixmatch`` and ``ael``.

A student trained by the engine, an EMA teacher (:class:`EMATeacher`) registered on the method
(so it is checkpointed), the teacher's pseudo-labels, one joint student forward over the labeled
and unlabeled images, and CutMix among the unlabeled images of a batch.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

import torch
from pydantic import Field, model_validator
from torch import nn

from ...config import MethodConfig
from ..base import Method, MethodContext, unwrap
from ..base import PseudoTargets, StepOutput
from .class_quantiles import RunningClassThresholds
from .class_prior import LogitAdjustment, RunningClassDistribution
from .debias import DebiasTarget, PseudoLabelDebias
from .losses import Ohem, normalized_weights, partial_label_cross_entropy, pixel_cross_entropy, supervised_loss
from .mixing import CUTMIX_AREA, mixing_partners, paste, random_boxes, select
from .teacher import BatchNormMode, BufferMode, EMATeacher, PseudoLabels, make_pseudo_labels


class TeacherStudentConfig(MethodConfig):
    """Options every teacher-student method has."""

    alpha: float = Field(1.0, ge=0)
    """Weight α of the unsupervised loss: L = L_s + α L_u (AEL Eq. 3, Table 9: 1.0)."""
    ema_momentum: float = Field(0.99, ge=0, lt=1)
    """EMA momentum m; the decay at optimizer step t is min(1 - 1/(t+1), m). 0.99 as the official
    AEL code (the paper gives no value). 0 makes the teacher the current student (self-training)."""
    ema_buffers: BufferMode = "teacher"
    """BatchNorm running statistics of the teacher: 'teacher' (its own train-mode forwards, official
    AEL), 'copy' (the student's) or 'ema' (averaged like the parameters)."""
    teacher_bn: BatchNormMode = "train"
    """Teacher mode when pseudo-labelling: 'train' (batch statistics and dropout, official AEL; U2PL
    issue #64 reports eval-mode BN worse) or 'eval'."""
    report_model: Literal["teacher", "student"] = "teacher"
    """The model the run reports (evaluated first, saved as the run's model); both are evaluated.
    The official AEL code selects and saves the teacher."""
    aux_weight: float = Field(0.4, ge=0)
    """Weight of the aux head's supervised loss when the model has one (official AEL: 0.4)."""
    student_forward: Literal["separate", "joint"] = "separate"
    """'separate': one student forward for the labeled and one for the unlabeled images, so each set
    has its own BatchNorm statistics (official AEL code; the paper is silent). 'joint': one forward
    over both (UniMatch style; one BatchNorm batch, cheaper)."""
    ohem: bool = False
    """OHEM cross-entropy for L_s, as the official AEL and iMAS Cityscapes code (not in the papers)."""
    ohem_threshold: float = Field(0.7, gt=0, le=1)
    ohem_min_kept: int = Field(100_000, ge=0)
    """OHEM keeps at least this many pixels (official AEL: 100,000 for 8 crops of 769² per GPU)."""
    ohem_min_kept_fraction: Optional[float] = Field(None, gt=0, le=1)
    """Instead of ``ohem_min_kept``: keep at least this fraction of the batch's labeled pixels, so
    OHEM means the same at any crop and batch size (the official 100,000 of 8 x 769² crops is 2.1 %
    of the pixels per GPU; on a 4 x 128 x 160 CPU batch 100,000 is more than every pixel)."""
    supervised_warmup: int = Field(0, ge=0)
    """Labeled-only iterations before the unlabeled loss starts (U2PL's ``sup_only_epoch``): the
    student learns from L_s alone, then the teacher becomes a copy of it (parameters and BatchNorm
    buffers) and its EMA restarts. 0: L_u from iteration 0, as in the papers. On short schedules a
    teacher that starts as an ImageNet backbone with a random head labels no rare class, and the
    student learns those wrong labels from the first step (docs/semisup_cpu.md)."""
    warmup_schedule: Literal["continue", "restart"] = "continue"
    """'continue': one learning-rate schedule over the whole run. 'restart': the warm-up is a whole
    supervised training (the poly schedule decays to 0 at the switch) and the schedule starts over
    for the semi-supervised phase, so the first teacher is a converged supervised model (the
    starting point of ST++ and of DST-CBC's rounds, online here): a rare class that supervised
    training learns only late in its schedule is known to the teacher when L_u starts."""

    def check_against(self, cfg) -> None:
        if self.supervised_warmup >= cfg.optim.iterations:
            raise ValueError(f"method.supervised_warmup ({self.supervised_warmup}) must be below optim.iterations "
                             f"({cfg.optim.iterations}): the run would end before the unlabeled loss starts")

    @model_validator(mode="after")
    def _teacher_consistent(self):
        if self.warmup_schedule == "restart" and not self.supervised_warmup:
            raise ValueError("warmup_schedule 'restart' needs a supervised_warmup > 0")
        if self.ohem_min_kept_fraction is not None and not self.ohem:
            raise ValueError("ohem_min_kept_fraction is set but ohem is false")
        if self.ema_buffers == "teacher" and self.teacher_bn == "eval":
            raise ValueError("ema_buffers 'teacher' needs teacher_bn 'train' (an eval-mode teacher never "
                             "updates its BatchNorm statistics); use ema_buffers 'copy' or 'ema'")
        return self


class LogitAdjustedConfig(TeacherStudentConfig):
    """Options of the methods whose L_u is a cross-entropy on teacher pseudo-labels."""

    unlabeled_logit_adjustment: float = Field(0.0, ge=0)
    """τ of a logit-adjusted L_u [Menon et al., ICLR 2021]: the student's logits in L_u are offset
    by τ (log q̂ − log π), q̂ the running class distribution of the pseudo-labels, π the labeled
    batches'. A class the pseudo-labels under-represent (a rare one the teacher never names) is
    then hardly pushed down by L_u, so its share does not shrink round after round through the
    teacher (components/class_prior.py). 0: off (the papers)."""
    class_prior_momentum: float = Field(0.99, ge=0, lt=1)
    """Momentum of the running class distributions π (labeled ground truth, before any paste) and
    q̂ (pseudo-labels), per batch; used by ``debias_target: labeled`` and ``unlabeled_logit_adjustment``."""


LossDenominator = Literal["pseudo_labeled", "valid"]


class PseudoLabelConfig(LogitAdjustedConfig):
    """Options of the methods trained on teacher pseudo-labels of CutMix-ed unlabeled images."""

    confidence_threshold: float = Field(0.0, ge=0, le=1)
    """Pixels whose teacher confidence is below this get no pseudo-label (0 keeps every pixel)."""
    cutmix_area: float = Field(CUTMIX_AREA, gt=0, le=1)
    """Area of a random CutMix box as a fraction of the image (CutMix-Seg / official AEL: 0.5)."""
    loss_denominator: LossDenominator = "pseudo_labeled"
    """What L_u is divided by: the weight of the pseudo-labeled pixels only ('pseudo_labeled', AEL
    Eq. 2 / 12), or of every valid pixel, those below the confidence threshold included ('valid':
    FixMatch / UniMatch, and the official AEL code), so that a batch with few confident pixels
    gets a small unlabeled loss instead of a full-weight one on those few."""
    debias_strength: float = Field(0.0, ge=0)
    """λ of DebiasPL [Wang et al., CVPR 2022]: pseudo-labels (and their confidence) come from
    softmax(log p − λ log p̂), p̂ the EMA of the teacher's mean class distribution on the images
    it labels, so classes the teacher rarely predicts are not unlearned (components/debias.py).
    0: off, as in the papers."""
    debias_momentum: float = Field(0.999, ge=0, lt=1)
    """Momentum of p̂'s EMA (DebiasPL: 0.999)."""
    debias_target: DebiasTarget = "uniform"
    """The class distribution the pseudo-labels are pulled toward: 'uniform' (DebiasPL,
    softmax(log p − λ log p̂)) or 'labeled': distribution alignment [ReMixMatch, Berthelot et al.,
    ICLR 2020], softmax(log p + λ (log π − log p̂)), π the EMA of the labeled batches' class
    distribution; a class the teacher predicts less often than the labeled data holds it is boosted
    until it is predicted as often (components/debias.py). Needs ``debias_strength`` > 0."""
    class_balanced_fraction: Optional[float] = Field(None, gt=0, le=1)
    """α of online class-balanced thresholds (CBST / DST-CBC's top-α per class, over a running
    window; components/class_quantiles.py): a pixel predicted as c also passes when its confidence
    is among the top α of the teacher's recent c predictions, i.e. τ_c = min(τ, t_c). Rare classes
    the teacher predicts with moderate confidence then get pseudo-labels at all. None: off (the
    papers)."""
    partial_label_threshold: Optional[float] = Field(None, gt=0, lt=1)
    """ε: L_u at a pseudo-labeled pixel is −log Σ_{c ∈ S} q^c over the set S of classes whose
    teacher probability reaches ε (plus the pseudo-label), not ℓ_ce on the pseudo-label alone
    (partial-label learning [Cour et al., JMLR 2011]). Where the teacher hesitates between a
    frequent class and a rare one (CamVid: a rider predicted Pedestrian with p(Bicyclist) ≈ 0.08),
    L_u no longer teaches "not the rare class" and leaves that choice to L_s; a confident pixel
    (max p > 1 − ε) keeps its one label. None: off (the papers)."""
    class_balanced_momentum: float = Field(0.99, ge=0, lt=1)
    """Momentum of each class's confidence-histogram EMA, per batch in which the class is predicted."""
    class_balanced_rule: Literal["lower", "replace"] = "lower"
    """'lower': τ_c = min(τ, t_c), a rare class's bar drops and a frequent one keeps τ. 'replace':
    τ_c = t_c, CBST / DST-CBC's rule: every class keeps its top α, so a frequent class's bar rises
    above τ too (fewer confident-but-wrong head labels on tail pixels); ``confidence_threshold``
    is then unused and must be left at 0."""

    @model_validator(mode="after")
    def _class_balance_consistent(self):
        if self.debias_target != "uniform" and self.debias_strength == 0:
            raise ValueError(f"debias_target '{self.debias_target}' needs debias_strength > 0 (1: full alignment)")
        if self.class_balanced_rule == "replace" and self.class_balanced_fraction is None:
            raise ValueError("class_balanced_rule 'replace' needs class_balanced_fraction")
        if self.class_balanced_rule == "replace" and self.confidence_threshold > 0:
            raise ValueError("class_balanced_rule 'replace' sets every class's threshold from its top "
                             "class_balanced_fraction; set confidence_threshold to 0 (it would be unused)")
        return self


class TeacherStudentMethod(Method):
    """Base of the teacher-student methods; registers nothing itself."""

    uses_unlabeled = True

    def __init__(self, cfg: TeacherStudentConfig, student: nn.Module, ctx: MethodContext):
        super().__init__(cfg, student, ctx)
        self.teacher = EMATeacher(student, cfg.ema_momentum, cfg.ema_buffers, cfg.teacher_bn)
        self.ohem = (Ohem(cfg.ohem_threshold, cfg.ohem_min_kept, cfg.ohem_min_kept_fraction)
                     if cfg.ohem else None)
        debiased = isinstance(cfg, PseudoLabelConfig) and cfg.debias_strength > 0
        self.debias = (PseudoLabelDebias(ctx.num_classes, cfg.debias_strength, cfg.debias_momentum, cfg.debias_target)
                       if debiased else None)
        adjusted = isinstance(cfg, LogitAdjustedConfig) and cfg.unlabeled_logit_adjustment > 0
        self.logit_adjustment = (LogitAdjustment(ctx.num_classes, cfg.unlabeled_logit_adjustment,
                                                 cfg.class_prior_momentum) if adjusted else None)
        # π: what the labeled ground truth holds, for the options that compare against it.
        self.labeled_prior = (RunningClassDistribution(ctx.num_classes, cfg.class_prior_momentum)
                              if adjusted or (debiased and cfg.debias_target == "labeled") else None)
        balanced = isinstance(cfg, PseudoLabelConfig) and cfg.class_balanced_fraction is not None
        self.class_balance = (RunningClassThresholds(ctx.num_classes, cfg.class_balanced_fraction,
                                                     cfg.class_balanced_momentum,
                                                     only_lower=cfg.class_balanced_rule == "lower")
                              if balanced else None)
        # The run's generator (CPU, checkpointed by the engine); a fixed one when run standalone.
        self.generator = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(0)

    # ---- the parts every step uses
    def pseudo_labels(self, images: torch.Tensor, valid: torch.Tensor,
                      threshold: Union[float, torch.Tensor] = 0.0) -> PseudoLabels:
        """Ŷ: the teacher's pseudo-labels on (weakly augmented) images, under no_grad; ``threshold``
        τ or per-class τ_c, lowered to the class-balanced t_c when that is on."""
        probs = self.teacher.probabilities(images, self.ctx.autocast)
        if self.debias is not None:
            probs = self.debias(probs, valid, self.labeled_prior)
        if self.class_balance is None:
            return make_pseudo_labels(probs, valid, threshold, self.ctx.ignore_index)
        top = probs.max(dim=1)
        threshold = self.class_balance(*top, valid, threshold)
        return make_pseudo_labels(probs, valid, threshold, self.ctx.ignore_index, top=top)

    def observe_labeled(self, labeled: dict) -> None:
        """π, the labeled ground truth's class distribution, from a batch before any augmentation
        adds pixels to it; called first thing in each step."""
        if self.labeled_prior is not None:
            self.labeled_prior.update_labels(labeled["label"], self.ctx.ignore_index)

    def student_forward(self, *images: torch.Tensor) -> list[dict]:
        """The student's output dict for each image batch: one forward per batch ('separate') or
        one forward over their concatenation, split back ('joint')."""
        with self.ctx.autocast():
            if self.cfg.student_forward == "separate":
                return [self.student(x) for x in images]
            outputs = self.student(torch.cat(images))
        sizes = [x.shape[0] for x in images]
        parts = {key: value.split(sizes) for key, value in outputs.items()}
        return [{key: chunks[i] for key, chunks in parts.items()} for i in range(len(images))]

    def labeled_loss(self, outputs: dict, label: torch.Tensor) -> torch.Tensor:
        """L_s (AEL Eq. 1) on the ground truth (OHEM when ``cfg.ohem``)."""
        return supervised_loss(outputs, label, self.ctx.ignore_index, self.cfg.aux_weight, self.ohem)

    def cutmix_among_batch(self, sample: dict) -> tuple[dict, torch.Tensor]:
        """CutMix of a batch of unlabeled samples with each other (Eq. 8 with I_1, I_2 random
        images of the batch): each image gets a random box from its partner image."""
        b, h, w = sample["valid"].shape
        partners = mixing_partners(b, self.generator)
        boxes = random_boxes(b, h, w, self.generator, self.cfg.cutmix_area, device=sample["valid"].device)
        return paste(boxes, sample, select(sample, partners)), boxes

    def unlabeled_sample(self, image: torch.Tensor, pseudo: PseudoLabels, from_batch: bool = True) -> dict:
        """An unlabeled image with its pseudo-labels, as one mixable sample. ``origin`` follows every
        mix: the flat index of each pixel in the loaded unlabeled batch (-1 for images from
        elsewhere), so the engine's pseudo-label audit can find a trained pixel's true class."""
        origin = (torch.arange(pseudo.valid.numel(), device=pseudo.valid.device).view(pseudo.valid.shape)
                  if from_batch else torch.full_like(pseudo.valid, -1, dtype=torch.long))
        sample = {"image": image, "label": pseudo.label, "prediction": pseudo.prediction,
                  "confidence": pseudo.confidence, "valid": pseudo.valid, "origin": origin}
        epsilon = getattr(self.cfg, "partial_label_threshold", None)
        if epsilon is not None:  # (B, C, H, W): mixed like the images
            sample["candidates"] = pseudo.probs >= epsilon
        return sample

    def unlabeled_pixel_loss(self, logits: torch.Tensor, target: dict,
                             weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L_u's per-pixel term against a mixed sample: ℓ_ce on the pseudo-label, or the
        partial-label loss over the teacher's candidate classes (``partial_label_threshold``), on
        logits offset by the logit adjustment when that is on; ``weight``: each pixel's weight in
        L_u (default: 1 on the pseudo-labeled ones), so q̂ is the class distribution L_u trains."""
        if self.logit_adjustment is not None:
            offsets = self.logit_adjustment.offsets(target["label"], self.ctx.ignore_index, self.labeled_prior,
                                                    weight)
            logits = logits.float() + offsets.view(1, -1, 1, 1)
        if "candidates" in target:
            return partial_label_cross_entropy(logits, target["label"], target["candidates"], self.ctx.ignore_index)
        return pixel_cross_entropy(logits, target["label"], self.ctx.ignore_index)

    def unsupervised_denominator(self, target: dict) -> Optional[torch.Tensor]:
        """The normaliser of L_u by ``cfg.loss_denominator`` (None: the loss weights themselves)."""
        return target["valid"] if self.cfg.loss_denominator == "valid" else None

    @staticmethod
    def pseudo_targets(target: dict, weight: torch.Tensor, denominator: Optional[torch.Tensor] = None,
                       normalization: str = "image") -> PseudoTargets:
        """What L_u trained on, for the engine's audit: each pixel's pseudo-label and its share of L_u."""
        origin = target.get("origin")
        if origin is None:  # a sample built without provenance: no pixel is traceable
            origin = torch.full_like(target["label"], -1)
        return PseudoTargets(label=target["label"].detach(), origin=origin,
                             weight=normalized_weights(weight.detach(), None if denominator is None
                                                       else denominator.detach(), normalization))

    # ---- supervised warm-up
    def in_warmup(self, iteration: int) -> bool:
        return iteration < self.cfg.supervised_warmup

    def supervised_step(self, labeled: dict) -> tuple[StepOutput, dict]:
        """A warm-up step: L_s on the labeled images only (no teacher, no unlabeled forward)."""
        with self.ctx.section("student"):
            (out_l,) = self.student_forward(labeled["image"])
        loss_s = self.labeled_loss(out_l, labeled["label"])
        return StepOutput(loss=loss_s, logs={"loss_sup": loss_s.detach(), "loss_unsup": 0.0}), out_l

    # ---- the engine's hooks
    def ema_step(self, iteration: int) -> Optional[int]:
        """The EMA step t of optimizer step ``iteration`` (decay min(1 - 1/(t+1), m)); None: no update.
        The EMA counts from the end of the supervised warm-up."""
        t = iteration - self.cfg.supervised_warmup
        return t if t >= 0 else None

    def lr_restarts(self) -> tuple[int, ...]:
        return (self.cfg.supervised_warmup,) if self.cfg.warmup_schedule == "restart" else ()

    def after_optimizer_step(self, iteration: int) -> None:
        if iteration == self.cfg.supervised_warmup - 1:
            self.teacher.copy_from(self.student)  # the switch: teacher = student, EMA restarts
            return
        t = self.ema_step(iteration)
        if t is not None:
            self.teacher.update(self.student, t)

    @property
    def reported_model(self) -> str:
        return self.cfg.report_model

    def eval_models(self, iteration: int) -> dict[str, nn.Module]:
        student = unwrap(self.student)
        if self.in_warmup(iteration):  # no teacher yet: it is made from the student at the switch
            return {"student": student}
        models = {"teacher": self.teacher.model, "student": student}
        first = self.reported_model
        return {first: models[first], **{k: v for k, v in models.items() if k != first}}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (0 when the mask is empty), detached, for logs."""
    mask = mask.bool()
    return values.detach().float()[mask].mean() if mask.any() else values.new_zeros(())
