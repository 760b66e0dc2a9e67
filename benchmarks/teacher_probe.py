"""What a run's model predicts on the unlabeled images' pixels of chosen classes, against their masks.

For each chosen true class: which classes the model predicts there, how confident it is (the
share at or above a pseudo-label threshold τ, the median confidence), the median probability of
the true class, and how often the true class is the runner-up. It answers "why does a class get
no pseudo-labels" (docs/semisup_cpu.md): a rare class predicted as a frequent one with high
confidence is taught away by the unlabeled loss. ``--thresholds`` adds, per chosen class, the
precision and recall of its pseudo-labels ("argmax where max p >= t") at each threshold t: what a
lower or per-class threshold would let in. Diagnostic only; the masks never reach training.

    python benchmarks/teacher_probe.py runs/p2/cutmix_s0 --classes Pedestrian,Bicyclist --thresholds 0.5,0.7,0.9,0.95
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from equiseg.config import load_config
from equiseg.data.build import build_eval_dataset
from equiseg.evaluation.inference import predict_probs
from equiseg.models.checkpoint import model_from_checkpoint
from equiseg.run_layout import RunLayout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", help="default: the run's checkpoints/last.pt (its reported model)")
    p.add_argument("--classes", required=True, help="comma-separated class names")
    p.add_argument("--tau", type=float, default=0.95, help="the pseudo-label threshold to count against")
    p.add_argument("--min-share", type=float, default=0.03, help="list predicted classes above this share")
    p.add_argument("--thresholds", default="", help="comma-separated t: pseudo-label precision / recall at each")
    args = p.parse_args(argv)

    run = Path(args.run_dir)
    cfg = load_config(run / "config.yaml")
    unlabeled, _ = build_eval_dataset(cfg, str((run / "split" / "unlabeled.txt").resolve()))
    names = list(unlabeled.spec.class_names)
    chosen = [names.index(c) for c in args.classes.split(",")]
    checkpoint = args.checkpoint or RunLayout(run).last_checkpoint
    model, _, which = model_from_checkpoint(checkpoint, cfg.model, len(names))

    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    labelled = torch.zeros(len(thresholds), len(chosen))  # pixels pseudo-labelled c at t ...
    right = torch.zeros(len(thresholds), len(chosen))     # ... of which truly c
    rows: dict[int, list[torch.Tensor]] = {c: [] for c in chosen}
    with torch.no_grad():
        for i in range(len(unlabeled)):
            sample = unlabeled[i]
            label = sample["label"]
            if not thresholds and not any((label == c).any() for c in chosen):
                continue
            probs = predict_probs(model, sample["image"][None], cfg.eval.mode, cfg.data.crop_size)[0]
            confidence, prediction = probs.max(0)
            for k, t in enumerate(thresholds):
                for j, c in enumerate(chosen):
                    named = (prediction == c) & (confidence >= t) & (label != unlabeled.spec.ignore_index)
                    labelled[k, j] += named.sum()
                    right[k, j] += (named & (label == c)).sum()
            runner_up = probs.topk(2, dim=0).indices[1]
            for c in chosen:
                at = label == c
                rows[c].append(torch.stack([prediction[at].float(), confidence[at], probs[c][at],
                                            (runner_up[at] == c).float()], 1))

    print(f"{checkpoint} ({which}) on the {len(unlabeled)} unlabeled images of {run}:")
    for c in chosen:
        if not rows[c]:
            print(f"true {names[c]}: no pixel")
            continue
        prediction, confidence, p_true, second = torch.cat(rows[c]).T
        print(f"true {names[c]}: {len(prediction)} pixels")
        for k in prediction.unique().long().tolist():
            at = prediction == k
            if at.float().mean() < args.min_share:
                continue
            confident = 100 * (confidence[at] >= args.tau).float().mean()
            print(f"  predicted {names[k]:<12} {100 * at.float().mean():5.1f} %   conf ≥ {args.tau}: {confident:5.1f} %"
                  f"   median conf {confidence[at].median():.2f}   median p({names[c]}) {p_true[at].median():.3f}"
                  f"   {names[c]} 2nd: {100 * second[at].mean():.0f} %")
    if thresholds:
        print("pseudo-labels 'argmax where max p >= t': precision / recall % per class")
        for j, c in enumerate(chosen):
            total = sum(len(r) for r in rows[c])
            cells = [f"t {t}: {100 * right[k, j] / max(labelled[k, j], 1):5.1f} / {100 * right[k, j] / max(total, 1):5.1f}"
                     for k, t in enumerate(thresholds)]
            print(f"  {names[c]:<12} " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
