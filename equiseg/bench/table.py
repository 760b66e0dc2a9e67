"""The bench's results: one record per run, mean ± spread per method, Markdown and JSON.

Spread is the sample standard deviation over seeds (n - 1 in the denominator), the usual
"mean ± std over K seeds" of segmentation papers; a single seed has none. Each method is also
compared with the supervised baseline seed by seed (the same ``run.seed`` on both sides), so the
user sees per seed whether the unlabeled data helped, and whether the mean gain is larger than
the baseline's own seed spread.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from ..provenance import same_cpu

PERCENT = 100.0
GIB = 1024 ** 3
SECONDS_PER_MINUTE = 60.0
TAIL_MARK = "*"
BASELINE = "supervised"
"""The method every other one is compared with, seed by seed, when the bench has it."""


@dataclass
class RunRecord:
    """The numbers of one method / seed run (fractions; seconds; bytes)."""

    method: str
    seed: int
    run_dir: str
    status: str = "trained"
    """trained | resumed | reused | reused (other code) | failed"""
    miou_last: Optional[float] = None
    tail_miou_last: Optional[float] = None
    miou_best: Optional[float] = None
    tail_miou_best: Optional[float] = None
    best_iteration: Optional[str] = None
    """'400', or 'round 3 / 120' for DST-CBC (iteration within the selected round)."""
    iou_last: list[Optional[float]] = field(default_factory=list)
    iterations: Optional[int] = None
    wall_s: Optional[float] = None
    """Bench-measured seconds of the whole run (training, evaluation, checkpoints; DST-CBC's
    pseudo-labeling). None for a reused run without a bench record, or a resumed one (partial)."""
    peak_memory_bytes: Optional[int] = None
    memory_kind: Optional[str] = None
    error: Optional[str] = None
    code: Optional[dict[str, Any]] = None
    """The code stamp of the run's results.json (equiseg.provenance); None for runs made before stamps."""

    @property
    def s_per_iteration(self) -> Optional[float]:
        if self.wall_s is None or not self.iterations:
            return None
        return self.wall_s / self.iterations


@dataclass
class Stat:
    mean: Optional[float]
    spread: Optional[float]
    n: int

    @classmethod
    def of(cls, values: Sequence[Optional[float]]) -> "Stat":
        known = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not known:
            return cls(None, None, 0)
        spread = statistics.stdev(known) if len(known) > 1 else None
        return cls(statistics.fmean(known), spread, len(known))

    def format(self, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
        if self.mean is None:
            return "n/a"
        text = f"{self.mean * scale:{'+' if signed else ''}.{digits}f}"
        return text + (f" ± {self.spread * scale:.{digits}f}" if self.spread is not None else "")


SUMMARY_FIELDS = ("miou_last", "tail_miou_last", "miou_best", "tail_miou_best")


def summarize(records: Sequence[RunRecord]) -> dict[str, Stat]:
    """Mean ± spread of every numeric column over a method's successful runs."""
    done = [r for r in records if r.error is None]
    stats = {name: Stat.of([getattr(r, name) for r in done]) for name in SUMMARY_FIELDS}
    stats["wall_s"] = Stat.of([r.wall_s for r in done])
    stats["s_per_iteration"] = Stat.of([r.s_per_iteration for r in done])
    stats["peak_memory_bytes"] = Stat.of([r.peak_memory_bytes for r in done])
    return stats


def class_means(records: Sequence[RunRecord], num_classes: int) -> list[Optional[float]]:
    """Per-class IoU of the last checkpoint, averaged over a method's runs."""
    done = [r for r in records if r.error is None and r.iou_last]
    return [Stat.of([r.iou_last[c] if c < len(r.iou_last) else None for r in done]).mean for c in range(num_classes)]


@dataclass
class PairedGain:
    """A method's gain over the baseline on the seeds both finished: per-seed differences."""

    seeds: list[int]
    miou: list[float]
    tail_miou: list[float]
    baseline_spread: Optional[float]
    """The baseline's own sample std of mIoU over its finished seeds (the done-means yardstick)."""
    same_cpu: int = 0
    """Pairs whose two runs' stamps name the same CPU kernels: the others compare machines too (a run
    drifts like another seed on other kernels; docs/semisup_cpu.md)."""

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.miou)

    @property
    def beyond_spread(self) -> Optional[bool]:
        """Mean mIoU gain larger than the baseline's seed spread; None when that spread is unknown."""
        if self.baseline_spread is None or not self.miou:
            return None
        return statistics.fmean(self.miou) > self.baseline_spread


