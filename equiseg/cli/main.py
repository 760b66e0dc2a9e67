"""``equiseg`` command line: train, eval, predict, splits, report, bench, check-data, demo."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from ..errors import EquisegError


INTERRUPT_HINTS = {"train": "; resume with --resume auto",
                   "bench": "; run the same bench command again: finished runs are reused, interrupted ones resumed"}


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.iterations=200 data.root=/data/camvid")


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _comma_ints(text: str) -> list[int]:
    try:
        return [int(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equiseg", description=__doc__,
                                     epilog="Errors print one line; add --debug (or set EQUISEG_DEBUG=1) for the "
                                            "full traceback.")
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

    p = sub.add_parser("report", help="write one self-contained HTML page about a run folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holds config.yaml, metrics.jsonl, results.json)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--no-images", action="store_true",
                   help="leave out the input / ground truth / prediction pictures (no model or data needed)")
    p.add_argument("--images", type=int, default=3, metavar="N", help="val images to predict with best.pt")
    p.add_argument("--device", default="cpu", help="device for those predictions (cpu, cuda)")

    p = sub.add_parser("bench", help="train several methods on one protocol and write one table (bench.md, bench.json)")
    p.add_argument("--preset", choices=["cpu", "gpu"],
                   help="cpu: CamVid half resolution, MobileNetV2 (the configs/*/camvid_* files); gpu: full-resolution "
                        "CamVid, DeepLabv3+ ResNet-101 (configs/bench/gpu/); default cpu")
    p.add_argument("--methods", type=_comma_list, help="comma-separated subset of the preset, e.g. supervised,cutmix,ael")
    p.add_argument("--config", dest="configs", action="append", default=[], metavar="YAML",
                   help="bench these config files instead of a preset (repeat; one method each)")
    p.add_argument("--seeds", type=_comma_ints, default=[0], help="comma-separated run.seed values (default 0)")
    p.add_argument("--eval-list", help="evaluate on this list file instead of the val split (sets data.val_list)")
    p.add_argument("--out", default="runs/bench", help="folder for the run folders and bench.md / bench.json")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every method, e.g. optim.iterations=100 data.root=/data/camvid")
    p.add_argument("--reuse-from", action="append", default=[], metavar="DIR",
                   help="also reuse identical finished runs found in the run folders inside DIR (e.g. runs)")
    p.add_argument("--reuse-only", action="store_true",
                   help="train nothing: write the table from finished runs (in --out or --reuse-from), "
                        "and stop with an error naming any run that has none")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N runs at once, each in its own process (on a CPU with cpu_count/N threads each); "
                        "default 1")
    p.add_argument("--step-profile", action="store_true",
                   help="append a per-step speed table (interleaved timing in one process, as benchmarks/step_time.py)")
    p.add_argument("--profile-steps", type=int, help="timed steps per method per round (default 10)")
    p.add_argument("--profile-rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--profile-warmup", type=int, help="untimed steps per method first (default 3)")

    p = sub.add_parser("check-data", help="check every file a config's run would read (the start-up check, alone)")
    p.add_argument("config", help="YAML config")
    p.add_argument("--no-cache", action="store_true", help="check every file again, even those a run checked before")
    _add_overrides(p)

    p = sub.add_parser("demo", help="supervised vs a semi-supervised method on generated long-tailed data (no "
                                     "download): one side-by-side per-class table")
    p.add_argument("--out", default="runs/demo", help="folder for the generated data and the two runs (default runs/demo)")
    p.add_argument("--method", default="cutmix", choices=["cutmix", "ael", "fixmatch", "mean_teacher", "hagseg"],
                   help="the semi-supervised method trained beside supervised, with the CPU preset's short-schedule "
                        "settings (default cutmix)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations of each run (default 400; 30 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a much smaller dataset and run, for smoke tests (its own data folder)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    # ``--debug`` anywhere on the line (or EQUISEG_DEBUG=1): full tracebacks instead of one-line errors.
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    # Overrides may come after options (``train cfg.yaml --resume auto a.b=1``): collect them too.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    debug = debug or os.environ.get("EQUISEG_DEBUG", "") not in ("", "0")
    try:
        from . import commands
        return getattr(commands, f"cmd_{args.command.replace('-', '_')}")(args) or 0
    except (EquisegError, PermissionError, FileNotFoundError, IsADirectoryError) as exc:
        if debug:
            raise
        return report_error(args.command, user_message(exc))
    except KeyboardInterrupt:
        print(f"interrupted{INTERRUPT_HINTS.get(args.command, '')}", file=sys.stderr)
        return 130


def user_message(exc: BaseException) -> str:
    """One line for the user. An error raised in a DataLoader worker arrives wrapped in the worker's
    traceback text: keep the original message only."""
    if isinstance(exc, OSError) and not isinstance(exc, EquisegError):
        what = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or type(exc).__name__)
        return f"{what}: {exc.filename}" if exc.filename else f"{what}: {exc}"
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text


def report_error(command: str, message: str) -> int:
    """Print ``equiseg <verb>: error: ...`` and put the same line in the run's train.log (if one is open)."""
    line = f"equiseg {command}: error: {message}"
    print(line, file=sys.stderr)
    log = logging.getLogger("equiseg")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    return 2


if __name__ == "__main__":
    sys.exit(main())
