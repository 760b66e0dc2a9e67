"""``equiseg bench``: train several methods on one protocol and tabulate them.

Every method / seed trains in its own run folder ``OUT/<method>_seed<seed>`` and in its own
process (spawned), so that each run's peak memory is its own: ``torch.cuda.max_memory_allocated``
on a GPU, the process's maximum resident set size (``resource.getrusage``) on a CPU. A finished
run whose config equals the planned one (up to result-neutral keys, see :mod:`.cache`) is reused,
an interrupted one resumed. ``bench.md`` and ``bench.json`` are rewritten after every run, so an
interrupted bench leaves the table of what finished.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import Config, load_config
from ..engine.profile import DEFAULT_ROUNDS, DEFAULT_STEPS, DEFAULT_WARMUP
from ..errors import ConfigError
from ..provenance import code_stamp, describe, same_code
from ..run_layout import BENCH_RECORD, RunLayout
from .cache import RunState, find_finished_run, run_state
from .presets import SPEED_BASELINES, preset_configs, resolve_config_path
from .table import RunRecord, bench_json, bench_markdown

log = logging.getLogger("equiseg")

"""Written into each run folder the bench trains: wall time and peak memory, kept for reuse."""
MARKDOWN_FILE, JSON_FILE = "bench.md", "bench.json"
PROTOCOL_KEYS = ("dataset", "eval split", "labeled", "image scale", "crop", "batch", "iterations", "model",
                 "evaluation", "amp")
"""Rows of :func:`equiseg.report.protocol.protocol_rows` stated under the table (seeds added)."""
MEMORY_NOTES = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated of the training process (tensors only; the "
                          "caching allocator reserves more)",
    "max_rss": "maximum resident set size of the training process (resource.getrusage ru_maxrss; "
               "data-loader worker processes not included)",
}
KIB = 1024
REUSED_OTHER_CODE = "reused (other code)"  # other code, torch or CPU kernels: provenance.same_code


@dataclass
class BenchOptions:
    out: Path
    preset: Optional[str] = None
    methods: Optional[list[str]] = None
    configs: list[str] = field(default_factory=list)
    """Explicit config files instead of a preset (one method each)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_list: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    reuse_from: list[Path] = field(default_factory=list)
    """Folders whose run folders may stand in for bench runs (e.g. ``runs/``)."""
    reuse_only: bool = False
    """Train nothing: every planned run must already be finished (in its bench folder or in
    ``reuse_from``), else the bench stops before writing a table."""
    jobs: int = 1
    """How many runs train at once (each in its own process). On a CPU, each gets
    ``cpu_count // jobs`` threads: on 2 cores, two single-threaded runs finish sooner than one run
    on two threads, since a small model does not scale across threads."""
    step_profile: bool = False
    profile_steps: int = DEFAULT_STEPS
    profile_rounds: int = DEFAULT_ROUNDS
    profile_warmup: int = DEFAULT_WARMUP


@dataclass
class PlannedRun:
    label: str
    seed: int
    config_path: Path
    cfg: Config

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.output_dir) / self.cfg.run.name


# --------------------------------------------------------------------------- planning


def entries(options: BenchOptions) -> dict[str, Path]:
    """``{label: config path}``: the preset's methods, or the explicit configs labelled by their
    method (by file name when two configs share a method)."""
    if options.configs:
        if options.preset or options.methods:
            raise ConfigError("bench: give either --preset (with --methods) or --config files, not both")
        paths = [resolve_config_path(c) for c in options.configs]
        methods = [load_config(p).method.name for p in paths]
        return {(m if methods.count(m) == 1 else p.stem): p for m, p in zip(methods, paths)}
    return preset_configs(options.preset or "cpu", options.methods)


def plan(options: BenchOptions) -> list[PlannedRun]:
    runs = []
    for label, path in entries(options).items():
        for seed in options.seeds:
            bench_keys = [f"run.seed={seed}", f"run.output_dir={options.out}", f"run.name={label}_seed{seed}"]
            if options.eval_list:
                bench_keys.append(f"data.val_list={options.eval_list}")
            # The bench's own keys come last: --seeds and --out decide over a --set of the same key.
            cfg = load_config(path, [*options.overrides, *bench_keys])
            runs.append(PlannedRun(label, seed, path, cfg))
    return runs


