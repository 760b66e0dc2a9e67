"""Confusion matrix and the segmentation metrics derived from it (IoU, mIoU, accuracies).

Conventions
-----------
* Rows of the confusion matrix are ground-truth classes, columns are predicted classes.
* Metrics are fractions in [0, 1]; tables print percentages.
* A class whose union (GT pixels + predicted pixels - intersection) is zero, i.e. a class absent
  from both the ground truth and the predictions, has IoU ``NaN`` and is left out of every mean.
  The mean IoU is therefore taken over the classes present in the GT *or* the predictions.

  The official AEL code (and several other semi-supervised repos) instead divides by
  ``union + 1e-10`` and averages over all classes, which counts such classes as IoU 0. The two
  agree whenever every class occurs in the evaluated set, as on the real validation sets
  (Cityscapes, PASCAL VOC, CamVid). They differ only on small subsets (``max_images``, tests),
  where scoring a class that never appears as 0 would just measure the subset's class coverage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

from ..data.spec import IGNORE_INDEX

PERCENT = 100.0
TAIL_MARK = "*"


@dataclass
class EvalResult:
    """Metrics of one evaluation. Per-class values are indexed by train id; ``NaN`` = not present."""

    iou: tuple[float, ...]
    """Per-class IoU; NaN for a class absent from both GT and predictions."""
    class_acc: tuple[float, ...]
    """Per-class accuracy (recall, TP / GT pixels); NaN for a class absent from the GT."""
    miou: float
    pixel_acc: float
    mean_class_acc: float
    head_miou: float
    """Mean IoU over the non-tail classes (equals ``miou`` when there are no tail classes)."""
    tail_miou: float
    """Mean IoU over the tail classes; NaN when the dataset defines none."""
    tail_ids: tuple[int, ...] = ()
    num_pixels: int = 0
    """Labelled (non-ignore) pixels that were scored."""
    num_images: Optional[int] = None
    """Images evaluated (over all ranks), when known (set by the evaluator)."""
    confusion: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    """(C, C) int64 matrix, rows = GT, columns = prediction."""
    samples: list = field(default_factory=list, repr=False, compare=False)
    """Optional visualisation samples collected by the evaluator (not serialised)."""

    @property
    def num_classes(self) -> int:
        return len(self.iou)

    def to_dict(self, class_names: Optional[Sequence[str]] = None, include_confusion: bool = False) -> dict[str, Any]:
        """A JSON-safe dict: plain floats/ints/lists, NaN written as ``None``."""
        out: dict[str, Any] = {
            "miou": _json_float(self.miou),
            "head_miou": _json_float(self.head_miou),
            "tail_miou": _json_float(self.tail_miou),
            "pixel_acc": _json_float(self.pixel_acc),
            "mean_class_acc": _json_float(self.mean_class_acc),
            "iou": [_json_float(v) for v in self.iou],
            "class_acc": [_json_float(v) for v in self.class_acc],
            "tail_ids": [int(i) for i in self.tail_ids],
            "num_pixels": int(self.num_pixels),
            "num_images": None if self.num_images is None else int(self.num_images),
        }
        if class_names is not None:
            _check_names(class_names, self.num_classes)
            out["class_names"] = list(class_names)
        if include_confusion and self.confusion is not None:
            out["confusion"] = np.asarray(self.confusion).astype(np.int64).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        """Rebuild a result from :meth:`to_dict` output (``None`` back to NaN). Unknown keys,
        e.g. the iteration a trainer stores alongside, are ignored."""
        return cls(
            iou=tuple(_from_json_float(v) for v in data["iou"]),
            class_acc=tuple(_from_json_float(v) for v in data.get("class_acc", [None] * len(data["iou"]))),
            miou=_from_json_float(data["miou"]),
            pixel_acc=_from_json_float(data.get("pixel_acc")),
            mean_class_acc=_from_json_float(data.get("mean_class_acc")),
            head_miou=_from_json_float(data.get("head_miou")),
            tail_miou=_from_json_float(data.get("tail_miou")),
            tail_ids=tuple(int(i) for i in data.get("tail_ids", ())),
            num_pixels=int(data.get("num_pixels", 0)),
            num_images=data.get("num_images"),
            confusion=None if data.get("confusion") is None else np.asarray(data["confusion"], dtype=np.int64),
        )

    def table(self, class_names: Sequence[str], tail_ids: Optional[Sequence[int]] = None) -> str:
        """Fixed-width per-class IoU table (percent); tail classes marked ``*``.

        Ends with the mIoU, head mIoU and tail mIoU lines. ``tail_ids`` defaults to the ids the
        result was computed with; passing others only changes the marks, not the head/tail means.
        """
        _check_names(class_names, self.num_classes)
        tails = set(self.tail_ids if tail_ids is None else tail_ids)
        summary = [("mIoU", self.miou), ("head mIoU", self.head_miou), ("tail mIoU", self.tail_miou)]
        name_w = max(len("class"), *(len(n) for n in class_names), *(len(s) for s, _ in summary))
        value_w = len("100.00")
        header = f"{'class':<{name_w}}  {'tail':>4}  {'IoU %':>{value_w}}  {'Acc %':>{value_w}}"
        lines = [header, "-" * len(header)]
        for i, name in enumerate(class_names):
            mark = TAIL_MARK if i in tails else ""
            lines.append(
                f"{name:<{name_w}}  {mark:>4}  {_pct(self.iou[i], value_w)}  {_pct(self.class_acc[i], value_w)}"
            )
        lines.append("-" * len(header))
        for label, value in summary:
            lines.append(f"{label:<{name_w}}  {'':>4}  {_pct(value, value_w)}")
        return "\n".join(lines)


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix with ``torch.bincount`` on the data's device.

    Keeping the matrix on the model's device avoids a device-to-host copy per batch and lets
    NCCL all-reduce it directly. With ``device=None`` the matrix is created on the device of the
    first ``update``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: Optional[torch.device | str] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._mat: Optional[torch.Tensor] = None
        if device is not None:
            self._mat = self._zeros(torch.device(device))

    def _zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    @property
    def matrix(self) -> torch.Tensor:
        """The (C, C) int64 counts (rows = GT, columns = prediction)."""
        if self._mat is None:
            self._mat = self._zeros(torch.device("cpu"))
        return self._mat

    def reset(self) -> None:
        if self._mat is not None:
            self._mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch. ``pred`` and ``target`` are integer tensors of the same shape.

        Pixels whose target is ``ignore_index`` are skipped. Raises ``ValueError`` on a shape
        mismatch or on a target (or prediction) value outside ``[0, C)`` other than ignore.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        for name, t in (("prediction", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor of class ids, got {t.dtype}")
        if self._mat is None:
            self._mat = self._zeros(target.device)
        device = self._mat.device
        pred = pred.to(device=device, dtype=torch.long).reshape(-1)
        target = target.to(device=device, dtype=torch.long).reshape(-1)

        C = self.num_classes
        valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= C))
        bad_pred = valid & ((pred < 0) | (pred >= C))
        # One host sync for both checks: silently miscounting would corrupt every metric.
        any_bad_target, any_bad_pred = torch.stack([bad_target.any(), bad_pred.any()]).tolist()
        if any_bad_target:
            values = torch.unique(target[bad_target]).tolist()
            raise ValueError(f"target has values {values[:10]} outside [0, {C}) that are not ignore_index={self.ignore_index}")
        if any_bad_pred:
            values = torch.unique(pred[bad_pred]).tolist()
            raise ValueError(f"prediction has values {values[:10]} outside [0, {C})")

        flat = target[valid] * C + pred[valid]
        self._mat += torch.bincount(flat, minlength=C * C).reshape(C, C)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts into this one (same number of classes)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.matrix.add_(other.matrix.to(self.matrix.device))
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the counts over all DDP ranks in place (a no-op outside torch.distributed).

        Every rank must call this exactly once after its last ``update``, even a rank that saw
        no data; calling it twice would count the other ranks' pixels twice.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        if self._mat is None:
            # A rank with an empty shard still has to join the collective; NCCL needs a CUDA tensor.
            on_nccl = dist.get_backend() == "nccl"
            self._mat = self._zeros(torch.device("cuda", torch.cuda.current_device()) if on_nccl else torch.device("cpu"))
        dist.all_reduce(self._mat, op=dist.ReduceOp.SUM)
        return self

    def compute(self, tail_ids: Sequence[int] = ()) -> EvalResult:
        """Metrics from the accumulated counts; ``tail_ids`` split mIoU into head and tail."""
        tail_ids = tuple(int(i) for i in tail_ids)
        bad = [i for i in tail_ids if not 0 <= i < self.num_classes]
        if bad:
            raise ValueError(f"tail ids {bad} are outside [0, {self.num_classes})")
        mat = self.matrix.detach().cpu().numpy().astype(np.int64)
        tp = np.diag(mat).astype(np.float64)
        gt = mat.sum(axis=1).astype(np.float64)
        predicted = mat.sum(axis=0).astype(np.float64)
        union = gt + predicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            class_acc = np.where(gt > 0, tp / gt, np.nan)
        total = float(mat.sum())
        tail_mask = np.zeros(self.num_classes, dtype=bool)
        tail_mask[list(tail_ids)] = True
        return EvalResult(
            iou=tuple(float(v) for v in iou),
            class_acc=tuple(float(v) for v in class_acc),
            miou=_nanmean(iou),
            pixel_acc=float(tp.sum() / total) if total > 0 else math.nan,
            mean_class_acc=_nanmean(class_acc),
            head_miou=_nanmean(iou[~tail_mask]),
            tail_miou=_nanmean(iou[tail_mask]),
            tail_ids=tail_ids,
            num_pixels=int(total),
            confusion=mat,
        )


@dataclass(frozen=True)
class ClassConfusion:
    """Where one class's pixels go: the row and the column of class c in the confusion matrix.
    Shares are fractions; NaN where the class has no true (recall) or no predicted (precision) pixel."""

    recall: float
    """TP / true pixels of c."""
    precision: float
    """TP / pixels predicted c."""
    missed_as: tuple[tuple[int, float], ...]
    """The other classes with the largest shares of c's true pixels (class id, share), largest first."""
    false_from: tuple[tuple[int, float], ...]
    """The true classes with the largest shares of the pixels predicted c (class id, share)."""


