"""The dashboard's charts as server-side SVG, no JavaScript: this module computes the geometry and
``Chart.svg()`` writes the elements with ``format_html`` (every value and text escaped); the
template places them. Figures with n < 20 are drawn hollow / greyed and carry their note in the
mark's tooltip."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from agents.formatting import format_duration
from controlroom.metrics import Figure, Report

W, H_CHART = 420, 190
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 30


@dataclass
class Rect:
    x: str
    y: str
    w: str
    h: str
    css: str
    title: str


@dataclass
class Dot:
    x: str
    y: str
    css: str
    title: str


@dataclass
class Segment:
    x1: str
    y1: str
    x2: str
    y2: str
    css: str


@dataclass
class Label:
    x: str
    y: str
    text: str
    anchor: str = "middle"


@dataclass
class Chart:
    key: str
    title: str
    caption: str = ""
    width: int = W
    height: int = H_CHART
    grid: list[Segment] = field(default_factory=list)
    y_labels: list[Label] = field(default_factory=list)
    x_labels: list[Label] = field(default_factory=list)
    rects: list[Rect] = field(default_factory=list)
    paths: list[tuple[str, str]] = field(default_factory=list)  # (d, css)
    dots: list[Dot] = field(default_factory=list)
    whiskers: list[Segment] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (css, text)
    empty: bool = False

    def svg(self) -> SafeString:
        """The chart's SVG elements, every attribute and text escaped by ``format_html``."""
        parts = [
            format_html_join(
                "",
                '<line class="{}" x1="{}" y1="{}" x2="{}" y2="{}"/>',
                ((g.css, g.x1, g.y1, g.x2, g.y2) for g in self.grid),
            ),
            format_html_join(
                "",
                '<text x="{}" y="{}" text-anchor="{}">{}</text>',
                ((t.x, t.y, t.anchor, t.text) for t in [*self.y_labels, *self.x_labels]),
            ),
            format_html_join(
                "",
                '<rect class="{}" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>',
                ((r.css, r.x, r.y, r.w, r.h, r.title) for r in self.rects),
            ),
            format_html_join(
                "",
                '<line class="{}" x1="{}" y1="{}" x2="{}" y2="{}"/>',
                ((w.css, w.x1, w.y1, w.x2, w.y2) for w in self.whiskers),
            ),
            format_html_join("", '<path class="{}" d="{}"/>', ((css, d) for d, css in self.paths)),
            format_html_join(
                "",
                '<circle class="{}" cx="{}" cy="{}" r="3.2"><title>{}</title></circle>',
                ((d.css, d.x, d.y, d.title) for d in self.dots),
            ),
        ]
        return format_html(
            '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}</svg>',
            self.width,
            self.height,
            self.title,
            SafeString("".join(parts)),
        )


def _n(value: float) -> str:
    return f"{value:.1f}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is >= value (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10 ** (exponent + 1)


def _tick_text(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.0f}%"
    if unit == "hours":
        return f"{value:g}h"
    if unit == "usd":
        return f"${value:,.0f}" if value >= 10 or value == 0 else f"${value:.2f}"
    return f"{value:g}"


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit == "hours":
        return format_duration(value * 3600)
    if unit == "usd":
        return f"${value:,.2f}"
    return f"{value:.2f}"


@dataclass
class SeriesSpec:
    name: str
    css: str
    values: list[float | None]
    small: list[bool]
    notes: list[str]
    kind: str = "line"  # line, bar, stack


