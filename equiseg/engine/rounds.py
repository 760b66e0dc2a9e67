"""The engine's loop for multi-round methods (DST-CBC's offline self-training rounds).

Round 0 trains on the labeled images (or takes a given checkpoint). Each later round k asks the
method's :class:`~equiseg.methods.base.RoundPlan` for its unlabeled set (pseudo-labels of the best
model so far), fine-tunes from that model, and keeps the better of the two on the selection set.
The loop owns all that is not the method's: the round folders and their records, resume (a round
is finished once ``round_<k>/round.json`` exists; a killed round continues from its own
``checkpoints/last.pt``), one trainer run per round, full-val tests, the round table and
results.json.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from ..data.build import resolve_split
from ..data.definitions import definition_from_config
from ..errors import ConfigError
from ..evaluation.evaluator import evaluate
from ..methods.base import RoundColumn, RoundEnv, RoundJob, RoundPlan
from ..models.checkpoint import load_checkpoint, model_from_checkpoint, model_state_from_checkpoint
from ..provenance import code_stamp
from ..registry import METHODS
from ..run_layout import ROUND_DIR_PREFIX, RunLayout, write_json
from .distributed import barrier, init_distributed
from .trainer import Trainer, TrainResult, autocast_factory, setup_logging

log = logging.getLogger("equiseg")

GENERIC_COLUMNS = (RoundColumn("pseudo_label_miou", "pseudo mIoU", "{:.2f}", True),
                   RoundColumn("coverage", "coverage", "{:.1f}", True),
                   RoundColumn("best_iteration", "best it", "{:d}"),
                   RoundColumn("best_selection_miou", "sel best", "{:.2f}", True),
                   RoundColumn("last_selection_miou", "sel last", "{:.2f}", True),
                   RoundColumn("best_val_miou", "val best", "{:.2f}", True),
                   RoundColumn("last_val_miou", "val last", "{:.2f}", True),
                   RoundColumn("selected_round", "selected", "{:d}"))


def train_round(job: RoundJob) -> TrainResult:
    """One trainer run for a round: the trainer builds its labeled set from the split as usual; the
    plan's selection set and (pseudo-labeled) unlabeled set replace its val and unlabeled sets,
    and a fresh (not resumed) run starts from the given weights."""
    trainer = Trainer(job.cfg, job.round_dir, job.resume, val_dataset=job.val, unlabeled_dataset=job.unlabeled,
                      initial_weights=job.init_state)
    return trainer.fit()


class RoundLoop:
    """Runs a multi-round method's rounds. ``train`` replaces :func:`train_round` (tests inject a stub)."""

    def __init__(self, cfg: Any, run_dir: Path, resume: bool = False,
                 train: Optional[Callable[[RoundJob], Any]] = None):
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.code = code_stamp()  # the code this process loaded: files edited during the run do not count
        self.layout = RunLayout(self.run_dir)
        self.train = train or train_round
        self.dist = init_distributed(cfg.run.device)
        self.autocast = autocast_factory(cfg.train.amp, self.dist.device)
        definition = definition_from_config(cfg.data)
        env = RoundEnv(definition=definition, lists=resolve_split(cfg.data, definition), device=self.dist.device, rank=self.dist.rank, world_size=self.dist.world_size,
                       barrier=barrier, autocast=self.autocast)
        self.plan: RoundPlan = METHODS.get(cfg.method.name).round_plan(cfg, self.run_dir, env)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def selects_on_val(self) -> bool:
        return self.plan.selection == "val"

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        self._prepare_folder()
        setup_logging(self.run_dir, self.is_main)
        log.info(self.plan.describe())
        selection_set = self.plan.selection_set()
        records = [self._round0(selection_set)]
        for k in range(1, self.plan.num_rounds + 1):
            records.append(self._round(k, records[-1], selection_set))
        payload = self._results(records, selection_set)
        log.info("%s rounds (mIoU %%; selection on %s):\n%s", self.cfg.method.name, self.plan.selection,
                 round_table(payload["rounds"], self.plan.columns))
        return TrainResult(self.run_dir, payload["last"], payload["selected"], payload["selected"]["iteration"])

    def _prepare_folder(self) -> None:
        started = sorted(p.name for p in self.run_dir.glob(f"{ROUND_DIR_PREFIX}*") if p.is_dir())
        if started and not self.resume:
            raise ConfigError(f"run folder {self.run_dir} already holds rounds ({', '.join(started)}); "
                              "continue it with --resume or start afresh with --overwrite")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
            if self.layout.config.is_file() and self.resume and self.layout.config.read_text() != text:
                log.warning("resuming %s with a config that differs from its config.yaml", self.run_dir)
            self.layout.config.write_text(text)
        barrier()

    # ------------------------------------------------------------------ the rounds
    def _round0(self, selection_set: Any) -> dict:
        round_dir = self.layout.round_dir(0)
        record = self._read_record(round_dir)
        if record is not None:
            return record
        self._mark_progress(round_dir)
        given = self.plan.round0_checkpoint
        if given is not None:
            log.info("round 0: the given model %s", given)
            score = self._evaluate(Path(given), selection_set)
            best = last = {"iteration": score["iteration"], "miou": score["miou"], "checkpoint": self._rel(given)}
            val_best = val_last = score if self.selects_on_val else None
        else:
            log.info("round 0: supervised training on the labeled images")
            result = self._train(0, round_dir, None, selection_set, None)
            best, last = self._summary(result.best, round_dir, "best"), self._summary(result.last, round_dir, "last")
            val_best, val_last = (result.best, result.last) if self.selects_on_val else (None, None)
        record = {"round": 0, **self.plan.round_info(0), "labeler": None, "pseudo_labels": None,
                  "best": best, "last": last, "selected": {"round": 0, **best}, "val_best": val_best,
                  "val_last": val_last}
        record = self._test(record, final=self.plan.num_rounds == 0)
        self._write_json(RunLayout(round_dir).round_record, record)
        return record

    def _round(self, k: int, previous: dict, selection_set: Any) -> dict:
        round_dir = self.layout.round_dir(k)
        record = self._read_record(round_dir)
        if record is not None:
            return record
        self._mark_progress(self.layout.round_dir(k - 1))  # a finished round's checkpoint
        selected = previous["selected"]
        labeler_path = self._abs(selected["checkpoint"])
        unlabeled, stats = self.plan.prepare_round(k, round_dir, selected["round"], labeler_path,
                                                   lambda: self._load_model(labeler_path)[0])
        log.info("round %d: pseudo-labels cover %.1f%% of the pixels; pseudo-label mIoU %s", k,
                 100 * stats["coverage"], "n/a (no ground truth)" if stats["miou"] is None
                 else f"{100 * stats['miou']:.2f} on {stats['num_images_with_gt']} images")
        self._metrics({"round": k, **self.plan.round_info(k), "pseudo_label_miou": stats["miou"],
                       "coverage": stats["coverage"]})

        result = self._train(k, round_dir, labeler_path, selection_set, unlabeled)
        best, last = self._summary(result.best, round_dir, "best"), self._summary(result.last, round_dir, "last")
        improved = best["miou"] is not None and best["miou"] > selected["miou"]
        record = {"round": k, **self.plan.round_info(k), "labeler": selected,
                  "pseudo_labels": {key: stats[key] for key in ("coverage", "miou", "num_images", "num_images_with_gt",
                                                                "class_thresholds") if key in stats},
                  "best": best, "last": last, "selected": {"round": k, **best} if improved else selected,
                  "val_best": result.best if self.selects_on_val else None,
                  "val_last": result.last if self.selects_on_val else None}
        record = self._test(record, final=k == self.plan.num_rounds)
        self._write_json(RunLayout(round_dir).round_record, record)
        return record

    def _train(self, k: int, round_dir: Path, init: Optional[Path], selection_set: Any, unlabeled: Any):
        last = RunLayout(round_dir).last_checkpoint
        resume = last if self.resume and last.is_file() else None
        init_state = None
        if init is not None and resume is None:
            init_state, _ = model_state_from_checkpoint(load_checkpoint(init, map_location="cpu"))
        job = RoundJob(k, self.plan.round_config(k), round_dir, resume, init, init_state, selection_set, unlabeled)
        try:
            return self.train(job)
        finally:
            setup_logging(self.run_dir, self.is_main)  # the trainer logged to round_dir/train.log

    def _test(self, record: dict, final: bool) -> dict:
        """Full-val numbers of the round's best and last models when selection used another set."""
        if self.selects_on_val or not (final or self.plan.test_each_round):
            return record
        if record["val_best"] is None:
            record["val_best"] = self._evaluate(self._abs(record["best"]["checkpoint"]), self.plan.val)
        if record["val_last"] is None:
            same = record["last"]["checkpoint"] == record["best"]["checkpoint"]
            record["val_last"] = record["val_best"] if same else self._evaluate(
                self._abs(record["last"]["checkpoint"]), self.plan.val)
        return record

    def _results(self, records: list[dict], selection_set: Any) -> dict:
        final = records[-1]
        selected = final["selected"]
        source = records[selected["round"]]
        selected_val = source["val_best"] or self._evaluate(self._abs(selected["checkpoint"]), self.plan.val)
        last_val = final["val_last"] or self._evaluate(self._abs(final["last"]["checkpoint"]), self.plan.val)

        def entry(record: dict, which: str, val_eval: dict) -> dict:
            info = record["best"] if which == "best" else record["last"]
            return {**val_eval, "round": record["round"], "iteration": info["iteration"],
                    "selection_miou": info["miou"], "checkpoint": info["checkpoint"]}

        payload = {
            "method": self.cfg.method.name, "dataset": self.plan.spec.name, "selection": self.plan.selection,
            "selection_images": len(selection_set), **self.plan.summary(),
            "selected": entry(source, "best", selected_val),
            "last": entry(final, "last", last_val),
            "rounds": [{
                "round": r["round"], **self.plan.round_info(r["round"]),
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
        payload["code"] = self.code
        self._write_json(self.layout.results, payload)
        if self.is_main:
            for which, entry_ in (("best", payload["selected"]), ("last", payload["last"])):
                _link_or_copy(self._abs(entry_["checkpoint"]), self.layout.checkpoint(which))
        barrier()
        return payload

    # ------------------------------------------------------------------ models
    def _load_model(self, checkpoint: Path):
        """The reported model of a checkpoint, in eval mode on the run's device, and its iteration."""
        model, ckpt, _ = model_from_checkpoint(checkpoint, self.cfg.model, self.plan.spec.num_classes)
        return model.to(self.dist.device), ckpt.get("iteration")

    def _evaluate(self, checkpoint: Path, dataset: Any) -> dict:
        model, iteration = self._load_model(checkpoint)
        result = evaluate(model, dataset, self.plan.spec, self.cfg.eval, self.dist.device, autocast=self.autocast,
                          max_images=self.cfg.eval.max_images, crop_size=self.cfg.data.crop_size)
        return {"iteration": iteration, **result.to_dict()}

    # ------------------------------------------------------------------ bookkeeping
    def _summary(self, result: dict, round_dir: Path, which: str) -> dict:
        return {"iteration": result.get("iteration"), "miou": result.get("miou"),
                "checkpoint": self._rel(RunLayout(round_dir).checkpoint(which))}

    def _read_record(self, round_dir: Path) -> Optional[dict]:
        path = RunLayout(round_dir).round_record
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_json(self, path: Path, payload: Any) -> None:
        """Atomically (temporary file + rename), on the main process only."""
        if self.is_main:
            write_json(path, payload)
        barrier()

    def _metrics(self, entry: dict) -> None:
        if self.is_main:
            with open(self.layout.metrics, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def _mark_progress(self, round_dir: Path) -> None:
        """Point ``<run>/checkpoints/last.pt`` (a relative symlink) at ``round_dir``'s last.pt, so that
        the CLI sees a started run: ``--resume auto`` finds a checkpoint and ``--overwrite`` clears
        the folder. The loop itself resumes from the round records, whatever path it is given."""
        if self.is_main:
            link = self.layout.last_checkpoint
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            try:
                os.symlink(os.path.relpath(RunLayout(round_dir).last_checkpoint, link.parent), link)
            except OSError:  # no symlinks here: resume with --resume <any round's last.pt>
                pass
        barrier()

    def _rel(self, path: Path) -> str:
        path = Path(path)
        try:
            return path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    def _abs(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.run_dir / p


def round_table(rows: list[dict], method_columns: tuple[RoundColumn, ...] = ()) -> str:
    """Fixed-width per-round table (percentages)."""
    columns = (RoundColumn("round", "round", "{:d}"), *method_columns, *GENERIC_COLUMNS)
    lines = ["  ".join(f"{c.title:>11}" for c in columns)]
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c.key)
            text = "-" if value is None else c.fmt.format(100 * value if c.percent else value)
            cells.append(f"{text:>11}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
