"""DST-CBC: Dynamic Self-Training and Class-Balanced Curriculum (Feng et al., 2020).

Round 0 trains on the labeled images alone (the ``supervised`` method). Each self-training round
k = 1..R (α_k = 20, 40, 60, 80, 100 % by default) then

1. pseudo-labels every unlabeled image offline with the best model so far, f_off (Algorithm 1):
   per class c, t_c is the top-α_k quantile of the confidences mp of the pixels predicted as c,
   estimated on a random sample of pixels; a pixel keeps its label ml only if mp ≥ t_ml (Eq. 6);
2. fine-tunes from f_off, with a fresh optimizer and LR schedule, on 1:1 batches of labeled and
   pseudo-labeled images (the ordinary training augmentation for both): cross-entropy with weight
   1 on labeled pixels and the dynamic loss ω·CE on pseudo-labeled ones, ω = f_cur(x)[ŷ]^γ
   (Eq. 1-2), summed and divided by the number of supervised pixels (the authors' DynamicLoss);
3. keeps, over all rounds so far, the model that scores best on the selection set (val, or a
   "valtiny" subset of about one image per class).

Table 5's ablations are options of the same code: ST (``gamma: 0``, one round at α = 1), DST
(one round at α = 1), DST-C (``thresholds: global``) and OW (``weights: stored``: ω from the
labeling model's stored confidence instead of the current model's).

The engine's round loop (``engine/rounds.py``) runs the rounds (folders, resume, selection,
results); this file says what DST-CBC does in them (:class:`SelfTrainingRounds`). Algorithm 1's
exact thresholds are ``components/class_balanced.py``; labeling a whole unlabeled set with them is
``components/offline_labeling.py``.
"""
from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import DataConfig, MethodConfig, OptimConfig, TrainConfig, validate_config
from ..data.io import read_list_file, write_list_file
from ..data.list_dataset import ListDataset
from ..data.pseudo_labeled import PseudoLabeledDataset
from ..data.splits import import_split
from ..data.transforms import eval_transform, train_transform
from ..errors import ConfigError, DataError
from ..run_layout import RunLayout
from .base import Method, RoundColumn, RoundEnv, RoundPlan, StepOutput, register_method
from .components.losses import pixel_cross_entropy, reweighting_weights, weighted_mean
from .components.offline_labeling import PSEUDO_LABEL_LIST, LabelingOptions, OfflineLabeler

log = logging.getLogger("equiseg")

PAPER_ALPHAS = (0.2, 0.4, 0.6, 0.8, 1.0)
"""§3.3: 5 self-training rounds labeling 20 % ... 100 % of the pixels of each class."""
AUTHORS_SAMPLE_RATIO = 1 / 16
"""§3.3 samples 5-10 % of the pixels; the authors' code takes every 16th pixel (6.25 %)."""
SUPERVISED_OVERRIDE_KEYS = {"optim": (OptimConfig, None), "train": (TrainConfig, None),
                            "data": (DataConfig, ("batch_size",))}
"""Round-0 override sections and, where restricted, their allowed keys: the model, data split and
evaluation must stay those of the self-training rounds."""
VALTINY_LIST = "valtiny.txt"


