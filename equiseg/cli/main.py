"""``equiseg`` command line: train, eval, predict, splits, demo."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import EquisegError


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.iterations=200 data.root=/data/camvid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equiseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (run under torchrun for several GPUs)")
    p.add_argument("config", help="YAML config (see configs/)")
    _add_overrides(p)
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue a run: 'auto' takes RUN_DIR/checkpoints/last.pt")
    p.add_argument("--run-dir", help="run folder (default: run.output_dir/run.name)")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an existing run folder")

    p = sub.add_parser("eval", help="evaluate a checkpoint and print per-class IoU")
    p.add_argument("config", help="the run's YAML config (a run folder's config.yaml works)")
    _add_overrides(p)
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt of a run")
    p.add_argument("--weights", choices=["auto", "model", "eval_model"], default="auto",
                   help="which weights of a training checkpoint: the student ('model') or the "
                        "reported model ('eval_model', e.g. the EMA teacher); auto = the reported one")
    p.add_argument("--list", dest="eval_list", help="evaluate on this list file instead of the val split")
    p.add_argument("--json", dest="json_out", help="also write the result as JSON here")

    p = sub.add_parser("predict", help="write colourized and raw index PNG predictions for images")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", help="config (default: the one stored in the checkpoint)")
    p.add_argument("--output", required=True, help="folder for <name>_color.png and <name>.png")
    p.add_argument("--weights", choices=["auto", "model", "eval_model"], default="auto")

    p = sub.add_parser("splits", help="write labeled/unlabeled lists for a partition protocol")
    p.add_argument("--dataset", required=True, help="camvid, cityscapes, voc, voc_aug, ade20k, folder, synthetic")
    p.add_argument("--root", required=True)
    p.add_argument("--labeled", action="append", default=None,
                   help="fraction like 1/8 or a count like 46; repeat for several (nested) sizes")
    p.add_argument("--folds", type=int, default=1, help="number of folds (seeds 0..K-1)")
    p.add_argument("--train-list", help="pool of training pairs (default: the dataset's train split)")
    p.add_argument("--import", dest="import_file", help="import a peer's published labeled list instead")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("demo", help="train and evaluate on a generated synthetic dataset (no download)")
    p.add_argument("--out", default="runs/demo", help="folder for the data and the run")
    p.add_argument("--method", default="supervised")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    # Overrides may come after options (``train cfg.yaml --resume auto a.b=1``): collect them too.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        from . import commands
        return getattr(commands, f"cmd_{args.command}")(args) or 0
    except EquisegError as exc:
        print(f"equiseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume auto", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
