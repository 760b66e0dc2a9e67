"""Offline pseudo-labeling of a whole unlabeled set with class-balanced thresholds (DST-CBC's
Algorithm 1 run over images on disk), streamed image by image and sharded over processes.

Pass 1 predicts ml, mp for every image, writes them to the round folder and counts the top 16
bits of the sampled confidences; pass B counts their low 16 bits from the stored maps; pass 2
applies the thresholds, overwrites the pseudo-labels and scores them against ground truth where
the unlabeled images have masks (for the report only: the masks never reach training).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ...data.io import Pair, write_list_file
from ...data.pseudo_labeled import (CONFIDENCE_DIR, CONFIDENCE_LEVELS, PSEUDO_LABEL_DIR, read_float32, read_png,
                                    write_float32, write_png)
from ...evaluation.inference import predict_probs
from ...evaluation.metrics import ConfusionMatrix
from ...parallel import all_reduce_sum
from ...run_layout import write_json
from ..base import RoundEnv
from .class_balanced import TopAlphaThresholds, confidence_bits, sample_pixels, select_pseudo_labels, threshold_values

CONFIDENCE_BITS_DIR = "confidence_float32"
"""Pass 1's exact confidences (float32 .npy), read by the threshold and selection passes, then removed."""
PSEUDO_LABEL_LIST = "pseudo_labels.txt"


def quantize_confidence(mp: torch.Tensor) -> torch.Tensor:
    """Confidence in [0, 1] → integer level in [0, CONFIDENCE_LEVELS] (long), the 16-bit store the
    OW ablation (``weights: stored``) trains with; thresholds are never taken on it."""
    return (mp.float() * CONFIDENCE_LEVELS).round().long().clamp_(0, CONFIDENCE_LEVELS)


@dataclass
class LabelingOptions:
    alpha: float
    per_class: bool = True
    """False: one threshold for all classes (DST-C)."""
    sample_ratio: float = 1.0
    """Share of each image's pixels the thresholds are estimated on."""
    keep_confidence: bool = False
    """Keep the 16-bit confidence maps (the OW ablation trains on them)."""
    seed: tuple[int, ...] = (0,)
    """The pixel samples are a fixed function of (seed, image index)."""