class DstCbcConfig(MethodConfig):
    name: Literal["dst_cbc"] = "dst_cbc"
    alphas: list[float] = Field(default_factory=lambda: list(PAPER_ALPHAS), min_length=1)
    """Labeling ratio α of each self-training round (§3.3); the list's length is the number of rounds."""
    gamma: float = Field(9.0, ge=0)
    """γ of Eq. 2 (9 in the paper; 4 with more than 1,000 labels; 0 = plain cross-entropy, "ST")."""
    thresholds: Literal["class", "global"] = "class"
    """``class``: one threshold per class (CBC, Algorithm 1); ``global``: one for all classes (DST-C)."""
    weights: Literal["current", "stored"] = "current"
    """Where ω's probability comes from: the model being trained (Eq. 2) or the labeling model's
    confidence stored with the pseudo-labels (the OW ablation)."""
    threshold_sample_ratio: float = Field(AUTHORS_SAMPLE_RATIO, gt=0, le=1)
    """Share of pixels, drawn at random per image from (run.seed, round, image), on which the
    thresholds are estimated (§3.3: 5-10 % is enough); 1 uses every pixel."""
    aux_weight: float = Field(0.4, ge=0)
    """Weight of the aux head's loss when the model has one (as the ``supervised`` method)."""
    supervised_overrides: dict[str, Any] = Field(default_factory=dict)
    """Config values for round 0 only, as dotted keys: ``optim.*``, ``train.*`` and
    ``data.batch_size`` (the paper trains round 0 longer and with 8 labeled images per batch)."""
    supervised_checkpoint: Optional[str] = None
    """A checkpoint (``best.pt``) to use as round 0 instead of training it, e.g. a previous run's
    ``round_0/checkpoints/best.pt`` so that ablations share one baseline (as Table 5)."""
    selection: Literal["val", "valtiny"] = "val"
    """Model selection set: the val list, or a small subset of it with about one image per class."""
    valtiny_list: Optional[str] = None
    """valtiny images (a list in any format ``data.labeled_list`` accepts, e.g. the authors'
    ``valtiny.txt``); default: drawn from val (``valtiny_per_class``, ``valtiny_seed``)."""
    valtiny_per_class: int = Field(1, ge=1)
    """Images drawn per class for valtiny (the paper's has about one per class)."""
    valtiny_seed: int = Field(0, ge=0)
    """Seed of the valtiny draw (kept apart from run.seed so that runs with different seeds share
    one valtiny)."""
    test_each_round: bool = True
    """With valtiny selection, also evaluate each round's best and last models on the full val
    list (the final round's always are; with val selection the trainer already did)."""

    @field_validator("alphas")
    @classmethod
    def _alphas_in_range(cls, alphas: list[float]) -> list[float]:
        bad = [a for a in alphas if not 0 < a <= 1]
        if bad:
            raise ValueError(f"labeling ratios must be in (0, 1], got {bad}")
        return alphas

    @field_validator("supervised_overrides")
    @classmethod
    def _known_round0_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        valid = [f"{section}.{key}" for section, (section_cls, allowed) in SUPERVISED_OVERRIDE_KEYS.items()
                 for key in (allowed or section_cls.model_fields)]
        for key, value in overrides.items():
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"supervised_overrides key '{key}' is not one of optim.*, train.*, "
                                 f"data.batch_size{hint}")
            section, field = key.split(".", 1)
            try:
                SUPERVISED_OVERRIDE_KEYS[section][0].model_validate({field: value})
            except ValidationError as err:
                raise ValueError(f"supervised_overrides '{key}': {err.errors()[0]['msg']} (got {value!r})") from None
        return overrides

    @model_validator(mode="after")
    def _valtiny_options(self) -> "DstCbcConfig":
        if self.valtiny_list is not None and self.selection != "valtiny":
            raise ValueError("method.valtiny_list is only used with method.selection=valtiny")
        return self


# --------------------------------------------------------------------------- dynamic loss


def dynamic_weights(logits_u: torch.Tensor, y_hat: torch.Tensor, gamma: float, ignore_index: int) -> torch.Tensor:
    """Eq. 2: ω = (Σ_c y^c f_cur(x)^c)^γ, the current model's probability of the pseudo-label to the
    power γ (detached; the same modulating factor as AEL's re-weighting). 0 where ŷ is ignored."""
    known = y_hat != ignore_index
    p_cur = logits_u.detach().float().softmax(1)
    p_y = p_cur.gather(1, y_hat.masked_fill(~known, 0).unsqueeze(1)).squeeze(1)
    return reweighting_weights(p_y, gamma) * known


def dynamic_self_training_loss(logits: torch.Tensor, target: torch.Tensor, omega: torch.Tensor,
                               ignore_index: int) -> torch.Tensor:
    """Eq. 1 over the joint labeled + pseudo-labeled batch: Σ ω·ℓ_ce divided by the number of
    supervised pixels (not by Σ ω: the authors' DynamicLoss, so low-confidence pseudo-labels lower
    the loss rather than being renormalised away). Labeled pixels carry ω = 1; with ω ≡ 1 this is
    the ``supervised`` loss of the joint batch."""
    known = target != ignore_index
    ce = pixel_cross_entropy(logits, target, ignore_index)
    return weighted_mean(ce, omega * known, denominator=known, normalization="batch")


