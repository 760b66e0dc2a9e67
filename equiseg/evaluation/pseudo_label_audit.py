"""Pseudo-label audit: how good are the targets the unlabeled loss trains on, class by class?

When the unlabeled images have masks on disk, the engine loads them beside each unlabeled batch
(``audit_label``), keeps them away from the method, and scores the method's
:class:`~equiseg.methods.base.PseudoTargets` against them: every trained pixel whose origin is a
pixel of the loaded batch is matched with that pixel's true class. Over a logging window it gives

- per class c: ``precision`` (of the pixels pseudo-labeled c, the share truly c), ``recall`` (of
  the truly-c pixels the student trained on, the share pseudo-labeled c; a pixel left without a
  pseudo-label is a miss) and ``iou`` (c's pseudo-labels against c's true pixels, misses counted);
- ``weight_share`` per class: the share of L_u's weight that lands on pixels truly of class c;
- ``kept``: the share of trained valid pixels that carry a pseudo-label;
- ``wrong_weight``: the share of L_u's weight on pixels whose pseudo-label is wrong;
- ``untraced_weight``: the share on pixels with no known truth (e.g. AEL's fetched images).

Confirmation bias is visible here long before it shows in val mIoU: a class whose recall stays
at 0 never gets a pseudo-label, and one whose precision falls is being taught wrong.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

AUDIT_RECORD = "pseudo_labels"
"""Key of the audit's records in metrics.jsonl (and their TensorBoard prefix)."""
PER_CLASS_KEYS = ("iou", "precision", "recall", "weight_share")
SUMMARY_KEYS = ("miou", "tail_miou", "kept", "wrong_weight", "tail_weight_share", "untraced_weight")


class PseudoLabelAudit:
    """Sums over steps; :meth:`summary` turns them into the record above and resets."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        C = self.num_classes
        # Rows: pseudo-label 0..C-1, then C = no pseudo-label; columns: true class.
        self.matrix = torch.zeros(C + 1, C, dtype=torch.float64)
        self.weight_by_class = torch.zeros(C, dtype=torch.float64)
        self.totals = torch.zeros(4, dtype=torch.float64)  # weight, wrong weight, untraced weight, steps

    @torch.no_grad()
    def update(self, label: torch.Tensor, weight: torch.Tensor, origin: torch.Tensor,
               truth: torch.Tensor) -> None:
        """``label``/``weight``/``origin``: a step's pseudo-targets (B', H, W); ``truth``: the loaded
        unlabeled batch's ground truth (B, H, W), indexed by ``origin``."""
        C, ignore = self.num_classes, self.ignore_index
        label, weight, origin = label.reshape(-1).cpu(), weight.reshape(-1).double().cpu(), origin.reshape(-1).cpu()
        truth = truth.reshape(-1).cpu()
        traced = origin >= 0
        true_class = torch.full_like(label, ignore)
        true_class[traced] = truth[origin[traced]]
        known = true_class != ignore
        pseudo = label.masked_fill(label == ignore, C)
        self.matrix += torch.bincount(pseudo[known] * C + true_class[known],
                                      minlength=(C + 1) * C).view(C + 1, C).double()
        self.weight_by_class += torch.bincount(true_class[known], weights=weight[known], minlength=C)
        wrong = known & (label != ignore) & (label != true_class)
        self.totals += torch.tensor([float(weight.sum()), float(weight[wrong].sum()),
                                     float(weight[~known].sum()), 1.0], dtype=torch.float64)

    def state(self) -> torch.Tensor:
        """All sums as one vector (to all-reduce across ranks)."""
        return torch.cat([self.matrix.reshape(-1), self.weight_by_class, self.totals])

    def load_state(self, state: torch.Tensor) -> None:
        C = self.num_classes
        n = (C + 1) * C
        self.matrix = state[:n].view(C + 1, C).clone()
        self.weight_by_class = state[n:n + C].clone()
        self.totals = state[n + C:].clone()

    def summary(self, class_names: Sequence[str], tail_ids: Sequence[int] = ()) -> Optional[dict]:
        """The window's record (None when no step was audited); resets the sums."""
        if self.totals[3] == 0:
            return None
        C = self.num_classes
        m = self.matrix
        correct = m[:C].diagonal()
        labeled_as = m[:C].sum(1)           # pixels pseudo-labeled c
        truly = m.sum(0)                    # pixels truly c (with or without a pseudo-label)
        union = labeled_as + truly - correct

        def ratio(num: torch.Tensor, den: torch.Tensor) -> list[Optional[float]]:
            return [float(n / d) if d > 0 else None for n, d in zip(num, den)]

        total_weight = float(self.totals[0])
        known_weight = float(self.weight_by_class.sum())
        iou = ratio(correct, union)
        present = [i for i, v in enumerate(iou) if v is not None]
        tail = [i for i in tail_ids if iou[i] is not None]
        names = list(class_names)
        record = {
            "precision": dict(zip(names, ratio(correct, labeled_as))),
            "recall": dict(zip(names, ratio(correct, truly))),
            "iou": dict(zip(names, iou)),
            "weight_share": dict(zip(names, [float(w / known_weight) if known_weight > 0 else None
                                             for w in self.weight_by_class])),
            "miou": sum(iou[i] for i in present) / len(present) if present else None,
            "tail_miou": sum(iou[i] for i in tail) / len(tail) if tail else None,
            "kept": float(labeled_as.sum() / m.sum()) if m.sum() > 0 else None,
            "wrong_weight": float(self.totals[1] / total_weight) if total_weight > 0 else None,
            "untraced_weight": float(self.totals[2] / total_weight) if total_weight > 0 else None,
        }
        if tail_ids:
            record["tail_weight_share"] = (float(self.weight_by_class[list(tail_ids)].sum() / known_weight)
                                           if known_weight > 0 else None)
        self.reset()
        return record


def flatten_record(record: dict, prefix: str = AUDIT_RECORD) -> dict[str, float]:
    """``{prefix/key: v, prefix/key/<class>: v}`` scalars of a summary, for TensorBoard."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{prefix}/{key}/{name}": v for name, v in value.items() if v is not None})
        elif value is not None:
            flat[f"{prefix}/{key}"] = value
    return flat
