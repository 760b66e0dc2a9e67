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

Each round is a separate trainer run in ``<run>/round_k/`` (see docs/dst_cbc.md for the layout);
a round is finished once ``round_k/round.json`` exists, so a killed run resumes in the round it
was in, from that round's ``checkpoints/last.pt``.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import DataConfig, MethodConfig, OptimConfig, TrainConfig, validate_config
from ..data.build import resolve_split
from ..data.definitions import definition_from_config
from ..data.io import Pair, read_list_file, write_list_file
from ..data.list_dataset import ListDataset
from ..data.pseudo_labeled import (CONFIDENCE_DIR, CONFIDENCE_LEVELS, PSEUDO_LABEL_DIR, PseudoLabeledDataset,
                                   read_float32, read_png, write_float32, write_png)
from ..data.splits import import_split
from ..data.transforms import eval_transform, train_transform
from ..errors import ConfigError, DataError
from ..evaluation.evaluator import evaluate
from ..evaluation.inference import predict_probs
from ..evaluation.metrics import ConfusionMatrix
from ..models.checkpoint import load_checkpoint, model_from_checkpoint, model_state_from_checkpoint
from ..parallel import all_reduce_sum
from ..run_layout import ROUND_RECORD, RunLayout, write_atomic
from .base import Method, RoundJob, RoundServices, StepOutput, register_method
from .components.losses import pixel_cross_entropy, reweighting_weights, weighted_mean

log = logging.getLogger("equiseg")

HIGH_BINS = (0x3F800000 >> 16) + 1
"""Bins of the top 16 bits of a float32 in [0, 1] (1.0 = 0x3F800000)."""
LOW_BINS = 1 << 16
PAPER_ALPHAS = (0.2, 0.4, 0.6, 0.8, 1.0)
"""§3.3: 5 self-training rounds labeling 20 % ... 100 % of the pixels of each class."""
AUTHORS_SAMPLE_RATIO = 1 / 16
"""§3.3 samples 5-10 % of the pixels; the authors' code takes every 16th pixel (6.25 %)."""
SUPERVISED_OVERRIDE_KEYS = {"optim": (OptimConfig, None), "train": (TrainConfig, None),
                            "data": (DataConfig, ("batch_size",))}
"""Round-0 override sections and, where restricted, their allowed keys: the model, data split and
evaluation must stay those of the self-training rounds."""

CONFIDENCE_BITS_DIR = "confidence_float32"
"""Pass 1's exact confidences (float32 .npy), read by the threshold and selection passes, then removed."""
PSEUDO_LABEL_LIST = "pseudo_labels.txt"
PSEUDO_LABEL_STATS = "pseudo_labels.json"
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


# --------------------------------------------------------------------------- Algorithm 1


def quantize_confidence(mp: torch.Tensor) -> torch.Tensor:
    """Confidence in [0, 1] → integer level in [0, CONFIDENCE_LEVELS] (long), the 16-bit store the
    OW ablation (``weights: stored``) trains with; thresholds are never taken on it."""
    return (mp.float() * CONFIDENCE_LEVELS).round().long().clamp_(0, CONFIDENCE_LEVELS)


def confidence_bits(mp: torch.Tensor) -> torch.Tensor:
    """The float32 bit pattern of each confidence (long): for p ≥ 0 it orders exactly as p does, so
    thresholds on it rank pixels exactly as the authors' float32 ``sorted`` (ties only where the
    float32 values tie)."""
    return mp.float().clamp(0, 1).contiguous().view(torch.int32).long()


def sample_pixels(shape: tuple[int, ...], ratio: float, seed: tuple[int, ...]) -> torch.Tensor:
    """A random boolean mask keeping about ``ratio`` of the pixels, a fixed function of ``seed``."""
    if ratio >= 1:
        return torch.ones(shape, dtype=torch.bool)
    return torch.from_numpy(np.random.default_rng(seed).random(shape) < ratio)


