"""The leaders' dashboard: ``GET /dashboard`` — outcome metrics (``controlroom.metrics``), read-only.

Who: leaders and managers (and superusers). Members get 403 with a sentence saying why: the
figures compare pods and people across the whole fleet, which is not a member's view.

Query string: ``window`` (7d, 30d, 90d; default 30d) or ``from`` and ``to`` (YYYY-MM-DD, both
days included); ``pod`` (slug), ``task_type``, ``tag``. ``format=csv&table=<overall|pods|stos|
task_types|trend>`` downloads one table as CSV. A bad filter answers 400 with the reason.

Charts are server-side SVG, no JavaScript: this module computes the geometry and ``Chart.svg()``
writes the elements with ``format_html`` (every value and text escaped); the template places them.
Figures with n < 20 are drawn hollow / greyed and carry their note in the mark's tooltip.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import date

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET

from agents.models import Pod, TaskType, User
from controlroom.metrics import (
    SMALL_SAMPLE,
    WINDOW_PRESETS,
    Figure,
    Metrics,
    Report,
    Scope,
    Spread,
    Window,
    fleet_metrics,
    window_between,
    window_last,
)

DEFAULT_WINDOW = "30d"
CSV_TABLES = ("overall", "pods", "stos", "task_types", "trend")
FORBIDDEN = (
    "The outcome dashboard is for leaders and managers: it compares pods and people across the "
    "whole fleet. Your pods' sessions are on the canvas."
)


def may_view_dashboard(user: User) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or user.role in (User.Role.LEADER, User.Role.MANAGER)))


# --- formatting (shared with ``manage.py metrics``) ---------------------------------------------------


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_value(figure: Figure) -> str:
    if figure.value is None:
        return "—"
    if figure.unit == "ratio":
        return f"{figure.value * 100:.1f}%"
    if figure.unit == "usd":
        return f"${figure.value:,.2f}"
    if figure.unit == "tokens":
        return f"{figure.value:,.0f}"
    if figure.unit == "per_week":
        return f"{figure.value:.1f}"
    return f"{figure.value:.2f}"


def format_interval(figure: Figure) -> str:
    if figure.low is None or figure.high is None:
        return ""
    return f"95% CI {figure.low * 100:.0f}–{figure.high * 100:.0f}%"


def format_figure(figure: Figure | Spread) -> str:
    """One line of text: value, interval, n and the small-sample flag (the command's output)."""
    if isinstance(figure, Spread):
        text = (
            "—"
            if figure.median is None
            else (f"median {format_duration(figure.median)}, p{figure.upper_q} {format_duration(figure.upper)}")
        )
    else:
        text = format_value(figure)
        if figure.unit == "per_week" and figure.value is not None:
            text += "/week"
        interval = format_interval(figure)
        if interval:
            text += f" ({interval})"
    flag = f" [n<{SMALL_SAMPLE}]" if figure.small_sample else ""
    return f"{text}  n={figure.n}{flag}"


# --- filters ------------------------------------------------------------------------------------------


class DashboardFilterForm(forms.Form):
    window = forms.ChoiceField(
        required=False,
        choices=[("7d", "Last 7 days"), ("30d", "Last 30 days"), ("90d", "Last 90 days"), ("custom", "From … to …")],
    )
    pod = forms.ChoiceField(required=False)
    task_type = forms.ChoiceField(required=False, choices=[("", "All task types"), *TaskType.choices])
    tag = forms.CharField(required=False, max_length=64, strip=True)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["pod"].choices = [("", "All pods"), *Pod.objects.order_by("name").values_list("slug", "name")]
        # "from" is a Python keyword: the fields are added by name
        self.fields["from"] = forms.DateField(
            required=False, label="From", input_formats=["%Y-%m-%d"], widget=forms.DateInput(attrs={"type": "date"})
        )
        self.fields["to"] = forms.DateField(
            required=False, label="To", input_formats=["%Y-%m-%d"], widget=forms.DateInput(attrs={"type": "date"})
        )

    def clean(self) -> dict:
        data = super().clean()
        first, last = data.get("from"), data.get("to")
        if (first or last) and not (first and last):
            raise forms.ValidationError("Give both a from and a to date, or choose 7, 30 or 90 days.")
        if data.get("window") == "custom" and not first:
            raise forms.ValidationError("A custom window needs its from and to dates.")
        return data

    def window_and_scope(self, *, now) -> tuple[Window, Scope]:
        data = self.cleaned_data if self.is_bound else {}
        first: date | None = data.get("from")
        last: date | None = data.get("to")
        if first and last:
            window = window_between(first_day=first, last_day=last)
        else:
            preset = data.get("window") or DEFAULT_WINDOW
            window = window_last(text=preset if preset in WINDOW_PRESETS else DEFAULT_WINDOW, now=now)
        scope = Scope(pod=data.get("pod") or "", task_type=data.get("task_type") or "", tag=data.get("tag") or "")
        return window, scope

    def error_text(self) -> str:
        return " ".join(
            f"{'' if name == '__all__' else name + ': '}{' '.join(errors)}" for name, errors in self.errors.items()
        )


# --- SVG geometry -------------------------------------------------------------------------------------

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


# --- headline cards and tables ------------------------------------------------------------------------


@dataclass
class Cell:
    key: str
    text: str
    sub: str
    value: float | None
    n: int
    small: bool
    note: str
    upper: float | None = None


def _figure_cell(figure: Figure) -> Cell:
    text = format_value(figure)
    return Cell(
        key=figure.key,
        text=text,
        sub=format_interval(figure),
        value=figure.value,
        n=figure.n,
        small=figure.small_sample,
        note=figure.note,
    )


def _spread_cell(spread: Spread) -> Cell:
    text = "—" if spread.median is None else f"{format_duration(spread.median)} / {format_duration(spread.upper)}"
    return Cell(
        key=spread.key,
        text=text,
        sub=f"median / p{spread.upper_q}",
        value=spread.median,
        n=spread.n,
        small=spread.small_sample,
        note=spread.note,
        upper=spread.upper,
    )


def metric_cells(m: Metrics) -> list[Cell]:
    tokens = m.tokens_per_accepted
    cost = _figure_cell(m.cost_per_accepted)
    cost.sub = f"{format_value(tokens)} tokens" if tokens.value is not None else ""
    lead = _spread_cell(m.lead_time.total)
    return [
        _figure_cell(m.accepted_throughput),
        _figure_cell(m.acceptance_yield),
        _figure_cell(m.first_pass_acceptance),
        _figure_cell(m.revert_rate),
        lead,
        _spread_cell(m.escalation_response),
        _figure_cell(m.autonomy_rate),
        cost,
        _figure_cell(m.wasted_spend_share),
        _figure_cell(m.supervision_load),
    ]


COLUMNS = [
    ("accepted_throughput", "Accepted / week", "speed"),
    ("acceptance_yield", "Acceptance yield", "quality"),
    ("first_pass_acceptance", "First-pass acceptance", "quality"),
    ("revert_rate", "Revert rate (14 d)", "stability"),
    ("lead_time", "Lead time", "speed"),
    ("escalation_response", "Escalation response", "speed"),
    ("autonomy_rate", "Autonomy rate", "supervision"),
    ("cost_per_accepted", "Cost / accepted", "cost"),
    ("wasted_spend_share", "Wasted spend", "cost"),
    ("supervision_load", "Supervision load", "supervision"),
]
EXPLAIN = {
    "accepted_throughput": "Sessions approved in the window and not reverted within 14 days, per week.",
    "acceptance_yield": "Accepted ÷ sessions closed in the window (approved, rejected or cancelled).",
    "first_pass_acceptance": "Sessions whose first review was an approval ÷ sessions first reviewed in the window.",
    "revert_rate": "Approvals reverted within 14 days ÷ approvals in the window.",
    "lead_time": "Created → approved, accepted sessions: median / 85th percentile.",
    "escalation_response": "Requested → decided (open: until now): median / 90th percentile.",
    "autonomy_rate": "Accepted sessions that never asked a human ÷ accepted.",
    "cost_per_accepted": "Model cost of every session closed in the window ÷ accepted.",
    "wasted_spend_share": "Cost of rejected, cancelled or reverted sessions ÷ cost of all closed.",
    "supervision_load": "(Escalations + rejections + change requests) ÷ accepted.",
}


@dataclass
class TableRow:
    key: str
    label: str
    cells: list[Cell]
    accepted: int


def table_rows(rows: list[Metrics]) -> list[TableRow]:
    return [TableRow(key=m.key, label=m.label, cells=metric_cells(m), accepted=m.counts["accepted"]) for m in rows]


# --- CSV ----------------------------------------------------------------------------------------------


def _hours(seconds: float | None) -> float | str:
    return "" if seconds is None else round(seconds / 3600, 4)


def csv_columns(m: Metrics) -> list[tuple[str, object]]:
    """Raw numbers: ratios as fractions (0..1), durations in hours, cost in USD; empty = undefined."""
    columns: list[tuple[str, object]] = []
    for figure in (m.accepted_throughput, m.acceptance_yield, m.first_pass_acceptance, m.revert_rate):
        columns += _figure_columns(figure)
    for spread in (m.lead_time.total, m.lead_time.running, m.lead_time.waiting, m.lead_time.queued):
        columns += _spread_columns(spread)
    share = m.lead_time.waiting_share.value
    columns += [("waiting_share", "" if share is None else share)]
    columns += _spread_columns(m.escalation_response)
    for figure in (
        m.autonomy_rate,
        m.cost_per_accepted,
        m.tokens_per_accepted,
        m.wasted_spend_share,
        m.supervision_load,
    ):
        columns += _figure_columns(figure)
    columns += [(name, value) for name, value in m.counts.items()]
    return columns


def _figure_columns(figure: Figure) -> list[tuple[str, object]]:
    out = [(figure.key, "" if figure.value is None else figure.value), (f"{figure.key}_n", figure.n)]
    if figure.unit == "ratio" and figure.key != "wasted_spend_share":
        out += [
            (f"{figure.key}_ci95_low", "" if figure.low is None else figure.low),
            (f"{figure.key}_ci95_high", "" if figure.high is None else figure.high),
        ]
    if figure.key != "accepted_throughput":
        out.append((f"{figure.key}_small_sample", int(figure.small_sample)))
    return out


def _spread_columns(spread: Spread) -> list[tuple[str, object]]:
    return [
        (f"{spread.key}_median_h", _hours(spread.median)),
        (f"{spread.key}_p{spread.upper_q}_h", _hours(spread.upper)),
        (f"{spread.key}_n", spread.n),
        (f"{spread.key}_small_sample", int(spread.small_sample)),
    ]


def csv_response(report: Report, table: str) -> HttpResponse:
    """One table as CSV: a row per group (or per week for ``trend``), the raw numbers of ``csv_columns``."""
    w = report.window
    if table == "overall":
        rows = [("overall", "", w.start, w.end, report.overall)]
    elif table == "pods":
        rows = [("pod", m.key, w.start, w.end, m) for m in report.by_pod]
    elif table == "stos":
        rows = [("sto", m.key, w.start, w.end, m) for m in report.by_sto]
    elif table == "task_types":
        rows = [("task_type", m.key, w.start, w.end, m) for m in report.by_task_type]
    else:
        rows = [("week", p.metrics.key, p.start, p.end, p.metrics) for p in report.trend]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["group", "key", "label", "window_start", "window_end"]
    if not rows:
        writer.writerow(header)
    for index, (group, key, start, end, m) in enumerate(rows):
        columns = csv_columns(m)
        if index == 0:
            writer.writerow([*header, *(name for name, _ in columns)])
        writer.writerow([group, key, m.label, start.isoformat(), end.isoformat(), *(value for _, value in columns)])
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    stamp = f"{timezone.localtime(w.start):%Y%m%d}-{timezone.localtime(w.end):%Y%m%d}"
    response["Content-Disposition"] = f'attachment; filename="controlroom-{table}-{stamp}.csv"'
    return response


# --- the page -----------------------------------------------------------------------------------------


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
                series=[
                    SeriesSpec(
                        name="accepted",
                        css="s0",
                        kind="bar",
                        values=[m.accepted_throughput.value for m in points],
                        small=[False] * len(points),
                        notes=[""] * len(points),
                    )
                ],
            ),
            ratio_chart("revert_rate", "Revert rate (14 days)", "revert_rate"),
        ),
        (
            time_chart(
                key="lead_time",
                title="Lead time to acceptance",
                unit="hours",
                weeks=weeks,
                series=[
                    spec("median", "s1", lead, value=lambda f: _hours_or_none(f.median)),
                    spec("p85", "s2", lead, value=lambda f: _hours_or_none(f.upper)),
                ],
            ),
            ratio_chart("first_pass", "First-pass acceptance", "first_pass_acceptance"),
        ),
        (
            time_chart(
                key="escalation_response",
                title="Escalation response time",
                unit="hours",
                weeks=weeks,
                series=[
                    spec("median", "s1", response, value=lambda f: _hours_or_none(f.median)),
                    spec("p90", "s2", response, value=lambda f: _hours_or_none(f.upper)),
                ],
            ),
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
            SeriesSpec(
                name="accepted work",
                css="ok",
                kind="stack",
                values=[m.counts["closed_cost_usd"] - m.counts["wasted_cost_usd"] for m in points],
                small=[False] * len(points),
                notes=[""] * len(points),
            ),
            SeriesSpec(
                name="wasted (rejected, cancelled, reverted)",
                css="bad",
                kind="stack",
                values=[m.counts["wasted_cost_usd"] for m in points],
                small=[False] * len(points),
                notes=[""] * len(points),
            ),
        ],
    )
    pods = report.by_pod
    comparison = [
        pod_bar_chart(
            key="pod_throughput",
            title="Accepted per week, by pod",
            unit="count",
            rows=[(m.label, m.accepted_throughput) for m in pods],
        ),
        pod_bar_chart(
            key="pod_yield",
            title="Acceptance yield, by pod (95% CI)",
            unit="ratio",
            rows=[(m.label, m.acceptance_yield) for m in pods],
        ),
        pod_bar_chart(
            key="pod_revert",
            title="Revert rate, by pod (95% CI)",
            unit="ratio",
            rows=[(m.label, m.revert_rate) for m in pods],
        ),
        pod_bar_chart(
            key="pod_cost",
            title="Cost per accepted session, by pod",
            unit="usd",
            rows=[(m.label, m.cost_per_accepted) for m in pods],
        ),
    ]
    return {"pairs": pairs, "cost": cost, "comparison": comparison}


