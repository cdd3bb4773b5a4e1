"""The audit events a viewer may see, and how one event reads as a line: shared by every read
model of the overnight record (digest, "Did I do this work?", explorer, event page, timeline,
commit explanation).

Visibility (``events_visible_to``): events of the sessions the viewer may see
(``agents.selectors.sessions_visible_to``); events with no session (fleet stops, pod pauses,
memberships) only for managers and leaders; on the event page and on /audit/mine, also the events
taken on the viewer's own delegated authority (``on_behalf_of_id`` = the viewer).
"""

from __future__ import annotations

import json
import re

from django.db.models import BigIntegerField, BooleanField, CharField, F, Field, Func, Q, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.db.models.lookups import Exact

from agents.models import User
from agents.selectors import sees_everything, sessions_visible_to
from audit.models import AuditEvent


def visible_session_ids(*, user: User) -> list[int] | None:
    """The ids of the sessions ``user`` may see; None means every session."""
    if sees_everything(user):
        return None
    return list(sessions_visible_to(user=user).order_by().values_list("pk", flat=True))


def events_visible_to(*, user: User, own_authority: bool = False) -> QuerySet[AuditEvent]:
    """Audit events ``user`` may see: events of visible sessions; events without a session for
    managers and leaders only; with ``own_authority``, also events on the user's own authority."""
    events = AuditEvent.objects.all()
    if not user.is_authenticated:
        return events.none()
    ids = visible_session_ids(user=user)
    if ids is None:
        return events
    visible = Q(session_id__in=ids)
    if own_authority:
        visible |= Q(on_behalf_of_id=user.pk)
    return events.filter(visible)


def event_visible_to(*, user: User, event_id: int) -> AuditEvent | None:
    return events_visible_to(user=user, own_authority=True).filter(pk=event_id).first()


# -- one line per event --------------------------------------------------------------------------

PROVENANCE_LABELS = {
    "human": "a human decision",
    "rule": "a grant rule",
    "mode": "the grant's mode",
    "guard": "a guard",
    "budget": "the budget",
    "expired": "the grant's expiry",
    "revoked": "no active grant",
    "error": "invalid arguments",
}


def first_line(text) -> str:
    text = str(text or "")
    return text.splitlines()[0] if text else ""


def short(text, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(kind: str, payload: dict | None) -> str:
    """One readable line for an event (the explorer's, the digest's and the timeline's text)."""
    p = payload if isinstance(payload, dict) else {}
    if kind == "tool.call":
        rule = f": {p.get('rule')}" if p.get("rule") else ""
        text = f"{p.get('tool', '?')} {short(p.get('action'), 120)} → {p.get('decision') or '?'} ({p.get('reason_type') or '?'}{rule})"
        if p.get("state") and p.get("state") not in ("done",):
            text += f", {p.get('state')}"
        if p.get("exit_code") not in (None, 0):
            text += f", exit {p.get('exit_code')}"
        return text
    if kind == "model.call":
        cost = f"${p.get('cost_usd')}" if p.get("cost_known") and p.get("cost_usd") is not None else "cost unknown"
        return f"{p.get('model', '?')}: {p.get('tokens_in', 0)}+{p.get('tokens_out', 0)} tokens, {cost}, {p.get('latency_ms', 0)} ms"
    if kind == "model.error":
        return f"model error (attempt {p.get('attempt', '?')}{', final' if p.get('final') else ', retrying'}): {short(p.get('error'), 140)}"
    if kind == "git.commit":
        return f"commit {str(p.get('sha', ''))[:10]} {short(first_line(p.get('message')), 120)}"
    if kind == "tests.run":
        verdict = "passed" if p.get("passed") or p.get("exit_code") == 0 else f"failed (exit {p.get('exit_code')})"
        summary = f" — {short(p.get('summary'), 80)}" if p.get("summary") else ""
        return f"{short(p.get('command'), 80)} {verdict}{summary}"
    if kind == "session.status":
        reason = f": {short(p.get('reason'), 120)}" if p.get("reason") else ""
        return f"{p.get('from', '?')} → {p.get('to', '?')}{reason}"
    if kind == "escalation.opened":
        return f"asks: {short(p.get('action'), 120)} ({short(p.get('reason'), 60)})"
    if kind == "escalation.decided":
        reason = f" — {short(p.get('reason'), 60)}" if p.get("reason") else ""
        return f"{p.get('decision', '?')}: {short(p.get('action'), 120)}{reason}"
    if kind == "escalation.expired":
        return f"unanswered, expired: {short(p.get('action'), 120)}"
    if kind == "escalation.refused":
        return f"refused {p.get('decision', '?')}: {short(p.get('refusal'), 120)}"
    if kind == "grant.issued":
        return f"grant v{p.get('version', '?')} ({p.get('mode', '?')}) on the authority of {p.get('delegator', '?')}"
    if kind == "grant.revoked":
        return f"grant v{p.get('version', '?')} revoked: {short(p.get('reason'), 120)}"
    if kind == "grant.expired":
        return f"grant expired at {p.get('expires_at', '?')}"
    if kind == "budget.exhausted":
        return f"budget exhausted: {short(p.get('reason'), 120)}"
    if kind == "tool.interrupted":
        return f"interrupted (worker stopped): {p.get('tool', '?')} {short(p.get('action'), 100)}"
    if kind == "session.launched":
        return f"launched “{short(p.get('name'), 80)}” for {p.get('sto', '?')} ({p.get('model', '?')})"
    if kind == "session.attested":
        reason = f": {short(p.get('reason'), 120)}" if p.get("reason") else ""
        return f"{p.get('verdict', '?')} by the STO{reason}"
    if kind == "session.iteration":
        return f"iteration {p.get('iteration', '?')} ({short(p.get('reason'), 80)})"
    if kind == "session.sto_reassigned":
        return f"STO {p.get('from', '?')} → {p.get('to', '?')}"
    if not p:
        return ""
    return short(json.dumps(p, sort_keys=True, ensure_ascii=False, default=str), 160)


# -- conditions on the payload ---------------------------------------------------------------------


class PayloadValue(Func):
    """The event payload's value at ``key`` as a plain SQL value. On SQLite one ``JSON_EXTRACT``
    (Django's ``KT`` adds two ``JSON_TYPE`` calls per row there, and the digest reads every event of
    the night); elsewhere ``Cast(KT(...))``, e.g. ``(payload ->> 'key')::bigint`` on PostgreSQL."""

    def __init__(self, key: str, output_field) -> None:
        if not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(f"payload key {key!r}: letters and underscores only")
        self.key = key
        super().__init__(F("payload"), output_field=output_field)

    def as_sqlite(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"JSON_EXTRACT({sql}, %s)", (*params, f"$.{self.key}")

    def as_sql(self, compiler, connection, **extra_context):
        portable = Cast(KT(f"payload__{self.key}"), self.output_field).resolve_expression(compiler.query)
        return compiler.compile(portable)


def payload_is(key: str, value) -> Q:
    """A condition on the payload's value at ``key`` (a string, an int or a bool)."""
    output: Field = (
        BooleanField() if isinstance(value, bool) else BigIntegerField() if isinstance(value, int) else CharField()
    )
    return Q(Exact(PayloadValue(key, output), value))
