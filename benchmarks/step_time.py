"""Per-step time of several methods, measured in one process, interleaved, and printed as a table.

Each config builds a full Trainer (data loaders, model, method); steps are timed in rounds that
alternate between the methods, so machine noise hits every method alike and the ratios are
meaningful even on a busy machine. The breakdown comes from the engine's StepTimer: data wait,
teacher forward, student forward, method extras (bank, sampling, mixing, hardness), backward and
optimizer step.

    python benchmarks/step_time.py configs/camvid/supervised_mbv2.yaml \
        configs/ael/camvid_cutmix_mbv2.yaml configs/ael/camvid_ael_mbv2.yaml --steps 10 --rounds 3
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from equiseg.config import load_config
from equiseg.engine.trainer import Trainer

SECTIONS = ("data", "teacher", "student", "extras", "backward", "optimizer")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config")
    p.add_argument("--baseline", default=None, help="method to divide by (default: the first)")
    args = p.parse_args(argv)
    logging.getLogger("equiseg").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i, path in enumerate(args.configs):
            cfg = load_config(path, ["train.progress_bar=false", "optim.iterations=1000000",
                                     "train.eval_every=1000000", "train.sample_every=1000000",
                                     "train.checkpoint_every=1000000", "train.log_every=1000000", *args.set])
            trainer = Trainer(cfg, Path(tmp) / f"{i}_{cfg.method.name}")
            logging.getLogger("equiseg").setLevel(logging.WARNING)
            iters = trainer.data_iterators()
            trainer.student.train()
            trainer.method.train()
            for _ in range(args.warmup):
                trainer.train_step(*iters)
            runs.append({"name": cfg.method.name, "trainer": trainer, "iters": iters, "step_s": [],
                         "sections": {k: [] for k in SECTIONS}})
        for _ in range(args.rounds):
            for run in runs:
                trainer = run["trainer"]
                trainer.timer.reset()
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step(*run["iters"])
                run["step_s"].append((time.perf_counter() - start) / args.steps)
                ms = trainer.timer.mean_ms()
                for k in SECTIONS:
                    run["sections"][k].append(ms.get(k, 0.0))

    base_name = args.baseline or runs[0]["name"]
    base = next(r for r in runs if r["name"] == base_name)
    base_ms = 1000 * statistics.median(base["step_s"])
    header = ["method", "ms/step", f"× {base_name}", *[f"{k} ms" for k in SECTIONS], "other ms", "data %"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for run in runs:
        step_ms = 1000 * statistics.median(run["step_s"])
        parts = [statistics.median(run["sections"][k]) for k in SECTIONS]
        other = step_ms - sum(parts)  # losses and bookkeeping outside the named sections
        row = [run["name"], f"{step_ms:.0f}", f"{step_ms / base_ms:.2f}", *[f"{v:.0f}" for v in parts],
               f"{other:.0f}", f"{100 * parts[0] / step_ms:.1f}"]
        print("| " + " | ".join(row) + " |")
    print(f"\nmedian over {args.rounds} interleaved rounds of {args.steps} steps (after {args.warmup} warm-up "
          f"steps), one process; configs: {' '.join(args.configs)} {' '.join(args.set)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