def high_histogram(ml: torch.Tensor, bits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Lines 7-8, ``r_j = concat(r_j, mp[ml == j])``, kept as counts over the top 16 bits of the
    float32 pattern: (C, HIGH_BINS)."""
    flat = ml.reshape(-1).long() * HIGH_BINS + (bits.reshape(-1) >> 16)
    return torch.bincount(flat, minlength=num_classes * HIGH_BINS).view(num_classes, HIGH_BINS)


def low_histogram(ml: torch.Tensor, bits: torch.Tensor, high: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts over the low 16 bits of the pixels whose top 16 bits equal their class's ``high`` bin
    (the bin holding the class's threshold): (C, LOW_BINS)."""
    ml, bits = ml.reshape(-1).long(), bits.reshape(-1)
    inside = (bits >> 16) == high.to(bits.device)[ml]
    flat = ml[inside] * LOW_BINS + (bits[inside] & 0xFFFF)
    return torch.bincount(flat, minlength=num_classes * LOW_BINS).view(num_classes, LOW_BINS)


def top_alpha_counts(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """⌈α·n⌉ per row (α·n computed exactly: 0.6 x 5 keeps 3, not ⌈3.0000000000000004⌉ = 4)."""
    ratio = Fraction(repr(float(alpha)))
    return torch.tensor([-(-ratio.numerator * int(n) // ratio.denominator) for n in counts.tolist()],
                        device=counts.device)


def kth_largest_bin(histogram: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the bin b holding the k-th largest element, and the rank of that element within b
    (k minus the elements in higher bins). Rows with k = 0 give b = 0."""
    at_least = histogram.flip(1).cumsum(1)   # at_least[j, i]: elements in bins ≥ last - i
    last = histogram.shape[1] - 1
    below = (at_least < k[:, None]).sum(1)
    b = (last - below).clamp_min(0)
    above = torch.where(below > 0, at_least.gather(1, (below - 1).clamp_min(0)[:, None])[:, 0],
                        torch.zeros_like(below))
    return torch.where(k > 0, b, torch.zeros_like(b)), k - above


class TopAlphaThresholds:
    """Lines 9-12 in two passes over the sampled pixels, exact on float32 confidences.

    Pass A counts the top 16 bits of each class's sampled confidences and finds, per class, the bin
    of its ⌈α·n⌉-th largest one; pass B counts the low 16 bits inside that bin only, which pins the
    exact value. Both are sums, so processes simply all-reduce them. t_c is a float32 bit pattern:
    a pixel is kept when ``confidence_bits(mp) ≥ t_ml``. A class with no sampled pixel, and every
    class at α = 1, gets t = 0 (keep all). ``per_class`` False (DST-C) ranks all pixels together."""

    def __init__(self, num_classes: int, alpha: float, per_class: bool = True, device: Any = "cpu"):
        self.num_classes, self.alpha, self.per_class = num_classes, alpha, per_class
        rows = num_classes if per_class else 1
        self.high = torch.zeros(rows, HIGH_BINS, dtype=torch.long, device=device)
        self.low = torch.zeros(rows, LOW_BINS, dtype=torch.long, device=device)
        self.high_bin: Optional[torch.Tensor] = None
        self.rank: Optional[torch.Tensor] = None

    def _rows(self, ml: torch.Tensor) -> torch.Tensor:
        return ml if self.per_class else torch.zeros_like(ml)

    def count_high(self, ml: torch.Tensor, bits: torch.Tensor) -> None:             # pass A
        self.high += high_histogram(self._rows(ml), bits, self.high.shape[0]).to(self.high.device)

    def finish_high(self) -> None:
        self.keep = top_alpha_counts(self.high.sum(1), self.alpha)
        self.high_bin, self.rank = kth_largest_bin(self.high, self.keep)

    def count_low(self, ml: torch.Tensor, bits: torch.Tensor) -> None:              # pass B
        self.low += low_histogram(self._rows(ml), bits, self.high_bin.to(bits.device),
                                  self.low.shape[0]).to(self.low.device)

    def thresholds(self) -> torch.Tensor:
        low_bin, _ = kth_largest_bin(self.low, self.rank)
        t = (self.high_bin << 16) | low_bin
        t = torch.where(self.keep > 0, t, torch.zeros_like(t))
        if self.alpha >= 1:
            t = torch.zeros_like(t)
        return t if self.per_class else t.expand(self.num_classes).clone()

    @property
    def sampled_pixels(self) -> int:
        return int(self.high.sum())


def class_balanced_thresholds(ml: torch.Tensor, mp: torch.Tensor, alpha: float, num_classes: int,
                              per_class: bool = True) -> torch.Tensor:
    """t_c (float32 bit patterns) from sampled pixels held in memory: both passes of
    :class:`TopAlphaThresholds` at once (the driver runs them over the stored maps)."""
    top = TopAlphaThresholds(num_classes, alpha, per_class)
    bits = confidence_bits(mp)
    top.count_high(ml, bits)
    top.finish_high()
    top.count_low(ml, bits)
    return top.thresholds()


def threshold_values(thresholds: torch.Tensor) -> list[float]:
    """The float32 confidences the bit-pattern thresholds stand for."""
    return thresholds.to(torch.int32).view(torch.float32).tolist()


def select_pseudo_labels(ml: torch.Tensor, bits: torch.Tensor, thresholds: torch.Tensor,
                         ignore_index: int) -> torch.Tensor:
    """Lines 13-18 (Eq. 6): Y = ml where mp ≥ t_ml (compared as float32 bit patterns), IGNORE elsewhere."""
    keep = bits >= thresholds.to(ml.device)[ml.long()]
    return torch.where(keep, ml.long(), torch.full_like(ml.long(), ignore_index))


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

    @classmethod
    def iteration_budget(cls, method_cfg: dict, iterations_per_run: int) -> tuple[int, str]:
        """Round 0 (its own budget, ``supervised_overrides``) plus one budget per self-training round."""
        round0 = int((method_cfg.get("supervised_overrides") or {}).get("optim.iterations", iterations_per_run))
        rounds = len(method_cfg.get("alphas") or PAPER_ALPHAS)
        return round0 + rounds * iterations_per_run, f"{round0} (round 0) + {rounds} x {iterations_per_run}"
    uses_unlabeled = True
    strong_view = False

    @staticmethod
    def run_rounds(cfg, run_dir, resume, services: RoundServices):
        return SelfTraining(cfg, Path(run_dir), services, resume=resume is not None).run()

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


class SelfTraining:
    """The DST-CBC driver: round 0, then pseudo-label → fine-tune → select, round after round.

    ``services``: what the driver uses of the engine (one trainer run per round, distributed
    set-up, logging), handed over by the engine; ``train`` replaces ``services.train_round``
    (tests inject a stub).
    """

    def __init__(self, cfg: Any, run_dir: Path, services: RoundServices, resume: bool = False,
                 train: Optional[Callable[[RoundJob], Any]] = None):
        self.cfg, self.m, self.run_dir, self.resume = cfg, cfg.method, Path(run_dir), resume
        self.services = services
        self.train = train or services.train_round
        self.dist = services.init_distributed(cfg.run.device)
        self.device = self.dist.device
        self.autocast = services.autocast_factory(cfg.train.amp, self.device)
        d = cfg.data
        definition = definition_from_config(d)
        self.spec = definition.spec
        self.lists = resolve_split(d, definition)
        self.definition = definition

        def listed(pairs, with_labels):
            return ListDataset(self.lists.root, pairs, self.spec, eval_transform(self.spec), with_labels=with_labels,
                               image_scale=d.image_scale)

        self._listed = listed
        self.val = listed(self.lists.val, True)
        if not self.lists.unlabeled:
            raise DataError(f"dst_cbc needs unlabeled images, but the {d.dataset} split has none: set data.labeled "
                            "or data.labeled_list / data.unlabeled_list")
        self.unlabeled_images = listed(self.lists.unlabeled, False)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def _barrier(self) -> None:
        self.services.barrier()

    def _write_json(self, path: Path, payload: Any) -> None:
        """Atomically (temporary file + rename), on the main process only."""
        if self.is_main:
            write_atomic(path, json.dumps(payload, indent=2) + "\n")
        self._barrier()

    def _rel(self, path: Path) -> str:
        path = Path(path)
        try:
            return path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def _abs(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.run_dir / p

    def _setup_logging(self) -> None:
        self.services.setup_logging(self.run_dir, self.is_main)

    def _round_config(self, k: int):
        """The trainer config of round k: round 0 is the ``supervised`` method with
        ``supervised_overrides``; later rounds start from the previous model, not ImageNet."""
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

    # ------------------------------------------------------------------ models
    def _load_model(self, checkpoint: Path) -> tuple[torch.nn.Module, Optional[int]]:
        """The reported model of a checkpoint, in eval mode on the run's device, and its iteration."""
        model, ckpt, _ = model_from_checkpoint(checkpoint, self.cfg.model, self.spec.num_classes)
        return model.to(self.device), ckpt.get("iteration")

    def _evaluate(self, checkpoint: Path, dataset: Any) -> dict:
        model, iteration = self._load_model(checkpoint)
        result = evaluate(model, dataset, self.spec, self.cfg.eval, self.device, autocast=self.autocast,
                          max_images=self.cfg.eval.max_images, crop_size=self.cfg.data.crop_size)
        return {"iteration": iteration, **result.to_dict()}

    # ------------------------------------------------------------------ selection set
    def _selection_set(self) -> Any:
        if self.m.selection == "val":
            return self.val
        path = self.run_dir / VALTINY_LIST
        if not path.is_file():
            if self.m.valtiny_list:
                pairs = import_split(self.m.valtiny_list, self.lists.root, self.definition, pool=self.lists.val)
            else:
                presence = np.zeros((len(self.val), self.spec.num_classes), dtype=bool)
                if self.is_main:
                    for i in range(len(self.val)):
                        _, label = self.val.decode(i)
                        present = np.unique(label)
                        presence[i, present[present < self.spec.num_classes]] = True
                chosen = draw_valtiny(presence, self.m.valtiny_per_class, self.m.valtiny_seed)
                pairs = [self.lists.val[i] for i in chosen]
            if self.is_main:
                write_list_file(path, pairs)
            self._barrier()
        pairs = read_list_file(path)
        log.info("model selection on valtiny: %d of %d val images (%s)", len(pairs), len(self.val), path)
        return self._listed(pairs, True)

    # ------------------------------------------------------------------ pseudo-labeling
    def _pseudo_label(self, k: int, alpha: float, labeler: torch.nn.Module, round_dir: Path) -> dict:
        """Algorithm 1 over every unlabeled image; writes the round's pseudo-labels, their list and
        ``pseudo_labels.json`` (thresholds, coverage, quality against ground truth when known)."""
        top = TopAlphaThresholds(self.spec.num_classes, alpha, self.m.thresholds == "class", self.device)
        self._predict_and_count(k, labeler, round_dir, top)                                 # lines 1-8
        self._count_low_bits(k, round_dir, top)                                             # lines 9-12
        thresholds = top.thresholds()
        counts, quality = self._select(thresholds.cpu(), round_dir)                         # lines 13-18
        self._barrier()
        if self.is_main:
            shutil.rmtree(round_dir / CONFIDENCE_BITS_DIR, ignore_errors=True)
            if self.m.weights != "stored":
                shutil.rmtree(round_dir / CONFIDENCE_DIR, ignore_errors=True)  # only OW trains on them
            images = self.unlabeled_images
            write_list_file(round_dir / PSEUDO_LABEL_LIST,
                            [Pair(p.image, f"{PSEUDO_LABEL_DIR}/{n}.png") for p, n in zip(images.pairs, images.names)])
        predicted, kept = counts["predicted"], counts["kept"]
        stats = {
            "round": k, "alpha": alpha, "thresholds": self.m.thresholds,
            "sample_ratio": self.m.threshold_sample_ratio, "sampled_pixels": top.sampled_pixels,
            "class_thresholds": threshold_values(thresholds.cpu()),
            "coverage": int(kept.sum()) / max(1, int(counts["pixels"])),
            "class_coverage": [kp / pr if pr else None for kp, pr in zip(kept.tolist(), predicted.tolist())],
            "predicted_pixels": predicted.tolist(), "kept_pixels": kept.tolist(),
            "num_images": len(self.unlabeled_images), "num_images_with_gt": int(counts["with_gt"]),
            "miou": None if quality is None else quality["miou"], "quality": quality,
        }
        self._write_json(round_dir / PSEUDO_LABEL_STATS, stats)  # marks the pseudo-labels complete
        return stats

    def _sample(self, k: int, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        return sample_pixels(shape, self.m.threshold_sample_ratio, (self.cfg.run.seed, k, i))

    def _predict_and_count(self, k: int, labeler: torch.nn.Module, round_dir: Path, top: TopAlphaThresholds) -> None:
        """Pass 1: ml, mp of every image (written to the round folder) and pass A of the thresholds
        over the sampled pixels, summed over all processes."""
        C, images, names = self.spec.num_classes, self.unlabeled_images, self.unlabeled_images.names
        mode = "whole" if self.cfg.eval.mode == "center" else self.cfg.eval.mode  # label every pixel
        window = self.cfg.eval.crop_size or self.cfg.data.crop_size
        with torch.no_grad():
            for i, x in _prefetch(_ImageView(images, self._shard()), self.cfg.data.num_workers):
                p = predict_probs(labeler, x[None].to(self.device), mode=mode, crop_size=window,
                                  stride=self.cfg.eval.stride, num_classes=C, autocast=self.autocast)[0]
                mp, ml = p.max(0)                                                        # lines 4-6
                sample = self._sample(k, i, tuple(ml.shape)).to(self.device)
                top.count_high(ml[sample], confidence_bits(mp[sample]))                  # lines 7-8
                name = f"{names[i]}.png"
                write_png(round_dir / PSEUDO_LABEL_DIR / name, ml.cpu().numpy().astype(np.uint8))
                write_float32(round_dir / CONFIDENCE_BITS_DIR / f"{names[i]}.npy", mp)
                if self.m.weights == "stored":
                    write_png(round_dir / CONFIDENCE_DIR / name,
                               quantize_confidence(mp).cpu().numpy().astype(np.uint16))
        top.high.copy_(all_reduce_sum(top.high, device=self.device)[0])
        top.finish_high()

    def _count_low_bits(self, k: int, round_dir: Path, top: TopAlphaThresholds) -> None:
        """Pass B of the thresholds: the same sampled pixels, read back from the stored maps."""
        for i, ml, mp, _ in _prefetch(_RawView(self.unlabeled_images, self._shard(), round_dir, with_gt=False),
                                      self.cfg.data.num_workers):
            sample = self._sample(k, i, tuple(ml.shape))
            top.count_low(ml[sample], confidence_bits(mp[sample]))
        top.low.copy_(all_reduce_sum(top.low, device=self.device)[0])

    def _select(self, thresholds: torch.Tensor, round_dir: Path) -> tuple[dict, Optional[dict]]:
        """Pass 2: apply the thresholds to the stored (ml, mp) maps, overwrite the pseudo-labels, and
        count predicted / kept pixels per class and the pseudo-labels' confusion with ground truth."""
        C, ignore, names = self.spec.num_classes, self.spec.ignore_index, self.unlabeled_images.names
        counts = {"predicted": torch.zeros(C, dtype=torch.long), "kept": torch.zeros(C, dtype=torch.long),
                  "pixels": torch.zeros(1, dtype=torch.long), "with_gt": torch.zeros(1, dtype=torch.long)}
        matrix = ConfusionMatrix(C, ignore, device=self.device)
        for i, ml, mp, gt in _prefetch(_RawView(self.unlabeled_images, self._shard(), round_dir),
                                       self.cfg.data.num_workers):
            y = select_pseudo_labels(ml, confidence_bits(mp), thresholds, ignore)          # lines 13-18
            write_png(round_dir / PSEUDO_LABEL_DIR / f"{names[i]}.png", y.numpy().astype(np.uint8))
            kept = y != ignore
            counts["predicted"] += torch.bincount(ml.reshape(-1), minlength=C)
            counts["kept"] += torch.bincount(y[kept], minlength=C)
            counts["pixels"] += y.numel()
            if gt is not None:  # ground truth is read for this report only, never for training
                counts["with_gt"] += 1
                matrix.update(y[kept], gt[kept])
        for t in counts.values():
            t.copy_(all_reduce_sum(t, device=self.device)[0])
        matrix.all_reduce()
        self._barrier()
        quality = matrix.compute(self.spec.tail_ids).to_dict(list(self.spec.class_names)) if counts["with_gt"] else None
        return counts, quality

    def _shard(self) -> range:
        """This process's share of the unlabeled images."""
        return range(self.dist.rank, len(self.unlabeled_images), self.dist.world_size)

    # ------------------------------------------------------------------ one round
    def _read_record(self, round_dir: Path) -> Optional[dict]:
        path = round_dir / ROUND_RECORD
        return json.loads(path.read_text()) if path.is_file() else None

    def _mark_progress(self, round_dir: Path) -> None:
        """Point ``<run>/checkpoints/last.pt`` (a relative symlink) at ``round_dir``'s last.pt, so that
        the CLI sees a started run: ``--resume auto`` finds a checkpoint and ``--overwrite`` clears
        the folder. The driver itself resumes from the round records, whatever path it is given."""
        if self.is_main:
            link = RunLayout(self.run_dir).last_checkpoint
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            try:
                os.symlink(os.path.relpath(RunLayout(round_dir).last_checkpoint, link.parent), link)
            except OSError:  # no symlinks here: resume with --resume <any round's last.pt>
                pass
        self._barrier()

    def _round0(self, val_set: Any) -> dict:
        round_dir = self.run_dir / "round_0"
        record = self._read_record(round_dir)
        if record is not None:
            return record
        self._mark_progress(round_dir)
        if self.m.supervised_checkpoint:
            checkpoint = Path(self.m.supervised_checkpoint)
            if not checkpoint.is_file():
                raise ConfigError(f"method.supervised_checkpoint: {checkpoint} does not exist")
            log.info("round 0: the supervised model %s", checkpoint)
            score = self._evaluate(checkpoint, val_set)
            best = last = {"iteration": score["iteration"], "miou": score["miou"], "checkpoint": self._rel(checkpoint)}
            val_best = val_last = score if self.m.selection == "val" else None
        else:
            log.info("round 0: supervised training on the labeled images")
            result = self._train(0, round_dir, None, val_set, None)
            best, last = self._summary(result.best, round_dir, "best"), self._summary(result.last, round_dir, "last")
            val_best, val_last = (result.best, result.last) if self.m.selection == "val" else (None, None)
        record = {"round": 0, "alpha": None, "labeler": None, "pseudo_labels": None, "best": best, "last": last,
                  "selected": {"round": 0, **best}, "val_best": val_best, "val_last": val_last}
        record = self._test(record, final=not self.m.alphas)
        self._write_json(round_dir / ROUND_RECORD, record)
        return record

    def _round(self, k: int, alpha: float, previous: dict, val_set: Any) -> dict:
        round_dir = self.run_dir / f"round_{k}"
        record = self._read_record(round_dir)
        if record is not None:
            return record
        self._mark_progress(self.run_dir / f"round_{k - 1}")  # a finished round's checkpoint
        selected = previous["selected"]
        labeler_path = self._abs(selected["checkpoint"])
        stats_path = round_dir / PSEUDO_LABEL_STATS
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
        else:
            log.info("round %d: pseudo-labeling %d images at α = %.0f%% with the round-%d model (%s)", k,
                     len(self.unlabeled_images), 100 * alpha, selected["round"], labeler_path)
            stats = self._pseudo_label(k, alpha, self._load_model(labeler_path)[0], round_dir)
        log.info("round %d: pseudo-labels cover %.1f%% of the pixels; pseudo-label mIoU %s", k,
                 100 * stats["coverage"], "n/a (no ground truth)" if stats["miou"] is None
                 else f"{100 * stats['miou']:.2f} on {stats['num_images_with_gt']} images")
        self._metrics({"round": k, "alpha": alpha, "pseudo_label_miou": stats["miou"], "coverage": stats["coverage"]})

        unlabeled = PseudoLabeledDataset(self.lists.root, round_dir / PSEUDO_LABEL_LIST, self.spec,
                                         train_transform(self.cfg.data, self.spec), self.cfg.data.image_scale,
                                         with_confidence=self.m.weights == "stored")
        result = self._train(k, round_dir, labeler_path, val_set, unlabeled)
        best, last = self._summary(result.best, round_dir, "best"), self._summary(result.last, round_dir, "last")
        improved = best["miou"] is not None and best["miou"] > selected["miou"]
        record = {"round": k, "alpha": alpha, "labeler": selected,
                  "pseudo_labels": {key: stats[key] for key in ("coverage", "miou", "num_images", "num_images_with_gt",
                                                                "class_thresholds")},
                  "best": best, "last": last, "selected": {"round": k, **best} if improved else selected,
                  "val_best": result.best if self.m.selection == "val" else None,
                  "val_last": result.last if self.m.selection == "val" else None}
        record = self._test(record, final=k == len(self.m.alphas))
        self._write_json(round_dir / ROUND_RECORD, record)
        return record

    def _train(self, k: int, round_dir: Path, init: Optional[Path], val_set: Any, unlabeled: Any):
        last = RunLayout(round_dir).last_checkpoint
        resume = last if self.resume and last.is_file() else None
        init_state = None
        if init is not None and resume is None:
            init_state, _ = model_state_from_checkpoint(load_checkpoint(init, map_location="cpu"))
        job = RoundJob(k, self._round_config(k), round_dir, resume, init, init_state, val_set, unlabeled)
        try:
            return self.train(job)
        finally:
            self._setup_logging()  # the trainer logged to round_dir/train.log

    def _summary(self, result: dict, round_dir: Path, which: str) -> dict:
        return {"iteration": result.get("iteration"), "miou": result.get("miou"),
                "checkpoint": self._rel(RunLayout(round_dir).checkpoint(which))}

    def _test(self, record: dict, final: bool) -> dict:
        """Full-val numbers of the round's best and last models when selection used valtiny."""
        if self.m.selection == "val" or not (final or self.m.test_each_round):
            return record
        if record["val_best"] is None:
            record["val_best"] = self._evaluate(self._abs(record["best"]["checkpoint"]), self.val)
        if record["val_last"] is None:
            same = record["last"]["checkpoint"] == record["best"]["checkpoint"]
            record["val_last"] = record["val_best"] if same else self._evaluate(self._abs(record["last"]["checkpoint"]),
                                                                               self.val)
        return record

    def _metrics(self, entry: dict) -> None:
        if self.is_main:
            with open(RunLayout(self.run_dir).metrics, "a") as f:
                f.write(json.dumps(entry) + "\n")

    # ------------------------------------------------------------------ the run
    def _prepare_folder(self) -> None:
        import yaml

        started = sorted(p.name for p in self.run_dir.glob("round_*") if p.is_dir())
        if started and not self.resume:
            raise ConfigError(f"run folder {self.run_dir} already holds DST-CBC rounds ({', '.join(started)}); "
                              "continue it with --resume or start afresh with --overwrite")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            saved = RunLayout(self.run_dir).config
            text = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
            if saved.is_file() and self.resume and saved.read_text() != text:
                log.warning("resuming %s with a config that differs from its config.yaml", self.run_dir)
            saved.write_text(text)
        self._barrier()

    def run(self):
        self._prepare_folder()
        self._setup_logging()
        log.info("DST-CBC: %d self-training round(s) at α = %s, γ = %g, %s thresholds, %s-model weights, "
                 "selection on %s", len(self.m.alphas), self.m.alphas, self.m.gamma, self.m.thresholds,
                 self.m.weights, self.m.selection)
        val_set = self._selection_set()
        records = [self._round0(val_set)]
        for k, alpha in enumerate(self.m.alphas, start=1):
            records.append(self._round(k, alpha, records[-1], val_set))
        payload = self._results(records, val_set)
        log.info("DST-CBC rounds (mIoU %%; selection on %s):\n%s", self.m.selection, round_table(payload["rounds"]))
        return self.services.result(self.run_dir, payload["last"], payload["selected"],
                                    payload["selected"]["iteration"])

    def _results(self, records: list[dict], val_set: Any) -> dict:
        final = records[-1]
        selected = final["selected"]
        source = records[selected["round"]]
        selected_val = source["val_best"] or self._evaluate(self._abs(selected["checkpoint"]), self.val)
        last_val = final["val_last"] or self._evaluate(self._abs(final["last"]["checkpoint"]), self.val)

        def entry(record: dict, which: str, val_eval: dict) -> dict:
            info = record["best"] if which == "best" else record["last"]
            return {**val_eval, "round": record["round"], "iteration": info["iteration"],
                    "selection_miou": info["miou"], "checkpoint": info["checkpoint"]}

        payload = {
            "method": "dst_cbc", "dataset": self.spec.name, "selection": self.m.selection,
            "selection_images": len(val_set), "alphas": self.m.alphas, "gamma": self.m.gamma,
            "thresholds": self.m.thresholds, "weights": self.m.weights,
            "selected": entry(source, "best", selected_val),
            "last": entry(final, "last", last_val),
            "rounds": [{
                "round": r["round"], "alpha": r["alpha"],
                "pseudo_label_miou": r["pseudo_labels"]["miou"] if r["pseudo_labels"] else None,
                "coverage": r["pseudo_labels"]["coverage"] if r["pseudo_labels"] else None,
                "best_iteration": r["best"]["iteration"], "best_selection_miou": r["best"]["miou"],
                "last_selection_miou": r["last"]["miou"],
                "best_val_miou": r["val_best"]["miou"] if r["val_best"] else None,
                "last_val_miou": r["val_last"]["miou"] if r["val_last"] else None,
                "selected_round": r["selected"]["round"],
            } for r in records],
        }
        payload["best"] = payload["selected"]  # the trainer's results.json key for the reported model
        self._write_json(RunLayout(self.run_dir).results, payload)
        if self.is_main:
            for which, entry_ in (("best", payload["selected"]), ("last", payload["last"])):
                _link_or_copy(self._abs(entry_["checkpoint"]), RunLayout(self.run_dir).checkpoint(which))
        self._barrier()
        return payload


def round_table(rows: list[dict]) -> str:
    """Fixed-width per-round table (percentages)."""
    cols = (("round", "round", "{:d}"), ("alpha", "α %", "{:.0f}"), ("pseudo_label_miou", "pseudo mIoU", "{:.2f}"),
            ("coverage", "coverage", "{:.1f}"), ("best_iteration", "best it", "{:d}"),
            ("best_selection_miou", "sel best", "{:.2f}"), ("last_selection_miou", "sel last", "{:.2f}"),
            ("best_val_miou", "val best", "{:.2f}"), ("last_val_miou", "val last", "{:.2f}"),
            ("selected_round", "selected", "{:d}"))
    percent = {"alpha", "pseudo_label_miou", "coverage", "best_selection_miou", "last_selection_miou",
               "best_val_miou", "last_val_miou"}
    lines = ["  ".join(f"{title:>11}" for _, title, _ in cols)]
    for row in rows:
        cells = []
        for key, _, fmt in cols:
            value = row.get(key)
            text = "-" if value is None else fmt.format(100 * value if key in percent else value)
            cells.append(f"{text:>11}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


class _ImageView(torch.utils.data.Dataset):
    """Pass 1 input: (index, normalised image at the working resolution) for the listed indices."""

    def __init__(self, images: Any, indices: range):
        self.images, self.indices = images, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        return i, self.images.load(i)["image"]


class _RawView(torch.utils.data.Dataset):
    """Pass B / pass 2 input: (index, ml, float32 mp, ground truth or None) at the working resolution."""

    def __init__(self, images: Any, indices: range, round_dir: Path, with_gt: bool = True):
        self.images, self.indices, self.round_dir, self.with_gt = images, list(indices), round_dir, with_gt
        self.names = images.names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        name = f"{self.names[i]}.png"
        ml = torch.from_numpy(read_png(self.round_dir / PSEUDO_LABEL_DIR / name).astype(np.int64))
        mp = torch.from_numpy(read_float32(self.round_dir / CONFIDENCE_BITS_DIR / f"{self.names[i]}.npy"))
        gt = None
        if self.with_gt and self.images.label_path(i) is not None:  # known: to measure the pseudo-labels
            gt = torch.from_numpy(self.images.decode(i, with_label=True)[1].astype(np.int64))
        return i, ml, mp, gt


def _prefetch(dataset: torch.utils.data.Dataset, num_workers: int):
    """Items one by one, decoded in worker processes."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)

