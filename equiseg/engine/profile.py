"""Per-step time of several methods, measured in one process, interleaved.

Each config builds a full :class:`Trainer` (data loaders, model, method); steps are timed in rounds
that alternate between the methods, so machine noise hits every method alike and the ratios are
meaningful even on a busy machine. The breakdown comes from the engine's StepTimer (see
:data:`equiseg.engine.timing.SECTIONS`). Used by ``benchmarks/step_time.py`` and
``equiseg bench --step-profile``.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..config import Config, apply_overrides, validate_config
from .timing import SECTIONS

log = logging.getLogger("equiseg")

NEVER = 1_000_000_000
"""An iteration count no profile reaches: evaluation, samples, checkpoints and logs stay off."""
PROFILE_OVERRIDES = (f"optim.iterations={NEVER}", f"train.eval_every={NEVER}", f"train.sample_every={NEVER}",
                     f"train.checkpoint_every={NEVER}", f"train.log_every={NEVER}", "train.progress_bar=false")
DEFAULT_STEPS, DEFAULT_ROUNDS, DEFAULT_WARMUP = 10, 3, 3


@dataclass
class StepProfile:
    """Median over rounds of one method's step time and its parts (milliseconds)."""

    name: str
    step_ms: float
    sections: dict[str, float]
    round_step_ms: list[float] = field(default_factory=list)

    @property
    def other_ms(self) -> float:
        """Losses and bookkeeping outside the named sections."""
        return self.step_ms - sum(self.sections.values())

    @property
    def data_share(self) -> float:
        return self.sections.get("data", 0.0) / self.step_ms if self.step_ms > 0 else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "step_ms": self.step_ms, "sections_ms": self.sections,
                "other_ms": self.other_ms, "data_share": self.data_share, "round_step_ms": self.round_step_ms}


def profiling_config(cfg: Config, extra_overrides: Sequence[str] = ()) -> Config:
    """``cfg`` with evaluation, samples, checkpoints and logging pushed out of reach."""
    return validate_config(apply_overrides(cfg.model_dump(mode="json"), [*PROFILE_OVERRIDES, *extra_overrides]))


def profile_steps(configs: Sequence[Config], steps: int = DEFAULT_STEPS, rounds: int = DEFAULT_ROUNDS,
                  warmup: int = DEFAULT_WARMUP, names: Optional[Sequence[str]] = None) -> list[StepProfile]:
    """Time ``steps`` training steps per config per round, interleaved over ``rounds``, after
    ``warmup`` untimed steps each. ``names`` label the rows (default: each config's method)."""
    from .trainer import Trainer, setup_logging

    names = list(names) if names is not None else [cfg.method.name for cfg in configs]
    level = log.level
    runs = []
    with tempfile.TemporaryDirectory(prefix="equiseg_profile_") as tmp:
        try:
            for i, (name, cfg) in enumerate(zip(names, configs)):
                trainer = Trainer(profiling_config(cfg), Path(tmp) / f"{i}_{name}")
                log.setLevel(logging.WARNING)  # the trainer's set-up re-enables INFO; keep the table readable
                iterators = trainer.data_iterators()
                trainer.student.train()
                trainer.method.train()
                for _ in range(warmup):
                    trainer.train_step(*iterators)
                runs.append((name, trainer, iterators, [], {k: [] for k in SECTIONS}))
            for _ in range(rounds):
                for _, trainer, iterators, step_s, sections in runs:
                    trainer.timer.reset()
                    start = time.perf_counter()
                    for _ in range(steps):
                        trainer.train_step(*iterators)
                    step_s.append((time.perf_counter() - start) / steps)
                    ms = trainer.timer.mean_ms()
                    for k in SECTIONS:
                        sections[k].append(ms.get(k, 0.0))
        finally:
            setup_logging(None, is_main=True)  # close the log file in the temporary run folder
            log.setLevel(level)
    return [StepProfile(name, 1000 * statistics.median(step_s), {k: statistics.median(v) for k, v in sections.items()},
                        [1000 * s for s in step_s])
            for name, _, _, step_s, sections in runs]


def speed_table(profiles: Sequence[StepProfile], baselines: Sequence[str] = ()) -> str:
    """Markdown: ms/step, ratio to each profiled baseline (default: the first profile), the section
    split, data wait %."""
    by_name = {p.name: p for p in profiles}
    bases = [b for b in baselines if b in by_name] or [profiles[0].name]
    header = ["method", "ms/step", *[f"x {b}" for b in bases], *[f"{k} ms" for k in SECTIONS], "other ms", "data %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in profiles:
        ratios = [f"{p.step_ms / by_name[b].step_ms:.2f}" for b in bases]
        row = [p.name, f"{p.step_ms:.0f}", *ratios, *[f"{p.sections[k]:.0f}" for k in SECTIONS],
               f"{p.other_ms:.0f}", f"{100 * p.data_share:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
