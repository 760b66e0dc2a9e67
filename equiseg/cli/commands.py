"""The work behind each ``equiseg`` sub-command (parsing lives in :mod:`equiseg.cli.main`)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import Config, ConfigError, config_to_yaml, load_config, validate_config
from ..errors import DataError
from ..run_layout import RunLayout

# --------------------------------------------------------------------------- train


def resolve_run_dir(cfg: Config, run_dir: Optional[str]) -> Path:
    return Path(run_dir) if run_dir else Path(cfg.run.output_dir) / cfg.run.name


def resolve_resume(run_dir: Path, resume: Optional[str], overwrite: bool) -> Optional[Path]:
    last = RunLayout(run_dir).last_checkpoint
    if resume == "auto":
        if not last.is_file():
            raise ConfigError(f"--resume auto: no checkpoint at {last}")
        return last
    if resume:
        if not Path(resume).is_file():
            raise ConfigError(f"--resume: checkpoint not found: {resume}")
        return Path(resume)
    if RunLayout(run_dir).checkpoints.exists() or RunLayout(run_dir).results.exists():
        if not overwrite:
            raise ConfigError(f"run folder {run_dir} already holds a run: pass --resume auto to continue it, "
                              "--overwrite to start afresh, or set run.name")
        if _is_main_process():
            shutil.rmtree(run_dir)
    return None


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args) -> int:
    from ..engine.run import train_run

    cfg = load_config(args.config, args.overrides)
    run_dir = resolve_run_dir(cfg, args.run_dir)
    resume = resolve_resume(run_dir, args.resume, args.overwrite)
    result = train_run(cfg, run_dir, resume)
    if _is_main_process():
        _print_summary(result.last, result.best, result.best_iteration, run_dir)
    return 0


def _print_summary(last: dict, best: dict, best_iteration: int, run_dir: Path) -> None:
    def fmt(r):
        tail = r.get("tail_miou")
        return f"mIoU {100 * r['miou']:.2f}" + (f", tail mIoU {100 * tail:.2f}" if tail is not None else "")

    print(f"\nlast checkpoint (iteration {last['iteration']}): {fmt(last)}")
    print(f"best checkpoint (iteration {best_iteration}): {fmt(best)}")
    print(f"run folder: {run_dir}")


# --------------------------------------------------------------------------- eval / predict


def _load_model(checkpoint: str, cfg: Config, num_classes: int, weights: str, device: torch.device):
    from ..models.checkpoint import model_from_checkpoint

    model, _, which = model_from_checkpoint(checkpoint, cfg.model, num_classes, weights)
    return model.to(device), which


def cmd_eval(args) -> int:
    from ..data.build import build_eval_dataset
    from ..engine.distributed import init_distributed
    from ..engine.trainer import autocast_factory
    from ..evaluation.evaluator import evaluate

    cfg = load_config(args.config, args.overrides)
    dist = init_distributed(cfg.run.device)
    dataset, source = build_eval_dataset(cfg, args.eval_list)
    spec = dataset.spec
    model, which = _load_model(args.checkpoint, cfg, spec.num_classes, args.weights, dist.device)
    result = evaluate(model, dataset, spec, cfg.eval, dist.device, autocast=autocast_factory(cfg.train.amp, dist.device),
                      max_images=cfg.eval.max_images, crop_size=cfg.data.crop_size,
                      progress=dist.is_main and sys.stderr.isatty())
    if dist.is_main:
        print(f"{spec.name} {source}: {result.num_images} images, mode={cfg.eval.mode}, flip={cfg.eval.flip}, "
              f"image_scale={cfg.data.image_scale}, weights={which} of {args.checkpoint}")
        print(result.table(spec.class_names, spec.tail_ids))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result.to_dict(spec.class_names), indent=2))
    return 0


_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _collect_images(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in _IMAGE_EXTS))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input not found: {p}")
    if not files:
        raise DataError(f"no images found in {inputs}")
    return files


def cmd_predict(args) -> int:
    from ..data.definitions import definition_from_config
    from ..data.io import decode_image
    from ..data.transforms import eval_transform, resize_pair
    from ..engine.distributed import pick_device
    from ..evaluation.inference import predict_probs
    from ..evaluation.visualize import save_prediction
    from ..models.checkpoint import load_checkpoint

    if args.config:
        cfg = load_config(args.config)
    else:
        stored = load_checkpoint(Path(args.checkpoint)).get("config")
        if stored is None:
            raise ConfigError(f"{args.checkpoint} stores no config: pass --config")
        cfg = validate_config(stored)
    device = pick_device(cfg.run.device)
    spec = definition_from_config(cfg.data).spec
    model, _ = _load_model(args.checkpoint, cfg, spec.num_classes, args.weights, device)
    transform = eval_transform(spec)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path in _collect_images(args.inputs):
        image = decode_image(path)
        h, w = image.shape[:2]
        if cfg.data.image_scale != 1.0:
            image, _ = resize_pair(image, None, cfg.data.image_scale)  # the scale the model was trained at
        valid = np.ones(image.shape[:2], dtype=bool)
        x = transform({"image": image, "valid": valid}, rng)["image"].unsqueeze(0).to(device)
        with torch.no_grad():
            probs = predict_probs(model, x, mode=cfg.eval.mode, crop_size=cfg.eval.crop_size or cfg.data.crop_size,
                                  stride=cfg.eval.stride, flip=cfg.eval.flip, num_classes=spec.num_classes)
        if probs.shape[-2:] != (h, w):  # back to the input's own resolution
            probs = torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        pred = probs.argmax(1)[0].cpu().numpy().astype(np.uint8)
        save_prediction(pred, out_dir / f"{path.stem}_color.png", out_dir / f"{path.stem}.png", spec)
        print(f"{path} -> {out_dir / (path.stem + '.png')}")
    return 0


def cmd_check_data(args) -> int:
    from ..data.build import check_run_files, resolve_split
    from ..data.definitions import definition_from_config

    cfg = load_config(args.config, args.overrides)
    definition = definition_from_config(cfg.data)
    lists = resolve_split(cfg.data, definition)
    if args.no_cache:
        import os
        import tempfile
        os.environ["EQUISEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="equiseg_check_")
    checked = check_run_files(cfg.data, definition, lists)
    total = len(lists.pool) + len(lists.val)
    print(f"{cfg.data.dataset} at {lists.root}: {len(lists.pool)} train pool + {len(lists.val)} val pairs fine "
          f"({checked} checked now, {total - checked} known from an earlier check)")
    return 0


# --------------------------------------------------------------------------- splits


def cmd_splits(args) -> int:
    from ..data.definitions import get_dataset_definition
    from ..data.splits import complement, import_split, make_split, write_split

    definition = get_dataset_definition(args.dataset)
    root = definition.resolve_root(args.root)
    pool = definition.pairs_from_list(args.train_list, root) if args.train_list else definition.pairs(args.root, "train")
    out = Path(args.out)
    if args.import_file:
        labeled = import_split(args.import_file, root, definition, pool)
        unlabeled = complement(pool, labeled)
        meta = {"dataset": args.dataset, "protocol": "imported", "source": args.import_file}
        write_split(out, labeled, unlabeled, meta)
        print(f"{out}: {len(labeled)} labeled / {len(unlabeled)} unlabeled (imported from {args.import_file})")
        return 0
    if not args.labeled:
        raise ConfigError("splits: give --labeled (e.g. --labeled 1/8) or --import FILE")
    for fold in range(args.folds):
        for share in args.labeled:
            labeled, unlabeled = make_split(pool, share, fold)
            target = out / share.replace("/", "_") / f"fold{fold}"
            write_split(target, labeled, unlabeled,
                        {"dataset": args.dataset, "protocol": "hash-ranked", "labeled_share": share, "fold": fold,
                         "pool_count": len(pool)})
            print(f"{target}: {len(labeled)} labeled / {len(unlabeled)} unlabeled")
    return 0


# --------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from ..report import write_report

    if args.images < 1 and not args.no_images:
        raise ConfigError("report: --images must be at least 1 (or pass --no-images)")
    path = write_report(args.run_dir, args.out, images=not args.no_images, num_images=args.images,
                        device=args.device)
    print(f"report: {path}")
    return 0


# --------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    from ..bench import BenchOptions, failed, run_bench

    profiling = {key: value for key, value in (("profile_steps", args.profile_steps),
                                               ("profile_rounds", args.profile_rounds),
                                               ("profile_warmup", args.profile_warmup)) if value is not None}
    options = BenchOptions(out=Path(args.out), preset=args.preset, methods=args.methods, configs=args.configs,
                           seeds=args.seeds, eval_list=args.eval_list, overrides=args.overrides,
                           reuse_from=[Path(d) for d in args.reuse_from], reuse_only=args.reuse_only, jobs=args.jobs,
                           step_profile=args.step_profile,
                           **profiling)
    records = run_bench(options)
    print((Path(args.out) / "bench.md").read_text())
    return 1 if failed(records) else 0


# --------------------------------------------------------------------------- demo


DEMO_METHODS = ("cutmix", "ael", "fixmatch", "mean_teacher", "hagseg")
"""Semi-supervised methods the demo can put beside the supervised baseline (DST-CBC's offline
rounds do not fit its few minutes)."""
DEMO_SIZES = {"full": {"n_train": 400, "n_val": 60, "iterations": 400},
              "quick": {"n_train": 64, "n_val": 16, "iterations": 30}}
DEMO_LABELED = 8
"""Labeled scenes of the demo. On scenes without a colour cast, 8 labeled scenes trained a better
model than 50 (the task is learned from few examples), so unlabeled data had nothing to add."""
DEMO_COLOUR_CAST = 0.45
"""Per-image colour cast of the demo's scenes (channel gains in 1 ± 0.45): 8 labeled scenes show
8 looks, the unlabeled ones all the others — the situation semi-supervised learning is for."""
DEMO_SMALL_THING_SCALE = 2.0
"""Poles, signs and bicycles at twice the generator's default size (about 1 % of the pixels or less
each): at the default size both models learned none of them in the demo's budget (IoU 0-5), so the
table could not show the tail; at twice the size supervised learns them a little and the
unlabeled scenes add to each (README, "Set up")."""


DEMO_HEAD_CHANNELS = 64
"""A quarter of DeepLabv3+'s 256-channel head: the head is most of the cost at the demo's small
crops, and this keeps two runs within minutes of CPU."""


def demo_short_schedule(method: str, iterations: int) -> dict:
    """The CPU preset's short-schedule settings (docs/semisup_cpu.md), scaled to the demo's length.
    The demo's AEL keeps τ 0.95 with the bank's class-adaptive thresholds (the CamVid preset's
    class-balanced thresholds were not measured on the demo's scenes)."""
    if method == "supervised":
        return {}
    # The student is reported: on schedules this short the EMA teacher lags it (every demo and
    # CamVid CPU run so far, docs/semisup_cpu.md).
    options: dict = {"supervised_warmup": iterations // 2, "teacher_bn": "eval", "ema_buffers": "ema",
                     "report_model": "student"}
    if method in ("cutmix", "ael"):
        options.update(confidence_threshold=0.95, loss_denominator="valid")
    if method == "cutmix":  # as the CamVid preset: a class the pseudo-labels never name is not unlearned
        options.update(unlabeled_logit_adjustment=1.0)
    if method == "ael":
        options.update(adaptive_threshold=True, bank_momentum=0.99)
    if method == "hagseg":
        options.update(confidence_threshold=0.7, ema_momentum=0.99, background_classes=[])
    return options


def demo_config(data_root: Path, run_dir: Path, method: str, iterations: int) -> Config:
    """A CPU-sized run on the synthetic long-tailed scenes: ``DEMO_LABELED`` of them labeled."""
    return validate_config({
        "run": {"name": run_dir.name, "output_dir": str(run_dir.parent), "seed": 0},
        "data": {"dataset": "synthetic", "root": str(data_root), "labeled": DEMO_LABELED,
                 "crop_size": [96, 128], "scale_range": [0.75, 1.5], "batch_size": 8, "num_workers": 1},
        "model": {"arch": "deeplabv3plus", "backbone": "mobilenet_v2", "output_stride": 16,
                  "head_channels": DEMO_HEAD_CHANNELS},
        "optim": {"iterations": iterations, "lr": 0.02, "head_lr_mult": 10, "warmup_iterations": 20},
        "train": {"log_every": 25, "eval_every": max(iterations // 2, 1), "checkpoint_every": 100,
                  "sample_every": max(iterations // 2, 1), "progress_bar": False},
        "eval": {"mode": "whole"},
        "method": {"name": method, **demo_short_schedule(method, iterations)},
    })


def _demo_data(out: Path, size: str) -> Path:
    """The demo's data folder for this size (quick and full never share one); generated once."""
    params = DEMO_SIZES[size]
    root = out / f"data_{size}"
    stamp = {"n_train": params["n_train"], "n_val": params["n_val"], "seed": 0, "cast": DEMO_COLOUR_CAST,
             "small_thing_scale": DEMO_SMALL_THING_SCALE}
    stamp_file = root / "demo_data.json"
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        if root.exists():
            shutil.rmtree(root)
        print(f"generating the synthetic long-tailed dataset in {root} ...")
        from ..data.synthetic import make_synthetic_dataset
        make_synthetic_dataset(root, n_train=params["n_train"], n_val=params["n_val"], seed=0, cast=DEMO_COLOUR_CAST,
                               small_thing_scale=DEMO_SMALL_THING_SCALE)
        stamp_file.write_text(json.dumps(stamp))
    return root


def cmd_demo(args) -> int:
    from ..bench import BenchOptions, failed, run_bench

    if args.method not in DEMO_METHODS:  # before any data is generated
        raise ConfigError(f"demo: --method must be one of {', '.join(DEMO_METHODS)}, got '{args.method}'")
    size = "quick" if args.quick else "full"
    iterations = args.iterations or DEMO_SIZES[size]["iterations"]
    if iterations < 1:
        raise ConfigError(f"demo: --iterations must be at least 1, got {iterations}")
    out = Path(args.out)
    data_root = _demo_data(out, size)
    configs = []
    for method in ("supervised", args.method):  # the bench places the runs in <out>/<size>_bench/<method>_seed0
        path = out / f"{size}_{method}.yaml"
        path.write_text(config_to_yaml(demo_config(data_root, out / f"{size}_{method}", method, iterations)))
        configs.append(str(path))
    print(f"training supervised and {args.method} side by side on the same data and budget "
          f"({iterations} iterations, {DEMO_LABELED} labeled scenes, the other "
          f"{DEMO_SIZES[size]['n_train'] - DEMO_LABELED} unlabeled) ...")
    records = run_bench(BenchOptions(out=out / f"{size}_bench", configs=configs, jobs=2))
    if failed(records):
        return 1
    print(demo_table(records, args.method))
    return 0


def demo_table(records: list, method: str) -> str:
    """Per-class IoU of the two runs' last checkpoints side by side, with the gain."""
    from ..data.synthetic import SYNTHETIC_SPEC

    by_method = {r.method: r for r in records}
    sup, semi = by_method["supervised"], by_method[method]
    names, tails = SYNTHETIC_SPEC.class_names, set(SYNTHETIC_SPEC.tail_ids)
    rows = [f"{'class':<12} {'tail':<4} {'supervised':>10} {method:>12} {'gain':>7}", "-" * 49]
    for c, name in enumerate(names):
        a, b = sup.iou_last[c], semi.iou_last[c]
        gain = f"{100 * (b - a):+7.2f}" if a is not None and b is not None else "    n/a"
        fmt = lambda v: f"{100 * v:.2f}" if v is not None else "n/a"  # noqa: E731
        rows.append(f"{name:<12} {'*' if c in tails else '':<4} {fmt(a):>10} {fmt(b):>12} {gain}")
    rows.append("-" * 49)
    for label, key in (("mIoU", "miou_last"), ("tail mIoU", "tail_miou_last")):
        a, b = getattr(sup, key), getattr(semi, key)
        rows.append(f"{label:<17} {100 * a:>10.2f} {100 * b:>12.2f} {100 * (b - a):+7.2f}")
    head = [c for c in range(len(names)) if c not in tails]
    mean = lambda r: sum(r.iou_last[c] for c in head) / len(head)  # noqa: E731
    rows.append(f"{'head mIoU':<17} {100 * mean(sup):>10.2f} {100 * mean(semi):>12.2f} "
                f"{100 * (mean(semi) - mean(sup)):+7.2f}")
    return ("\nval IoU % of the last checkpoints (* = tail class); same labeled images, same budget; "
            f"{method} also sees the unlabeled scenes:\n" + "\n".join(rows))