class OfflineLabeler:
    """Pseudo-labels ``images`` (a :class:`~equiseg.data.list_dataset.ListDataset` at the working
    resolution) into a round folder: ``pseudo_labels/<name>.png``, ``pseudo_labels.txt`` and, with
    ``keep_confidence``, ``confidence/<name>.png``."""

    def __init__(self, images: Any, spec: Any, env: RoundEnv, eval_cfg: Any, crop_size: Any, num_workers: int):
        self.images, self.spec, self.env = images, spec, env
        self.eval_cfg, self.crop_size, self.num_workers = eval_cfg, crop_size, num_workers

    def label(self, labeler: nn.Module, round_dir: Path, opts: LabelingOptions) -> dict:
        """All passes; returns the statistics (thresholds, coverage, quality against ground truth)."""
        top = TopAlphaThresholds(self.spec.num_classes, opts.alpha, opts.per_class, self.env.device)
        self._predict_and_count(labeler, round_dir, top, opts)                              # lines 1-8
        self._count_low_bits(round_dir, top, opts)                                          # lines 9-12
        thresholds = top.thresholds().cpu()
        counts, quality = self._select(thresholds, round_dir)                               # lines 13-18
        self.env.barrier()
        if self.env.is_main:
            shutil.rmtree(round_dir / CONFIDENCE_BITS_DIR, ignore_errors=True)
            if not opts.keep_confidence:
                shutil.rmtree(round_dir / CONFIDENCE_DIR, ignore_errors=True)
            write_list_file(round_dir / PSEUDO_LABEL_LIST, [Pair(p.image, f"{PSEUDO_LABEL_DIR}/{n}.png")
                                                            for p, n in zip(self.images.pairs, self.images.names)])
        predicted, kept = counts["predicted"], counts["kept"]
        return {
            "alpha": opts.alpha, "thresholds": "class" if opts.per_class else "global",
            "sample_ratio": opts.sample_ratio, "sampled_pixels": top.sampled_pixels,
            "class_thresholds": threshold_values(thresholds),
            "coverage": int(kept.sum()) / max(1, int(counts["pixels"])),
            "class_coverage": [kp / pr if pr else None for kp, pr in zip(kept.tolist(), predicted.tolist())],
            "predicted_pixels": predicted.tolist(), "kept_pixels": kept.tolist(),
            "num_images": len(self.images), "num_images_with_gt": int(counts["with_gt"]),
            "miou": None if quality is None else quality["miou"], "quality": quality,
        }

    def write_stats(self, path: Path, stats: dict) -> None:
        """Atomically, on the main process: the file marks the round's pseudo-labels complete."""
        if self.env.is_main:
            write_json(path, stats)
        self.env.barrier()

    def _shard(self) -> range:
        """This process's share of the images."""
        return range(self.env.rank, len(self.images), self.env.world_size)

    def _sample(self, opts: LabelingOptions, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        return sample_pixels(shape, opts.sample_ratio, (*opts.seed, i))

    def _predict_and_count(self, labeler: nn.Module, round_dir: Path, top: TopAlphaThresholds,
                           opts: LabelingOptions) -> None:
        """Pass 1: ml, mp of every image (written to the round folder) and pass A of the thresholds
        over the sampled pixels, summed over all processes."""
        device, names = self.env.device, self.images.names
        mode = "whole" if self.eval_cfg.mode == "center" else self.eval_cfg.mode  # label every pixel
        window = self.eval_cfg.crop_size or self.crop_size
        with torch.no_grad():
            for i, x in _prefetch(_ImageView(self.images, self._shard()), self.num_workers):
                p = predict_probs(labeler, x[None].to(device), mode=mode, crop_size=window,
                                  stride=self.eval_cfg.stride, num_classes=self.spec.num_classes,
                                  autocast=self.env.autocast)[0]
                mp, ml = p.max(0)                                                        # lines 4-6
                sample = self._sample(opts, i, tuple(ml.shape)).to(device)
                top.count_high(ml[sample], confidence_bits(mp[sample]))                  # lines 7-8
                name = f"{names[i]}.png"
                write_png(round_dir / PSEUDO_LABEL_DIR / name, ml.cpu().numpy().astype(np.uint8))
                write_float32(round_dir / CONFIDENCE_BITS_DIR / f"{names[i]}.npy", mp)
                if opts.keep_confidence:
                    write_png(round_dir / CONFIDENCE_DIR / name,
                              quantize_confidence(mp).cpu().numpy().astype(np.uint16))
        top.high.copy_(all_reduce_sum(top.high, device=device)[0])
        top.finish_high()

    def _count_low_bits(self, round_dir: Path, top: TopAlphaThresholds, opts: LabelingOptions) -> None:
        """Pass B of the thresholds: the same sampled pixels, read back from the stored maps."""
        for i, ml, mp, _ in _prefetch(_RawView(self.images, self._shard(), round_dir, with_gt=False),
                                      self.num_workers):
            sample = self._sample(opts, i, tuple(ml.shape))
            top.count_low(ml[sample], confidence_bits(mp[sample]))
        top.low.copy_(all_reduce_sum(top.low, device=self.env.device)[0])

    def _select(self, thresholds: torch.Tensor, round_dir: Path) -> tuple[dict, Optional[dict]]:
        """Pass 2: apply the thresholds to the stored (ml, mp) maps, overwrite the pseudo-labels, and
        count predicted / kept pixels per class and the pseudo-labels' confusion with ground truth."""
        C, ignore, names, device = self.spec.num_classes, self.spec.ignore_index, self.images.names, self.env.device
        counts = {"predicted": torch.zeros(C, dtype=torch.long), "kept": torch.zeros(C, dtype=torch.long),
                  "pixels": torch.zeros(1, dtype=torch.long), "with_gt": torch.zeros(1, dtype=torch.long)}
        matrix = ConfusionMatrix(C, ignore, device=device)
        for i, ml, mp, gt in _prefetch(_RawView(self.images, self._shard(), round_dir), self.num_workers):
            y = select_pseudo_labels(ml, confidence_bits(mp), thresholds, ignore)          # lines 13-18
            write_png(round_dir / PSEUDO_LABEL_DIR / f"{names[i]}.png", y.numpy().astype(np.uint8))
            kept = y != ignore
            counts["predicted"] += torch.bincount(ml.reshape(-1), minlength=C)
            counts["kept"] += torch.bincount(y[kept], minlength=C)
            counts["pixels"] += y.numel()
            if gt is not None:  # ground truth is read for this report only, never for training
                counts["with_gt"] += 1
                matrix.update(y[kept], gt[kept])
        for t in counts.values():
            t.copy_(all_reduce_sum(t, device=device)[0])
        matrix.all_reduce()
        self.env.barrier()
        quality = matrix.compute(self.spec.tail_ids).to_dict(list(self.spec.class_names)) if counts["with_gt"] else None
        return counts, quality


class _ImageView(torch.utils.data.Dataset):
    """Pass 1 input: (index, normalised image at the working resolution) for the listed indices."""

    def __init__(self, images: Any, indices: range):
        self.images, self.indices = images, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        return i, self.images.load(i)["image"]


class _RawView(torch.utils.data.Dataset):
    """Pass B / pass 2 input: (index, ml, float32 mp, ground truth or None) at the working resolution."""

    def __init__(self, images: Any, indices: range, round_dir: Path, with_gt: bool = True):
        self.images, self.indices, self.round_dir, self.with_gt = images, list(indices), round_dir, with_gt
        self.names = images.names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        name = f"{self.names[i]}.png"
        ml = torch.from_numpy(read_png(self.round_dir / PSEUDO_LABEL_DIR / name).astype(np.int64))
        mp = torch.from_numpy(read_float32(self.round_dir / CONFIDENCE_BITS_DIR / f"{self.names[i]}.npy"))
        gt = None
        if self.with_gt and self.images.label_path(i) is not None:  # known: to measure the pseudo-labels
            gt = torch.from_numpy(self.images.decode(i, with_label=True)[1].astype(np.int64))
        return i, ml, mp, gt


def _prefetch(dataset: torch.utils.data.Dataset, num_workers: int):
    """Items one by one, decoded in worker processes."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)
