"""How chosen classes trade pixels on val, run by run: IoU, recall, precision and, for every ordered
pair (A, B) of the chosen classes, the share of A's true pixels predicted as B. From each run's
``results.json`` (the reported model at the last checkpoint); reads finished or archived runs, trains
nothing. It finds what a per-class IoU hides: two rare classes trading pixels across many runs.

    python benchmarks/confusions.py benchmarks/runs/camvid_cpu_2400/* --classes Bicyclist,Pedestrian
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import permutations
from pathlib import Path

from equiseg.evaluation.metrics import class_confusions
from equiseg.run_layout import RESULTS_FILE


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--classes", required=True, help="comma-separated class names")
    args = p.parse_args(argv)
    chosen = args.classes.split(",")

    header = None
    for run in map(Path, args.run_dirs):
        path = run / RESULTS_FILE
        if not path.is_file():
            print(f"{run}: no {RESULTS_FILE}, skipped", file=sys.stderr)
            continue
        last = json.loads(path.read_text())["last"]
        names = last["class_names"]
        unknown = [c for c in chosen if c not in names]
        if unknown:
            p.error(f"{unknown} are not class names of {run} ({names})")
        if last.get("confusion") is None:
            print(f"{run}: its results.json has no confusion matrix, skipped", file=sys.stderr)
            continue
        matrix = last["confusion"]
        confusions = class_confusions(matrix, top=len(names))
        cells, labels = [], []
        for name in chosen:
            c = names.index(name)
            labels += [f"{name[:10]} IoU", "recall", "precision"]
            cells += [100 * (last["iou"][c] or 0), 100 * confusions[c].recall, 100 * confusions[c].precision]
        for a, b in permutations(chosen, 2):
            i, j = names.index(a), names.index(b)
            truth = sum(matrix[i])
            labels.append(f"{a[:5]}->{b[:5]} %")
            cells.append(100 * matrix[i][j] / truth if truth else float("nan"))
        if header is None:
            header = f"{'run':<30}" + "".join(f"{label:>15}" for label in labels)
            print(header)
        print(f"{run.name:<30}" + "".join(f"{value:>15.1f}" for value in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
