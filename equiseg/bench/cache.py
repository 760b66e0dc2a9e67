"""When a finished run can stand in for a bench run: the same config, up to keys that do not
change results.

A run folder's ``config.yaml`` is the resolved config it trained with. Two configs that differ
only in where the run was written, how many loader processes fed it or how chatty it was train
the same model (loaders are seeded per sample, see docs/design.md), so the finished run is reused
instead of retrained: an interrupted bench continues, and a run the user already made with the
identical protocol counts.
"""
from __future__ import annotations

import copy
import logging
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ..config import Config, validate_config
from ..errors import EquisegError
from ..registry import METHODS
from ..run_layout import CONFIG_FILE, RESULTS_FILE, SPLIT_DIR, TENSORBOARD_DIR, TRAIN_LOG, RunLayout

log = logging.getLogger("equiseg")

RESULT_NEUTRAL_KEYS = ("run.output_dir", "run.name", "data.num_workers", "train.progress_bar", "train.log_every",
                       "train.sample_every", "train.pseudo_label_audit")
"""Config keys that do not change a run's results (the TensorBoard samples are drawn in eval mode
with the random state preserved, like evaluations)."""
LABELED_ONLY_NEUTRAL_KEYS = ("data.unlabeled_batch_size",)
"""Keys that do not change the results of a method that trains on labeled images only (so a
DST-CBC round 0, a supervised run, can stand in for the supervised baseline)."""
STARTUP_ARTEFACTS = {SPLIT_DIR, TRAIN_LOG, TENSORBOARD_DIR}
"""What a trainer writes before config.yaml: a folder holding only these is a start that crashed."""


class RunState(Enum):
    """What a bench finds in a run folder for a planned run."""

    ABSENT = "absent"              # nothing there, or a start that crashed before config.yaml: train afresh
    FINISHED = "finished"          # results.json with an equal config: reuse
    INTERRUPTED = "interrupted"    # last.pt with an equal config, no results.json: resume
    DIFFERENT = "different"        # a run with another config: never overwritten silently


def comparable(config: dict[str, Any], ignored: Iterable[str] = RESULT_NEUTRAL_KEYS) -> dict[str, Any]:
    """A config dump without the result-neutral keys."""
    out = copy.deepcopy(config)
    for dotted in ignored:
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out.extend(differences(a.get(key), b.get(key), f"{prefix}{key}."))
        return out
    return [] if a == b else [prefix.rstrip(".")]


def saved_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's config.yaml validated and dumped like a fresh config (so defaults added since the
    run are filled in), or None when missing or no longer valid."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return validate_config(yaml.safe_load(path.read_text()) or {}).model_dump(mode="json")
    except (EquisegError, yaml.YAMLError, ValueError) as exc:
        log.info("%s cannot be compared (%s)", path, str(exc).splitlines()[0])
        return None


def config_differences(cfg: Config, run_dir: Path) -> Optional[list[str]]:
    """Keys in which ``run_dir``'s config differs from ``cfg`` (result-neutral keys ignored);
    None when the folder has no readable config."""
    saved = saved_config(run_dir)
    if saved is None:
        return None
    ignored = RESULT_NEUTRAL_KEYS
    if not METHODS.get(cfg.method.name).uses_unlabeled:
        ignored += LABELED_ONLY_NEUTRAL_KEYS
    return differences(comparable(saved, ignored), comparable(cfg.model_dump(mode="json"), ignored))


def run_state(cfg: Config, run_dir: Path) -> tuple[RunState, list[str]]:
    """What ``run_dir`` holds for ``cfg``, and the differing keys when it is another run."""
    if not run_dir.exists() or {p.name for p in run_dir.iterdir()} <= STARTUP_ARTEFACTS:
        return RunState.ABSENT, []
    diff = config_differences(cfg, run_dir)
    if diff is None:
        return RunState.DIFFERENT, ["no readable config.yaml"]
    if diff:
        return RunState.DIFFERENT, diff
    if (run_dir / RESULTS_FILE).is_file():
        return RunState.FINISHED, []
    if RunLayout(run_dir).last_checkpoint.exists():
        return RunState.INTERRUPTED, []
    return RunState.ABSENT, []


def find_finished_run(cfg: Config, folders: Iterable[Path]) -> Optional[Path]:
    """A finished run with ``cfg``'s config among the run folders directly inside ``folders``."""
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for candidate in sorted(Path(folder).iterdir()):
            if (candidate / RESULTS_FILE).is_file() and config_differences(cfg, candidate) == []:
                return candidate
    return None