@register_method
class DstCbc(Method):
    config_class = DstCbcConfig
    uses_unlabeled = True
    strong_view = False

    @classmethod
    def iteration_budget(cls, method_cfg: dict, iterations_per_run: int) -> tuple[int, str]:
        """Round 0 (its own budget, ``supervised_overrides``) plus one budget per self-training round."""
        round0 = int((method_cfg.get("supervised_overrides") or {}).get("optim.iterations", iterations_per_run))
        rounds = len(method_cfg.get("alphas") or PAPER_ALPHAS)
        return round0 + rounds * iterations_per_run, f"{round0} (round 0) + {rounds} x {iterations_per_run}"

    @staticmethod
    def round_plan(cfg: Any, run_dir: Path, env: RoundEnv) -> "SelfTrainingRounds":
        return SelfTrainingRounds(cfg, run_dir, env)

    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        if unlabeled is None:
            raise ValueError("dst_cbc self-training rounds need a pseudo-labeled batch")
        ignore = self.ctx.ignore_index
        x_l, y_l = labeled["image"], labeled["label"]
        x_u, y_hat = unlabeled["image"], unlabeled["label"]  # ŷ: offline pseudo-label, 255 where not selected
        n_l = x_l.shape[0]
        with self.ctx.section("student"), self.ctx.autocast():
            outputs = self.student(torch.cat([x_l, x_u]))  # one forward over the 1:1 batch (§4.2)
        logits_u = outputs["out"][n_l:]
        with self.ctx.section("weights"):
            if self.cfg.weights == "current":
                omega_u = dynamic_weights(logits_u, y_hat, self.cfg.gamma, ignore)  # Eq. 2
            else:  # OW: the labeling model's confidence, stored at labeling time
                omega_u = reweighting_weights(unlabeled["confidence"], self.cfg.gamma) * (y_hat != ignore)
        target = torch.cat([y_l, y_hat])
        omega = torch.cat([torch.ones_like(y_l, dtype=omega_u.dtype), omega_u])  # labeled pixels weigh 1
        loss = dynamic_self_training_loss(outputs["out"], target, omega, ignore)
        if "aux" in outputs and self.cfg.aux_weight > 0:
            loss = loss + self.cfg.aux_weight * dynamic_self_training_loss(outputs["aux"], target, omega, ignore)

        with torch.no_grad():
            known_l, known_u = y_l != ignore, y_hat != ignore
            ce = pixel_cross_entropy(outputs["out"].detach(), target, ignore)
            logs = {
                "loss_labeled": weighted_mean(ce[:n_l], known_l, normalization="batch"),
                "loss_pseudo": weighted_mean(ce[n_l:], omega_u, denominator=known_u, normalization="batch"),
                "omega": weighted_mean(omega_u, known_u, normalization="batch"),
                "pseudo_share": known_u.sum() / (known_l.sum() + known_u.sum()).clamp_min(1),
            }
        return StepOutput(loss=loss, logs=logs)


# --------------------------------------------------------------------------- valtiny


def draw_valtiny(presence: np.ndarray, per_class: int = 1, seed: int = 0) -> list[int]:
    """Indices of a small selection set of about ``per_class`` images per class (the paper's
    valtiny: 20 VOC and 19 Cityscapes images, "roughly one image for each class"): for each class,
    rarest first, ``per_class`` random images that contain it and are not chosen yet. Every class
    of the set is covered; ``presence`` is the (images, classes) table of which classes each
    image's ground truth holds, and the draw is a fixed function of ``seed``."""
    presence = np.asarray(presence, dtype=bool)
    order = np.random.default_rng(seed).permutation(presence.shape[0])
    frequency = presence.sum(0)
    chosen: list[int] = []
    for c in sorted(np.flatnonzero(frequency), key=lambda c: (frequency[c], c)):
        candidates = [int(i) for i in order if presence[i, c] and i not in chosen]
        chosen.extend(candidates[:per_class])
    return sorted(chosen)


# --------------------------------------------------------------------------- the rounds


