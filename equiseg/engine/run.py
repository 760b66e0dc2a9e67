"""One entry point for a whole training run: one trainer run, or the rounds a method drives."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..config import Config
from ..registry import METHODS
from .rounds import round_services
from .trainer import Trainer


def train_run(cfg: Config, run_dir: Union[str, Path], resume: Optional[Union[str, Path]] = None):
    """Train ``cfg`` into ``run_dir`` (``resume``: a checkpoint, or the run folder's last one) and
    return the result of the run (a :class:`~equiseg.engine.trainer.TrainResult`, or the round
    driver's result for multi-round methods)."""
    rounds = METHODS.get(cfg.method.name).run_rounds
    if rounds is not None:
        return rounds(cfg, Path(run_dir), resume, round_services())
    return Trainer(cfg, run_dir, resume).fit()