def paired_gains(groups: dict[str, list[RunRecord]], baseline: str = BASELINE) -> dict[str, PairedGain]:
    """Each other method's last-checkpoint mIoU / tail mIoU minus the baseline's, seed by seed."""
    if baseline not in groups:
        return {}
    base = {r.seed: r for r in groups[baseline] if r.error is None and r.miou_last is not None}
    spread = Stat.of([r.miou_last for r in base.values()]).spread
    gains = {}
    for method, records in groups.items():
        if method == baseline:
            continue
        pairs = [(r, base[r.seed]) for r in records if r.error is None and r.miou_last is not None and r.seed in base]
        gains[method] = PairedGain(
            seeds=[r.seed for r, _ in pairs],
            miou=[r.miou_last - b.miou_last for r, b in pairs],
            tail_miou=[r.tail_miou_last - b.tail_miou_last for r, b in pairs
                       if r.tail_miou_last is not None and b.tail_miou_last is not None],
            baseline_spread=spread,
            same_cpu=sum(same_cpu(r.code, b.code) for r, b in pairs))
    return gains


def _signed(values: Sequence[float]) -> str:
    return ", ".join(f"{PERCENT * v:+.2f}" for v in values)


def paired_table(gains: dict[str, PairedGain], baseline: str = BASELINE) -> str:
    """Markdown: per method, the per-seed gains over the baseline and their mean ± std."""
    header = ["method", "paired seeds", f"mIoU − {baseline}, per seed", "mean ± std",
              f"tail mIoU − {baseline}, per seed", "mean ± std", "seeds better",
              f"mean gain > {baseline}'s spread", "pairs on one CPU kind"]
    lines = [_row(header), _row(["---"] * len(header))]
    for method, g in gains.items():
        if not g.seeds:
            lines.append(_row([method, "none", *["n/a"] * (len(header) - 2)]))
            continue
        spread = g.baseline_spread
        verdict = ("n/a (one baseline seed)" if g.beyond_spread is None else
                   f"{'yes' if g.beyond_spread else 'no'} ({PERCENT * spread:.2f})")
        lines.append(_row([method, ", ".join(map(str, g.seeds)), _signed(g.miou), Stat.of(g.miou).format(PERCENT, signed=True),
                           _signed(g.tail_miou), Stat.of(g.tail_miou).format(PERCENT, signed=True),
                           f"{g.wins} of {len(g.seeds)}", verdict, f"{g.same_cpu} of {len(g.seeds)}"]))
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def results_table(groups: dict[str, list[RunRecord]]) -> str:
    """The main Markdown table: one row per method."""
    header = ["method", "seeds", "mIoU last", "tail mIoU last", "mIoU best", "tail mIoU best", "best at iteration",
              "wall time (min)", "s / iteration", "peak memory (GiB)", "runs"]
    lines = [_row(header), _row(["---"] * len(header))]
    for method, records in groups.items():
        s = summarize(records)
        seeds = ", ".join(str(r.seed) for r in records)
        best_at = ", ".join(r.best_iteration or "n/a" for r in records if r.error is None) or "n/a"
        status = ", ".join(sorted({r.status for r in records}))
        lines.append(_row([method, seeds, s["miou_last"].format(PERCENT), s["tail_miou_last"].format(PERCENT),
                           s["miou_best"].format(PERCENT), s["tail_miou_best"].format(PERCENT), best_at,
                           s["wall_s"].format(1 / SECONDS_PER_MINUTE, 1), s["s_per_iteration"].format(1.0, 3),
                           s["peak_memory_bytes"].format(1 / GIB, 2), status]))
    return "\n".join(lines)


def per_class_table(groups: dict[str, list[RunRecord]], class_names: Sequence[str], tail_ids: Sequence[int]) -> str:
    """Markdown: classes as rows, methods as columns, last-checkpoint IoU % (mean over seeds)."""
    methods = list(groups)
    means = {m: class_means(groups[m], len(class_names)) for m in methods}
    lines = [_row(["class", *methods]), _row(["---"] * (len(methods) + 1))]
    tails = set(tail_ids)
    for c, name in enumerate(class_names):
        label = f"{name} {TAIL_MARK}" if c in tails else name
        cells = ["n/a" if means[m][c] is None else f"{PERCENT * means[m][c]:.2f}" for m in methods]
        lines.append(_row([label, *cells]))
    return "\n".join(lines)


