"""Inline SVG charts for the HTML report: line charts, horizontal bar charts and heat maps.

Plain strings, no plotting library and nothing fetched: a report must open offline, years later.
Every mark carries a ``<title>`` (the browser's tooltip) with its exact value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Callable, Optional, Sequence

CHART_WIDTH = 720
CHART_HEIGHT = 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 12, 36
TARGET_TICKS = 5
FONT_SIZE = 11
AXIS_COLOUR = "#555"
GRID_COLOUR = "#e3e3e3"
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")
"""Tableau-10: distinguishable lines for the few series of one chart."""
BAR_HEIGHT = 12
BAR_GAP = 6
BAR_LABEL_WIDTH = 150
BAR_VALUE_WIDTH = 48
TAIL_BACKGROUND = "#fff3d6"
HEAT_ROW_HEIGHT = 14
HEAT_MAX_COLUMNS = 60
"""Heat maps average neighbouring columns beyond this many, so a long run stays a small file."""
HEAT_LABEL_WIDTH = 150
HEAT_VALUE_WIDTH = 52
HEAT_STOPS = ((0.0, (215, 48, 39)), (0.5, (254, 224, 139)), (1.0, (26, 152, 80)))
"""Red (0) - yellow - green (1): low confidence / coverage reads as 'needs attention'."""

Formatter = Callable[[float], str]


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def percent_tick(value: float) -> str:
    return f"{100 * value:g}"


def number(value: float) -> str:
    return f"{value:.4g}"


def _tick_format(value_format: Formatter) -> Formatter:
    """Axis ticks are round numbers: drop the value format's fixed decimals for percentages."""
    return percent_tick if value_format is percent else value_format


@dataclass
class Line:
    label: str
    points: Sequence[tuple[float, Optional[float]]]
    """(x, y); a None or NaN y breaks the line."""
    colour: str = ""
    dashed: bool = False
    band: Sequence[tuple[float, float, float]] = field(default_factory=list)
    """Optional shaded (x, low, high) band around the line (e.g. ± one standard deviation)."""


@dataclass
class Bar:
    label: str
    values: Sequence[Optional[float]]
    """One value per bar group (e.g. last and best); None draws no bar and prints n/a."""
    highlight: bool = False


# --------------------------------------------------------------------------- scales


def nice_ticks(low: float, high: float, target: int = TARGET_TICKS) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


class _Scale:
    """Maps data values linearly onto a pixel range."""

    def __init__(self, low: float, high: float, start: float, end: float):
        self.low, self.high, self.start, self.end = low, high if high > low else low + 1.0, start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _text(x: float, y: float, content: str, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{FONT_SIZE}"{extra}>'
            f"{escape(content)}</text>")


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'width="{width:.0f}" height="{height:.0f}" font-family="sans-serif">' + "".join(body) + "</svg>")


def legend(items: Sequence[tuple[str, str, bool]]) -> str:
    """HTML legend of (label, colour, dashed) items, placed under a chart."""
    spans = [f'<span class="key"><span class="swatch{" dashed" if dashed else ""}" '
             f'style="border-color:{escape(colour)}"></span>{escape(label)}</span>' for label, colour, dashed in items]
    return f'<div class="legend">{"".join(spans)}</div>'


# --------------------------------------------------------------------------- line chart


def line_chart(lines: Sequence[Line], title: str, y_format: Formatter = number, x_label: str = "iteration",
               y_range: Optional[tuple[float, float]] = None, markers: Sequence[tuple[float, str]] = (),
               width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> str:
    """An SVG line chart with its legend. ``markers`` are labelled vertical rules (round starts)."""
    lines = [Line(line.label, line.points, line.colour or SERIES_COLOURS[i % len(SERIES_COLOURS)], line.dashed,
                  line.band) for i, line in enumerate(lines)]
    xs = _finite([x for line in lines for x, _ in line.points])
    ys = _finite([y for line in lines for _, y in line.points]
                 + [v for line in lines for _, low, high in line.band for v in (low, high)])
    if not xs or not ys:
        return f'<p class="note">{escape(title)}: nothing logged.</p>'
    y_ticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    x_ticks = nice_ticks(min(xs), max(xs))
    sx = _Scale(x_ticks[0], x_ticks[-1], MARGIN_LEFT, width - MARGIN_RIGHT)
    sy = _Scale(y_ticks[0], y_ticks[-1], height - MARGIN_BOTTOM, MARGIN_TOP)
    body = _axes(sx, sy, x_ticks, y_ticks, _tick_format(y_format), x_label, width, height)
    for x, label in markers:
        if not x_ticks[0] <= x <= x_ticks[-1]:
            continue
        px = sx(x)
        body.append(f'<line x1="{px:.1f}" y1="{MARGIN_TOP}" x2="{px:.1f}" y2="{height - MARGIN_BOTTOM}" '
                    f'stroke="{AXIS_COLOUR}" stroke-dasharray="2 3"/>')
        body.append(_text(px + 3, MARGIN_TOP + FONT_SIZE, label, extra=f' fill="{AXIS_COLOUR}"'))
    for line in lines:
        if line.band:
            upper = [(sx(x), sy(hi)) for x, _, hi in line.band]
            lower = [(sx(x), sy(lo)) for x, lo, _ in reversed(line.band)]
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower)
            body.append(f'<polygon points="{points}" fill="{line.colour}" fill-opacity="0.15" stroke="none"/>')
        body.append(_polyline(line, sx, sy, y_format))
    chart = _svg(width, height, body, title)
    return chart + legend([(line.label, line.colour, line.dashed) for line in lines])


