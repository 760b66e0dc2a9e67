"""Evaluate a segmentation model on a labelled dataset, single process or DDP.

Under DDP every rank evaluates the disjoint shard ``range(rank, n, world_size)`` of the dataset
(no padding with duplicated samples, unlike ``DistributedSampler``, which would count some
images twice) and the confusion matrices are summed, so all ranks return the same result.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import EvalConfig
from ..data.spec import DatasetSpec
from .inference import AutocastFactory, Size, center_crop, predict_probs
from .metrics import ConfusionMatrix, EvalResult


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(num_items: int, rank: int, world_size: int) -> range:
    """This rank's items: ``rank, rank + world_size, ...`` (disjoint, no duplicates, may be empty)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    return range(rank, num_items, world_size)


def collate_samples(samples: list[dict]) -> list[dict]:
    """Keep a batch as a list of sample dicts.

    Evaluation images may differ in size (PASCAL VOC, ``whole``/``slide`` on raw images), which
    the default collate cannot stack; the evaluator stacks runs of equal-sized images itself.
    """
    return list(samples)


def make_eval_loader(
    dataset: Dataset,
    eval_cfg: EvalConfig,
    max_images: Optional[int] = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> DataLoader:
    """A loader over this rank's shard of the first ``max_images`` (default: all) samples, in order.

    Build it once and pass it to :func:`evaluate` repeatedly to keep worker processes alive.
    """
    if rank is None or world_size is None:
        rank, world_size = _dist_info()
    limit = _image_limit(max_images, eval_cfg)
    n = len(dataset) if limit is None else min(len(dataset), limit)
    shard = Subset(dataset, list(shard_indices(n, rank, world_size)))
    return DataLoader(
        shard,
        batch_size=eval_cfg.batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_samples,
        persistent_workers=num_workers > 0,
    )


def _image_limit(max_images: Optional[int], eval_cfg: EvalConfig) -> Optional[int]:
    return max_images if max_images is not None else eval_cfg.max_images


def _crop_size(eval_cfg: EvalConfig, crop_size: Optional[Size]) -> Optional[Size]:
    size = eval_cfg.crop_size if eval_cfg.crop_size is not None else crop_size
    if eval_cfg.mode in ("slide", "center") and size is None:
        raise ValueError(f"eval.mode '{eval_cfg.mode}' needs eval.crop_size (or the run's data.crop_size)")
    return size


def _as_sample_list(batch: Any) -> list[dict]:
    """Accept list-collated batches (ours) and default-collated dict batches alike."""
    if isinstance(batch, dict):
        size = batch["image"].shape[0]
        return [{k: (v[i] if isinstance(v, (torch.Tensor, list, tuple)) else v) for k, v in batch.items()} for i in range(size)]
    return list(batch)


def _same_size_groups(samples: Sequence[dict]) -> Iterator[list[dict]]:
    """Consecutive runs of samples whose images share one size, to forward them as one batch."""
    group: list[dict] = []
    for sample in samples:
        if group and sample["image"].shape != group[0]["image"].shape:
            yield group
            group = []
        group.append(sample)
    if group:
        yield group


def _unwrap(model: nn.Module) -> nn.Module:
    # Shards are uneven (no padding), so ranks run different numbers of forwards; a DDP wrapper
    # may issue collectives in forward (buffer broadcast) and would then hang. Use the module.
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own previous mode.

    Restoring per module (not ``model.train(was_training)``) keeps deliberately frozen parts,
    e.g. BatchNorm layers kept in eval mode during training, as they were.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def _predict_group(
    model: nn.Module,
    group: list[dict],
    eval_cfg: EvalConfig,
    crop_size: Optional[Size],
    num_classes: int,
    device: torch.device,
    autocast: AutocastFactory,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Predictions (B, H, W) and labels (B, H, W) or None, aligned (center mode crops labels)."""
    images = torch.stack([s["image"] for s in group]).to(device, non_blocking=True)
    probs = predict_probs(
        model, images, mode=eval_cfg.mode, crop_size=crop_size, stride=eval_cfg.stride,
        flip=eval_cfg.flip, num_classes=num_classes, autocast=autocast,
    )
    pred = probs.argmax(dim=1)
    labels = None
    if all("label" in s for s in group):
        labels = torch.stack([torch.as_tensor(s["label"]) for s in group]).to(device, non_blocking=True)
        if eval_cfg.mode == "center":
            labels = center_crop(labels, crop_size)
    return pred, labels


def _visual_sample(sample: dict, pred: torch.Tensor, label: Optional[torch.Tensor], eval_cfg: EvalConfig, crop_size: Optional[Size]) -> dict:
    image = sample["image"]
    if eval_cfg.mode == "center":
        image = center_crop(image, crop_size)
    return {
        "image": image.detach().cpu(),
        "label": None if label is None else label.detach().cpu(),
        "pred": pred.detach().cpu(),
        "name": sample.get("name"),
        "index": sample.get("index"),
    }


def evaluate(
    model: nn.Module,
    data: Union[Dataset, DataLoader],
    spec: DatasetSpec,
    eval_cfg: EvalConfig,
    device: Union[torch.device, str],
    autocast: AutocastFactory = contextlib.nullcontext,
    max_images: Optional[int] = None,
    progress: bool = False,
    crop_size: Optional[Size] = None,
    num_samples: int = 0,
    num_workers: int = 0,
) -> EvalResult:
    """Evaluate ``model`` on labelled samples and return the metrics (the same on every rank).

    data: a Dataset (sharded here over DDP ranks) or a DataLoader that already yields this
    rank's shard in order (see :func:`make_eval_loader`). Samples are dicts with ``image``
    (3, H, W) normalized float and ``label`` (H, W) long.
    max_images: evaluate the first N images of the dataset (default ``eval_cfg.max_images``).
    crop_size: window / crop size used when ``eval_cfg.crop_size`` is None (the run's
    ``data.crop_size``).
    num_samples: also keep this rank's first N (image, label, prediction) triples, on the CPU,
    in ``result.samples`` for visualisation.
    The model is put in eval mode and every submodule's mode is restored afterwards.
    """
    device = torch.device(device)
    rank, world_size = _dist_info()
    size = _crop_size(eval_cfg, crop_size)
    limit = _image_limit(max_images, eval_cfg)
    if isinstance(data, DataLoader):
        loader: Iterable = data
        # A loader from make_eval_loader yields range(rank, n, world) in order, so the images of
        # the global first ``limit`` that belong to this rank are exactly its first ``quota``.
        quota = None if limit is None else len(shard_indices(limit, rank, world_size))
    else:
        loader = make_eval_loader(data, eval_cfg, limit, num_workers=num_workers, pin_memory=device.type == "cuda")
        quota = None

    net = _unwrap(model)
    matrix = ConfusionMatrix(spec.num_classes, spec.ignore_index, device=device)
    seen = 0
    samples: list[dict] = []
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        total = len(loader) if hasattr(loader, "__len__") else None
        bar = tqdm(total=total, desc=f"eval ({eval_cfg.mode})", unit="batch", leave=False)
    with eval_mode(net):
        for batch in loader:
            batch_samples = _as_sample_list(batch)
            if quota is not None:
                batch_samples = batch_samples[: max(quota - seen, 0)]
            for group in _same_size_groups(batch_samples):
                pred, labels = _predict_group(net, group, eval_cfg, size, spec.num_classes, device, autocast)
                if labels is None:
                    raise ValueError("evaluate() needs labelled samples (a 'label' entry in every sample)")
                matrix.update(pred, labels)
                for i, sample in enumerate(group):
                    if len(samples) < num_samples:
                        samples.append(_visual_sample(sample, pred[i], labels[i], eval_cfg, size))
            seen += len(batch_samples)
            if bar is not None:
                bar.update(1)
            if quota is not None and seen >= quota:
                break
    if bar is not None:
        bar.close()

    matrix.all_reduce()
    num_images = torch.tensor([seen], dtype=torch.int64, device=matrix.matrix.device)
    if world_size > 1:
        dist.all_reduce(num_images, op=dist.ReduceOp.SUM)
    result = matrix.compute(spec.tail_ids)
    result.num_images = int(num_images.item())
    result.samples = samples
    return result


def collect_samples(
    model: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    eval_cfg: EvalConfig,
    device: Union[torch.device, str],
    num_classes: int,
    autocast: AutocastFactory = contextlib.nullcontext,
    crop_size: Optional[Size] = None,
) -> list[dict]:
    """Predict the given samples (e.g. fixed ones for TensorBoard) with the eval settings.

    Returns dicts with ``image`` (3, h, w), ``label`` (h, w) or None, ``pred`` (h, w), ``name``
    and ``index``, all on the CPU and aligned (center mode crops image and label). Runs on the
    calling rank only; the model's modes are restored afterwards.
    """
    device = torch.device(device)
    size = _crop_size(eval_cfg, crop_size)
    net = _unwrap(model)
    out: list[dict] = []
    with eval_mode(net):
        for index in indices:
            sample = dataset[index]
            pred, labels = _predict_group(net, [sample], eval_cfg, size, num_classes, device, autocast)
            out.append(_visual_sample(sample, pred[0], None if labels is None else labels[0], eval_cfg, size))
    return out
