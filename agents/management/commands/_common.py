"""Shared bits of the operator CLI: resolving users/sessions with clear errors."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from agents.authority import NotAllowed
from agents.errors import validation_text
from agents.models import AgentSession, Pod, User


def get_user(username: str, *, what: str = "user") -> User:
    try:
        return User.objects.get(username=username)
    except User.DoesNotExist:
        raise CommandError(f"no {what} named {username!r}") from None


def get_session(session_id: str | int) -> AgentSession:
    try:
        return AgentSession.objects.select_related("pod", "sto", "repository").get(pk=int(session_id))
    except (ValueError, AgentSession.DoesNotExist):
        raise CommandError(f"no agent session with id {session_id!r}") from None


def get_pod(slug: str) -> Pod:
    try:
        return Pod.objects.get(slug=slug)
    except Pod.DoesNotExist:
        raise CommandError(f"no pod with slug {slug!r}") from None


def run_service(fn, **kwargs):
    """Call a service, turning refusals and validation errors into one readable CommandError."""
    try:
        return fn(**kwargs)
    except NotAllowed as exc:
        raise CommandError(f"refused: {exc}") from None
    except ValidationError as exc:
        raise CommandError(validation_text(exc, with_fields=True)) from None
