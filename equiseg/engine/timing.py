"""Per-step wall-clock breakdown (data wait, teacher, student, extras, optimizer, ...)."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

SECTIONS = ("data", "teacher", "student", "extras", "backward", "optimizer")
"""The named parts of a training step, in the order they run: data wait, teacher forward, student
forward, method extras (bank, sampling, mixing, hardness), backward, optimizer step. Methods may
add their own (DST-CBC's ``weights``); time outside every section is bookkeeping and the loss."""


class StepTimer:
    """Accumulates seconds per named section. With ``sync=True`` CUDA work is synchronized at
    section boundaries so GPU time lands in the right section (slower; for profiling only)."""

    def __init__(self, sync: bool = False):
        self.sync = sync and torch.cuda.is_available()
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def section(self, name: str):
        start = self._now()
        try:
            yield
        finally:
            self.totals[name] += self._now() - start

    def end_step(self) -> None:
        self.steps += 1

    def mean_ms(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {k: 1000.0 * v / n for k, v in sorted(self.totals.items())}

    def reset(self) -> None:
        self.totals.clear()
        self.steps = 0