def class_confusions(confusion: Union[np.ndarray, Sequence[Sequence[int]]], top: int = 2) -> list[ClassConfusion]:
    """Per class, recall, precision and its ``top`` largest confusions both ways (shares of zero
    left out). It shows what an IoU alone hides: two rare classes trading pixels, e.g. a rider
    predicted as a pedestrian lowers one class's recall and the other's precision."""
    mat = np.asarray(confusion, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {mat.shape}")
    truth, predicted, tp = mat.sum(axis=1), mat.sum(axis=0), np.diag(mat)

    def largest(counts: np.ndarray, total: float, c: int) -> tuple[tuple[int, float], ...]:
        if total <= 0:
            return ()
        order = [k for k in np.argsort(-counts, kind="stable") if k != c and counts[k] > 0]
        return tuple((int(k), float(counts[k] / total)) for k in order[:top])

    return [ClassConfusion(recall=float(tp[c] / truth[c]) if truth[c] > 0 else math.nan,
                           precision=float(tp[c] / predicted[c]) if predicted[c] > 0 else math.nan,
                           missed_as=largest(mat[c], truth[c], c), false_from=largest(mat[:, c], predicted[c], c))
            for c in range(len(mat))]


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without numpy's warning) when there are none."""
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


def _json_float(value: float) -> Optional[float]:
    return None if value is None or math.isnan(value) else float(value)


def _from_json_float(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def _pct(value: float, width: int) -> str:
    return f"{'n/a':>{width}}" if math.isnan(value) else f"{value * PERCENT:>{width}.2f}"


def _check_names(class_names: Sequence[str], num_classes: int) -> None:
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for a {num_classes}-class result")
