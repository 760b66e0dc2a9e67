"""AEL: Adaptive Equalization Learning [Hu et al., NeurIPS 2021] (the paper's §3.2-3.3).

On top of the basic framework (``cutmix``: EMA teacher, pseudo-labels on the weak view, CutMix,
L = L_s + α L_u, Eq. 1-3), a confidence bank tracks how well each category is learned (Eq. 4-7)
and four components tilt training towards the under-performing ones, each switchable on its own
(the rows of Table 3):

- adaptive Copy-Paste (ACP): paste all pixels of K sampled categories between labeled images;
- adaptive CutMix (ACM): cut a region of a sampled category from an unlabeled image (Eq. 8-9);
- adaptive equalization sampling (AES): keep pixel j of class c with probability s^c (Eq. 10-11);
- dynamic re-weighting (DR): weight pixels by the teacher's confidence^γ (Eq. 12-13).

Where the official code departs from the paper, the paper is the default and the code's
behaviour a named option (see docs/ael.md for the table).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import torch
from pydantic import Field, model_validator
from torch import nn

from .base import MethodContext, PerClassLog, PseudoTargets, StepOutput, register_method
from .components import (ClassPresenceBank, ConfidenceBank, PseudoLabelConfig, TeacherStudentMethod,
                         class_region_masks, connected_components, copy_paste_mask, equalization_sampling_mask,
                         foot_pixels, ground_below, large_scale_jitter, masked_mean, paste, random_boxes,
                         reweighting_weights, shift, weighted_mean)
from .components.confidence_bank import AbsentClass, Indicator, Pooling
from .components.losses import Normalization
from .components.rng import categorical, dataset_seed, randint, uniform

GROUND_PLACEMENT_CANDIDATES = 16
"""Shifts tried per pasted object by ``acp_placement: ground`` (each costs a few vector lookups)."""

BANK_LOG_PREFIX = "bank/"
"""Prefix of the per-class confidence-bank entries in the step logs (metrics.jsonl, TensorBoard)."""


class AELConfig(PseudoLabelConfig):
    name: Literal["ael"] = "ael"

    # -- confidence bank (Eq. 4-7)
    indicator: Indicator = "confidence"
    """Category performance indicator: confidence (Eq. 4, default), margin (Eq. 5), entropy (Eq. 6)."""
    bank_momentum: float = Field(0.999, ge=0, lt=1)
    """τ of Eq. 7."""
    bank_init: Union[Annotated[float, Field(ge=0, le=1)], Literal["random"]] = 0.0
    """Initial Conf of every class (paper silent). 0: all classes equally deficient, so sampling
    starts uniform and tilts as the bank fills. 'random': U[0,1) per class (official code)."""
    bank_pooling: Pooling = "image"
    """'image': Eq. 4's mean over each image's pixels of c, averaged over images; 'pixel': one mean
    over all pixels of c in the batch (official code)."""
    bank_absent: AbsentClass = "keep"
    """A class absent from the batch 'keep's its value; 'decay' moves it toward 0 (official code)."""

    # -- dynamic re-weighting (Eq. 12-13)
    dynamic_reweighting: bool = True
    gamma: float = Field(2.0, ge=0)
    """γ of Eq. 13 (Table 5: 2)."""

    # -- adaptive equalization sampling (Eq. 10-11)
    equalization_sampling: bool = True
    beta: float = Field(1.0, ge=0)
    """β of Eq. 10 (paper gives no value; official code: 1)."""
    aes_classes: Literal["pseudo_label", "student"] = "pseudo_label"
    """Class c of a pixel in Eq. 10-11: the teacher's prediction (pseudo-label) or the student's
    argmax on the trained image (official code)."""

    # -- adaptive CutMix (Eq. 8-9)
    adaptive_cutmix: bool = True
    acm_area_ratio: float = Field(0.005, ge=0, le=1)
    """An image 'contains' a class when its teacher prediction has at least this fraction of the
    image's pixels in it (Table 7: 0.005); also the smallest region ACM cuts."""
    acm_presence_ratio: Optional[float] = Field(None, ge=0, le=1)
    """Fraction for the class-presence bank only, if different (official Cityscapes: 0.01)."""
    acm_excluded_classes: list[str] = Field(default_factory=list)
    """Class names ACM never samples (paper: none)."""
    acm_batch: Literal["extra", "replace_half"] = "extra"
    """Where the fetched images I_1 come from. 'extra': every unlabeled image of the batch is an I_2
    with its own fetched I_1, so the teacher sees 2·B_u images and the student B_u mixed ones.
    'replace_half' (official code): half of the loaded batch is replaced by fetched images, so the
    teacher sees B_u images (as in ``cutmix``) and the student B_u / 2 mixed ones."""

    # -- adaptive Copy-Paste
    adaptive_copy_paste: bool = True
    acp_num_classes: int = Field(3, ge=1)
    """K, categories sampled per paste (Table 8: 3)."""
    acp_probability: float = Field(0.5, ge=0, le=1)
    """Chance that a labeled image receives a paste (paper silent; official code 0.5)."""
    acp_scale_range: tuple[float, float] = (0.1, 2.0)
    """Large scale jittering of the source image (Copy-Paste [30]; official code 0.1-2.0)."""
    acp_excluded_classes: list[str] = Field(default_factory=list)
    """Class names ACP never samples, per dataset (paper: none; official code hard-codes Cityscapes'
    road, sidewalk, building, vegetation, sky, and applies the same ids to VOC)."""
    acp_source: Literal["class_aware", "random"] = "class_aware"
    """Source image: a labeled image known to hold a sampled class ('class_aware'), or any labeled
    image ('random': paper's wording and official code)."""
    acp_sqrt: bool = False
    """Official code: Softmax(sqrt(1 - Conf)) for ACP instead of Eq. 9's Softmax(1 - Conf)."""
    acp_with_replacement: bool = False
    """Official code: draw K classes with replacement and de-duplicate (≤ K distinct)."""
    acp_placement: Literal["random", "ground"] = "random"
    """Where the pasted pixels land. 'random': where the large scale jittering puts them (paper,
    official code). 'ground': then each pasted object (connected component) is shifted to stand on
    the class it stood on in the source (its ground: the first class below its bottom edge, outside
    the paste): the best of a few shifts that put a bottom-edge pixel right above a target pixel of
    that class; an object without a known ground, or whose ground the target lacks, stays. Context
    matters for a pasted object [Dvornik et al., ECCV 2018]: on CamVid the random placement stands
    43 % of the pasted pedestrian pixels on the road (labeled pedestrians: 10 %; riders: 67 %) and
    AEL's runs then predict riders as pedestrians; 'ground' stands them there 18 % of the time
    (benchmarks/copy_paste_context.py, docs/semisup_cpu.md). Not in the paper."""
    acp_ground_reach: float = Field(0.25, gt=0, le=1)
    """How far below an object's bottom edge its ground is looked for, as a fraction of the image
    height ('ground' placement)."""
    acp_in_warmup: bool = True
    """Paste during a ``supervised_warmup`` too (the paper has no warm-up). False: plain L_s until the
    switch, so the first teacher is the supervised model (on CamVid the warm-up's pastes cost
    Bicyclist before any pseudo-label exists, docs/semisup_cpu.md)."""

    # -- beyond the paper
    adaptive_threshold: bool = False
    """Class-adaptive thresholds from the confidence bank: a pixel predicted as c is pseudo-labeled
    when its confidence reaches τ_c = τ · M(Conf^c / max Conf), M(x) = x / (2 - x), with τ =
    ``confidence_threshold`` (FlexMatch's warping [Zhang et al. 2021] on AEL's own bank; not in the
    paper). A global τ such as 0.95 keeps the confident head classes and drops nearly every tail
    pixel; this lowers the bar exactly for the classes the bank finds weak."""

    # -- other official-code behaviours
    loss_normalization: Normalization = "image"
    """L_u normalised per image then averaged (Eq. 12) or over the whole batch ('batch', official)."""
    labeled_consistency: bool = False
    """Official code: also apply L_u to the labeled images against the teacher's pseudo-labels."""

    @model_validator(mode="after")
    def _check_ranges(self) -> "AELConfig":
        low, high = self.acp_scale_range
        if not 0 < low <= high:
            raise ValueError(f"acp_scale_range must satisfy 0 < min <= max, got {self.acp_scale_range}")
        return self


