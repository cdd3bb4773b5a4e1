"""Strict parsing of what a person (or an attacker) puts in a query string, and the bounds the
forms share. One place decides what a number, a time or a piece of text may look like, so a
malformed or out-of-range value is a readable 400 (``BadParameter``) and never a 500.

- Integers: ASCII digits only (``str.isdigit()`` accepts ``"²"``, which ``int()`` refuses), at
  most ``MAX_INT`` (what a 64-bit database column stores, with room to spare).
- Times: the formats the pages write (``2025-01-31T18:00`` local time, ``2025-01-31``, ISO 8601
  with an offset or ``Z``), between ``MIN_YEAR`` and ``MAX_YEAR`` (so adding hours or days to
  one never overflows ``datetime``).
- Text: no NUL character (PostgreSQL refuses it), at most ``MAX_TEXT`` characters.

Views parse with these helpers and wrap themselves in ``@bad_parameter_400``; forms use
``DATETIME_BOUNDS`` (validators) and the ``MAX_*`` constants for their fields.
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

#: Largest integer a query parameter may carry (ids, keyset cursors): a signed 64-bit column holds it.
MAX_INT = 2**62
#: Budgets a grant or a launch may set (PositiveIntegerField holds 2**31 - 1 on PostgreSQL).
MAX_STEPS = 100_000
MAX_TOOL_CALLS = 1_000_000
MAX_TOKENS = 10**12
#: Rule lists of a grant: how many rules in one list, how long one rule may be.
MAX_RULES = 200
MAX_RULE_CHARS = 500
#: The years a time may name: far enough for any real window, near enough that arithmetic never overflows.
MIN_YEAR = 2000
MAX_YEAR = 2100
#: Longest text accepted in one query parameter.
MAX_TEXT = 1000

_DIGITS = re.compile(r"[0-9]+")


class BadParameter(ValueError):
    """A query parameter that cannot be used; the message says which one and why, for a human."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


def _shown(raw: str) -> str:
    """The value as it is quoted back in a message: short, and without control characters."""
    text = raw if len(raw) <= 40 else raw[:40] + "…"
    return repr(text)


def text(raw: str | None, *, name: str, max_length: int = MAX_TEXT) -> str:
    """``raw`` stripped; BadParameter for a NUL character or more than ``max_length`` characters."""
    value = (raw or "").strip()
    if "\x00" in value:
        raise BadParameter(name, "contains a NUL character")
    if len(value) > max_length:
        raise BadParameter(name, f"longer than {max_length} characters")
    return value


def integer(raw: str | None, *, name: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """An integer written in ASCII digits between ``minimum`` and ``maximum``; BadParameter otherwise."""
    value = text(raw, name=name, max_length=40)
    if not _DIGITS.fullmatch(value):
        raise BadParameter(name, f"{_shown(value)} is not a number (digits 0-9 only)")
    number = int(value)
    if number < minimum:
        raise BadParameter(name, f"must be at least {minimum}")
    if number > maximum:
        raise BadParameter(name, f"must be at most {maximum}")
    return number


def check_datetime(value: datetime | date, *, name: str) -> None:
    """BadParameter when ``value`` lies outside the years ``MIN_YEAR`` to ``MAX_YEAR``."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise BadParameter(name, f"{value.year} is out of range: choose a year from {MIN_YEAR} to {MAX_YEAR}")


def moment(raw: str | None, *, name: str) -> datetime:
    """A time from ``2025-01-31T18:00`` (local time), ``2025-01-31`` (midnight), or ISO 8601 with
    an offset or ``Z``, within the bounded years; BadParameter otherwise."""
    value = text(raw, name=name, max_length=40)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadParameter(
            name, f"{_shown(value)} is not a time: use YYYY-MM-DDTHH:MM (local time) or YYYY-MM-DD"
        ) from None
    check_datetime(parsed, name=name)
    if timezone.is_naive(parsed):
        try:
            parsed = timezone.make_aware(parsed)
        except (ValueError, OverflowError):  # a time that does not exist in the local zone
            raise BadParameter(name, f"{_shown(value)} is not a time in the local time zone") from None
    return parsed


def query_int(
    params: Mapping[str, str], name: str, *, minimum: int = 1, maximum: int = MAX_INT, default: int | None = None
) -> int | None:
    """The integer parameter ``name`` (``default`` when absent or empty); BadParameter when malformed."""
    raw = params.get(name)
    if raw is None or not raw.strip():
        return default
    return integer(raw, name=name, minimum=minimum, maximum=maximum)


def query_text(params: Mapping[str, str], name: str, *, max_length: int = MAX_TEXT, default: str = "") -> str:
    """The text parameter ``name``, stripped (``default`` when absent); BadParameter when unusable."""
    raw = params.get(name)
    if raw is None:
        return default
    return text(raw, name=name, max_length=max_length)


def query_choice(params: Mapping[str, str], name: str, choices, *, default: str = "") -> str:
    """One of ``choices`` (``default`` when absent or empty); BadParameter for anything else."""
    value = query_text(params, name, max_length=100)
    if not value:
        return default
    if value not in choices:
        raise BadParameter(name, f"{_shown(value)} is not one of {', '.join(str(c) for c in choices)}")
    return value


def _validate_datetime_bounds(value: datetime | date | None) -> None:
    if value is None:
        return
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValidationError(
            "Choose a time between the years %(low)s and %(high)s.",
            code="out_of_range",
            params={"low": MIN_YEAR, "high": MAX_YEAR},
        )


#: Validators for form DateTimeFields and DateFields: the same bounded years as query parameters.
DATETIME_BOUNDS = [_validate_datetime_bounds]


def bad_request(request: HttpRequest, message: str) -> HttpResponse:
    """The 400 answer to a bad parameter: a small page saying what to fix."""
    return render(request, "bad_parameter.html", {"message": message, "back": request.path}, status=400)


def check_request(request: HttpRequest) -> None:
    """What no view accepts: a NUL character in any query or form value (PostgreSQL refuses it in a
    lookup), a query parameter longer than ``MAX_TEXT`` characters. BadParameter names the first one."""
    for key, values in request.GET.lists():
        text(key, name="a parameter name", max_length=100)
        for value in values:
            text(value, name=key[:100])
    if request.method == "POST":
        for key, values in request.POST.lists():
            if "\x00" in key or any("\x00" in value for value in values):
                raise BadParameter(key.replace("\x00", "")[:100] or "a field", "contains a NUL character")


def bad_parameter_400(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Decorate a view: its request is checked (``check_request``) and a BadParameter raised while
    the view parses it answers 400 with the message, never 500."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs) -> HttpResponse:
        try:
            check_request(request)
            return view(request, *args, **kwargs)
        except BadParameter as exc:
            return bad_request(request, f"Bad parameter {exc}.")

    return wrapper
