"""``equiseg report RUN_DIR``: one self-contained HTML page about a run.

Inline CSS, inline SVG charts and base64 PNG pictures: the file opens offline and can be mailed
or attached to an issue as it is. Sections appear when the run logged what they show:

summary (method, data, protocol, results, speed) · curves (loss, LR, val mIoU) · per-class IoU
(last and best, tail classes marked; each class's recall, precision and largest confusions) · AEL's
confidence bank · pseudo-label quality per class (the audit of the unlabeled loss's targets against
the unlabeled masks) · HagSeg's hardness · DST-CBC's pseudo-labels per round · step time · input /
ground truth / prediction pictures.
"""
from __future__ import annotations

import math
import statistics
from html import escape
from pathlib import Path
from typing import Optional, Union

from ..engine.timing import SECTIONS
from ..evaluation.metrics import class_confusions
from ..evaluation.pseudo_label_audit import AUDIT_RECORD, PER_CLASS_KEYS, SUMMARY_KEYS
from ..registry import METHODS
from ..run_layout import REPORT_FILE
from . import svg
from .protocol import protocol_rows, total_iterations
from .run_folder import RunFolder, load_run, where
from .samples import DEFAULT_NUM_IMAGES, SampleGrid, try_render_samples

LOSS_PREFIX = "loss_"
TIMING_KEY = "time_ms"
DATA_SECTION = "data"
CONFUSIONS_SHOWN = 2
"""Largest confusions listed per class, each way."""
MIN_PICTURE_WIDTH = 640
"""Display pixels: tiny pictures (synthetic data) are shown enlarged by a whole factor, pixels crisp."""

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 980px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd;
     padding-bottom: 0.2em; margin-top: 2em; } h3 { font-size: 1em; margin-bottom: 0.3em; }
