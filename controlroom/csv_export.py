"""The dashboard's tables as CSV (``format=csv&table=…``): raw numbers, ratios as fractions (0..1),
durations in hours, cost in USD; an empty cell is an undefined figure."""

from __future__ import annotations

import csv
import io

from django.http import HttpResponse
from django.utils import timezone

from controlroom.metrics import Figure, Metrics, Report, Spread

CSV_TABLES = ("overall", "pods", "stos", "task_types", "trend")


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
    out: list[tuple[str, object]]
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
