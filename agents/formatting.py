"""How the fleet's numbers read on every page and in the CLI: one duration format for the drawer's
budget, the digest's timeline and the leaders' dashboard (apps above ``agents`` import it)."""

from __future__ import annotations


def format_duration(seconds: float | None, *, empty: str = "—") -> str:
    """``45s``, ``3m07s``, ``1h05m``, ``2d03h``: the two largest units, whole numbers, the second
    one zero-padded (so a column of them lines up). ``empty`` for an unknown duration."""
    if seconds is None:
        return empty
    whole = int(max(0.0, seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