@register_method
class AEL(TeacherStudentMethod):
    config_class = AELConfig
    per_class_logs = (PerClassLog(
        prefix=BANK_LOG_PREFIX, anchor="bank", title="AEL confidence bank",
        heading="Conf<sup>c</sup> per class (Eq. 7)", heat_map_title="confidence bank per class",
        note="Red = low confidence: the classes AEL samples most for adaptive CutMix / Copy-Paste and keeps most "
             "pixels of in equalization sampling. Right: the last value. * = tail class.",
        summary_keys=("bank_conf_mean", "bank_conf_min", "batch_conf_mean"), summary_title="Bank summary"),)

    def __init__(self, cfg: AELConfig, student: nn.Module, ctx: MethodContext):
        super().__init__(cfg, student, ctx)
        C, ignore = ctx.num_classes, ctx.ignore_index
        # Confidence bank: Conf^c of every category (Eq. 4-7), from the student on labeled pixels.
        self.bank = ConfidenceBank(C, ignore, cfg.bank_momentum, cfg.indicator, cfg.bank_pooling,
                                   cfg.bank_absent, cfg.bank_init, self.generator)
        self.acm_allowed = self._allowed_classes(cfg.acm_excluded_classes, "acm_excluded_classes")
        self.acp_allowed = self._allowed_classes(cfg.acp_excluded_classes, "acp_excluded_classes")
        # Which unlabeled images the teacher saw holding each class (ACM's "image containing c").
        if cfg.adaptive_cutmix:
            self.unlabeled_presence = ClassPresenceBank(self._dataset_size(ctx.unlabeled_dataset, "adaptive_cutmix"),
                                                        C, ignore)
        # Which labeled images hold each class in their ground truth (ACP's source images).
        if cfg.adaptive_copy_paste:
            self.labeled_presence = ClassPresenceBank(self._dataset_size(ctx.labeled_dataset, "adaptive_copy_paste"),
                                                      C, ignore)

    def _allowed_classes(self, excluded: list[str], key: str) -> torch.Tensor:
        names = list(self.ctx.class_names)
        unknown = [c for c in excluded if c not in names]
        if unknown:
            raise ValueError(f"method.{key}: {unknown} are not class names of this dataset ({names})")
        allowed = torch.ones(self.ctx.num_classes, dtype=torch.bool)
        allowed[[names.index(c) for c in excluded]] = False
        if not allowed.any():
            raise ValueError(f"method.{key} excludes every class")
        return allowed

    @staticmethod
    def _dataset_size(dataset, key: str) -> int:
        if dataset is None or not hasattr(dataset, "load"):
            raise ValueError(f"method.{key} needs the training dataset in the method context")
        return len(dataset)

    # ------------------------------------------------------------------ one step
    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        cfg, ignore = self.cfg, self.ctx.ignore_index
        logs: dict = {}
        self.observe_labeled(labeled)  # before Copy-Paste adds pixels to it

        # Labeled images D^l with their ground truth, through adaptive Copy-Paste.
        if cfg.adaptive_copy_paste:
            with self.ctx.section("extras"):
                self.labeled_presence.update(labeled["index"], labeled["label"], min_ratio=0.0)
                if cfg.acp_in_warmup or not self.in_warmup(iteration):
                    labeled = self.adaptive_copy_paste(labeled, logs)
        x_l, y_l = labeled["image"], labeled["label"]
        if self.in_warmup(iteration):
            # Supervised warm-up: L_s only, the bank still learns (Eq. 4-7) so it is full at the switch.
            out, out_l = self.supervised_step(labeled)
            self.bank.update(out_l["out"].detach().float().softmax(1), y_l)
            out.logs.update(logs, **self.bank_logs())
            return out

        # Ŷ: teacher pseudo-labels on the weak unlabeled view (§3.2); ACM's images I_1, fetched by
        # sampled category, are pseudo-labeled in the same forward.
        if cfg.adaptive_cutmix and cfg.acm_batch == "replace_half":
            unlabeled = self.keep_half(unlabeled)
        x_u, valid_u = unlabeled["image"], unlabeled["valid"]
        if cfg.adaptive_cutmix:
            with self.ctx.section("extras"):
                categories, fetched = self.fetch_by_category(x_u.shape[0], logs)
            x_all, valid_all = torch.cat([x_u, fetched["image"]]), torch.cat([valid_u, fetched["valid"]])
        else:
            x_all, valid_all = x_u, valid_u
        with self.ctx.section("teacher"):
            y_hat = self.pseudo_labels(x_all, valid_all, self.threshold())

        # Strong augmentation: adaptive CutMix (Eq. 8-9), or CutMix among the batch when off.
        with self.ctx.section("extras"):
            if cfg.adaptive_cutmix:
                y_hat_u, y_hat_fetched = y_hat.split([x_u.shape[0], x_u.shape[0]])
                indices = torch.cat([torch.as_tensor(unlabeled["index"], device=fetched["index"].device).view(-1),
                                     fetched["index"]])
                self.unlabeled_presence.update(indices, y_hat.prediction, self.presence_ratio)
                mixed, boxes = self.adaptive_cutmix(self.unlabeled_sample(x_u, y_hat_u),
                                                    self.unlabeled_sample(fetched["image"], y_hat_fetched,
                                                                          from_batch=False),
                                                    categories, logs)
            else:
                mixed, boxes = self.cutmix_among_batch(self.unlabeled_sample(x_u, y_hat))

        with self.ctx.section("student"):
            out_l, out_u = self.student_forward(x_l, mixed["image"])

        # L_s (Eq. 1).
        loss_s = self.labeled_loss(out_l, y_l)
        # Confidence bank update from the student's predictions on labeled pixels (Eq. 4-7).
        batch_conf = self.bank.update(out_l["out"].detach().float().softmax(1), y_l)

        # L_u with adaptive equalization sampling and dynamic re-weighting (Eq. 10-13).
        loss_u, pseudo_targets = self.unsupervised_loss(out_u["out"], mixed, logs)
        if cfg.labeled_consistency:
            with self.ctx.section("teacher"):
                y_hat_l = self.pseudo_labels(x_l, labeled["valid"], self.threshold())
            loss_u = loss_u + self.unsupervised_loss(out_l["out"], self.unlabeled_sample(x_l, y_hat_l), {})[0]

        loss = loss_s + cfg.alpha * loss_u                                       # Eq. 3
        logs.update({"loss_sup": loss_s.detach(), "loss_unsup": loss_u.detach(),
                     "pl_conf": masked_mean(mixed["confidence"], mixed["valid"]),
                     "pl_ratio": masked_mean((mixed["label"] != ignore).float(), mixed["valid"]),
                     "mix_ratio": boxes.float().mean(),
                     "bank_conf_mean": self.bank.conf.mean(), "bank_conf_min": self.bank.conf.min(),
                     "batch_conf_mean": batch_conf.nan_to_num(0).sum() / batch_conf.isfinite().sum().clamp_min(1),
                     **self.bank_logs()})
        if cfg.adaptive_threshold:
            logs["threshold_min"] = self.threshold().min()
        pseudo_targets.weight.mul_(cfg.alpha)
        return StepOutput(loss=loss, logs=logs, pseudo_targets=pseudo_targets)

    def threshold(self):
        """τ, or the class-adaptive τ_c from the confidence bank (``adaptive_threshold``)."""
        if self.cfg.adaptive_threshold:
            return self.bank.class_thresholds(self.cfg.confidence_threshold)
        return self.cfg.confidence_threshold

    def bank_logs(self) -> dict[str, float]:
        """``bank/<class name>``: Conf^c of every category, so the bank's course over training can be
        plotted (``equiseg report``). One host copy for all classes rather than one sync per class."""
        values = self.bank.conf.detach().cpu().tolist()
        names = self.ctx.class_names or tuple(str(c) for c in range(len(values)))  # contexts built without names
        return {f"{BANK_LOG_PREFIX}{name}": value for name, value in zip(names, values)}

    # ------------------------------------------------------------------ adaptive Copy-Paste
    def adaptive_copy_paste(self, labeled: dict, logs: dict) -> dict:
        """Paste every pixel of K categories sampled by r (Eq. 9) from a labeled source image,
        large-scale jittered, onto each labeled image (with probability ``acp_probability``)."""
        cfg = self.cfg
        r = self.bank.sampling_distribution(self.acp_allowed, sqrt=cfg.acp_sqrt)          # Eq. 9
        K = min(cfg.acp_num_classes, int((r > 0).sum()))
        target = {key: labeled[key].clone() for key in ("image", "label", "valid")}
        b, h, w = target["label"].shape
        receives = uniform((b,), self.generator, self.generator.device) < cfg.acp_probability
        pasted = torch.zeros((), device=target["label"].device)
        grounded = []
        for i in receives.nonzero(as_tuple=True)[0].tolist():
            categories = categorical(r, K, self.generator, replacement=cfg.acp_with_replacement).unique()
            source = self._load(self.ctx.labeled_dataset, self._acp_source(categories, int(labeled["index"][i])),
                                target["label"].device)
            low, high = cfg.acp_scale_range
            scale_u, offset_y, offset_x = uniform((3,), self.generator, self.generator.device).tolist()
            source = large_scale_jitter(source, low + (high - low) * scale_u, (h, w), (offset_y, offset_x),
                                        self.ctx.ignore_index)
            moved = copy_paste_mask(source["label"], categories) & source["valid"]
            if cfg.acp_placement == "ground":
                source, moved, on_ground = self._on_own_ground(source, moved, target["label"][i], target["valid"][i])
                grounded.append(on_ground)
            one = paste(moved[None], {k: v[i:i + 1] for k, v in target.items()},
                        {k: v[None] for k, v in source.items()})
            for key in target:
                target[key][i] = one[key][0]
            pasted = pasted + moved.sum()
        logs["acp_pixel_ratio"] = pasted / (b * h * w)
        if grounded:
            logs["acp_grounded_ratio"] = sum(grounded) / len(grounded)
        return {**labeled, **target}

    def _on_own_ground(self, source: dict, moved: torch.Tensor, target_label: torch.Tensor,
                       target_valid: torch.Tensor) -> tuple[dict, torch.Tensor, float]:
        """``acp_placement: ground``: every pasted object (connected component of the pasted pixels)
        moved to stand on the class it stood on. Candidate shifts put one of its bottom-edge pixels
        right above a target pixel of that pixel's ground class; the kept one has the most bottom-edge pixels
        right above their own ground class in the target. An object without a known ground, or whose
        ground class the target lacks, stays where the jittering put it. Returns the placed source,
        its pasted pixels and the share of the pasted pixels that were grounded."""
        ignore, h = self.ctx.ignore_index, moved.shape[0]
        ground = ground_below(source["label"], moved, max(1, round(self.cfg.acp_ground_reach * h)), ignore)
        objects = connected_components(moved[None])[0]
        placed = {"image": torch.zeros_like(source["image"]), "label": torch.full_like(source["label"], ignore),
                  "valid": torch.zeros_like(source["valid"])}
        placed_moved = torch.zeros_like(moved)
        grounded = 0
        for obj in objects[objects > 0].unique().tolist():
            inside = objects == obj
            dy, dx = self._ground_shift(inside, ground, target_label, target_valid)
            if (dy, dx) != (0, 0):
                grounded += int(inside.sum())
            one = shift({"image": source["image"], "label": source["label"], "valid": inside}, dy, dx, ignore)
            where = one["valid"]
            placed["image"][:, where] = one["image"][:, where]
            placed["label"][where] = one["label"][where]
            placed_moved |= where
        placed["valid"] = placed_moved.clone()
        return placed, placed_moved, grounded / max(1, int(moved.sum()))

    def _ground_shift(self, inside: torch.Tensor, ground: torch.Tensor, target_label: torch.Tensor,
                      target_valid: torch.Tensor) -> tuple[int, int]:
        """The best of ``GROUND_PLACEMENT_CANDIDATES`` shifts of one object onto its ground (above)."""
        h, w = inside.shape
        feet = foot_pixels(inside) & (ground != self.ctx.ignore_index)
        if not feet.any():
            return 0, 0
        ys, xs = feet.nonzero(as_tuple=True)
        foot_ground = ground[ys, xs]
        shifts = []
        for _ in range(GROUND_PLACEMENT_CANDIDATES):
            k = randint(ys.numel(), self.generator)
            landing = ((target_label == foot_ground[k]) & target_valid).nonzero()
            if not len(landing):
                continue
            y1, x1 = landing[randint(len(landing), self.generator)].tolist()
            shifts.append((y1 - 1 - int(ys[k]), x1 - int(xs[k])))                # the foot right above it
        if not shifts:
            return 0, 0
        dy, dx = torch.tensor(shifts, device=ys.device).T                          # (N,)
        under_y, under_x = ys + dy[:, None] + 1, xs + dx[:, None]                     # (N, F): right below each foot
        on_image = (under_y >= 0) & (under_y < h) & (under_x >= 0) & (under_x < w)
        under = target_label[under_y.clamp(0, h - 1), under_x.clamp(0, w - 1)]
        return shifts[int(((under == foot_ground) & on_image).sum(1).argmax())]

    def _acp_source(self, categories: torch.Tensor, target_index: int) -> int:
        """A labeled image holding one of ``categories`` (other than the target when possible), or
        any labeled image ('random', or while no such image has been seen yet)."""
        if self.cfg.acp_source == "class_aware":
            candidates = self.labeled_presence.images_with(categories)
            others = candidates[candidates != target_index]
            candidates = others if others.numel() else candidates
            if candidates.numel():
                return int(candidates[randint(candidates.numel(), self.generator)])
        return randint(len(self.labeled_presence), self.generator)

    # ------------------------------------------------------------------ adaptive CutMix
    @property
    def presence_ratio(self) -> float:
        return self.cfg.acm_presence_ratio if self.cfg.acm_presence_ratio is not None else self.cfg.acm_area_ratio

    def fetch_by_category(self, count: int, logs: dict) -> tuple[torch.Tensor, dict]:
        """Sample ``count`` categories by r = Softmax(1 - Conf) (Eq. 9) and, for each, an unlabeled
        image whose teacher prediction holds it (I_1); a random image when none is known."""
        r = self.bank.sampling_distribution(self.acm_allowed)                              # Eq. 9
        categories = categorical(r, count, self.generator)
        device = self.bank.conf.device
        samples, known = [], 0
        for category in categories.tolist():
            candidates = self.unlabeled_presence.images_with(torch.tensor([category]))
            known += bool(candidates.numel())
            index = (int(candidates[randint(candidates.numel(), self.generator)]) if candidates.numel()
                     else randint(len(self.unlabeled_presence), self.generator))
            samples.append(self._load(self.ctx.unlabeled_dataset, index, device))
        fetched = {key: torch.stack([s[key] for s in samples]) for key in ("image", "valid")}
        fetched["index"] = torch.tensor([s["index"] for s in samples], device=device)
        logs["acm_known_ratio"] = known / count
        return categories.to(device), fetched

    @staticmethod
    def keep_half(unlabeled: dict) -> dict:
        """The first half of the (randomly sampled) unlabeled batch; fetched images take the other
        half's place (``acm_batch: replace_half``, the official code's one kept image of two)."""
        size = unlabeled["image"].shape[0]
        if size < 2:
            raise ValueError("method.acm_batch 'replace_half' needs at least 2 unlabeled images per process "
                             f"(got {size}); raise data.unlabeled_batch_size or use acm_batch 'extra'")
        kept = size // 2
        return {key: value[:kept] if torch.is_tensor(value) or isinstance(value, (list, tuple)) else value
                for key, value in unlabeled.items()}

    def adaptive_cutmix(self, batch: dict, fetched: dict, categories: torch.Tensor, logs: dict):
        """Î = CutMix(Crop(I_1), I_2) (Eq. 8): Crop(I_1) is the bounding box of a connected region of
        the sampled category in the teacher's prediction of I_1 (at least ``acm_area_ratio`` of the
        image); I_2 is the batch image. Without such a region, a random box."""
        b, h, w = batch["valid"].shape
        regions, found = class_region_masks(fetched["prediction"], categories,
                                            self.cfg.acm_area_ratio * h * w, self.generator)
        random = random_boxes(b, h, w, self.generator, self.cfg.cutmix_area, device=regions.device)
        boxes = torch.where(found.to(regions.device).view(-1, 1, 1), regions, random)
        logs["acm_region_ratio"] = found.float().mean()
        return paste(boxes, batch, fetched), boxes

    # ------------------------------------------------------------------ L_u
    def unsupervised_loss(self, logits: torch.Tensor, target: dict, logs: dict) -> tuple[torch.Tensor, PseudoTargets]:
        """L_u = 1/N_u Σ_i 1/(Σ_j w_ij) Σ_j w_ij ℓ_ce(ŷ_ij, p_ij), w_ij = max_c(p_ij^c)^γ 𝟙_ij
        (Eq. 11-13); with both components off, Eq. 2. With ``loss_denominator: valid`` the pixels
        below the threshold keep their w_ij in the denominator (the official code)."""
        cfg, ignore = self.cfg, self.ctx.ignore_index
        pseudo_labeled = target["label"] != ignore
        # 𝟙_ij: adaptive equalization sampling with rates s^c (Eq. 10-11); all ones when off.
        sampled = target["valid"].clone()
        if cfg.equalization_sampling:
            rates = self.bank.sampling_rates(cfg.beta)                                 # Eq. 10
            classes = target["prediction"] if cfg.aes_classes == "pseudo_label" else logits.detach().argmax(1)
            classes = classes.masked_fill(~target["valid"], ignore)
            field = uniform(tuple(classes.shape), self.generator, classes.device)
            sampled = equalization_sampling_mask(classes, rates, field, ignore)         # Eq. 11
        # w_ij: confidence^γ (Eq. 13); uniform when dynamic re-weighting is off.
        modulation = (reweighting_weights(target["confidence"], cfg.gamma) if cfg.dynamic_reweighting
                      else torch.ones_like(target["confidence"], dtype=torch.float))
        weight = modulation * (sampled & pseudo_labeled)
        ce = self.unlabeled_pixel_loss(logits, target, weight)
        denominator = modulation * sampled if cfg.loss_denominator == "valid" else None
        logs["aes_ratio"] = masked_mean(sampled.float(), pseudo_labeled)
        logs["weight_mean"] = masked_mean(weight, pseudo_labeled)
        loss = weighted_mean(ce, weight, denominator, cfg.loss_normalization)          # Eq. 12
        return loss, self.pseudo_targets(target, weight, denominator, cfg.loss_normalization)

    # ------------------------------------------------------------------ helpers
    def _load(self, dataset, index: int, device: torch.device) -> dict:
        """One training sample by index, augmented with a seed from the method's generator."""
        sample = dataset.load(index, dataset_seed(self.generator))
        return {key: value.to(device) if torch.is_tensor(value) else value for key, value in sample.items()}

