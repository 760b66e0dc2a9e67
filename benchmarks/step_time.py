"""Per-step time of several methods, measured in one process, interleaved, and printed as a table.

A thin wrapper around :mod:`equiseg.engine.profile` (also behind ``equiseg bench --step-profile``):
steps are timed in rounds that alternate between the methods, so machine noise hits every method
alike and the ratios are meaningful even on a busy machine. The breakdown comes from the engine's
StepTimer: data wait, teacher forward, student forward, method extras (bank, sampling, mixing,
hardness), backward and optimizer step.

    python benchmarks/step_time.py configs/camvid/supervised_mbv2.yaml \
        configs/ael/camvid_cutmix_mbv2.yaml configs/ael/camvid_ael_mbv2.yaml --steps 10 --rounds 3

A config may carry its own overrides after ``::`` (the row is then named after them), so that two
variants of one method can be compared in the same run:

    python benchmarks/step_time.py configs/ael/camvid_cutmix_mbv2.yaml configs/ael/camvid_ael_mbv2.yaml \
        configs/ael/camvid_ael_mbv2.yaml::method.acm_batch=extra
"""
from __future__ import annotations

import argparse
import sys

from equiseg.config import load_config
from equiseg.bench.presets import SPEED_BASELINES
from equiseg.engine.profile import DEFAULT_ROUNDS, DEFAULT_STEPS, DEFAULT_WARMUP, profile_steps, speed_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed steps per method per round")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config")
    p.add_argument("--baseline", action="append", default=None,
                   help=f"method(s) to divide by (default: {', '.join(SPEED_BASELINES)} when profiled, else the first)")
    args = p.parse_args(argv)

    configs, names = [], []
    for spec in args.configs:
        path, *own = spec.split("::")
        configs.append(load_config(path, [*args.set, *own]))
        names.append(configs[-1].method.name + (f"[{','.join(o.split('.')[-1] for o in own)}]" if own else ""))
    profiles = profile_steps(configs, steps=args.steps, rounds=args.rounds, warmup=args.warmup, names=names)
    print(speed_table(profiles, args.baseline or SPEED_BASELINES))
    print(f"\nmedian over {args.rounds} interleaved rounds of {args.steps} steps (after {args.warmup} warm-up "
          f"steps), one process; configs: {' '.join(args.configs)} {' '.join(args.set)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
