"""A time window ``[start, end)``: what the overnight pages (digest, timeline, audit) and the
leaders' dashboard read over. One type for both (apps above ``agents`` import it); how a window
is chosen stays with each page (``reviews.digest.windows`` presets, ``controlroom.metrics``
days and date ranges)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone


def iso_minutes(value: datetime) -> str:
    """Local time to the minute, as a ``datetime-local`` field and the query string write it."""
    return timezone.localtime(value).strftime("%Y-%m-%dT%H:%M")


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    label: str = ""  # how it is named on the page; by default its local start and end
    preset: str = ""  # the preset it came from, "" for explicit times
    error: str = ""  # why the requested window was not used (shown to the user)
    notice: str = ""  # how the requested window was changed to be used (e.g. shortened), shown to the user

    def __post_init__(self) -> None:
        if not self.label:
            start, end = timezone.localtime(self.start), timezone.localtime(self.end)
            fmt = "%a %d %b %H:%M"
            object.__setattr__(self, "label", f"{start:{fmt}} → {end:{fmt}}")

    @property
    def seconds(self) -> float:
        return max(1.0, (self.end - self.start).total_seconds())

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400

    @property
    def weeks(self) -> float:
        return self.days / 7

    def contains(self, moment: datetime | None) -> bool:
        return moment is not None and self.start <= moment < self.end

    def query(self) -> str:
        """The window as query parameters (for links that keep it)."""
        if self.preset:
            return f"preset={self.preset}"
        return self.explorer_query

    @property
    def explorer_query(self) -> str:
        """The window as the audit explorer's explicit ``since``/``until`` parameters."""
        return f"since={iso_minutes(self.start)}&until={iso_minutes(self.end)}"

    @property
    def fields(self) -> list[tuple[str, str]]:
        """The window as hidden form fields (name, value)."""
        if self.preset:
            return [("preset", self.preset)]
        return [("since", iso_minutes(self.start)), ("until", iso_minutes(self.end))]
