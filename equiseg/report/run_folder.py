"""Read a run folder (what the trainer and the DST-CBC driver write) into plain Python data.

A trainer run folder holds ``config.yaml``, ``split/split.json``, ``metrics.jsonl`` (one record
per logging window: ``iteration``, ``lr``, ``loss``, the method's logs, ``time_ms``; and one per
evaluation: ``iteration``, ``eval``) and ``results.json`` (``last`` / ``best`` evaluations).
A DST-CBC run folder holds the same top-level files plus one trainer run per round in
``round_<k>/`` with ``round.json`` and, from round 1 on, ``pseudo_labels.json``. Iterations restart
in every round; here they are made cumulative so a whole run plots on one axis.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..errors import EquisegError
from ..run_layout import (CONFIG_FILE, METRICS_FILE, PSEUDO_LABEL_STATS, RESULTS_FILE, ROUND_DIR_PREFIX, ROUND_RECORD,
                          RunLayout)

log = logging.getLogger("equiseg")

_ROUND_DIR = re.compile(re.escape(ROUND_DIR_PREFIX) + r"(\d+)$")


class RunFolderError(EquisegError, ValueError):
    """A folder is not a run folder, or one of its files cannot be read."""


@dataclass
class RoundInfo:
    """One DST-CBC round: pseudo-label coverage and quality, and the round's val scores."""

    round: int
    alpha: Optional[float] = None
    coverage: Optional[float] = None
    """Share of the unlabeled pixels that kept a pseudo-label."""
    pseudo_label_miou: Optional[float] = None
    """mIoU of the kept pseudo-labels against the unlabeled images' ground truth, when known."""
    class_coverage: Optional[list[Optional[float]]] = None
    class_iou: Optional[list[Optional[float]]] = None
    best_miou: Optional[float] = None
    last_miou: Optional[float] = None
    selected_round: Optional[int] = None
    start_iteration: int = 0
    """First cumulative iteration of the round in the run's curves."""


@dataclass
class RunFolder:
    path: Path
    config: dict[str, Any]
    """config.yaml as written (raw mapping: readable even if the config schema changed since)."""
    split: dict[str, Any] = field(default_factory=dict)
    train: list[dict[str, Any]] = field(default_factory=list)
    """Training-window records, ``iteration`` cumulative over DST-CBC rounds."""
    evals: list[dict[str, Any]] = field(default_factory=list)
    """Evaluation records ``{"iteration", "eval": {model: {"miou", "tail_miou"}}}``, cumulative too."""
    results: Optional[dict[str, Any]] = None
    rounds: list[RoundInfo] = field(default_factory=list)

    # ------------------------------------------------------------------ convenience
    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def method(self) -> str:
        return str(self.section("method").get("name", "?"))

    @property
    def dataset(self) -> str:
        return str(self.section("data").get("dataset", "?"))

    @property
    def last(self) -> Optional[dict[str, Any]]:
        return (self.results or {}).get("last") or None

    @property
    def best(self) -> Optional[dict[str, Any]]:
        return (self.results or {}).get("best") or None

    @property
    def best_iteration(self) -> Optional[int]:
        results = self.results or {}
        if results.get("best_iteration") is not None:
            return int(results["best_iteration"])
        best = self.best or {}
        return best.get("iteration")

    @property
    def best_checkpoint(self) -> Path:
        return RunLayout(self.path).best_checkpoint

    def class_names(self) -> list[str]:
        """From the evaluation results; else the dataset definition; else numbered."""
        for result in (self.last, self.best, *self._round_results()):
            if result and result.get("class_names"):
                return list(result["class_names"])
        spec = self.dataset_spec()
        if spec is not None:
            return list(spec.class_names)
        count = len((self.last or {}).get("iou") or [])
        return [f"class {i}" for i in range(count)]

    def tail_ids(self) -> list[int]:
        for result in (self.last, self.best):
            if result and result.get("tail_ids") is not None:
                return [int(i) for i in result["tail_ids"]]
        spec = self.dataset_spec()
        return list(spec.tail_ids) if spec is not None else []

    def dataset_spec(self):
        """The dataset's :class:`DatasetSpec` from the config, or None when it cannot be built
        here (e.g. a ``folder`` dataset whose config no longer validates)."""
        from ..config import DataConfig
        from ..data.definitions import definition_from_config

        try:
            return definition_from_config(DataConfig.model_validate(self.section("data"))).spec
        except (EquisegError, ValueError) as exc:
            log.debug("no dataset spec for %s: %s", self.path, exc)
            return None

    def _round_results(self) -> list[dict[str, Any]]:
        out = []
        for round_dir in _round_dirs(self.path):
            results = _read_json(round_dir / RESULTS_FILE)
            if results:
                out.extend(r for r in (results.get("last"), results.get("best")) if r)
        return out

    def train_series(self, key: str) -> list[tuple[float, float]]:
        """(iteration, value) of a logged training scalar, skipping windows without it."""
        return [(rec["iteration"], float(rec[key])) for rec in self.train
                if isinstance(rec.get(key), (int, float))]

    def train_keys(self) -> list[str]:
        """Every scalar key logged in training windows, in first-seen order."""
        keys: dict[str, None] = {}
        for rec in self.train:
            for key, value in rec.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    keys.setdefault(key)
        return list(keys)


