"""What AEL's adaptive Copy-Paste puts its pasted objects on: for each chosen class, the class found
below its pixels ("the ground it stands on"), in the labeled images as they are and on the
pasted pixels after Copy-Paste. A paste that moves a class onto another class's usual ground (a
pedestrian onto the road, where CamVid's riders are) teaches the model a wrong context. The ground of
a pixel of class c is the first class other than c below it in its column. Builds the
method from a config (with its data), optionally sets the confidence bank to a run's last logged
values (so the classes are sampled as late in that run), and pastes ``--batches`` labeled batches;
trains nothing.

    python benchmarks/copy_paste_context.py configs/ael/camvid_ael_mbv2.yaml --bank-from runs/p11/ael_s1 \\
        --classes Pedestrian,Bicyclist [--set method.acp_scale_range=[1.0,1.0]]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from equiseg.config import load_config
from equiseg.engine.trainer import Trainer
from equiseg.methods.ael import BANK_LOG_PREFIX

OTHER = "(off image / ignore)"


def ground(label: torch.Tensor, mask: torch.Tensor, c: int, reach: int, ignore_index: int) -> torch.Tensor:
    """Under each pixel of ``mask``, the first class other than ``c`` within ``reach`` rows below it
    (ignore where there is none: the object runs off the image or on beyond reach)."""
    found = torch.full_like(label, ignore_index)
    for k in range(reach, 0, -1):  # nearest last, so it wins
        shifted = torch.full_like(label, c)
        shifted[..., :-k, :] = label[..., k:, :]
        found = torch.where(shifted != c, shifted, found)
    return found[mask]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="an AEL config (adaptive_copy_paste on)")
    p.add_argument("--classes", required=True, help="comma-separated class names")
    p.add_argument("--bank-from", help="a run folder whose last logged confidence bank to use")
    p.add_argument("--batches", type=int, default=80, help="labeled batches to paste")
    p.add_argument("--reach", type=int, default=40, help="rows below a pixel to look for its ground in")
    p.add_argument("--top", type=int, default=4, help="ground classes listed per row")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args(argv)
    if args.reach < 1 or args.batches < 1:
        p.error("--reach and --batches must be at least 1")

    cfg = load_config(args.config, ["data.num_workers=0", "train.progress_bar=false",
                                    'train.pseudo_label_audit="off"', *args.set])
    if cfg.method.name != "ael" or not cfg.method.adaptive_copy_paste:
        p.error(f"{args.config}: needs method.name ael with adaptive_copy_paste on")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(cfg, Path(scratch))
        method, names = trainer.method, list(trainer.spec.class_names)
        unknown = [c for c in args.classes.split(",") if c not in names]
        if unknown:
            p.error(f"{unknown} are not class names of this dataset ({names})")
        chosen = [names.index(c) for c in args.classes.split(",")]
        if args.bank_from:
            records = [json.loads(line) for line in (Path(args.bank_from) / "metrics.jsonl").read_text().splitlines()]
            logged = [r for r in records if f"{BANK_LOG_PREFIX}{names[0]}" in r]
            if not logged:
                p.error(f"{args.bank_from}: no confidence bank in its metrics.jsonl")
            method.bank.conf.copy_(torch.tensor([logged[-1][f"{BANK_LOG_PREFIX}{n}"] for n in names]))

        C, ignore = len(names), trainer.spec.ignore_index
        counts = {(c, kind): torch.zeros(C + 1) for c in chosen for kind in ("as labeled", "pasted")}
        labeled, _ = trainer.data_iterators()
        for _ in range(args.batches):
            batch = next(labeled)
            method.labeled_presence.update(batch["index"], batch["label"], min_ratio=0.0)
            before = batch["label"]
            after = method.adaptive_copy_paste(batch, {})["label"]
            for c in chosen:
                for kind, label, mask in (("as labeled", before, before == c),
                                          ("pasted", after, (after == c) & (before != c))):
                    under = ground(label, mask, c, args.reach, ignore)
                    under = torch.where((under >= 0) & (under < C), under, torch.full_like(under, C))
                    counts[(c, kind)] += torch.bincount(under, minlength=C + 1).float()

    print(f"the first other class below each pixel of the chosen classes (within {args.reach} rows), "
          f"{args.batches} labeled batches of {args.config}{' with ' + ' '.join(args.set) if args.set else ''}:")
    for (c, kind), count in counts.items():
        total = count.sum()
        if total == 0:
            print(f"{names[c]:<12} {kind:<11} no pixel")
            continue
        order = count.argsort(descending=True)[:args.top].tolist()
        shares = ", ".join(f"{(names + [OTHER])[k]} {100 * count[k] / total:.1f} %" for k in order)
        print(f"{names[c]:<12} {kind:<11} {int(total):>8} px: {shares}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
