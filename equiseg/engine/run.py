"""One entry point for a whole training run: one trainer run, or the rounds of a multi-round method."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..config import Config
from ..registry import METHODS
from .rounds import RoundLoop
from .trainer import Trainer


def train_run(cfg: Config, run_dir: Union[str, Path], resume: Optional[Union[str, Path]] = None):
    """Train ``cfg`` into ``run_dir`` (``resume``: a checkpoint, or the run folder's last one) and
    return the run's :class:`~equiseg.engine.trainer.TrainResult` (for a multi-round method, that of
    its selected and last rounds)."""
    if METHODS.get(cfg.method.name).round_plan is not None:
        return RoundLoop(cfg, Path(run_dir), resume=resume is not None).run()
    return Trainer(cfg, run_dir, resume).fit()