# --------------------------------------------------------------------------- one run


def _peak_memory(device_type: str) -> tuple[int, str]:
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    import resource  # Unix only, as the CPU measure is

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * KIB), "max_rss"  # bytes on macOS, KiB on Linux


def train_worker(raw_cfg: dict, run_dir: str, resume: Optional[str], queue, threads: Optional[int] = None) -> None:
    """Spawned process: train one run, report wall time and peak memory (or the error)."""
    try:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)

        from ..config import validate_config
        from ..engine.distributed import pick_device
        from ..engine.run import train_run

        cfg = validate_config(raw_cfg)
        device = pick_device(cfg.run.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        train_run(cfg, Path(run_dir), Path(resume) if resume else None)
        wall = time.perf_counter() - start
        peak, kind = _peak_memory(device.type)
        queue.put({"wall_s": wall, "peak_memory_bytes": peak, "memory_kind": kind, "device": str(device)})
    except Exception as exc:  # reported to the parent, which goes on with the other runs
        queue.put({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


def train_in_subprocess(run: PlannedRun, resume: Optional[Path], threads: Optional[int] = None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")  # fresh CUDA state and RSS per run; safe with threads
    queue = ctx.SimpleQueue()
    process = ctx.Process(target=train_worker, args=(run.cfg.model_dump(mode="json"), str(run.run_dir),
                                                     str(resume) if resume else None, queue, threads))
    process.start()
    process.join()
    if queue.empty():
        return {"error": f"training process exited with code {process.exitcode} without a result"}
    return queue.get()


def _read_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / BENCH_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def check_folders(runs: Sequence[PlannedRun]) -> None:
    """Before training anything: no planned folder may hold a run with another config (a bench
    never overwrites a run silently)."""
    for run in runs:
        _state_of(run)


def _state_of(run: PlannedRun) -> RunState:
    state, diff = run_state(run.cfg, run.run_dir)
    if state is RunState.DIFFERENT:
        raise ConfigError(f"{run.run_dir} holds another run (differs in {', '.join(diff[:8])}); "
                          "move it away or choose another --out")
    return state


def finished_run(run: PlannedRun, state: RunState, reuse_from: Sequence[Path]) -> Optional[Path]:
    """The finished run folder that stands for ``run`` (its own folder in ``state``): that folder,
    else an identical run in ``reuse_from`` (not when its own folder holds an interrupted run,
    which is resumed)."""
    if state is RunState.FINISHED:
        return run.run_dir
    return find_finished_run(run.cfg, reuse_from) if state is RunState.ABSENT else None


def check_reusable(runs: Sequence[PlannedRun], reuse_from: Sequence[Path]) -> None:
    """``--reuse-only``: every planned run is finished somewhere, or a one-line error names the
    missing ones."""
    missing = [f"{run.label} seed {run.seed}" for run in runs if finished_run(run, _state_of(run), reuse_from) is None]
    if missing:
        where = ", ".join(str(p) for p in [runs[0].run_dir.parent, *reuse_from])
        raise ConfigError(f"bench --reuse-only: no finished run with the planned config for {', '.join(missing)} "
                          f"(looked in {where}); nothing was trained")


def execute(run: PlannedRun, reuse_from: Sequence[Path], threads: Optional[int] = None) -> RunRecord:
    """Reuse, resume or train one planned run; the record of its numbers."""
    state = _state_of(run)
    found = finished_run(run, state, reuse_from)
    if found is not None:
        return reuse(run, found)
    resume = None
    if state is RunState.INTERRUPTED:
        resume = RunLayout(run.run_dir).last_checkpoint
        print(f"bench: {run.label} seed {run.seed}: resuming the interrupted run in {run.run_dir}")
    else:
        if run.run_dir.exists():  # the same config, crashed before its first checkpoint: nothing to keep
            shutil.rmtree(run.run_dir)
        print(f"bench: {run.label} seed {run.seed}: training {run.config_path} in {run.run_dir}")
    outcome = train_in_subprocess(run, resume, threads)
    if "error" in outcome:
        log.error("bench: %s seed %d failed:\n%s", run.label, run.seed, outcome.get("traceback", outcome["error"]))
        return RunRecord(run.label, run.seed, str(run.run_dir), status="failed", error=outcome["error"])
    if resume is not None:
        outcome["wall_s"] = None  # only the resumed part was timed
        outcome["resumed"] = True
    (run.run_dir / BENCH_RECORD).write_text(json.dumps(outcome, indent=2) + "\n")
    return collect(run, run.run_dir, "resumed" if resume is not None else "trained", outcome)


def reuse(run: PlannedRun, run_dir: Path) -> RunRecord:
    """A finished run with the planned config; said aloud when other code made it (same config,
    other trajectory: any change on the training path moves a run like another seed would)."""
    record = collect(run, run_dir, "reused", _read_record(run_dir))
    note = ""
    if not same_code(record.code, code_stamp()):
        record.status = REUSED_OTHER_CODE
        note = f"; made by {describe(record.code)}, this is {describe(code_stamp())}"
    print(f"bench: {run.label} seed {run.seed}: reusing {run_dir} (identical config, finished{note})")
    return record


def collect(run: PlannedRun, run_dir: Path, status: str, record: dict[str, Any]) -> RunRecord:
    """The table's numbers from a finished run folder and its bench record."""
    from ..report.protocol import total_iterations

    results = json.loads(RunLayout(run_dir).results.read_text())
    last, best = results.get("last") or {}, results.get("best") or {}
    best_at = results.get("best_iteration", best.get("iteration"))
    if best.get("round") is not None:  # DST-CBC: the selected round's best model
        best_at = f"round {best['round']} / {best.get('iteration')}"
    return RunRecord(
        method=run.label, seed=run.seed, run_dir=str(run_dir), status=status,
        miou_last=last.get("miou"), tail_miou_last=last.get("tail_miou"),
        miou_best=best.get("miou"), tail_miou_best=best.get("tail_miou"),
        best_iteration=None if best_at is None else str(best_at), iou_last=list(last.get("iou") or []),
        iterations=total_iterations(run.cfg.model_dump(mode="json")),
        wall_s=record.get("wall_s"), peak_memory_bytes=record.get("peak_memory_bytes"),
        memory_kind=record.get("memory_kind"), code=results.get("code"))


# --------------------------------------------------------------------------- the table


def protocol_statement(runs: Sequence[PlannedRun], records: Sequence[RunRecord],
                       options: BenchOptions) -> dict[str, Any]:
    """The protocol rows; a row whose text differs between methods maps method -> text."""
    from ..report.protocol import protocol_rows
    from ..report.run_folder import find_split_meta

    split_of = {r.run_dir: find_split_meta(Path(r.run_dir)) for r in records if r.error is None}
    per_method: dict[str, dict[str, str]] = {}
    for run in runs:
        if run.label in per_method:
            continue
        record_dir = next((r.run_dir for r in records if r.method == run.label and r.run_dir in split_of), None)
        rows = protocol_rows(run.cfg.model_dump(mode="json"), split_of.get(record_dir, {}))
        per_method[run.label] = {key: rows[key] for key in PROTOCOL_KEYS}
    statement: dict[str, Any] = {}
    for key in PROTOCOL_KEYS:
        values = {method: rows[key] for method, rows in per_method.items()}
        statement[key] = next(iter(values.values())) if len(set(values.values())) == 1 else values
    statement["seeds"] = ", ".join(str(s) for s in options.seeds)
    if options.preset and not options.configs:
        statement["preset"] = options.preset
    if options.overrides:
        statement["overrides"] = " ".join(options.overrides)
    return statement


def memory_note(records: Sequence[RunRecord]) -> str:
    kinds = sorted({r.memory_kind for r in records if r.memory_kind})
    return "; ".join(MEMORY_NOTES[k] for k in kinds) if kinds else "not measured (reused runs without a bench record)"


def class_info(records: Sequence[RunRecord]) -> tuple[list[str], list[int]]:
    for r in records:
        if r.error is None:
            last = json.loads(RunLayout(r.run_dir).results.read_text()).get("last") or {}
            if last.get("class_names"):
                return list(last["class_names"]), [int(i) for i in last.get("tail_ids", [])]
    count = max((len(r.iou_last) for r in records), default=0)
    return [f"class {i}" for i in range(count)], []


def write_outputs(out: Path, runs: Sequence[PlannedRun], records: Sequence[RunRecord], options: BenchOptions,
                  speed: Optional[str] = None, speed_json: Optional[list] = None) -> None:
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.method, []).append(r)
    protocol = protocol_statement(runs, records, options)
    names, tails = class_info(records)
    note = memory_note(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKDOWN_FILE).write_text(bench_markdown(groups, protocol, names, tails, note, speed))
    extra = {"step_profile": speed_json} if speed_json is not None else {}
    (out / JSON_FILE).write_text(json.dumps(bench_json(groups, protocol, names, tails, note, extra), indent=2) + "\n")


# --------------------------------------------------------------------------- step profile


def step_profile(runs: Sequence[PlannedRun], options: BenchOptions) -> tuple[str, list]:
    """The speed table of the benched methods (first seed's configs), one process, interleaved.
    Multi-round methods (DST-CBC) have no standalone step and are left out."""
    from ..engine.profile import profile_steps, speed_table
    from ..methods import method_class

    first: dict[str, PlannedRun] = {}
    for run in runs:
        first.setdefault(run.label, run)
    chosen = {label: run for label, run in first.items() if method_class(run.cfg.method.name).round_plan is None}
    skipped = [label for label in first if label not in chosen]
    profiles = profile_steps([r.cfg for r in chosen.values()], steps=options.profile_steps,
                             rounds=options.profile_rounds, warmup=options.profile_warmup, names=list(chosen))
    note = (f"ms per training step, median over {options.profile_rounds} interleaved rounds of "
            f"{options.profile_steps} steps after {options.profile_warmup} warm-up steps, all methods in one "
            "process (so machine noise hits them alike); x supervised / x cutmix: ratio of step times; "
            "parts as timed by the engine (data = waiting for the loader; other = losses and bookkeeping).")
    if skipped:
        note += f" Not profiled: {', '.join(skipped)} (trains on offline pseudo-labels in rounds; no standalone step)."
    return speed_table(profiles, SPEED_BASELINES) + "\n\n" + note, [p.to_dict() for p in profiles]


# --------------------------------------------------------------------------- entry point


def run_bench(options: BenchOptions) -> list[RunRecord]:
    runs = plan(options)
    check_folders(runs)
    if options.reuse_only:
        check_reusable(runs, options.reuse_from)
    if options.jobs < 1:
        raise ConfigError(f"bench: --jobs must be at least 1, got {options.jobs}")
    threads = max(1, (os.cpu_count() or 1) // options.jobs) if options.jobs > 1 else None
    done: dict[int, RunRecord] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        record = execute(runs[i], options.reuse_from, threads)
        with lock:  # the table grows as runs finish, in the planned order
            done[i] = record
            write_outputs(options.out, runs, [done[k] for k in sorted(done)], options)

    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        for future in [pool.submit(one, i) for i in range(len(runs))]:
            future.result()
    records = [done[k] for k in sorted(done)]
    speed, speed_json = (step_profile(runs, options) if options.step_profile else (None, None))
    write_outputs(options.out, runs, records, options, speed, speed_json)
    print(f"bench: wrote {options.out / MARKDOWN_FILE} and {options.out / JSON_FILE}")
    return records


def failed(records: Sequence[RunRecord]) -> bool:
    return any(r.error is not None for r in records)