class SelfTrainingRounds(RoundPlan):
    """DST-CBC's rounds: round 0 supervised; round k pseudo-labels the unlabeled images at α_k with
    the best model so far and fine-tunes on them with the dynamic loss; selection on val or valtiny."""

    columns = (RoundColumn("alpha", "α %", "{:.0f}", percent=True),)

    def __init__(self, cfg: Any, run_dir: Path, env: RoundEnv):
        self.cfg, self.m, self.run_dir, self.env = cfg, cfg.method, Path(run_dir), env
        self.num_rounds = len(self.m.alphas)
        self.selection, self.test_each_round = self.m.selection, self.m.test_each_round
        if self.m.supervised_checkpoint:
            self.round0_checkpoint = Path(self.m.supervised_checkpoint)
            if not self.round0_checkpoint.is_file():
                raise ConfigError(f"method.supervised_checkpoint: {self.round0_checkpoint} does not exist")
        d = cfg.data
        self.definition, self.lists = env.definition, env.lists
        self.spec = self.definition.spec
        self.val = self._listed(self.lists.val, True)
        if not self.lists.unlabeled:
            raise DataError(f"dst_cbc needs unlabeled images, but the {d.dataset} split has none: set data.labeled "
                            "or data.labeled_list / data.unlabeled_list")
        self.unlabeled_images = self._listed(self.lists.unlabeled, False)
        self.labeler = OfflineLabeler(self.unlabeled_images, self.spec, env, cfg.eval, d.crop_size, d.num_workers)

    def _listed(self, pairs, with_labels: bool) -> ListDataset:
        return ListDataset(self.lists.root, pairs, self.spec, eval_transform(self.spec), with_labels=with_labels,
                           image_scale=self.cfg.data.image_scale)

    def describe(self) -> str:
        m = self.m
        return (f"DST-CBC: {len(m.alphas)} self-training round(s) at α = {m.alphas}, γ = {m.gamma:g}, "
                f"{m.thresholds} thresholds, {m.weights}-model weights, selection on {m.selection}")

    def summary(self) -> dict:
        return {"alphas": self.m.alphas, "gamma": self.m.gamma, "thresholds": self.m.thresholds,
                "weights": self.m.weights}

    def round_info(self, k: int) -> dict:
        return {"alpha": self.m.alphas[k - 1] if k > 0 else None}

    def round_config(self, k: int):
        """Round 0 is the ``supervised`` method with ``supervised_overrides``; later rounds start
        from the previous model, not ImageNet."""
        raw = self.cfg.model_dump(mode="json")
        raw["run"]["seed"] = self.cfg.run.seed + k  # fresh augmentation and data order each round
        raw["run"]["name"] = f"{self.cfg.run.name}/round_{k}"
        if k == 0:
            raw["method"] = {"name": "supervised", "aux_weight": self.m.aux_weight}
            for key, value in self.m.supervised_overrides.items():
                section, field = key.split(".", 1)
                raw[section][field] = value
        else:
            raw["model"]["pretrained"] = None
        return validate_config(raw)

    def selection_set(self) -> Any:
        if self.m.selection == "val":
            return self.val
        path = self.run_dir / VALTINY_LIST
        if not path.is_file():
            if self.m.valtiny_list:
                pairs = import_split(self.m.valtiny_list, self.lists.root, self.definition, pool=self.lists.val)
            else:
                presence = np.zeros((len(self.val), self.spec.num_classes), dtype=bool)
                if self.env.is_main:
                    for i in range(len(self.val)):
                        _, label = self.val.decode(i)
                        present = np.unique(label)
                        presence[i, present[present < self.spec.num_classes]] = True
                chosen = draw_valtiny(presence, self.m.valtiny_per_class, self.m.valtiny_seed)
                pairs = [self.lists.val[i] for i in chosen]
            if self.env.is_main:
                write_list_file(path, pairs)
            self.env.barrier()
        pairs = read_list_file(path)
        log.info("model selection on valtiny: %d of %d val images (%s)", len(pairs), len(self.val), path)
        return self._listed(pairs, True)

    def prepare_round(self, k, round_dir, labeler_round, labeler_checkpoint, load_labeler):
        """Algorithm 1 over every unlabeled image with the best model so far (once: the statistics
        file marks the round's pseudo-labels complete), then the pseudo-labeled training set."""
        stats_path = RunLayout(round_dir).pseudo_label_stats
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
        else:
            alpha = self.m.alphas[k - 1]
            log.info("round %d: pseudo-labeling %d images at α = %.0f%% with the round-%d model (%s)", k,
                     len(self.unlabeled_images), 100 * alpha, labeler_round, labeler_checkpoint)
            opts = LabelingOptions(alpha=alpha, per_class=self.m.thresholds == "class",
                                   sample_ratio=self.m.threshold_sample_ratio,
                                   keep_confidence=self.m.weights == "stored", seed=(self.cfg.run.seed, k))
            stats = {"round": k, **self.labeler.label(load_labeler(), Path(round_dir), opts)}
            self.labeler.write_stats(stats_path, stats)
        unlabeled = PseudoLabeledDataset(self.lists.root, Path(round_dir) / PSEUDO_LABEL_LIST, self.spec,
                                         train_transform(self.cfg.data, self.spec), self.cfg.data.image_scale,
                                         with_confidence=self.m.weights == "stored")
        return unlabeled, stats
