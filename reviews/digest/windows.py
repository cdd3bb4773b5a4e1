"""Which window a page reads: the presets of the night (18:00 to 09:00, local time) and explicit
times typed by a person. A bad request falls back to the default window and says why; a window longer than ``MAX_WINDOW``
is shortened to its last ``MAX_WINDOW`` and says so."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import time as dtime

from django.utils import timezone

from agents import params
from agents.windows import Window, iso_minutes

EVENING_HOUR = 18  # the night starts at 18:00 local time ...
MORNING_HOUR = 9  # ... and ends at 09:00

#: The longest window a page reads: a longer request keeps its end and is shortened to this, with a notice.
MAX_WINDOW = timedelta(days=31)

PRESETS = {
    "overnight": "Since yesterday 18:00",
    "night": "The night (18:00–09:00)",
    "today": "Today",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
}


def _local_at(day, hour: int) -> datetime:
    return timezone.make_aware(datetime.combine(day, dtime(hour, 0)))


def preset_window(preset: str, *, now: datetime | None = None) -> Window:
    """The window a preset names, at ``now`` (local time). Unknown presets raise ValueError."""
    now = now or timezone.now()
    local = timezone.localtime(now)
    if preset == "overnight":  # since yesterday 18:00, until now
        return Window(_local_at(local.date() - timedelta(days=1), EVENING_HOUR), now, preset=preset)
    if preset == "night":  # the night that began at the latest 18:00 at or before now
        start_day = local.date() if local.hour >= EVENING_HOUR else local.date() - timedelta(days=1)
        since = _local_at(start_day, EVENING_HOUR)
        return Window(since, _local_at(start_day + timedelta(days=1), MORNING_HOUR), preset=preset)
    if preset == "today":
        return Window(_local_at(local.date(), 0), now, preset=preset)
    if preset == "24h":
        return Window(now - timedelta(hours=24), now, preset=preset)
    if preset == "7d":
        return Window(now - timedelta(days=7), now, preset=preset)
    raise ValueError(f"unknown window {preset!r}: use one of {', '.join(PRESETS)}")


def parse_time(text: str, *, name: str = "time") -> datetime:
    """A datetime from ``2025-01-31T18:00`` (local time), ``2025-01-31`` (midnight), or ISO 8601 with
    an offset or ``Z``, in the years ``params`` allows. ValueError (``params.BadParameter``) with a
    readable message otherwise."""
    return params.moment(text, name=name)


def window_from(
    *, since: str = "", until: str = "", preset: str = "", default: str = "overnight", now: datetime | None = None
) -> Window:
    """The window a page was asked for: a preset, or explicit ``since``/``until`` (either may be left
    out: ``since`` defaults to the default preset's start, ``until`` to now). A bad request falls back
    to the default window with the reason in ``error``."""
    now = now or timezone.now()
    fallback = preset_window(default, now=now)
    if preset and not (since or until):
        try:
            return preset_window(preset, now=now)
        except ValueError as exc:
            return Window(fallback.start, fallback.end, preset=fallback.preset, error=str(exc))
    if not (since or until):
        return fallback
    try:
        start = parse_time(since, name="since") if since else fallback.start
        end = parse_time(until, name="until") if until else now
    except ValueError as exc:
        return Window(fallback.start, fallback.end, preset=fallback.preset, error=str(exc))
    if end <= start:
        return Window(
            fallback.start,
            fallback.end,
            preset=fallback.preset,
            error=f"the window must end after it starts ({iso_minutes(start)} → {iso_minutes(end)})",
        )
    if end - start > MAX_WINDOW:
        shortened = end - MAX_WINDOW
        return Window(
            shortened,
            end,
            notice=(
                f"a window is at most {MAX_WINDOW.days} days: showing {iso_minutes(shortened)} → {iso_minutes(end)}"
                f" (asked from {iso_minutes(start)})"
            ),
        )
    return Window(start, end)