def time_chart(
    *, key: str, title: str, unit: str, weeks: list[str], series: list[SeriesSpec], caption: str = ""
) -> Chart:
    """Weekly values: bars (side by side or stacked) and lines; n < 20 points drawn hollow."""
    chart = Chart(key=key, title=title, caption=caption)
    count = max(len(weeks), 1)
    x0, x1, y0, y1 = LEFT, W - RIGHT, TOP, H_CHART - BOTTOM
    band = (x1 - x0) / count
    stacks = [s for s in series if s.kind == "stack"]
    peaks = [v for s in series if s.kind != "stack" for v in s.values if v is not None]
    if stacks:
        peaks += [sum(s.values[i] or 0 for s in stacks) for i in range(len(weeks))]
    if not peaks:
        chart.empty = True
    top = 1.0 if unit == "ratio" else nice_ceiling(max(peaks, default=0))

    def y_of(value: float) -> float:
        return y1 - (y1 - y0) * (value / top if top else 0)

    for fraction in (0, 0.5, 1):
        y = y_of(top * fraction)
        chart.grid.append(Segment(_n(x0), _n(y), _n(x1), _n(y), "grid"))
        chart.y_labels.append(Label(_n(x0 - 6), _n(y + 4), _tick_text(top * fraction, unit), "end"))
    step = max(1, math.ceil(count / 7))
    for i, week in enumerate(weeks):
        if i % step == 0 or i == count - 1:
            chart.x_labels.append(Label(_n(x0 + band * (i + 0.5)), _n(y1 + 16), week))
    bars = [s for s in series if s.kind == "bar"]
    for b_index, s in enumerate(bars):
        width = band * 0.7 / max(len(bars), 1)
        for i, value in enumerate(s.values):
            if value is None:
                continue
            x = x0 + band * i + band * 0.15 + width * b_index
            css = f"{s.css} small" if s.small[i] else s.css
            chart.rects.append(
                Rect(
                    _n(x),
                    _n(y_of(value)),
                    _n(width),
                    _n(y1 - y_of(value)),
                    css,
                    f"{weeks[i]}: {s.name} {_value_text(value, unit)}{_note(s, i)}",
                )
            )
    base = [0.0] * len(weeks)
    for s in stacks:
        for i, value in enumerate(s.values):
            if not value:
                continue
            x = x0 + band * i + band * 0.15
            top_y, bottom_y = y_of(base[i] + value), y_of(base[i])
            chart.rects.append(
                Rect(
                    _n(x),
                    _n(top_y),
                    _n(band * 0.7),
                    _n(bottom_y - top_y),
                    s.css,
                    f"{weeks[i]}: {s.name} {_value_text(value, unit)}",
                )
            )
            base[i] += value
    for s in series:
        if s.kind != "line":
            continue
        parts, pen_down = [], False
        for i, value in enumerate(s.values):
            if value is None:
                pen_down = False
                continue
            x, y = x0 + band * (i + 0.5), y_of(value)
            parts.append(f"{'L' if pen_down else 'M'}{_n(x)} {_n(y)}")
            pen_down = True
            chart.dots.append(
                Dot(
                    _n(x),
                    _n(y),
                    f"{s.css} small" if s.small[i] else s.css,
                    f"{weeks[i]}: {s.name} {_value_text(value, unit)}{_note(s, i)}",
                )
            )
        if parts:
            chart.paths.append((" ".join(parts), s.css))
    chart.legend = [(s.css, s.name) for s in series]
    return chart


def _note(s: SeriesSpec, i: int) -> str:
    return f" ({s.notes[i]})" if s.notes[i] else ""


def pod_bar_chart(*, key: str, title: str, unit: str, rows: list[tuple[str, Figure]]) -> Chart:
    """One horizontal bar per group (label, figure); proportions get their Wilson interval as a whisker."""
    height = TOP + BOTTOM + 26 * max(len(rows), 1)
    chart = Chart(key=key, title=title, height=height)
    x0, x1 = 96, W - RIGHT - 44
    values = [f.value for _, f in rows if f.value is not None]
    chart.empty = not values
    top = 1.0 if unit == "ratio" else nice_ceiling(max(values, default=0))

    def x_of(value: float) -> float:
        return x0 + (x1 - x0) * (value / top if top else 0)

    for fraction in (0, 0.5, 1):
        x = x_of(top * fraction)
        chart.grid.append(Segment(_n(x), _n(TOP), _n(x), _n(height - BOTTOM), "grid"))
        chart.x_labels.append(Label(_n(x), _n(height - BOTTOM + 16), _tick_text(top * fraction, unit)))
    for i, (label, figure) in enumerate(rows):
        y = TOP + 26 * i
        chart.y_labels.append(Label(_n(x0 - 6), _n(y + 15), label[:14], "end"))
        if figure.value is None:
            chart.y_labels.append(Label(_n(x0 + 4), _n(y + 15), "no data", "start"))
            continue
        css = "bar small" if figure.small_sample else "bar"
        note = f" ({figure.note})" if figure.note else ""
        text = f"{label}: {_value_text(figure.value, unit)}, n={figure.n}{note}"
        chart.rects.append(Rect(_n(x0), _n(y + 5), _n(x_of(figure.value) - x0), _n(14), css, text))
        if figure.low is not None and figure.high is not None:
            chart.whiskers.append(
                Segment(_n(x_of(figure.low)), _n(y + 12), _n(x_of(figure.high)), _n(y + 12), "whisker")
            )
        label_x = x_of(max(figure.value, figure.high if figure.high is not None else figure.value)) + 4
        chart.y_labels.append(Label(_n(label_x), _n(y + 16), _value_text(figure.value, unit), "start"))
    return chart


