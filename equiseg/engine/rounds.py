"""What the engine gives a multi-round method (``Method.run_rounds``, e.g. DST-CBC's offline
rounds): one trainer run per round, with the round's own data and initial weights, plus the
distributed set-up and logging the driver shares with the trainer."""
from __future__ import annotations

from ..methods.base import RoundJob, RoundServices
from .distributed import barrier, init_distributed
from .trainer import Trainer, TrainResult, autocast_factory, setup_logging


def train_round(job: RoundJob) -> TrainResult:
    """One trainer run for a round: the trainer builds its labeled set from the split as usual; the
    driver's selection set and (pseudo-labeled) unlabeled set replace its val and unlabeled sets,
    and a fresh (not resumed) run starts from the given weights."""
    trainer = Trainer(job.cfg, job.round_dir, job.resume, val_dataset=job.val, unlabeled_dataset=job.unlabeled,
                      initial_weights=job.init_state)
    return trainer.fit()


def round_services() -> RoundServices:
    return RoundServices(train_round=train_round, init_distributed=init_distributed, barrier=barrier,
                         autocast_factory=autocast_factory, setup_logging=setup_logging, result=TrainResult)
