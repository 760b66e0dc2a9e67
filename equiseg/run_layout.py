"""Every file name of a run folder, in one place (what `equiseg train` writes, what `equiseg
report` and `equiseg bench` read). Imports nothing of equiseg, so every layer can use it.

    <run>/config.yaml        the resolved config
    <run>/train.log          the log
    <run>/metrics.jsonl      one JSON record per logged step or evaluation
    <run>/results.json       the final evaluation (written at the end) and the code stamp
    <run>/checkpoints/       last.pt (resume), best.pt
    <run>/split/             the labeled/unlabeled lists and split.json
    <run>/tb/                TensorBoard events
    <run>/round_<k>/         a multi-round method's rounds, each a run folder with round.json
                             and, from round 1 on, pseudo_labels.json (its pseudo-labels' statistics)
    <run>/report.html        `equiseg report`
    <run>/bench_run.json     `equiseg bench`'s record of the run
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Union

CONFIG_FILE = "config.yaml"
TRAIN_LOG = "train.log"
METRICS_FILE = "metrics.jsonl"
ARCHIVED_METRICS_FILE = "metrics.jsonl.gz"  # benchmarks/archive_runs.py keeps runs without checkpoints
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
SPLIT_DIR = "split"
SPLIT_META_FILE = "split.json"
TENSORBOARD_DIR = "tb"
ROUND_RECORD = "round.json"
ROUND_DIR_PREFIX = "round_"
PSEUDO_LABEL_STATS = "pseudo_labels.json"
REPORT_FILE = "report.html"
BENCH_RECORD = "bench_run.json"


class RunLayout:
    """The paths of one run folder."""

    def __init__(self, run_dir: Union[str, Path]) -> None:
        self.root = Path(run_dir)

    config = property(lambda self: self.root / CONFIG_FILE)
    train_log = property(lambda self: self.root / TRAIN_LOG)
    metrics = property(lambda self: self.root / METRICS_FILE)
    archived_metrics = property(lambda self: self.root / ARCHIVED_METRICS_FILE)
    results = property(lambda self: self.root / RESULTS_FILE)
    checkpoints = property(lambda self: self.root / CHECKPOINT_DIR)
    last_checkpoint = property(lambda self: self.root / CHECKPOINT_DIR / LAST_CHECKPOINT)
    best_checkpoint = property(lambda self: self.root / CHECKPOINT_DIR / BEST_CHECKPOINT)
    split = property(lambda self: self.root / SPLIT_DIR)
    split_meta = property(lambda self: self.root / SPLIT_DIR / SPLIT_META_FILE)
    tensorboard = property(lambda self: self.root / TENSORBOARD_DIR)
    round_record = property(lambda self: self.root / ROUND_RECORD)
    pseudo_label_stats = property(lambda self: self.root / PSEUDO_LABEL_STATS)
    report = property(lambda self: self.root / REPORT_FILE)
    bench_record = property(lambda self: self.root / BENCH_RECORD)

    def round_dir(self, k: int) -> Path:
        """``round_<k>/``: round k of a multi-round method (a run folder of its own)."""
        return self.root / f"{ROUND_DIR_PREFIX}{k}"

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>.pt`` (``last`` or ``best``)."""
        return self.root / CHECKPOINT_DIR / f"{which}.pt"


def write_atomic(path: Union[str, Path], content: Union[str, bytes, Callable[[IO[bytes]], None]]) -> None:
    """Write ``content`` (text, bytes, or a function writing to a binary file) to a temporary file
    in the same folder, fsync, then rename: a killed process never leaves a half-written file under
    the real name. The file follows the user's umask. OS errors propagate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Union[str, Path], payload: object) -> None:
    """``payload`` as indented JSON, atomically (:func:`write_atomic`)."""
    write_atomic(path, json.dumps(payload, indent=2) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