def lead_split(m: Metrics) -> list[tuple[str, str, float | None, str]]:
    """(key, label, seconds, text) of the lead time's parts, and the share spent waiting on humans."""
    lead = m.lead_time
    share = lead.waiting_share.value
    return [
        ("running", "agent running", lead.running.median, format_duration(lead.running.median)),
        ("waiting", "waiting on humans", lead.waiting.median, format_duration(lead.waiting.median)),
        ("queued", "queued", lead.queued.median, format_duration(lead.queued.median)),
        (
            "waiting_share",
            "share of all lead time waiting on humans",
            share,
            "—" if share is None else f"{share * 100:.0f}%",
        ),
    ]


@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    if not may_view_dashboard(request.user):
        return render(request, "controlroom/dashboard_forbidden.html", {"reason": FORBIDDEN}, status=403)
    form = DashboardFilterForm(request.GET or None)
    wants = request.GET.get("format", "html")
    table = request.GET.get("table", "")
    problems: list[str] = []
    if wants not in ("html", "csv"):
        problems.append(f"Unknown format {wants!r}: use format=csv (with table=…) or leave it out.")
    if wants == "csv" and table not in CSV_TABLES:
        problems.append(f"Unknown table {table!r}: choose one of {', '.join(CSV_TABLES)}.")
    if form.is_bound and not form.is_valid():
        problems.append(form.error_text())
    report = None
    if not problems:
        now = timezone.now()
        try:
            window, scope = form.window_and_scope(now=now)
            report = fleet_metrics(window=window, scope=scope, now=now)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        if wants == "csv":
            return HttpResponse(" ".join(problems), status=400, content_type="text/plain; charset=utf-8")
        return render(request, "controlroom/dashboard.html", {"form": form, "problems": problems}, status=400)
    if wants == "csv":
        return csv_response(report, table)
    query = request.GET.copy()
    query.pop("format", None)
    query.pop("table", None)
    context = {
        "form": form,
        "report": report,
        "problems": [],
        "headline": [
            (cell, label, EXPLAIN[key])
            for cell, (key, label, _) in zip(metric_cells(report.overall), COLUMNS, strict=True)
        ],
        "lead_split": lead_split(report.overall),
        "columns": COLUMNS,
        "definitions": [(label, EXPLAIN[key]) for key, label, _ in COLUMNS],
        "tables": [
            ("pods", "By pod", "Pod", table_rows(report.by_pod)),
            ("stos", "By Single Task Owner", "STO", table_rows(report.by_sto)),
            ("task_types", "By task type", "Task type", table_rows(report.by_task_type)),
        ],
        "csv_query": query.urlencode(),
        "small_sample": SMALL_SAMPLE,
        **build_charts(report),
    }
    return render(request, "controlroom/dashboard.html", context)
