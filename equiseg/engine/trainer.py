"""Iteration-based training loop shared by every method.

One run folder holds everything: the resolved config, the split lists, ``train.log``,
``metrics.jsonl``, TensorBoard events, ``checkpoints/last.pt`` (for ``--resume``),
``checkpoints/best.pt`` and ``results.json`` (last and best evaluation, never only the best).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..config import Config, config_to_yaml
from ..data.build import RunData, build_run_data
from ..data.list_dataset import ListDataset, WithAuditLabels
from ..data.transforms import AUDIT_LABEL_KEY
from ..errors import DataError, TrainingError
from ..evaluation.evaluator import evaluate
from ..evaluation.pseudo_label_audit import AUDIT_RECORD, PseudoLabelAudit, flatten_record
from ..methods.base import Method, MethodContext, StepOutput, unwrap
from ..models import build_model, convert_sync_batchnorm
from ..models.checkpoint import load_checkpoint
from ..parallel import all_reduce_sum
from ..provenance import code_stamp
from ..registry import METHODS
from ..run_layout import RunLayout, write_json
from .checkpoint import preserved_rng, rng_state, save_atomic, set_rng_state
from .distributed import DistInfo, all_gather_objects, all_reduce_mean, barrier, broadcast_buffers, init_distributed
from .optim import build_optimizer, build_scheduler
from .sampler import InfiniteBatchSampler
from .timing import StepTimer

log = logging.getLogger("equiseg")

LABELED_STREAM, UNLABELED_STREAM = 0, 1


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    # Model init must match across ranks (DDP also broadcasts it); per-step randomness
    # (dropout, method sampling) differs per rank, so the rank is folded in after init.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def autocast_factory(amp: str, device: torch.device):
    if amp == "off":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs CUDA; use bf16 or off on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def setup_logging(run_dir: Optional[Path], is_main: bool) -> None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = _TqdmSafeHandler()
    console.setFormatter(fmt)
    log.addHandler(console)
    if run_dir is not None and is_main:
        fh = logging.FileHandler(RunLayout(run_dir).train_log)
        fh.setFormatter(fmt)
        log.addHandler(fh)


class _TqdmSafeHandler(logging.StreamHandler):
    """Console log lines written through ``tqdm.write``, so they never break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise
            self.handleError(record)


def show_progress(requested: bool) -> bool:
    """A progress bar only on a terminal: redirected stderr gets log lines, not bar redraws."""
    return requested and sys.stderr.isatty()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _infinite_loader(dataset, global_batch: int, dist_info: DistInfo, seed: int, stream: int,
                     start_batch: int, num_workers: int) -> DataLoader:
    sampler = InfiniteBatchSampler(len(dataset), global_batch, dist_info.rank, dist_info.world_size,
                                   seed=seed, stream=stream, start_batch=start_batch)
    # The loader gets its own generator: drawing its base seed from the global RNG would shift
    # the dropout/method random stream and break exact resumption.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed * 2 + stream),
                      pin_memory=dist_info.device.type == "cuda",
                      persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