def protocol_lines(protocol: dict[str, Any]) -> list[str]:
    """``- key: value`` lines; a value that differs per method is listed per method."""
    lines = []
    for key, value in protocol.items():
        if isinstance(value, dict):
            value = "; ".join(f"{method}: {text}" for method, text in value.items())
        lines.append(f"- {key}: {value}")
    return lines


def failures(groups: dict[str, list[RunRecord]]) -> list[str]:
    return [f"- {r.method} seed {r.seed} ({r.run_dir}): {r.error}" for rs in groups.values() for r in rs if r.error]


def bench_markdown(groups: dict[str, list[RunRecord]], protocol: dict[str, Any], class_names: Sequence[str],
                   tail_ids: Sequence[int], memory_note: str, speed: Optional[str] = None) -> str:
    """bench.md: the results table with its exact protocol under it, per-class IoU, speed profile."""
    n_seeds = max((len(r) for r in groups.values()), default=0)
    parts = [
        "# equiseg bench", "",
        results_table(groups), "",
        "Protocol:", *protocol_lines(protocol), "",
        f"mIoU in %, on the eval split; 'last' is the final checkpoint, 'best' the best evaluation during "
        f"training (selected on the same split, hence optimistic). Several seeds: mean ± sample standard deviation "
        f"(up to {n_seeds} seed(s) per method). Wall time: the whole run as the bench measured it (training, "
        f"evaluation, checkpoints, DST-CBC pseudo-labeling); s / iteration = wall time / optimizer steps. "
        f"Peak memory: {memory_note}. runs: trained here, resumed (wall time partial, not shown), or reused "
        f"(an identical finished run; 'other code' when another commit, modified package files, another "
        f"torch or CPU kernel set (AVX2, AVX512, ...), or code from before runs were stamped made it: same "
        f"config, but any change on the training path moves a run as another seed would).", "",
    ]
    gains = paired_gains(groups)
    if gains:
        parts += [f"## Gain over {BASELINE}, seed by seed", "",
                  paired_table(gains), "",
                  f"Last checkpoint, mIoU points; each method's run minus {BASELINE}'s run with the same seed "
                  f"(seeds where either failed are left out). Mean gain > {BASELINE}'s spread: the mean per-seed "
                  f"gain is larger than the sample std of {BASELINE}'s own mIoU over its seeds (in brackets). Pairs on one "
                  f"CPU kind: both runs' stamps name the same CPU kernels (AVX2, AVX512, ...); a pair made on two kinds, "
                  f"or before the kind was recorded, also compares two machines: the same config and seed can "
                  f"drift by several points between them.", ""]
    if class_names:
        parts += ["## Per-class IoU (last checkpoint, %, mean over seeds; * = tail class)", "",
                  per_class_table(groups, class_names, tail_ids), ""]
    if speed:
        parts += ["## Step time", "", speed, ""]
    failed = failures(groups)
    if failed:
        parts += ["## Failed runs", "", *failed, ""]
    return "\n".join(parts)


def bench_json(groups: dict[str, list[RunRecord]], protocol: dict[str, Any], class_names: Sequence[str],
               tail_ids: Sequence[int], memory_note: str, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    methods = []
    for method, records in groups.items():
        methods.append({
            "method": method,
            "summary": {k: asdict(v) for k, v in summarize(records).items()},
            "iou_last_mean": class_means(records, len(class_names)),
            "runs": [{**asdict(r), "s_per_iteration": r.s_per_iteration} for r in records],
        })
    gains = {method: {**asdict(g), "wins": g.wins, "beyond_spread": g.beyond_spread}
             for method, g in paired_gains(groups).items()}
    return {"protocol": protocol, "class_names": list(class_names), "tail_ids": list(tail_ids),
            "memory": memory_note, "spread": "sample standard deviation over seeds", "methods": methods,
            "paired_gain": {"baseline": BASELINE, "methods": gains} if gains else None,
            **(extra or {})}