def _axes(sx: _Scale, sy: _Scale, x_ticks: list[float], y_ticks: list[float], y_format: Formatter,
          x_label: str, width: int, height: int) -> list[str]:
    body = []
    for t in y_ticks:
        y = sy(t)
        body.append(f'<line x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{width - MARGIN_RIGHT}" y2="{y:.1f}" '
                    f'stroke="{GRID_COLOUR}"/>')
        body.append(_text(MARGIN_LEFT - 6, y + FONT_SIZE / 3, y_format(t), "end"))
    bottom = height - MARGIN_BOTTOM
    for t in x_ticks:
        x = sx(t)
        body.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="{AXIS_COLOUR}"/>')
        body.append(_text(x, bottom + 4 + FONT_SIZE, f"{t:g}", "middle"))
    body.append(f'<line x1="{MARGIN_LEFT}" y1="{bottom}" x2="{width - MARGIN_RIGHT}" y2="{bottom}" '
                f'stroke="{AXIS_COLOUR}"/>')
    body.append(_text((MARGIN_LEFT + width - MARGIN_RIGHT) / 2, height - 4, x_label, "middle"))
    return body


def _polyline(line: Line, sx: _Scale, sy: _Scale, y_format: Formatter) -> str:
    """One <path> whose gaps (None / NaN values) start new sub-paths; single points get a dot."""
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in line.points:
        if y is None or not math.isfinite(y):
            segments.append([])
        else:
            segments[-1].append((x, y))
    commands, dots = [], []
    for segment in (s for s in segments if s):
        commands.append("M" + " L".join(f"{sx(x):.1f} {sy(y):.1f}" for x, y in segment))
        if len(segment) == 1:
            x, y = segment[0]
            dots.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{line.colour}"/>')
    last_x, last_y = next(((x, y) for s in reversed(segments) for x, y in reversed(s)), (None, None))
    tip = f"{line.label}: {y_format(last_y)} at {last_x:g}" if last_y is not None else line.label
    dash = ' stroke-dasharray="6 4"' if line.dashed else ""
    path = (f'<path d="{" ".join(commands)}" fill="none" stroke="{line.colour}" stroke-width="1.6"{dash}>'
            f"<title>{escape(tip)}</title></path>")
    return path + "".join(dots)


# --------------------------------------------------------------------------- bar chart


def bar_chart(bars: Sequence[Bar], series: Sequence[str], title: str, value_format: Formatter = percent,
              value_range: tuple[float, float] = (0.0, 1.0), width: int = CHART_WIDTH) -> str:
    """Horizontal grouped bars, one group per row (e.g. per class: last and best IoU);
    highlighted rows (tail classes) get a tinted background."""
    colours = [SERIES_COLOURS[i % len(SERIES_COLOURS)] for i in range(len(series))]
    group = len(series) * BAR_HEIGHT + BAR_GAP
    height = MARGIN_TOP + len(bars) * group + MARGIN_BOTTOM
    left, right = BAR_LABEL_WIDTH, width - BAR_VALUE_WIDTH - MARGIN_RIGHT
    sx = _Scale(value_range[0], value_range[1], left, right)
    body = []
    for t in nice_ticks(*value_range):
        x = sx(t)
        body.append(f'<line x1="{x:.1f}" y1="{MARGIN_TOP}" x2="{x:.1f}" y2="{height - MARGIN_BOTTOM}" '
                    f'stroke="{GRID_COLOUR}"/>')
        body.append(_text(x, height - MARGIN_BOTTOM + 4 + FONT_SIZE, _tick_format(value_format)(t), "middle"))
    for row, bar in enumerate(bars):
        top = MARGIN_TOP + row * group
        if bar.highlight:
            body.append(f'<rect x="0" y="{top - BAR_GAP / 2:.1f}" width="{width}" height="{group}" '
                        f'fill="{TAIL_BACKGROUND}"/>')
        body.append(_text(left - 6, top + len(series) * BAR_HEIGHT / 2 + FONT_SIZE / 3, bar.label, "end"))
        for i, value in enumerate(bar.values):
            y = top + i * BAR_HEIGHT
            shown = "n/a" if value is None else value_format(value)
            if value is not None:
                length = max(sx(min(max(value, value_range[0]), value_range[1])) - left, 0.0)
                body.append(f'<rect x="{left}" y="{y:.1f}" width="{length:.1f}" height="{BAR_HEIGHT - 1}" '
                            f'fill="{colours[i]}"><title>{escape(f"{bar.label} {series[i]}: {shown}")}</title></rect>')
            body.append(_text(right + 4, y + BAR_HEIGHT - 2, shown, extra=' font-size="10"'))
    return _svg(width, height, body, title) + legend([(s, c, False) for s, c in zip(series, colours)])


