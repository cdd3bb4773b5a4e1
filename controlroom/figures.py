"""Metric figures as text: the dashboard's cards and tables, and ``manage.py metrics``."""

from __future__ import annotations

from agents.formatting import format_duration
from controlroom.metrics import SMALL_SAMPLE, Figure, Spread


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
