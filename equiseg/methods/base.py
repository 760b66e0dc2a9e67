"""The contract between the training engine and a method.

The engine owns the loop, data loading, optimizer, LR schedule, AMP, DDP, checkpoints and
evaluation. A method owns what happens inside one step: which forwards to run, how to mix and
weight, and what loss to return. Method state (EMA teacher, confidence bank, ...) is registered
on the method (an ``nn.Module``) so it moves with ``.to(device)`` and is saved in checkpoints.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

import torch
from torch import nn

from ..config import MethodConfig
from ..data.transforms import PhotometricAug
from ..registry import METHODS


def register_method(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make the method findable by its config's ``name``."""
    name = cls.config_class.model_fields["name"].default
    if not name:
        raise TypeError(f"{cls.__name__}.config_class must give 'name' a default")
    return METHODS.register(name, cls)


@dataclass
class RoundJob:
    """One trainer run of a multi-round method's round, as the engine's round loop
    (``engine/rounds.py``) runs it."""

    round: int
    cfg: Any
    round_dir: Any
    resume: Optional[Any]
    """``round_dir/checkpoints/last.pt`` when a killed round is continued."""
    init_checkpoint: Optional[Any]
    """The checkpoint the round starts from (the best model so far); None for round 0."""
    init_state: Optional[dict]
    val: Any
    """The selection set the trainer evaluates on (val or a subset of it)."""
    unlabeled: Optional[Any]
    """The round's (pseudo-labeled) unlabeled set, replacing the one the trainer would build."""


@dataclass(frozen=True)
class RoundEnv:
    """What the engine gives a round plan: the run's data split and the processes it runs in."""

    definition: Any
    """The dataset's :class:`~equiseg.data.definitions.base.DatasetDefinition` (``.spec``: its classes)."""
    lists: Any
    """The run's split (:class:`~equiseg.data.build.SplitLists`: root, labeled, unlabeled and val pairs)."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class RoundColumn:
    """A method's column of the per-round table (``key`` of ``RoundPlan.round_info``)."""

    key: str
    title: str
    fmt: str
    percent: bool = False


class RoundPlan:
    """What a multi-round method (DST-CBC's offline self-training) says about its rounds; the
    engine's round loop (``engine/rounds.py``) does the rest: round folders and records, resume,
    one trainer run per round, model selection, full-val tests and results.json.

    Round 0 trains ``round_config(0)`` on the labeled images (or takes ``round0_checkpoint``);
    round k = 1..``num_rounds`` gets its unlabeled set from ``prepare_round`` (pseudo-labels of the
    best model so far) and fine-tunes from that model with ``round_config(k)``."""

    num_rounds: int
    spec: Any
    """The dataset's :class:`~equiseg.data.spec.DatasetSpec`."""
    val: Any
    """The full val set (the numbers reported)."""
    selection: str = "val"
    """Name of the model-selection set; ``"val"`` means ``val`` itself."""
    round0_checkpoint: Optional[Any] = None
    test_each_round: bool = True
    """With a selection set other than val: evaluate each round's models on val too (the last
    round's always are)."""
    columns: tuple[RoundColumn, ...] = ()

    def describe(self) -> str:
        """One log line: what the rounds will do."""
        raise NotImplementedError

    def summary(self) -> dict:
        """The method's settings, for results.json."""
        return {}

    def round_info(self, k: int) -> dict:
        """Round k's own parameters (e.g. its labeling ratio), kept in its record and table row."""
        return {}

    def round_config(self, k: int) -> Any:
        raise NotImplementedError

    def selection_set(self) -> Any:
        return self.val

    def prepare_round(self, k: int, round_dir: Any, labeler_round: int, labeler_checkpoint: Any,
                      load_labeler: Callable[[], nn.Module]) -> tuple[Any, dict]:
        """Round k's unlabeled training set and a summary of it (at least ``coverage``, ``miou``,
        the pseudo-labels' mIoU against ground truth or None, and ``num_images_with_gt``). Resumable: a round whose
        pseudo-labels are complete in ``round_dir`` is read back, not labeled again."""
        raise NotImplementedError


@dataclass(frozen=True)
class PerClassLog:
    """A per-class series a method logs as ``<prefix><class name>`` (and summary series), which
    ``equiseg report`` draws as a heat map in a section of its own."""

    prefix: str
    anchor: str
    """The report section's id."""
    title: str
    heading: str
    """Above the heat map (HTML)."""
    heat_map_title: str
    note: str
    """Below the heat map: how to read it (HTML)."""
    summary_keys: tuple[str, ...] = ()
    summary_title: str = "summary"


