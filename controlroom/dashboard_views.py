"""The leaders' dashboard: ``GET /dashboard`` — outcome metrics (``controlroom.metrics``), read-only.

Who: leaders and managers (and superusers). Members get 403 with a sentence saying why: the
figures compare pods and people across the whole fleet, which is not a member's view.

Query string: ``window`` (7d, 30d, 90d; default 30d) or ``from`` and ``to`` (YYYY-MM-DD, both
days included); ``pod`` (slug), ``task_type``, ``tag``. ``format=csv&table=<overall|pods|stos|
task_types|trend>`` downloads one table as CSV. A bad filter answers 400 with the reason.

The charts' geometry is ``controlroom.charts``, the CSV ``controlroom.csv_export``, the figures as
text ``controlroom.figures`` (shared with ``manage.py metrics``); this module is the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django import forms
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from agents import params
from agents.formatting import format_duration
from agents.http import AuthenticatedHttpRequest
from agents.models import Pod, TaskType, User
from agents.windows import Window
from controlroom.charts import build_charts
from controlroom.csv_export import CSV_TABLES, csv_response
from controlroom.figures import format_interval, format_value
from controlroom.metrics import (
    SMALL_SAMPLE,
    WINDOW_PRESETS,
    Figure,
    Metrics,
    Scope,
    Spread,
    fleet_metrics,
    window_between,
    window_last,
)

DEFAULT_WINDOW = "30d"
FORBIDDEN = (
    "The outcome dashboard is for leaders and managers: it compares pods and people across the "
    "whole fleet. Your pods' sessions are on the canvas."
)


def may_view_dashboard(user: User) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or user.role in (User.Role.LEADER, User.Role.MANAGER)))


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
        self.fields["pod"].choices = [  # type: ignore[attr-defined]  # a ChoiceField
            ("", "All pods"),
            *Pod.objects.order_by("name").values_list("slug", "name"),
        ]
        # "from" is a Python keyword: the fields are added by name
        self.fields["from"] = forms.DateField(
            required=False,
            label="From",
            input_formats=["%Y-%m-%d"],
            validators=params.DATETIME_BOUNDS,
            widget=forms.DateInput(attrs={"type": "date"}),
        )
        self.fields["to"] = forms.DateField(
            required=False,
            label="To",
            input_formats=["%Y-%m-%d"],
            validators=params.DATETIME_BOUNDS,
            widget=forms.DateInput(attrs={"type": "date"}),
        )

    def clean(self) -> dict:
        data = super().clean()
        assert data is not None  # Form.clean returns cleaned_data
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
            f"{'' if name == '__all__' else name + ': '}{' '.join(errors)}"  # type: ignore[arg-type]  # messages: str
            for name, errors in self.errors.items()
        )


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
    accepted: float


def table_rows(rows: list[Metrics]) -> list[TableRow]:
    return [TableRow(key=m.key, label=m.label, cells=metric_cells(m), accepted=m.counts["accepted"]) for m in rows]


# --- the page -----------------------------------------------------------------------------------------


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
@params.bad_parameter_400
def dashboard(request: AuthenticatedHttpRequest) -> HttpResponse:
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
    assert report is not None  # no problems: it was computed
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
