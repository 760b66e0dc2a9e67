"""Keep the evidence of finished runs in the repository: every config, results, record and log
file of each run folder (DST-CBC's rounds included) with metrics.jsonl gzip-compressed, without
checkpoints, TensorBoard events or images (a few hundred KB per run).

Our machines do not keep ``runs/`` from one working session to the next; an archived folder is
still a finished run to ``equiseg bench --reuse-from`` and to ``equiseg report``.

    python benchmarks/archive_runs.py benchmarks/runs/camvid_cpu_2400 runs/bench_p8/supervised_seed0 ...
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

from equiseg.run_layout import (ARCHIVED_METRICS_FILE, CHECKPOINT_DIR, METRICS_FILE, RESULTS_FILE, TENSORBOARD_DIR,
                                RunLayout)

KEPT_SUFFIXES = {".yaml", ".json", ".log", ".txt"}
SKIPPED_DIRS = {CHECKPOINT_DIR, TENSORBOARD_DIR}


def archive(run_dir: Path, dest: Path) -> Path:
    """Copy ``run_dir``'s evidence into ``dest`` (created); ``run_dir`` must hold results.json."""
    if not RunLayout(run_dir).results.is_file():
        raise SystemExit(f"archive_runs: {run_dir} is not a finished run (no {RESULTS_FILE})")
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or SKIPPED_DIRS & set(relative.parts[:-1]):
            continue
        target = dest / relative
        if path.name == METRICS_FILE:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as source, gzip.open(target.with_name(ARCHIVED_METRICS_FILE), "wb") as sink:
                shutil.copyfileobj(source, sink)
        elif path.suffix in KEPT_SUFFIXES:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder that receives one sub-folder per run")
    parser.add_argument("runs", type=Path, nargs="+", help="finished run folders")
    parser.add_argument("--prefix", default="", help="prepended to each run folder's name (e.g. the bench's name)")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        print(archive(run_dir, args.dest / (args.prefix + run_dir.name)))


if __name__ == "__main__":
    main(sys.argv[1:])