nav a { margin-right: 1em; } .note { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.tail td { background: #fff3d6; } .headline td { font-weight: bold; }
.legend { font-size: 0.85em; margin: 0.2em 0 1em 64px; }
.key { margin-right: 1.2em; white-space: nowrap; }
.swatch { display: inline-block; width: 20px; height: 0; border-top: 3px solid; margin-right: 5px;
          vertical-align: middle; } .swatch.dashed { border-top-style: dashed; }
.chip { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle;
        border: 1px solid #999; }
svg.chart { display: block; max-width: 100%; height: auto; }
img.samples { max-width: 100%; border: 1px solid #ddd; }
"""


# --------------------------------------------------------------------------- small helpers


def pct(value: Optional[float]) -> str:
    """A fraction as a percentage with two decimals (as the evaluation tables print it)."""
    return "n/a" if value is None else svg.percent(value)


def _table(header: Optional[list[str]], rows: list[list[str]], numeric_from: int = 1,
           row_classes: Optional[list[str]] = None) -> str:
    def cells(values: list[str], tag: str) -> str:
        return "".join(f'<{tag}{" class=num" if i >= numeric_from else ""}>{v}</{tag}>' for i, v in enumerate(values))

    classes = row_classes or [""] * len(rows)
    body = "".join(f'<tr{f" class={c}" if c else ""}>{cells(r, "td")}</tr>' for r, c in zip(rows, classes))
    head = f"<thead><tr>{cells(header, 'th')}</tr></thead>" if header else ""
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _padded(values: Optional[list], length: int) -> list:
    """``values`` cut or padded with None to ``length`` (a result without per-class values, or
    class names from another source than the result)."""
    values = list(values or [])[:length]
    return values + [None] * (length - len(values))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _round_markers(run: RunFolder) -> list[tuple[float, str]]:
    return [(r.start_iteration, f"round {r.round}") for r in run.rounds]


def confidence(value: float) -> str:
    """AEL's bank values are confidences in [0, 1] (Eq. 4), shown as such."""
    return f"{value:.3f}"


def step_ms(record: dict) -> Optional[float]:
    """A window's mean step time: the sum of its timed sections (ms)."""
    timing = record.get(TIMING_KEY)
    return sum(timing.values()) if isinstance(timing, dict) and timing else None


# --------------------------------------------------------------------------- sections


def summary_section(run: RunFolder) -> str:
    rows = [["run folder", escape(str(run.path))], ["method", escape(run.method)]]
    evaluated = (run.last or {}).get("num_images")
    rows += [[escape(k), escape(v)] for k, v in protocol_rows(run.config, run.split, evaluated).items()]
    last, best = run.last, run.best
    if last:
        rows.append(["last checkpoint", f"mIoU {pct(last.get('miou'))} % · tail mIoU {pct(last.get('tail_miou'))} % "
                                        f"({where(last, last.get('iteration'))})"])
    if best:
        rows.append(["best checkpoint", f"mIoU {pct(best.get('miou'))} % · tail mIoU {pct(best.get('tail_miou'))} % "
                                        f"({where(best, run.best_iteration)})"])
    if not run.results:
        done = run.train[-1]["iteration"] if run.train else 0
        rows.append(["status", f"in progress or stopped: no results.json; {done} of "
                               f"{total_iterations(run.config) or '?'} iterations logged"])
    times = [t for t in map(step_ms, run.train) if t is not None]
    if times:
        rows.append(["step time", f"{statistics.median(times):.0f} ms in the timed sections (median over "
                                  f"{len(times)} logging windows, see Step time)"])
    return _section("summary", "Summary", _table(None, rows, numeric_from=2))


def curves_section(run: RunFolder) -> str:
    markers = _round_markers(run)
    loss_keys = [k for k in run.train_keys() if k == "loss" or k.startswith(LOSS_PREFIX)]
    parts = []
    if loss_keys:
        lines = [svg.Line(k, run.train_series(k)) for k in loss_keys[:len(svg.SERIES_COLOURS)]]
        parts.append("<h3>Training loss</h3>" + svg.line_chart(lines, "training loss", markers=markers))
    if run.train_series("lr"):
        parts.append("<h3>Learning rate (backbone)</h3>"
                     + svg.line_chart([svg.Line("lr", run.train_series("lr"))], "learning rate", markers=markers))
    eval_lines = _eval_lines(run)
    if eval_lines:
        top = max((y for line in eval_lines for _, y in line.points if y is not None), default=1.0)
        split = escape(str(run.section("data").get("val_list") or "val split"))
        parts.append(f"<h3>Evaluation mIoU (%, {split})</h3>"
                     + svg.line_chart(eval_lines, "validation mIoU", y_format=svg.percent,
                                      y_range=(0.0, top), markers=markers))
    if not parts:
        return ""
    return _section("curves", "Curves", "".join(parts))


def _eval_lines(run: RunFolder) -> list[svg.Line]:
    models: dict[str, None] = {}
    for rec in run.evals:
        for name in rec["eval"]:
            models.setdefault(name)
    lines = []
    for i, name in enumerate(models):
        colour = svg.SERIES_COLOURS[i % len(svg.SERIES_COLOURS)]
        for key, dashed, label in (("miou", False, f"{name} mIoU"), ("tail_miou", True, f"{name} tail mIoU")):
            points = [(rec["iteration"], (rec["eval"].get(name) or {}).get(key)) for rec in run.evals]
            if any(y is not None for _, y in points):
                lines.append(svg.Line(label, points, colour, dashed))
    return lines


def per_class_section(run: RunFolder) -> str:
    last, best = run.last or {}, run.best or {}
    if not (last.get("iou") or best.get("iou")):
        return ""
    names, tails = run.class_names(), set(run.tail_ids())
    last_iou = _padded(last.get("iou"), len(names))
    best_iou = _padded(best.get("iou"), len(names))
    bars = [svg.Bar(name + (" *" if c in tails else ""), [last_iou[c], best_iou[c]], highlight=c in tails)
            for c, name in enumerate(names)]
    labels = [f"last ({where(last, last.get('iteration'))})", f"best ({where(best, run.best_iteration)})"]
    chart = svg.bar_chart(bars, labels, "per-class IoU")
    rows = [[escape(name), "*" if c in tails else "", pct(last_iou[c]), pct(best_iou[c])] for c, name in enumerate(names)]
    classes = ["tail" if c in tails else "" for c in range(len(names))]
    for label, key in (("mIoU", "miou"), ("head mIoU", "head_miou"), ("tail mIoU", "tail_miou")):
        rows.append([label, "", pct(last.get(key)), pct(best.get(key))])
        classes.append("headline")
    table = _table(["class", "tail", "last IoU %", "best IoU %"], rows, numeric_from=2, row_classes=classes)
    note = ('<p class="note">Tail classes (the dataset\'s rare classes, reported as tail mIoU) are marked * and '
            "tinted. A class absent from both ground truth and predictions has no IoU (n/a).</p>")
    return _section("per-class", "Per-class IoU",
                    chart + note + table + _confusions_table(run) + _per_class_over_training(run))


def _confusions_table(run: RunFolder) -> str:
    """Recall, precision and the largest confusions of every class at the last checkpoint (from its
    confusion matrix in results.json): which classes trade pixels, which an IoU alone hides."""
    last = run.last or {}
    if last.get("confusion") is None:
        return ""
    names, tails = run.class_names(), set(run.tail_ids())
    confusions = class_confusions(last["confusion"], top=CONFUSIONS_SHOWN)
    if len(confusions) != len(names):
        return ""

    def shares(pairs) -> str:
        return ", ".join(f"{escape(names[k])} {pct(share)} %" for k, share in pairs) or "none"

    rows = [[escape(name), "*" if c in tails else "", pct(_finite(conf.recall)), pct(_finite(conf.precision)),
             shares(conf.missed_as), shares(conf.false_from)] for c, (name, conf) in enumerate(zip(names, confusions))]
    table = _table(["class", "tail", "recall %", "precision %", "its pixels predicted as", "predicted it, truly"],
                   rows, numeric_from=2, row_classes=["tail" if c in tails else "" for c in range(len(names))])
    return (f"<h3>Where each class's pixels go ({escape(where(last, last.get('iteration')))})</h3>"
            '<p class="note">Rows of the val confusion matrix: the share of a class\'s true pixels predicted as '
            "each other class (its misses), and of the pixels predicted as the class, the share truly of another "
            "(its false positives). Two rare classes trading pixels (a rider predicted as a pedestrian) lower "
            "one's recall and the other's precision.</p>" + table)


def _finite(value: float) -> Optional[float]:
    return None if math.isnan(value) else value


def _per_class_over_training(run: RunFolder) -> str:
    """The reported model's val IoU per class at every evaluation: when a class is learned, and
    when the unlabeled loss unlearns it."""
    model = (run.last or {}).get("model")
    records = [(rec["iteration"], rec["eval"][model]["iou"]) for rec in run.evals
               if isinstance((rec["eval"].get(model) or {}).get("iou"), dict)]
    if len(records) < 2:
        return ""
    names, tails = run.class_names(), set(run.tail_ids())
    rows = [[iou.get(n) for _, iou in records] for n in names]
    return (f"<h3>Val IoU per class over training ({escape(str(model))})</h3>"
            + svg.heat_map(names, [it for it, _ in records], rows, "val IoU per class", highlight=sorted(tails)))


def per_class_log_sections(run: RunFolder) -> dict[str, str]:
    """The per-class series the run's method declares (``Method.per_class_logs``; AEL: its
    confidence bank), each a heat map per class plus its summary curves, by section anchor."""
    try:
        declared = METHODS.get(run.method).per_class_logs
    except ValueError:  # a method this version does not know
        return {}
    return {log.anchor: _per_class_log_section(run, log) for log in declared}


def _per_class_log_section(run: RunFolder, log) -> str:
    keys = [k for k in run.train_keys() if k.startswith(log.prefix)]
    summary_keys = [k for k in log.summary_keys if run.train_series(k)]
    if not keys and not summary_keys:
        return ""
    parts = []
    if keys:
        names, tails = run.class_names(), set(run.tail_ids())
        logged = {k[len(log.prefix):]: k for k in keys}
        order = [n for n in names if n in logged] + [n for n in logged if n not in names]
        iterations = [rec["iteration"] for rec in run.train if logged[order[0]] in rec]
        rows = [[rec.get(logged[n]) for rec in run.train if logged[order[0]] in rec] for n in order]
        highlight = [i for i, n in enumerate(order) if n in names and names.index(n) in tails]
        parts.append(f"<h3>{log.heading}</h3>"
                     + svg.heat_map(order, iterations, rows, log.heat_map_title, highlight=highlight,
                                    value_format=confidence)
                     + f'<p class="note">{log.note}</p>')
    if summary_keys:
        lines = [svg.Line(k, run.train_series(k)) for k in summary_keys]
        parts.append(f"<h3>{escape(log.summary_title)}</h3>"
                     + svg.line_chart(lines, log.heat_map_title.split(" per ")[0], y_format=confidence))
    return _section(log.anchor, log.title, "".join(parts))


def pseudo_label_section(run: RunFolder) -> str:
    """The pseudo-label audit over training: per-class IoU, precision, recall and share of L_u's
    weight of the pseudo-labels against the unlabeled images' masks, and their summary curves."""
    records = [(rec["iteration"], rec[AUDIT_RECORD]) for rec in run.train if isinstance(rec.get(AUDIT_RECORD), dict)]
    if not records:
        return ""
    names, tails = run.class_names(), set(run.tail_ids())
    iterations = [it for it, _ in records]
    highlight = [i for i in range(len(names)) if i in tails]
    titles = {"iou": "IoU of the pseudo-labels per class", "precision": "precision per class",
              "recall": "recall per class (a pixel left without a pseudo-label is a miss)",
              "weight_share": "share of L_u's weight on each true class"}
    parts = []
    for key in PER_CLASS_KEYS:
        rows = [[rec.get(key, {}).get(n) for _, rec in records] for n in names]
        parts.append(f"<h3>{escape(titles[key])}</h3>"
                     + svg.heat_map(names, iterations, rows, titles[key], highlight=highlight))
    lines = [svg.Line(key, [(it, rec[key]) for it, rec in records if rec.get(key) is not None])
             for key in SUMMARY_KEYS]
    parts.append("<h3>Summary</h3>" + svg.line_chart([line for line in lines if line.points], "pseudo-labels"))
    note = ('<p class="note">Scored against the unlabeled images\' own masks, which training never sees. '
            "kept: share of trained pixels with a pseudo-label; wrong_weight: share of L_u's weight on wrong "
            "pseudo-labels; untraced_weight: share on pixels of images outside the loaded batch (AEL's fetched "
            "images). A tail class (*) whose recall stays near 0 never gets a pseudo-label: confirmation bias "
            "in the making.</p>")
    return _section("pseudo-labels", "Pseudo-label quality", "".join(parts) + note)


def hardness_section(run: RunFolder) -> str:
    """HagSeg's per-image hardness γ over training (mean, ± one standard deviation over the batch)."""
    mean = run.train_series("hardness_mean")
    if not mean:
        return ""
    std = dict(run.train_series("hardness_std"))
    band = [(x, y - std[x], y + std[x]) for x, y in mean if x in std]
    lines = [svg.Line("hardness mean", mean, band=band)]
    lines += [svg.Line(k, run.train_series(k), dashed=True) for k in ("wiou_teacher", "wiou_student")
              if run.train_series(k)]
    note = ('<p class="note">Shaded: ± one standard deviation of the hardness over the unlabeled batch '
            "(window means). Hardness guides HagSeg's augmentation strength and loss weights.</p>")
    return _section("hardness", "HagSeg hardness", svg.line_chart(lines, "hardness") + note)


def rounds_section(run: RunFolder) -> str:
    """Multi-round runs (DST-CBC): pseudo-label coverage and quality per round, and each round's val scores."""
    if not run.rounds:
        return ""
    rows = [[str(r.round), "-" if r.alpha is None else f"{100 * r.alpha:.0f}", pct(r.coverage),
             pct(r.pseudo_label_miou), pct(r.best_miou), pct(r.last_miou),
             "-" if r.selected_round is None else str(r.selected_round)] for r in run.rounds]
    table = _table(["round", "α %", "coverage %", "pseudo-label mIoU %", "best mIoU %", "last mIoU %",
                    "selected round"], rows)
    labelled = [r for r in run.rounds if r.coverage is not None]
    parts = [table]
    if labelled:
        bars = [svg.Bar(f"round {r.round}", [r.coverage, r.pseudo_label_miou]) for r in labelled]
        parts.append(svg.bar_chart(bars, ["coverage", "pseudo-label mIoU"], "pseudo-labels per round"))
        names = run.class_names()
        tails = set(run.tail_ids())
        columns = [float(r.round) for r in labelled]
        for attr, title in (("class_coverage", "Coverage per class"), ("class_iou", "Pseudo-label IoU per class")):
            per_round = [getattr(r, attr) or [None] * len(names) for r in labelled]
            if any(any(v is not None for v in values) for values in per_round):
                rows_by_class = [[values[c] if c < len(values) else None for values in per_round]
                                 for c in range(len(names))]
                parts.append(f"<h3>{escape(title)}</h3>"
                             + svg.heat_map(names, columns, rows_by_class, title, column_name="round",
                                            highlight=sorted(tails), column_format=lambda c: f"{c:.0f}"))
    note = ('<p class="note">Coverage: share of the unlabeled pixels that kept a pseudo-label. Pseudo-label '
            "mIoU: the kept pseudo-labels against the unlabeled images' ground truth (measured only, never "
            "trained on). best / last: the round's val mIoU; the selected round's best model labels the next round.</p>")
    return _section("rounds", "Self-training rounds", "".join(parts) + note)


def timing_section(run: RunFolder) -> str:
    """Median over logging windows of each timed part of a step."""
    sections: dict[str, list[float]] = {}
    for rec in run.train:
        for name, ms in (rec.get(TIMING_KEY) or {}).items():
            sections.setdefault(name, []).append(float(ms))
    if not sections:
        return ""
    order = [n for n in SECTIONS if n in sections] + sorted(n for n in sections if n not in SECTIONS)
    medians = {name: statistics.median(sections[name]) for name in order}
    total = sum(medians.values()) or 1.0
    rows = [[escape(name), f"{ms:.1f}", f"{100 * ms / total:.1f}"] for name, ms in medians.items()]
    note = ('<p class="note">Sections timed by the engine (train.profile=true synchronizes CUDA so GPU time '
            f"lands in the right one). {DATA_SECTION} = waiting for the data loader.</p>")
    return _section("timing", "Step time", _table(["part", "median ms", "% of timed"], rows) + note)


def _picture_style(width: int) -> str:
    factor = max(1, MIN_PICTURE_WIDTH // max(width, 1))
    return f"width:{width * factor}px" + (";image-rendering:pixelated" if factor > 1 else "")


def samples_section(grid: Optional[SampleGrid], reason: str) -> str:
    if grid is None:
        return _section("samples", "Predictions", f'<p class="note">{escape(reason)}</p>') if reason else ""
    chips = "".join(f'<span class="key"><span class="chip" style="background:rgb{rgb}"></span>{escape(name)}</span>'
                    for name, rgb in grid.classes)
    body = (f'<p class="note">Columns: input, ground truth, prediction. {escape(grid.note)}. '
            f'Images: {escape(", ".join(grid.names))}.</p>'
            f'<img class="samples" alt="input, ground truth and prediction" style="{_picture_style(grid.width)}" '
            f'src="data:image/png;base64,{grid.png_base64}"/><div class="legend">{chips}</div>')
    return _section("samples", "Predictions", body)


# --------------------------------------------------------------------------- page


SECTION_TITLES = {"summary": "Summary", "curves": "Curves", "per-class": "Per-class IoU",
                  "pseudo-labels": "Pseudo-labels",
                  "hardness": "Hardness", "rounds": "Rounds", "timing": "Step time", "samples": "Predictions"}


def build_html(run: RunFolder, samples: Optional[SampleGrid] = None, samples_reason: str = "") -> str:
    sections = {
        "summary": summary_section(run), "curves": curves_section(run), "per-class": per_class_section(run),
        **per_class_log_sections(run), "pseudo-labels": pseudo_label_section(run),
        "hardness": hardness_section(run), "rounds": rounds_section(run),
        "timing": timing_section(run), "samples": samples_section(samples, samples_reason),
    }
    present = {k: v for k, v in sections.items() if v}
    nav = "".join(f'<a href="#{k}">{SECTION_TITLES.get(k, k.capitalize())}</a>' for k in present)
    title = f"{run.method} on {run.dataset} — {run.path.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p class=\"note\">equiseg run report of {escape(str(run.path))}</p>"
            f"<nav>{nav}</nav>{''.join(present.values())}</body></html>\n")


def write_report(run_dir: Union[str, Path], out: Optional[Union[str, Path]] = None, images: bool = True,
                 num_images: int = DEFAULT_NUM_IMAGES, device: str = "cpu") -> Path:
    """Render the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); returns the path."""
    run = load_run(run_dir)
    grid, reason = try_render_samples(run, num_images, device) if images else (None, "")
    target = Path(out) if out else run.path / REPORT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(build_html(run, grid, reason), encoding="utf-8")
    return target