# --------------------------------------------------------------------------- heat map


def heat_colour(value: Optional[float]) -> str:
    """Colour of a value in [0, 1] on the red-yellow-green scale; grey for unknown."""
    if value is None or not math.isfinite(value):
        return "#cccccc"
    v = min(max(value, 0.0), 1.0)
    for (a, ca), (b, cb) in zip(HEAT_STOPS, HEAT_STOPS[1:]):
        if v <= b:
            f = (v - a) / (b - a)
            return "#" + "".join(f"{round(x + f * (y - x)):02x}" for x, y in zip(ca, cb))
    return "#" + "".join(f"{c:02x}" for c in HEAT_STOPS[-1][1])


def bin_columns(columns: Sequence[float], rows: Sequence[Sequence[Optional[float]]],
                max_columns: int = HEAT_MAX_COLUMNS) -> tuple[list[float], list[list[Optional[float]]]]:
    """Average neighbouring columns so that at most ``max_columns`` remain (labelled by each bin's
    last column, so the final bin shows the end of training)."""
    n = len(columns)
    if n <= max_columns:
        return list(columns), [list(r) for r in rows]
    edges = [round(i * n / max_columns) for i in range(max_columns + 1)]
    binned_columns = [columns[edges[i + 1] - 1] for i in range(max_columns)]
    binned_rows = []
    for row in rows:
        binned = []
        for i in range(max_columns):
            chunk = _finite(row[edges[i]:edges[i + 1]])
            binned.append(sum(chunk) / len(chunk) if chunk else None)
        binned_rows.append(binned)
    return binned_columns, binned_rows


def heat_map(row_labels: Sequence[str], columns: Sequence[float], rows: Sequence[Sequence[Optional[float]]],
             title: str, column_name: str = "iteration", highlight: Sequence[int] = (),
             value_format: Formatter = percent, column_format: Callable[[float], str] = lambda c: f"{c:g}",
             width: int = CHART_WIDTH) -> str:
    """Rows (e.g. classes) x columns (e.g. iterations) of values in [0, 1]; the last column's value
    is printed at the right of each row, highlighted rows get a ``*``."""
    columns, rows = bin_columns(columns, rows)
    if not columns or not rows:
        return f'<p class="note">{escape(title)}: nothing logged.</p>'
    left, right = HEAT_LABEL_WIDTH, width - HEAT_VALUE_WIDTH - MARGIN_RIGHT
    cell_w = (right - left) / len(columns)
    height = MARGIN_TOP + len(rows) * HEAT_ROW_HEIGHT + MARGIN_BOTTOM
    marked = set(highlight)
    body = []
    for r, (label, row) in enumerate(zip(row_labels, rows)):
        y = MARGIN_TOP + r * HEAT_ROW_HEIGHT
        name = f"{label} *" if r in marked else label
        body.append(_text(left - 6, y + HEAT_ROW_HEIGHT - 3, name, "end"))
        for c, value in enumerate(row):
            shown = "n/a" if value is None else value_format(value)
            body.append(f'<rect x="{left + c * cell_w:.1f}" y="{y}" width="{cell_w + 0.5:.1f}" '
                        f'height="{HEAT_ROW_HEIGHT - 1}" fill="{heat_colour(value)}"><title>'
                        f'{escape(f"{label}, {column_name} {column_format(columns[c])}: {shown}")}</title></rect>')
        final = next((v for v in reversed(row) if v is not None), None)
        body.append(_text(right + 4, y + HEAT_ROW_HEIGHT - 3, "n/a" if final is None else value_format(final)))
    bottom = MARGIN_TOP + len(rows) * HEAT_ROW_HEIGHT
    for c in sorted({0, len(columns) // 2, len(columns) - 1}):
        body.append(_text(left + (c + 0.5) * cell_w, bottom + 4 + FONT_SIZE, column_format(columns[c]), "middle"))
    body.append(_text((left + right) / 2, height - 4, column_name, "middle"))
    return _svg(width, height, body, title)
