"""Which model endpoints (``api_base``) a session may be pointed at.

A session's ``api_base`` is where its worker sends the model calls (the whole transcript, and the
API key named by ``api_key_env``), so it is authority, not decoration: whoever launches a session
must not be able to point the workers at an internal host or at a non-HTTP scheme. The rules:

- empty is fine (the model string's own provider);
- otherwise an ``http://`` or ``https://`` URL with a host, at most ``MAX_API_BASE_CHARS``
  characters (the model column's length), no user name or password (keys come from the
  environment, never from the URL), no fragment, no whitespace or control characters;
- when ``MODEL_API_BASES`` is set (comma-separated base URLs), the URL must be one of them or
  below one: same scheme, host and port (a default port counts as written out) and a path equal
  to the entry's or under it at a ``/`` boundary. ``http://127.0.0.1:1143`` allows
  ``http://127.0.0.1:1143/v1`` but not ``http://127.0.0.1:11434`` nor
  ``http://127.0.0.1.evil.example:1143``; ``https://llm.example/v1`` does not allow ``/v12``.

``api_base_problem`` is the one check; ``session_launch`` calls it (so the launch form, the batch
plan, the CLI and anything else that launches are covered), and the forms use
``validate_api_base`` to show the message beside the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

SCHEMES = {"http": 80, "https": 443}
#: AgentSession.api_base is a URLField of Django's default length
MAX_API_BASE_CHARS = 200


@dataclass(frozen=True)
class Base:
    """An endpoint reduced to what the allow-list compares: scheme, host, port, path."""

    scheme: str
    host: str
    port: int
    path: str  # without a trailing "/"

    def covers(self, other: Base) -> bool:
        if (self.scheme, self.host, self.port) != (other.scheme, other.host, other.port):
            return False
        return other.path == self.path or other.path.startswith(self.path + "/")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def parse_base(value: str) -> tuple[Base | None, str]:
    """(the endpoint, "") for a usable URL, else (None, why not) as a sentence for a human."""
    shown = value if len(value) <= 80 else value[:80] + "…"
    if len(value) > MAX_API_BASE_CHARS:
        return None, f"The API base is longer than {MAX_API_BASE_CHARS} characters."
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return None, "The API base may not contain spaces or control characters."
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None, f"{shown!r} is not a URL the control room can read (check the host and port)."
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        return None, (
            f"{shown!r} is not an http:// or https:// URL: the API base must be the address of an "
            "OpenAI-compatible (or Anthropic) HTTP endpoint, e.g. http://127.0.0.1:11434/v1."
        )
    if not parts.hostname:
        return None, f"{shown!r} names no host: write it as {scheme}://HOST[:PORT]/PATH."
    if parts.username is not None or parts.password is not None:
        return None, (
            "The API base may not carry a user name or password: put the key in an environment "
            "variable and name it in API key env."
        )
    if parts.fragment or value.endswith("#"):
        return None, f"{shown!r} has a #fragment, which an API base cannot use."
    host = parts.hostname.lower().rstrip(".")
    return Base(scheme, host, port if port is not None else SCHEMES[scheme], parts.path.rstrip("/")), ""


def parse_allow_list(entries: list[str]) -> list[Base]:
    """``MODEL_API_BASES`` entries → endpoints; raises ValueError naming the first bad entry."""
    bases = []
    for entry in entries:
        base, problem = parse_base(entry)
        if base is None:
            raise ValueError(f"{entry!r}: {problem}")
        bases.append(base)
    return bases


def api_base_problem(value: str, *, allowed: list[Base] | None = None) -> str | None:
    """None when a session may use ``value`` as its api_base, else the reason, for a human."""
    if not value:
        return None
    base, problem = parse_base(value)
    if base is None:
        return problem
    allowed = settings.CONTROLROOM.get("MODEL_API_BASES", []) if allowed is None else allowed
    if allowed and not any(entry.covers(base) for entry in allowed):
        listed = ", ".join(str(entry) for entry in allowed)
        return (
            f"{value!r} is not one of the model endpoints this control room allows (MODEL_API_BASES): "
            f"use one of {listed}, or ask an operator to add it."
        )
    return None


def validate_api_base(value: str) -> None:
    """Django validator form of ``api_base_problem``."""
    problem = api_base_problem(value or "")
    if problem:
        raise ValidationError(problem, code="api_base")