@dataclass
class MethodContext:
    """What a method may know about the run, beyond its own config."""

    num_classes: int
    ignore_index: int
    device: torch.device
    world_size: int = 1
    rank: int = 0
    total_iterations: int = 1
    class_names: tuple[str, ...] = ()
    labeled_dataset: Any = None
    """The labeled training dataset (``load(index, seed)`` gives an augmented sample)."""
    unlabeled_dataset: Any = None
    """The unlabeled training dataset, for methods that fetch specific images (AEL's adaptive CutMix)."""
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    """Enters the run's mixed-precision context (a no-op when AMP is off)."""
    timer: Any = None
    """An :class:`equiseg.engine.timing.StepTimer`; ``with ctx.section("teacher"):`` times a part."""
    generator: Optional[torch.Generator] = None

    def section(self, name: str) -> contextlib.AbstractContextManager:
        return self.timer.section(name) if self.timer is not None else contextlib.nullcontext()


@dataclass
class PseudoTargets:
    """What a step's unlabeled loss trained on, per trained pixel (B', H, W), for the engine's
    pseudo-label audit only (it never feeds back into training).

    ``label``: the pixel's pseudo-label (``ignore_index``: none); ``weight``: its share a_ij of L_u
    (L_u = Σ a_ij ℓ_ij); ``origin``: the flat index of the pixel of the loaded unlabeled batch it
    was cut from, -1 when it came from elsewhere (e.g. AEL's fetched images)."""

    label: torch.Tensor
    weight: torch.Tensor
    origin: torch.Tensor

    @staticmethod
    def concat(parts: list["PseudoTargets"], scales: Optional[list[float]] = None) -> "PseudoTargets":
        """Several branches' targets as one, each branch's weights times its factor in the loss."""
        scales = scales or [1.0] * len(parts)
        return PseudoTargets(torch.cat([p.label for p in parts]),
                             torch.cat([p.weight * s for p, s in zip(parts, scales)]),
                             torch.cat([p.origin for p in parts]))


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    """Scalars to log (floats or 0-d tensors; the engine detaches and averages them)."""
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    """Optional visuals for TensorBoard (e.g. pseudo-labels), logged on sample steps."""
    pseudo_targets: Optional[PseudoTargets] = None
    """The unlabeled loss's targets, for the pseudo-label audit (None on labeled-only steps)."""


class Method(nn.Module):
    config_class: ClassVar[type[MethodConfig]]
    uses_unlabeled: ClassVar[bool] = False
    strong_view: ClassVar[Union[bool, PhotometricAug]] = False
    """Whether unlabeled samples need a strongly augmented view (``image_strong``), or the
    photometric augment that makes it (HagSeg's intensity pool); see :meth:`unlabeled_view`."""

    per_class_logs: ClassVar[tuple[PerClassLog, ...]] = ()
    """Per-class series the report draws (AEL: its confidence bank)."""
    round_plan: ClassVar[Optional[Callable[..., RoundPlan]]] = None
    """Offline multi-round methods (DST-CBC) set this to ``f(cfg, run_dir, env) -> RoundPlan``
    (``env``: a :class:`RoundEnv`); the engine (``engine/run.py``) then runs the rounds instead of
    one trainer run."""

    @classmethod
    def unlabeled_view(cls, cfg: MethodConfig) -> Union[bool, PhotometricAug]:
        """The ``strong_view`` the data pipeline gives the unlabeled samples under this method's
        options (a method whose view is configurable overrides this)."""
        return cls.strong_view

    @classmethod
    def iteration_budget(cls, method_cfg: dict, iterations_per_run: int) -> tuple[int, str]:
        """Optimizer steps of a whole run, as a number and in words (multi-round methods add
        their rounds); ``method_cfg`` is the raw ``method`` section of a run's config."""
        return iterations_per_run, str(iterations_per_run)

    def __init__(self, cfg: MethodConfig, student: nn.Module, ctx: MethodContext):
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx
        # The student is owned by the engine (it may be DDP-wrapped and is saved as "model"):
        # keep it out of this module's parameters and state_dict.
        object.__setattr__(self, "student", student)

    # ---- the step
    def training_step(self, labeled: dict, unlabeled: Optional[dict], iteration: int) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, iteration: int) -> None:
        """Called after each optimizer step (EMA updates live here)."""

    def lr_restarts(self) -> tuple[int, ...]:
        """Iterations at which the learning-rate schedule starts over (a new phase of the method)."""
        return ()

    # ---- evaluation
    @property
    def reported_model(self) -> str:
        """Name of the model the run reports and saves as its best (a key of ``eval_models``)."""
        return "student"

    def eval_models(self, iteration: int) -> dict[str, nn.Module]:
        """Models to evaluate after ``iteration`` optimizer steps, by name, the reported one first
        once it exists."""
        return {"student": unwrap(self.student)}


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module behind a DDP wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