def where(result: dict[str, Any], iteration: Optional[int]) -> str:
    """``iteration 600``; DST-CBC results also name the round (iterations restart each round)."""
    text = f"iteration {iteration}"
    return f"round {result['round']}, {text}" if result.get("round") is not None else text


# --------------------------------------------------------------------------- loading


def load_run(path: Union[str, Path]) -> RunFolder:
    """Read ``path`` as a run folder; a folder without ``config.yaml`` and ``metrics.jsonl`` or
    ``results.json`` is an error naming it. A run still in progress (no ``results.json``) loads."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is not a run folder: no such directory")
    has_marker = metrics_path(run_dir).is_file() or (run_dir / RESULTS_FILE).is_file()
    if not (run_dir / CONFIG_FILE).is_file() or not has_marker:
        present = ", ".join(sorted(p.name for p in run_dir.iterdir())[:10]) or "nothing"
        raise RunFolderError(f"{run_dir} is not a run folder: expected {CONFIG_FILE} with {METRICS_FILE} or "
                             f"{RESULTS_FILE} (what `equiseg train` writes), found {present}")
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    except yaml.YAMLError as exc:
        raise RunFolderError(f"{run_dir / CONFIG_FILE} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise RunFolderError(f"{run_dir / CONFIG_FILE} does not hold a mapping")

    run = RunFolder(path=run_dir, config=config, results=_read_json(run_dir / RESULTS_FILE),
                    split=find_split_meta(run_dir))
    rounds = _round_dirs(run_dir)
    if rounds:
        _load_rounds(run, rounds)
    else:
        run.train, run.evals = _split_records(read_jsonl(metrics_path(run_dir)), offset=0)
    return run


def find_split_meta(run_dir: Path) -> dict[str, Any]:
    """``split/split.json`` of the run, or of its first round (DST-CBC rounds write their own)."""
    for folder in (run_dir, *_round_dirs(run_dir)):
        meta = _read_json(RunLayout(folder).split_meta)
        if meta is not None:
            return meta
    return {}


def metrics_path(run_dir: Path) -> Path:
    """The folder's metrics.jsonl, or its gzip-compressed copy in an archived run."""
    layout = RunLayout(run_dir)
    if not layout.metrics.is_file() and layout.archived_metrics.is_file():
        return layout.archived_metrics
    return layout.metrics


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (gzip-compressed when its name ends in .gz); a missing file is
    empty. A line that does not parse (the last line of a killed run may be cut short) is skipped
    with a warning."""
    if not path.is_file():
        return []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d is not JSON; skipped", path, number)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else None


def _round_dirs(run_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in run_dir.glob(f"{ROUND_DIR_PREFIX}*")
             if p.is_dir() and (m := _ROUND_DIR.search(p.name))]
    return [p for _, p in sorted(found)]


def _split_records(records: list[dict[str, Any]], offset: int) -> tuple[list[dict], list[dict]]:
    """Training windows and evaluation records, iterations shifted by ``offset``."""
    train, evals = [], []
    for rec in records:
        if "iteration" not in rec:
            continue
        shifted = {**rec, "iteration": rec["iteration"] + offset}
        if "eval" in rec:
            evals.append(shifted)
        elif "loss" in rec:
            train.append(shifted)
    return train, evals


def _load_rounds(run: RunFolder, round_dirs: list[Path]) -> None:
    """Concatenate the rounds' curves on one axis and collect each round's pseudo-label stats."""
    offset = 0
    for round_dir in round_dirs:
        k = int(_ROUND_DIR.search(round_dir.name).group(1))
        train, evals = _split_records(read_jsonl(metrics_path(round_dir)), offset)
        run.train.extend(train)
        run.evals.extend(evals)
        info = RoundInfo(round=k, start_iteration=offset)
        _fill_round(info, _read_json(round_dir / ROUND_RECORD), _read_json(round_dir / PSEUDO_LABEL_STATS))
        run.rounds.append(info)
        done = (_read_json(round_dir / RESULTS_FILE) or {}).get("iterations")
        offset += int(done) if done is not None else max((r["iteration"] - offset for r in train), default=0)


def _fill_round(info: RoundInfo, record: Optional[dict], stats: Optional[dict]) -> None:
    if stats:  # written before the round trains, so known for a round in progress too
        info.alpha, info.coverage, info.pseudo_label_miou = stats.get("alpha"), stats.get("coverage"), stats.get("miou")
        info.class_coverage = stats.get("class_coverage")
        info.class_iou = (stats.get("quality") or {}).get("iou")
    if record:
        info.alpha = record.get("alpha", info.alpha)
        pseudo = record.get("pseudo_labels") or {}
        info.coverage = pseudo.get("coverage", info.coverage)
        info.pseudo_label_miou = pseudo.get("miou", info.pseudo_label_miou)
        val_best, val_last = record.get("val_best") or {}, record.get("val_last") or {}
        info.best_miou = val_best.get("miou", (record.get("best") or {}).get("miou"))
        info.last_miou = val_last.get("miou", (record.get("last") or {}).get("miou"))
        info.selected_round = (record.get("selected") or {}).get("round")