@dataclass
class TrainResult:
    run_dir: Path
    last: dict
    best: dict
    best_iteration: int


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: Optional[Path] = None, *,
                 val_dataset: Optional[Dataset] = None, unlabeled_dataset: Optional[Dataset] = None,
                 initial_weights: Optional[dict] = None):
        """``val_dataset`` / ``unlabeled_dataset`` replace the sets built from ``cfg.data`` (a driver
        such as DST-CBC's rounds supplies its own); ``initial_weights`` (a model state_dict) start a
        fresh run, and are ignored when resuming."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume_path = resume
        self.code = code_stamp()  # the code this process loaded: files edited during the run do not count
        self.dist = init_distributed(cfg.run.device)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        setup_logging(self.run_dir, self.dist.is_main)
        seed_everything(cfg.run.seed, self.dist.rank, cfg.run.deterministic)

        self.method_cls: type[Method] = METHODS.get(cfg.method.name)
        self.data: RunData = build_run_data(cfg, strong_view=self.method_cls.unlabeled_view(cfg.method),
                                            needs_unlabeled=self.method_cls.uses_unlabeled,
                                            run_dir=self.run_dir if self.dist.is_main else None)
        if val_dataset is not None:
            self.data.val = val_dataset
        if unlabeled_dataset is not None:
            self.data.unlabeled = unlabeled_dataset
        self.spec = self.data.spec
        device = self.dist.device
        self.audit = self._make_audit()

        model = build_model(cfg.model, self.spec.num_classes)
        if initial_weights is not None and resume is None:
            model.load_state_dict(initial_weights)
        if self.dist.distributed and device.type == "cuda" and cfg.model.sync_bn:
            model = convert_sync_batchnorm(model)
        model.to(device)
        self.model = model
        self.student = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                        if self.dist.distributed else model)

        # Per-rank randomness from here on (dropout, method sampling).
        torch.manual_seed(cfg.run.seed + 1000003 * self.dist.rank)
        self.timer = StepTimer(sync=cfg.train.profile)
        self.autocast = autocast_factory(cfg.train.amp, device)
        self.ctx = MethodContext(
            num_classes=self.spec.num_classes, ignore_index=self.spec.ignore_index, device=device,
            world_size=self.dist.world_size, rank=self.dist.rank, total_iterations=cfg.optim.iterations,
            class_names=self.spec.class_names, labeled_dataset=self.data.labeled,
            unlabeled_dataset=self.data.unlabeled, autocast=self.autocast, timer=self.timer,
            generator=torch.Generator().manual_seed(cfg.run.seed + 7919 * self.dist.rank),
        )
        self.method = self.method_cls(cfg.method, self.student, self.ctx).to(device)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.method.lr_restarts())
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

        self.iteration = 0
        self.best: dict = {}
        self.best_iteration = -1
        self.last_eval: dict = {}
        self.last_eval_iteration = -1
        if resume is not None:
            self._restore(Path(resume))

        self.writer = None
        if self.dist.is_main:
            RunLayout(self.run_dir).config.write_text(config_to_yaml(cfg))
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(RunLayout(self.run_dir).tensorboard))

    def _make_audit(self) -> Optional[PseudoLabelAudit]:
        """The pseudo-label audit when ``train.pseudo_label_audit`` asks for it and the unlabeled
        images have masks."""
        mode = self.cfg.train.pseudo_label_audit
        unlabeled = self.data.unlabeled
        if mode == "off" or unlabeled is None:
            return None
        if not isinstance(unlabeled, ListDataset) or not unlabeled.has_label_paths:
            if mode == "on":
                raise DataError("train.pseudo_label_audit is 'on' but the unlabeled images have no mask paths "
                                "to score pseudo-labels against")
            return None
        return PseudoLabelAudit(self.spec.num_classes, self.spec.ignore_index)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        rngs = all_gather_objects(rng_state())
        return {
            "iteration": self.iteration,
            "model": unwrap(self.student).state_dict(),
            "eval_model": self._main_eval_model().state_dict(),
            "method": self.method.state_dict(),
            "method_name": self.cfg.method.name,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "generator": self.ctx.generator.get_state(),
            "best": self.best, "best_iteration": self.best_iteration,
            "last_eval": self.last_eval, "last_eval_iteration": self.last_eval_iteration,
            "world_size": self.dist.world_size,
            "config": self.cfg.model_dump(mode="json"),
            "class_names": list(self.spec.class_names),
        }

    def save_checkpoint(self) -> None:
        ckpt = self._checkpoint()  # every rank takes part in gathering RNG states
        if self.dist.is_main:
            save_atomic(ckpt, RunLayout(self.run_dir).last_checkpoint)
        barrier()

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.dist.device)
        if ckpt.get("method_name") != self.cfg.method.name:
            raise ValueError(f"checkpoint {path} was written by method '{ckpt.get('method_name')}', "
                             f"this run is '{self.cfg.method.name}'")
        unwrap(self.student).load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = ckpt["iteration"]
        self.best, self.best_iteration = ckpt["best"], ckpt["best_iteration"]
        self.last_eval, self.last_eval_iteration = ckpt["last_eval"], ckpt["last_eval_iteration"]
        if ckpt["world_size"] == self.dist.world_size:
            set_rng_state(ckpt["rng"][self.dist.rank])
            self.ctx.generator.set_state(ckpt["generator"])
        else:
            log.warning("resuming with %d processes from a %d-process checkpoint: data order is kept, "
                        "per-rank random states are re-seeded", self.dist.world_size, ckpt["world_size"])
        if self.dist.is_main:
            self._drop_metrics_after(self.iteration)
        log.info("resumed from %s at iteration %d", path, self.iteration)

    def _drop_metrics_after(self, iteration: int) -> None:
        """Records logged after the checkpoint were lost with the killed run and will be logged again:
        drop them, so metrics.jsonl holds each iteration once."""
        path = RunLayout(self.run_dir).metrics
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ evaluation
    def _main_eval_model(self) -> nn.Module:
        return next(iter(self.method.eval_models(self.iteration).values()))

    def run_evaluation(self) -> dict:
        results = {}
        for name, model in self.method.eval_models(self.iteration).items():
            broadcast_buffers(model)  # every rank evaluates the model rank 0 will save
            res = evaluate(model, self.data.val, self.spec, self.cfg.eval, self.dist.device,
                           autocast=self.autocast, max_images=self.cfg.eval.max_images,
                           crop_size=self.cfg.data.crop_size)
            results[name] = res.to_dict(self.spec.class_names, include_confusion=True)
            log.info("iter %d | %s val mIoU %.2f (tail %.2f)", self.iteration, name,
                     100 * res.miou, 100 * (res.tail_miou if res.tail_miou is not None else float("nan")))
        main = next(iter(results))
        summary = {"iteration": self.iteration, "model": main, **results[main], "all_models": results}
        self.last_eval, self.last_eval_iteration = summary, self.iteration
        if summary["miou"] is None:
            raise ValueError("validation scored no pixels: is the val list empty or all ignore?")
        # Only the reported model competes for best.pt (not, e.g., the student of a supervised warm-up).
        if main == self.method.reported_model and (not self.best or summary["miou"] > self.best["miou"]):
            self.best, self.best_iteration = summary, self.iteration
            if self.dist.is_main:
                save_atomic({"model": self._main_eval_model().state_dict(), "iteration": self.iteration,
                             "result": summary, "config": self.cfg.model_dump(mode="json"),
                             "class_names": list(self.spec.class_names)},
                            RunLayout(self.run_dir).best_checkpoint)
        if self.writer is not None:
            # Per-class IoU too: a class the unlabeled loss unlearns shows when it goes, not just at the end.
            per_class = {n: {c: v for c, v in zip(self.spec.class_names, r.get("iou") or ()) if v is not None}
                         for n, r in results.items()}
            for name, r in results.items():
                self.writer.add_scalar(f"val/{name}_miou", r["miou"], self.iteration)
                if r.get("tail_miou") is not None:
                    self.writer.add_scalar(f"val/{name}_tail_miou", r["tail_miou"], self.iteration)
                for c, v in per_class[name].items():
                    self.writer.add_scalar(f"val_iou/{name}/{c}", v, self.iteration)
            self._write_metrics({"iteration": self.iteration,
                                 "eval": {n: {"miou": r["miou"], "tail_miou": r.get("tail_miou"), "iou": per_class[n]}
                                          for n, r in results.items()}})
        return summary

    def _write_metrics(self, record: dict) -> None:
        with open(RunLayout(self.run_dir).metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _write_samples(self) -> None:
        from ..evaluation.visualize import sample_grid
        grid = sample_grid(self._main_eval_model(), self.data.val, self.spec, self.dist.device, n=2)
        self.writer.add_image("val/samples", grid, self.iteration, dataformats="HWC")

    # ------------------------------------------------------------------ the loop
    def data_iterators(self) -> tuple:
        """Infinite (labeled, unlabeled-or-None) batch iterators positioned at ``self.iteration``."""
        cfg, d = self.cfg, self.cfg.data
        labeled = iter(_infinite_loader(self.data.labeled, d.batch_size, self.dist, cfg.run.seed,
                                        LABELED_STREAM, self.iteration, d.num_workers))
        unlabeled = None
        if self.method_cls.uses_unlabeled:
            source = WithAuditLabels(self.data.unlabeled) if self.audit is not None else self.data.unlabeled
            unlabeled = iter(_infinite_loader(source, d.unlabeled_batch_size or d.batch_size,
                                              self.dist, cfg.run.seed, UNLABELED_STREAM, self.iteration,
                                              d.num_workers))
        return labeled, unlabeled

    def train_step(self, labeled_iter, unlabeled_iter) -> StepOutput:
        """One optimisation step: fetch batches, the method's loss, backward, optimizer, schedule."""
        it = self.iteration
        with self.timer.section("data"):
            labeled = to_device(next(labeled_iter), self.dist.device)
            unlabeled = to_device(next(unlabeled_iter), self.dist.device) if unlabeled_iter else None
        # The unlabeled images' masks go to the audit only; the method never sees them.
        truth = unlabeled.pop(AUDIT_LABEL_KEY, None) if unlabeled is not None else None
        out = self.method.training_step(labeled, unlabeled, it)
        if truth is not None and out.pseudo_targets is not None:
            t = out.pseudo_targets
            self.audit.update(t.label, t.weight, t.origin, truth)
        if not torch.isfinite(out.loss):
            parts = ", ".join(f"{k} {float(v):.4g}" for k, v in out.logs.items() if k.startswith("loss"))
            last = RunLayout(self.run_dir).last_checkpoint
            raise TrainingError(f"loss is {out.loss.item()} at iteration {it} ({parts or 'no loss parts logged'}); "
                                "lower optim.lr, set train.grad_clip, or check the data"
                                + (f"; resume from the last good checkpoint {last}" if last.is_file() else ""))
        self.optimizer.zero_grad(set_to_none=True)
        with self.timer.section("backward"):
            self.scaler.scale(out.loss).backward()
        with self.timer.section("optimizer"):
            if self.cfg.train.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.method.after_optimizer_step(it)
        self.timer.end_step()
        self.iteration = it + 1
        return out

    def fit(self) -> TrainResult:
        cfg = self.cfg
        labeled_iter, unlabeled_iter = self.data_iterators()
        progress = None
        if self.dist.is_main and show_progress(cfg.train.progress_bar):
            from tqdm.auto import tqdm
            progress = tqdm(total=cfg.optim.iterations, initial=self.iteration, dynamic_ncols=True,
                            desc=f"{cfg.method.name}")
        log.info("training %s on %s: %d labeled / %s unlabeled images, %d iterations, %d process(es) on %s",
                 cfg.method.name, self.spec.name, len(self.data.labeled),
                 len(self.data.unlabeled) if self.data.unlabeled is not None else "no",
                 cfg.optim.iterations, self.dist.world_size, self.dist.device)

        window: dict[str, list[float]] = {}
        self.student.train()
        self.method.train()
        while self.iteration < cfg.optim.iterations:
            out = self.train_step(labeled_iter, unlabeled_iter)
            logs = {"loss": out.loss.detach(), **out.logs}
            for k, v in logs.items():
                window.setdefault(k, []).append(float(v))
            lr = self.optimizer.param_groups[0]["lr"]
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{float(out.loss):.4f}", lr=f"{lr:.2e}")
            if self.iteration % cfg.train.log_every == 0 or self.iteration == cfg.optim.iterations:
                self._log_window(window, lr)
                window = {}
            if self.writer is not None and self.iteration % cfg.train.sample_every == 0:
                with preserved_rng():
                    self._write_samples()
            if self.iteration % cfg.train.eval_every == 0 and self.iteration < cfg.optim.iterations:
                with preserved_rng():  # evaluating must not change what is trained
                    self.run_evaluation()
                self.student.train()
            if self.iteration % cfg.train.checkpoint_every == 0 or self.iteration == cfg.optim.iterations:
                self.save_checkpoint()
        if progress is not None:
            progress.close()

        if self.last_eval_iteration != self.iteration:
            self.run_evaluation()
            self.save_checkpoint()
        return self._finish()

    def _log_window(self, window: dict[str, list[float]], lr: float) -> None:
        means = {k: sum(v) / len(v) for k, v in window.items()}
        means = all_reduce_mean(means, self.dist.device)
        pseudo_labels = None
        if self.audit is not None:
            self.audit.load_state(all_reduce_sum(self.audit.state(), device=self.dist.device)[0])
            pseudo_labels = self.audit.summary(self.spec.class_names, self.spec.tail_ids)
        timing = self.timer.mean_ms()
        self.timer.reset()
        if not self.dist.is_main:
            return
        record = {"iteration": self.iteration, "lr": lr, **means, "time_ms": timing}
        if pseudo_labels is not None:
            record[AUDIT_RECORD] = pseudo_labels
            for k, v in flatten_record(pseudo_labels, AUDIT_RECORD).items():
                self.writer.add_scalar(k, v, self.iteration)
        self._write_metrics(record)
        for k, v in means.items():
            self.writer.add_scalar(f"train/{k}", v, self.iteration)
        self.writer.add_scalar("train/lr", lr, self.iteration)
        step_ms = sum(timing.values())
        log.info("iter %d | loss %.4f | lr %.2e | %.0f ms/step (data %.0f)", self.iteration,
                 means.get("loss", math.nan), lr, step_ms, timing.get("data", 0.0))

    def _finish(self) -> TrainResult:
        result = TrainResult(self.run_dir, self.last_eval, self.best, self.best_iteration)
        if self.dist.is_main:
            payload = {"method": self.cfg.method.name, "dataset": self.spec.name,
                       "iterations": self.iteration,
                       "last": self.last_eval, "best": self.best, "best_iteration": self.best_iteration,
                       "code": self.code}
            write_json(RunLayout(self.run_dir).results, payload)
            from ..evaluation.metrics import EvalResult
            for tag, r in (("last", self.last_eval), ("best", self.best)):
                log.info("%s checkpoint (iteration %d):\n%s", tag, r["iteration"],
                         EvalResult.from_dict(r).table(self.spec.class_names, self.spec.tail_ids))
            if self.writer is not None:
                self.writer.close()
        barrier()
        return result