# --- the dashboard's charts ----------------------------------------------------------------------------


def _hours_or_none(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


def build_charts(report: Report) -> dict:
    weeks = [f"{timezone.localtime(p.start):%d %b}" for p in report.trend]
    points = [p.metrics for p in report.trend]

    def spec(name, css, figures, kind="line", value=lambda f: f.value):
        return SeriesSpec(
            name=name,
            css=css,
            values=[value(f) for f in figures],
            small=[getattr(f, "small_sample", False) for f in figures],
            notes=[getattr(f, "note", "") for f in figures],
            kind=kind,
        )

    def plain(name, css, kind, values):
        """A series of plain numbers (counts, costs): no sample size to flag."""
        return SeriesSpec(
            name=name, css=css, kind=kind, values=values, small=[False] * len(values), notes=[""] * len(values)
        )

    def hours_chart(key, title, spreads, upper_label):
        """Weekly median and upper percentile of a duration, in hours."""
        return time_chart(
            key=key,
            title=title,
            unit="hours",
            weeks=weeks,
            series=[
                spec("median", "s1", spreads, value=lambda f: _hours_or_none(f.median)),
                spec(upper_label, "s2", spreads, value=lambda f: _hours_or_none(f.upper)),
            ],
        )

    def ratio_chart(key, title, attr, caption=""):
        figures = [getattr(m, attr) for m in points]
        return time_chart(
            key=key, title=title, unit="ratio", weeks=weeks, caption=caption, series=[spec(title, "s1", figures)]
        )

    lead = [m.lead_time.total for m in points]
    response = [m.escalation_response for m in points]
    pairs = [
        (
            time_chart(
                key="throughput",
                title="Accepted per week",
                unit="count",
                weeks=weeks,
                series=[plain("accepted", "s0", "bar", [m.accepted_throughput.value for m in points])],
            ),
            ratio_chart("revert_rate", "Revert rate (14 days)", "revert_rate"),
        ),
        (
            hours_chart("lead_time", "Lead time to acceptance", lead, "p85"),
            ratio_chart("first_pass", "First-pass acceptance", "first_pass_acceptance"),
        ),
        (
            hours_chart("escalation_response", "Escalation response time", response, "p90"),
            time_chart(
                key="supervision_load",
                title="Supervision load (per accepted)",
                unit="count",
                weeks=weeks,
                series=[spec("load", "s1", [m.supervision_load for m in points])],
            ),
        ),
        (
            ratio_chart("yield", "Acceptance yield", "acceptance_yield"),
            ratio_chart("autonomy", "Autonomy rate", "autonomy_rate"),
        ),
    ]
    cost = time_chart(
        key="cost",
        title="Cost of closed sessions per week",
        unit="usd",
        weeks=weeks,
        series=[
            plain(
                "accepted work",
                "ok",
                "stack",
                [m.counts["closed_cost_usd"] - m.counts["wasted_cost_usd"] for m in points],
            ),
            plain(
                "wasted (rejected, cancelled, reverted)", "bad", "stack", [m.counts["wasted_cost_usd"] for m in points]
            ),
        ],
    )
    pods = report.by_pod
    comparison = [
        pod_bar_chart(key=key, title=title, unit=unit, rows=[(m.label, getattr(m, attr)) for m in pods])
        for key, title, unit, attr in (
            ("pod_throughput", "Accepted per week, by pod", "count", "accepted_throughput"),
            ("pod_yield", "Acceptance yield, by pod (95% CI)", "ratio", "acceptance_yield"),
            ("pod_revert", "Revert rate, by pod (95% CI)", "ratio", "revert_rate"),
            ("pod_cost", "Cost per accepted session, by pod", "usd", "cost_per_accepted"),
        )
    ]
    return {"pairs": pairs, "cost": cost, "comparison": comparison}
