"""Reads of the overnight record: the morning digest, "Did I do this work?", the night's timeline,
the audit explorer, one event, and the explanation of an agent's commit.

Every function takes the viewer (or, for the command line, none) and reads only what the viewer
may see (``events_visible_to``):

- events of the sessions the viewer may see (``agents.selectors.sessions_visible_to``);
- events with no session (fleet stops, pod pauses, memberships) only for managers and leaders;
- on the event page and on /audit/mine, also the events taken on the viewer's own delegated
  authority (``on_behalf_of_id`` = the viewer): a person may always see what was done in their name.

Everything is computed from the audit log itself (``reviews.models.AuditEvent``), with a few
aggregate queries per page over the window (``GROUP BY session_id, kind``), never a query per
session per kind: the digest stays fast over tens of thousands of events. Diff stats come from
git (``reviews.selectors.diff_stats``: memoised by commit shas, computed in parallel, with timeouts).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db.models import (
    BigIntegerField,
    BooleanField,
    CharField,
    Count,
    F,
    FloatField,
    Func,
    Max,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.expressions import Window as SqlWindow
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, RowNumber
from django.db.models.lookups import Exact
from django.utils import timezone

from agents.models import AgentSession, Escalation, Grant, Pod, Repository, Status, User
from agents.selectors import sees_everything, sessions_visible_to
from audit.log import event_fields, event_hash
from audit.models import AuditEvent, Checkpoint
from reviews import git_ops

# -- windows -------------------------------------------------------------------------------------

EVENING_HOUR = 18  # the night starts at 18:00 local time ...
MORNING_HOUR = 9  # ... and ends at 09:00

PRESETS = {
    "overnight": "Since yesterday 18:00",
    "night": "The night (18:00–09:00)",
    "today": "Today",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
}


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime
    preset: str = ""  # the preset it came from, "" for explicit times
    error: str = ""  # why the requested window was not used (shown to the user)

    @property
    def label(self) -> str:
        since, until = timezone.localtime(self.since), timezone.localtime(self.until)
        fmt = "%a %d %b %H:%M"
        return f"{since:{fmt}} → {until:{fmt}}"

    @property
    def seconds(self) -> float:
        return max(1.0, (self.until - self.since).total_seconds())

    def query(self) -> str:
        """The window as query parameters (for links that keep it)."""
        if self.preset:
            return f"preset={self.preset}"
        return self.explorer_query

    @property
    def explorer_query(self) -> str:
        """The window as the explorer's explicit ``since``/``until`` parameters."""
        return f"since={_iso_minutes(self.since)}&until={_iso_minutes(self.until)}"

    @property
    def fields(self) -> list[tuple[str, str]]:
        """The window as hidden form fields (name, value)."""
        if self.preset:
            return [("preset", self.preset)]
        return [("since", _iso_minutes(self.since)), ("until", _iso_minutes(self.until))]


def _iso_minutes(value: datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%dT%H:%M")


def _local_at(day, hour: int) -> datetime:
    return timezone.make_aware(datetime.combine(day, dtime(hour, 0)))


def preset_window(preset: str, *, now: datetime | None = None) -> Window:
    """The window a preset names, at ``now`` (local time). Unknown presets raise ValueError."""
    now = now or timezone.now()
    local = timezone.localtime(now)
    if preset == "overnight":  # since yesterday 18:00, until now
        return Window(_local_at(local.date() - timedelta(days=1), EVENING_HOUR), now, preset)
    if preset == "night":  # the night that began at the latest 18:00 at or before now
        start_day = local.date() if local.hour >= EVENING_HOUR else local.date() - timedelta(days=1)
        since = _local_at(start_day, EVENING_HOUR)
        return Window(since, _local_at(start_day + timedelta(days=1), MORNING_HOUR), preset)
    if preset == "today":
        return Window(_local_at(local.date(), 0), now, preset)
    if preset == "24h":
        return Window(now - timedelta(hours=24), now, preset)
    if preset == "7d":
        return Window(now - timedelta(days=7), now, preset)
    raise ValueError(f"unknown window {preset!r}: use one of {', '.join(PRESETS)}")


def parse_time(text: str) -> datetime:
    """A datetime from ``2025-01-31T18:00`` (local time), ``2025-01-31`` (midnight), or ISO 8601 with
    an offset or ``Z``. ValueError with a readable message otherwise."""
    text = (text or "").strip()
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use YYYY-MM-DDTHH:MM (local time) or YYYY-MM-DD") from None
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value


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
            return Window(fallback.since, fallback.until, fallback.preset, error=str(exc))
    if not (since or until):
        return fallback
    try:
        start = parse_time(since) if since else fallback.since
        end = parse_time(until) if until else now
    except ValueError as exc:
        return Window(fallback.since, fallback.until, fallback.preset, error=str(exc))
    if end <= start:
        return Window(
            fallback.since,
            fallback.until,
            fallback.preset,
            error=f"the window must end after it starts ({_iso_minutes(start)} → {_iso_minutes(end)})",
        )
    return Window(start, end)


# -- who may see which events --------------------------------------------------------------------


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


def _first_line(text) -> str:
    text = str(text or "")
    return text.splitlines()[0] if text else ""


def _short(text, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(kind: str, payload: dict | None) -> str:
    """One readable line for an event (the explorer's, the digest's and the timeline's text)."""
    p = payload if isinstance(payload, dict) else {}
    if kind == "tool.call":
        rule = f": {p.get('rule')}" if p.get("rule") else ""
        text = f"{p.get('tool', '?')} {_short(p.get('action'), 120)} → {p.get('decision') or '?'} ({p.get('reason_type') or '?'}{rule})"
        if p.get("state") and p.get("state") not in ("done",):
            text += f", {p.get('state')}"
        if p.get("exit_code") not in (None, 0):
            text += f", exit {p.get('exit_code')}"
        return text
    if kind == "model.call":
        cost = f"${p.get('cost_usd')}" if p.get("cost_known") and p.get("cost_usd") is not None else "cost unknown"
        return f"{p.get('model', '?')}: {p.get('tokens_in', 0)}+{p.get('tokens_out', 0)} tokens, {cost}, {p.get('latency_ms', 0)} ms"
    if kind == "model.error":
        return f"model error (attempt {p.get('attempt', '?')}{', final' if p.get('final') else ', retrying'}): {_short(p.get('error'), 140)}"
    if kind == "git.commit":
        return f"commit {str(p.get('sha', ''))[:10]} {_short(_first_line(p.get('message')), 120)}"
    if kind == "tests.run":
        verdict = "passed" if p.get("passed") or p.get("exit_code") == 0 else f"failed (exit {p.get('exit_code')})"
        summary = f" — {_short(p.get('summary'), 80)}" if p.get("summary") else ""
        return f"{_short(p.get('command'), 80)} {verdict}{summary}"
    if kind == "session.status":
        reason = f": {_short(p.get('reason'), 120)}" if p.get("reason") else ""
        return f"{p.get('from', '?')} → {p.get('to', '?')}{reason}"
    if kind == "escalation.opened":
        return f"asks: {_short(p.get('action'), 120)} ({_short(p.get('reason'), 60)})"
    if kind == "escalation.decided":
        reason = f" — {_short(p.get('reason'), 60)}" if p.get("reason") else ""
        return f"{p.get('decision', '?')}: {_short(p.get('action'), 120)}{reason}"
    if kind == "escalation.expired":
        return f"unanswered, expired: {_short(p.get('action'), 120)}"
    if kind == "escalation.refused":
        return f"refused {p.get('decision', '?')}: {_short(p.get('refusal'), 120)}"
    if kind == "grant.issued":
        return f"grant v{p.get('version', '?')} ({p.get('mode', '?')}) on the authority of {p.get('delegator', '?')}"
    if kind == "grant.revoked":
        return f"grant v{p.get('version', '?')} revoked: {_short(p.get('reason'), 120)}"
    if kind == "grant.expired":
        return f"grant expired at {p.get('expires_at', '?')}"
    if kind == "budget.exhausted":
        return f"budget exhausted: {_short(p.get('reason'), 120)}"
    if kind == "tool.interrupted":
        return f"interrupted (worker stopped): {p.get('tool', '?')} {_short(p.get('action'), 100)}"
    if kind == "session.launched":
        return f"launched “{_short(p.get('name'), 80)}” for {p.get('sto', '?')} ({p.get('model', '?')})"
    if kind == "session.attested":
        reason = f": {_short(p.get('reason'), 120)}" if p.get("reason") else ""
        return f"{p.get('verdict', '?')} by the STO{reason}"
    if kind == "session.iteration":
        return f"iteration {p.get('iteration', '?')} ({_short(p.get('reason'), 80)})"
    if kind == "session.sto_reassigned":
        return f"STO {p.get('from', '?')} → {p.get('to', '?')}"
    if not p:
        return ""
    return _short(json.dumps(p, sort_keys=True, ensure_ascii=False, default=str), 160)


# -- the morning digest --------------------------------------------------------------------------

# Events that are lines of a session's summary (the others are only counted). Lines are fetched
# for at most LINES_PER_KIND events of each of these kinds per session (the latest); of the kinds
# found by what their payload says (denied tool calls, final model errors, failures) only the
# latest. Every count is exact.
LINES_PER_KIND = 4
LINE_KINDS = ("git.commit", "tests.run", "budget.exhausted", "grant.expired", "tool.interrupted", "session.error")
ANOMALY_KINDS = ("budget.exhausted", "grant.expired", "tool.interrupted", "session.error")


@dataclass
class Line:
    """One event as a line of a summary."""

    id: int
    kind: str
    at: datetime
    text: str
    actor: str = ""
    tag: str = ""  # css modifier: ok / bad / warn
    code: str = ""  # a short identifier shown in monospace (a commit's sha)


@dataclass
class EscalationLine:
    id: int
    action: str
    tool: str
    state: str
    state_label: str
    created_at: datetime
    decided_by: str = ""
    decided_at: datetime | None = None
    reason: str = ""

    @property
    def is_open(self) -> bool:
        return self.state == Escalation.State.OPEN


@dataclass
class DigestRow:
    """One session's summary. The lists hold the latest LINES_PER_KIND lines of each kind; the
    ``*_count`` fields count every event of the window."""

    session: AgentSession
    roles: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    commits: list[Line] = field(default_factory=list)
    tests: list[Line] = field(default_factory=list)
    denials: list[Line] = field(default_factory=list)
    escalations: list[EscalationLine] = field(default_factory=list)
    anomalies: list[Line] = field(default_factory=list)
    stat: git_ops.DiffStat | None = None
    stat_error: str = ""
    model_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: Decimal = Decimal(0)
    cost_unknown_calls: int = 0
    denial_count: int = 0
    tests_passed: int = 0
    final_model_errors: int = 0
    failures: int = 0
    rank: int = 9
    needs: str = ""  # why it needs a human decision ("" when it does not)
    is_sto: bool = False

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    @property
    def commit_count(self) -> int:
        return self.counts.get("git.commit", 0)

    @property
    def test_count(self) -> int:
        return self.counts.get("tests.run", 0)

    @property
    def tests_failed(self) -> int:
        return self.test_count - self.tests_passed

    @property
    def retries(self) -> int:
        """Model calls that failed and were retried (a transient model.error)."""
        return self.counts.get("model.error", 0) - self.final_model_errors

    @property
    def anomaly_count(self) -> int:
        """Budget stops, grant expiries, interrupted tool calls, errors, final model errors, failures."""
        return sum(self.counts.get(k, 0) for k in ANOMALY_KINDS) + self.final_model_errors + self.failures

    @property
    def open_escalations(self) -> int:
        return sum(1 for e in self.escalations if e.is_open)

    @property
    def last_test(self) -> Line | None:
        return self.tests[-1] if self.tests else None


@dataclass
class Digest:
    window: Window
    rows: list[DigestRow]
    scope: str = "mine"

    @property
    def needing_decision(self) -> int:
        return sum(1 for r in self.rows if r.needs)

    @property
    def totals(self) -> dict:
        return {
            "sessions": len(self.rows),
            "commits": sum(r.commit_count for r in self.rows),
            "tests": sum(r.test_count for r in self.rows),
            "tests_failed": sum(r.tests_failed for r in self.rows),
            "denials": sum(r.denial_count for r in self.rows),
            "escalations": sum(len(r.escalations) for r in self.rows),
            "open_escalations": sum(r.open_escalations for r in self.rows),
            "tokens": sum(r.tokens for r in self.rows),
            "cost_usd": sum((r.cost_usd for r in self.rows), Decimal(0)),
            "cost_unknown_calls": sum(r.cost_unknown_calls for r in self.rows),
            "anomalies": sum(r.anomaly_count for r in self.rows),
        }


def _decimal(value) -> Decimal:
    if value is None:
        return Decimal(0)
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _decision_rank(row: DigestRow) -> tuple[int, str]:
    """How urgently a human must decide something (lower first) and why."""
    s = row.session
    if s.status == Status.NEEDS_APPROVAL:
        return 0, "waiting for your approval"
    if s.status == Status.BLOCKED:
        return 1, f"blocked: {s.status_reason}" if s.status_reason else "blocked"
    if row.open_escalations:
        return 2, f"{row.open_escalations} open escalation(s)"
    if s.status == Status.SUCCEEDED and not s.attestation and row.is_sto:
        return 3, "finished: accept it as yours or disown it"
    if s.status == Status.FAILED and not s.attestation:
        return 4, "failed: look at what happened"
    if s.status == Status.PAUSED:
        return 5, ""
    if s.status == Status.SUCCEEDED and not s.attestation:
        return 6, ""  # finished; its STO has not attested it yet
    if s.status in (Status.RUNNING, Status.QUEUED):
        return 7, ""
    return 8, ""


def digest_sessions(*, user: User, scope: str = "mine") -> QuerySet[AgentSession]:
    """The sessions a digest covers: ``mine`` — those the user owns (STO) or delegated authority to
    (a grant's delegator); ``all`` — every session the user may see."""
    sessions = sessions_visible_to(user=user)
    if scope == "all":
        return sessions
    delegated = Grant.objects.filter(delegator=user).values("session_id")
    return sessions.filter(Q(sto=user) | Q(pk__in=delegated))


class _PayloadValue(Func):
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


def _payload_is(key: str, value) -> Q:
    """A condition on the payload's value at ``key`` (a string, an int or a bool)."""
    output = BooleanField() if isinstance(value, bool) else BigIntegerField() if isinstance(value, int) else CharField()
    return Q(Exact(_PayloadValue(key, output), value))


def _model_sum(key: str, output) -> Sum:
    return Sum(_PayloadValue(key, output), filter=Q(kind="model.call"))


def digest(
    *, user: User, window: Window, scope: str = "mine", with_diffstat: bool = True, only: int | None = None
) -> Digest:
    """The morning digest of ``user`` over ``window``: one row per session of theirs that did
    something in the window or is waiting for a human now, sessions needing a decision first.
    ``only``: just that session (always listed when the user may see it).

    Queries: the candidate sessions, ONE aggregate pass over the window's events (GROUP BY
    session_id, kind, with the tokens, cost, denials, passed tests and failures as filtered
    aggregates), the open escalations, the sessions, the delegations, the capped lines, the
    escalations; then one ``git for-each-ref`` per repository and memoised diff stats."""
    candidates_qs = digest_sessions(user=user, scope=scope)
    if only is not None:
        candidates_qs = candidates_qs.filter(pk=only)
    candidates = dict(candidates_qs.order_by().values_list("pk", "status"))
    if not candidates:
        return Digest(window=window, rows=[], scope=scope)
    ids = list(candidates)
    every_session = scope == "all" and only is None and sees_everything(user)
    in_window = AuditEvent.objects.filter(created_at__gte=window.since, created_at__lt=window.until)
    if not every_session:
        in_window = in_window.filter(session_id__in=ids)
    # 1. one pass over the window: per session and kind, how many events, and what they say
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    aggregates: dict[int, dict] = defaultdict(dict)
    grouped = (
        in_window.filter(session_id__isnull=False)
        .order_by()
        .values("session_id", "kind")
        .annotate(
            n=Count("id"),
            tin=_model_sum("tokens_in", BigIntegerField()),
            tout=_model_sum("tokens_out", BigIntegerField()),
            cost=_model_sum("cost_usd", FloatField()),
            unknown=Count("id", filter=Q(kind="model.call") & _payload_is("cost_known", False)),
            denied=Count("id", filter=Q(kind="tool.call") & _payload_is("decision", "deny")),
            passed=Count(
                "id", filter=Q(kind="tests.run") & (_payload_is("passed", True) | _payload_is("exit_code", 0))
            ),
            final=Count("id", filter=Q(kind="model.error") & _payload_is("final", True)),
            failed=Count("id", filter=Q(kind="session.status") & _payload_is("to", str(Status.FAILED))),
            last_denied=Max("id", filter=Q(kind="tool.call") & _payload_is("decision", "deny")),
            last_final=Max("id", filter=Q(kind="model.error") & _payload_is("final", True)),
            last_failed=Max("id", filter=Q(kind="session.status") & _payload_is("to", str(Status.FAILED))),
        )
    )
    latest_ids: set[int] = set()  # the latest denial, final model error and failure of each session
    for g in grouped:
        if g["session_id"] not in candidates:
            continue
        counts[g["session_id"]][g["kind"]] = g["n"]
        aggregates[g["session_id"]][g["kind"]] = g
        latest_ids.update(i for i in (g["last_denied"], g["last_final"], g["last_failed"]) if i)
    waiting = {pk for pk, status in candidates.items() if status in (Status.NEEDS_APPROVAL, Status.BLOCKED)}
    open_escalated = set(
        Escalation.objects.filter(state=Escalation.State.OPEN)
        .filter(**({} if every_session else {"session_id__in": ids}))
        .values_list("session_id", flat=True)
    ) & set(candidates)
    chosen = set(counts) | waiting | open_escalated | ({only} if only in candidates else set())
    if not chosen:
        return Digest(window=window, rows=[], scope=scope)
    sessions = list(AgentSession.objects.filter(pk__in=chosen).select_related("pod", "sto", "repository"))
    delegated_ids = set(
        Grant.objects.filter(session_id__in=chosen, delegator=user).values_list("session_id", flat=True)
    )
    rows: dict[int, DigestRow] = {}
    for s in sessions:
        roles = []
        if s.sto_id == user.pk:
            roles.append("STO")
        if s.pk in delegated_ids:
            roles.append("delegator")
        row = rows[s.pk] = DigestRow(session=s, roles=roles, counts=counts.get(s.pk, {}), is_sto=s.sto_id == user.pk)
        by_kind = aggregates.get(s.pk, {})
        model = by_kind.get("model.call")
        if model:
            row.model_calls, row.tokens_in, row.tokens_out = model["n"], model["tin"] or 0, model["tout"] or 0
            row.cost_usd = _decimal(round(model["cost"] or 0.0, 6))
            row.cost_unknown_calls = model["unknown"]
        row.denial_count = by_kind.get("tool.call", {}).get("denied", 0)
        row.tests_passed = by_kind.get("tests.run", {}).get("passed", 0)
        row.final_model_errors = by_kind.get("model.error", {}).get("final", 0)
        row.failures = by_kind.get("session.status", {}).get("failed", 0)
    chosen_ids = list(rows)
    # 2. the lines: the latest LINES_PER_KIND events of each line kind per session (read through
    # the (kind, created_at) index), and the latest denial / final model error / failure (by id)
    fields = ("id", "session_id", "kind", "created_at", "actor_label", "payload")
    latest = list(
        in_window.filter(session_id__in=chosen_ids, kind__in=LINE_KINDS)
        .annotate(rank=SqlWindow(RowNumber(), partition_by=[F("session_id"), F("kind")], order_by=F("id").desc()))
        .filter(rank__lte=LINES_PER_KIND)
        .values_list(*fields)
    )
    if latest_ids:
        latest += list(AuditEvent.objects.filter(pk__in=sorted(latest_ids)).values_list(*fields))
    for event_id, session_id, kind, at, actor, payload in sorted(latest):
        _digest_line(rows[session_id], event_id, kind, at, actor, payload or {})
    # 3. escalations opened in the window, or still open (their state now, and who answered)
    escalations = (
        Escalation.objects.filter(session_id__in=chosen_ids)
        .filter(Q(created_at__gte=window.since, created_at__lt=window.until) | Q(state=Escalation.State.OPEN))
        .select_related("decided_by")
        .order_by("created_at", "pk")
    )
    for e in escalations:
        rows[e.session_id].escalations.append(
            EscalationLine(
                id=e.pk,
                action=e.action,
                tool=e.tool,
                state=e.state,
                state_label=e.get_state_display(),
                created_at=e.created_at,
                decided_by=e.decided_by.username if e.decided_by else "",
                decided_at=e.decided_at,
                reason=e.decision_reason,
            )
        )
    # 4. the diff of each branch (git, memoised by commit shas)
    if with_diffstat:
        with_branch = [r.session for r in rows.values() if r.session.branch and (r.commits or r.session.steps)]
        if with_branch:
            from reviews.selectors import diff_stats

            for session_id, (stat, error) in diff_stats(with_branch).items():
                rows[session_id].stat, rows[session_id].stat_error = stat, error
    for row in rows.values():
        row.rank, row.needs = _decision_rank(row)
        if row.rank > 4:
            row.needs = ""
    ordered = sorted(rows.values(), key=lambda r: (r.rank, r.session.priority, -_last_activity(r), r.session.pk))
    return Digest(window=window, rows=ordered, scope=scope)


def _last_activity(row: DigestRow) -> float:
    return row.session.updated_at.timestamp() if row.session.updated_at else 0.0


def _digest_line(row: DigestRow, event_id: int, kind: str, at: datetime, actor: str, payload: dict) -> None:
    if kind == "git.commit":
        row.commits.append(
            Line(
                event_id,
                kind,
                at,
                _short(_first_line(payload.get("message")), 120),
                actor,
                code=str(payload.get("sha", ""))[:10],
            )
        )
    elif kind == "tests.run":
        passed = bool(payload.get("passed")) or payload.get("exit_code") == 0
        row.tests.append(Line(event_id, kind, at, describe(kind, payload), actor, "ok" if passed else "bad"))
    elif kind == "tool.call":
        row.denials.append(Line(event_id, kind, at, describe(kind, payload), actor, "bad"))
    elif kind == "model.error":
        row.anomalies.append(Line(event_id, kind, at, f"crash: {describe(kind, payload)}", actor, "bad"))
    elif kind == "session.status":
        row.anomalies.append(Line(event_id, kind, at, f"failed: {_short(payload.get('reason'), 160)}", actor, "bad"))
    elif kind in ("budget.exhausted", "grant.expired"):
        row.anomalies.append(Line(event_id, kind, at, describe(kind, payload), actor, "warn"))
    elif kind == "tool.interrupted":
        row.anomalies.append(Line(event_id, kind, at, f"crash: {describe(kind, payload)}", actor, "bad"))
    elif kind == "session.error":
        row.anomalies.append(Line(event_id, kind, at, f"error: {_short(payload.get('error'), 160)}", actor, "bad"))


def digest_row(*, user: User, session_id: int, window: Window) -> DigestRow | None:
    """One session's row of the digest (after an attestation), or None when the user may not see it."""
    rows = digest(user=user, window=window, scope="all", only=session_id).rows
    return rows[0] if rows else None


# -- "Did I do this work?" -----------------------------------------------------------------------

MINE_LIMIT = 2000  # events listed at most; a longer window is cut with a note


@dataclass
class MineLine:
    event: AuditEvent
    text: str
    approval: str  # how it was authorised, in words
    approved_by: str = ""  # the human, when a human decided


@dataclass
class MineGroup:
    session_id: int | None
    session: AgentSession | None
    grant_id: int | None
    grant: Grant | None
    lines: list[MineLine] = field(default_factory=list)
    model_calls: int = 0
    tokens: int = 0
    by_provenance: dict[str, int] = field(default_factory=dict)


@dataclass
class Mine:
    window: Window
    groups: list[MineGroup]
    total: int
    truncated: bool
    include_model_calls: bool


def _human_decisions(session_ids: list[int]) -> dict[tuple[int, str], list[tuple[int, str, str]]]:
    """(session id, action hash) → [(event id, who, decision)] of the humans' escalation decisions."""
    decisions: dict[tuple[int, str], list[tuple[int, str, str]]] = defaultdict(list)
    if not session_ids:
        return decisions
    rows = (
        AuditEvent.objects.filter(kind="escalation.decided", session_id__in=session_ids)
        .order_by("id")
        .values_list("id", "session_id", "actor_label", "payload")
    )
    for event_id, session_id, who, payload in rows:
        payload = payload or {}
        decisions[(session_id, str(payload.get("action_hash", "")))].append(
            (event_id, who, str(payload.get("decision", "")))
        )
    return decisions


def _approval(event: AuditEvent, decisions) -> tuple[str, str]:
    """(how the action was authorised, the human who decided or "")."""
    provenance = event.provenance
    if event.kind != "tool.call":
        if event.actor_type == AuditEvent.Actor.USER:
            return f"done by {event.actor_label}", event.actor_label
        return PROVENANCE_LABELS.get(provenance, provenance or "—"), ""
    payload = event.payload or {}
    decision = payload.get("decision", "")
    if provenance == "human":
        candidates = [
            d for d in decisions.get((event.session_id, str(payload.get("action_hash", ""))), []) if d[0] < event.id
        ]
        if candidates:
            _, who, verdict = candidates[-1]
            return f"{verdict} by {who}", who
        return "a human decision", ""
    label = PROVENANCE_LABELS.get(provenance, provenance or "—")
    rule = f" {payload.get('rule')}" if payload.get("rule") else ""
    verb = "allowed" if decision == "allow" else "denied" if decision == "deny" else decision or "decided"
    return f"{verb} by {label}{rule}", ""


def actions_on_behalf_of(*, user: User, window: Window, include_model_calls: bool = False) -> Mine:
    """Everything done on ``user``'s delegated authority in the window, grouped by session and grant,
    with how each action was authorised (and by whom, when a human decided)."""
    mine = AuditEvent.objects.filter(on_behalf_of_id=user.pk, created_at__gte=window.since, created_at__lt=window.until)
    model = {
        (m["session_id"], m["grant_id"]): m
        for m in mine.filter(kind="model.call")
        .order_by()
        .values("session_id", "grant_id")
        .annotate(
            n=Count("id"),
            tokens=Sum(Cast(KT("payload__tokens_in"), BigIntegerField()))
            + Sum(Cast(KT("payload__tokens_out"), BigIntegerField())),
        )
    }
    listed = mine if include_model_calls else mine.exclude(kind="model.call")
    events = list(listed.order_by("id")[: MINE_LIMIT + 1])
    truncated = len(events) > MINE_LIMIT
    events = events[:MINE_LIMIT]
    session_ids = sorted({e.session_id for e in events if e.session_id} | {k[0] for k in model if k[0]})
    sessions = AgentSession.objects.select_related("pod", "sto").in_bulk(session_ids)
    grant_ids = {e.grant_id for e in events if e.grant_id} | {k[1] for k in model if k[1]}
    grants = Grant.objects.select_related("delegator").in_bulk(grant_ids)
    decisions = _human_decisions(session_ids)
    groups: dict[tuple[int | None, int | None], MineGroup] = {}

    def group(session_id, grant_id) -> MineGroup:
        key = (session_id, grant_id)
        if key not in groups:
            groups[key] = MineGroup(session_id, sessions.get(session_id), grant_id, grants.get(grant_id))
        return groups[key]

    for event in events:
        approval, who = _approval(event, decisions)
        g = group(event.session_id, event.grant_id)
        g.lines.append(
            MineLine(event=event, text=describe(event.kind, event.payload), approval=approval, approved_by=who)
        )
        if event.kind == "tool.call":
            g.by_provenance[event.provenance or "—"] = g.by_provenance.get(event.provenance or "—", 0) + 1
    for (session_id, grant_id), m in model.items():
        g = group(session_id, grant_id)
        g.model_calls, g.tokens = m["n"], m["tokens"] or 0
    ordered = sorted(
        groups.values(), key=lambda g: (g.session_id or 0, g.grant.version if g.grant else 0, g.grant_id or 0)
    )
    return Mine(
        window=window, groups=ordered, total=len(events), truncated=truncated, include_model_calls=include_model_calls
    )


# -- the audit explorer --------------------------------------------------------------------------

PAGE_SIZE = 100
# Ids and times of events grow together: an event's time is taken under its chain's lock just
# before its row (and id) is inserted, so an event later by more than this margin has a larger id.
# The explorer uses it to start a time-bounded search at the right id, not at the newest event.
ID_TIME_SKEW = timedelta(minutes=5)


@dataclass
class ExplorerFilters:
    session: int | None = None
    pod: str = ""
    sto: str = ""
    delegator: str = ""
    kind: str = ""
    decision: str = ""
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, params) -> ExplorerFilters:
        """Filters from a request's GET parameters; a malformed value is ignored with an error."""
        f = cls()
        for name in ("session", "before"):
            raw = (params.get(name) or "").strip().lstrip("#")
            if raw:
                if raw.isdigit():
                    setattr(f, name, int(raw))
                else:
                    f.errors.append(f"{name}: {raw!r} is not a number")
        for name in ("pod", "sto", "delegator", "kind", "decision"):
            setattr(f, name, (params.get(name) or "").strip()[:100])
        for name in ("since", "until"):
            raw = (params.get(name) or "").strip()
            if raw:
                try:
                    setattr(f, name, parse_time(raw))
                except ValueError as exc:
                    f.errors.append(f"{name}: {exc}")
        return f

    def query(self, **override) -> str:
        """The filters as a query string (``before`` replaced by ``override``)."""
        from urllib.parse import urlencode

        values = {
            "session": self.session or "",
            "pod": self.pod,
            "sto": self.sto,
            "delegator": self.delegator,
            "kind": self.kind,
            "decision": self.decision,
            "since": _iso_minutes(self.since) if self.since else "",
            "until": _iso_minutes(self.until) if self.until else "",
        }
        values.update(override)
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})

    @property
    def active(self) -> bool:
        return any([self.session, self.pod, self.sto, self.delegator, self.kind, self.decision, self.since, self.until])


@dataclass
class ExplorerPage:
    events: list[AuditEvent]
    next_before: int | None
    filters: ExplorerFilters
    errors: list[str]
    sessions: dict[int, AgentSession]


def _kind_q(kind: str) -> Q:
    """``tool.call`` exactly; ``escalation.`` or ``escalation.*`` every kind starting with it."""
    if kind.endswith("*"):
        return Q(kind__startswith=kind[:-1])
    if kind.endswith("."):
        return Q(kind__startswith=kind)
    return Q(kind=kind)


def explore(*, user: User, filters: ExplorerFilters, page_size: int = PAGE_SIZE) -> ExplorerPage:
    """One page of the events ``user`` may see that match ``filters``, newest first, keyset-paginated
    by id (``filters.before``: the smallest id of the previous page). Never OFFSET."""
    errors = list(filters.errors)
    events = events_visible_to(user=user)
    if filters.session:
        events = events.filter(session_id=filters.session)
    if filters.pod:
        pod_id = Pod.objects.filter(slug=filters.pod).values_list("pk", flat=True).first()
        if pod_id is None:
            errors.append(f"pod: no pod {filters.pod!r}")
            events = events.none()
        else:
            events = events.filter(pod_id=pod_id)
    if filters.sto:
        sto = User.objects.filter(username=filters.sto).first()
        if sto is None:
            errors.append(f"STO: no user {filters.sto!r}")
            events = events.none()
        else:
            owned = list(AgentSession.objects.filter(sto=sto).values_list("pk", flat=True))
            events = events.filter(session_id__in=owned)
    if filters.delegator:
        delegator = User.objects.filter(username=filters.delegator).first()
        if delegator is None:
            errors.append(f"delegator: no user {filters.delegator!r}")
            events = events.none()
        else:
            events = events.filter(on_behalf_of_id=delegator.pk)
    if filters.kind:
        events = events.filter(_kind_q(filters.kind))
    if filters.decision:
        events = events.filter(_payload_is("decision", filters.decision))
    if filters.since:
        events = events.filter(created_at__gte=filters.since)
        floor = (
            AuditEvent.objects.filter(created_at__lt=filters.since - ID_TIME_SKEW)
            .order_by("-created_at")
            .values_list("id", flat=True)
            .first()
        )
        if floor is not None:
            events = events.filter(id__gt=floor)
    if filters.until:
        events = events.filter(created_at__lt=filters.until)
        bound = (
            AuditEvent.objects.filter(created_at__gte=filters.until + ID_TIME_SKEW)
            .order_by("created_at")
            .values_list("id", flat=True)
            .first()
        )
        if bound is not None:  # lets the database walk ids down from ``until`` instead of from the newest
            events = events.filter(id__lt=bound)
    if filters.before:
        events = events.filter(id__lt=filters.before)
    page = list(events.order_by("-id")[: page_size + 1])
    next_before = page[page_size - 1].id if len(page) > page_size else None
    page = page[:page_size]
    for event in page:
        event.summary = describe(event.kind, event.payload)
    session_ids = {e.session_id for e in page if e.session_id}
    sessions = AgentSession.objects.select_related("pod", "sto").in_bulk(session_ids) if session_ids else {}
    return ExplorerPage(events=page, next_before=next_before, filters=filters, errors=errors, sessions=sessions)


DECISION_CHOICES = [
    ("", "Any"),
    ("allow", "allow (tool call)"),
    ("deny", "deny"),
    ("ask", "ask (tool call)"),
    ("allow-once", "allow once (human)"),
    ("allow-always", "allow always (human)"),
]


def known_kinds() -> list[str]:
    """Kinds to offer in the explorer's filter (the documented ones; any other can be typed)."""
    return [
        "session.launched",
        "session.status",
        "session.iteration",
        "session.paused",
        "session.resumed",
        "session.cancelled",
        "session.sto_reassigned",
        "session.attested",
        "session.action_refused",
        "grant.issued",
        "grant.revoked",
        "grant.expired",
        "model.call",
        "model.error",
        "tool.call",
        "tool.interrupted",
        "git.commit",
        "tests.run",
        "escalation.",
        "escalation.opened",
        "escalation.decided",
        "escalation.expired",
        "escalation.refused",
        "budget.exhausted",
        "review.",
        "fleet.",
        "pod.",
    ]


# -- one event -----------------------------------------------------------------------------------


@dataclass
class EventDetail:
    event: AuditEvent
    payload_json: str
    hash_ok: bool
    previous_id: int | None
    next_id: int | None
    chain_length: int
    checkpoint: Checkpoint | None
    session: AgentSession | None
    text: str


def event_detail(*, event: AuditEvent) -> EventDetail:
    """An event with its neighbours in its chain, whether its stored hash is what its fields hash
    to, and the first signed checkpoint that covers it."""
    neighbours = AuditEvent.objects.filter(chain=event.chain)
    previous_id = neighbours.filter(seq=event.seq - 1).values_list("id", flat=True).first()
    next_id = neighbours.filter(seq=event.seq + 1).values_list("id", flat=True).first()
    length = neighbours.aggregate(m=Max("seq"))["m"] or event.seq
    checkpoint = None
    for cp in Checkpoint.objects.filter(created_at__gte=event.created_at).order_by("id")[:200]:
        head = (cp.heads or {}).get(event.chain)
        if head and int(head[0]) >= event.seq:
            checkpoint = cp
            break
    session = None
    if event.session_id:
        session = AgentSession.objects.select_related("pod", "sto").filter(pk=event.session_id).first()
    return EventDetail(
        event=event,
        payload_json=json.dumps(event.payload, indent=2, sort_keys=True, ensure_ascii=False),
        hash_ok=event_hash(event.prev_hash, event_fields(event)) == event.hash,
        previous_id=previous_id,
        next_id=next_id,
        chain_length=length,
        checkpoint=checkpoint,
        session=session,
        text=describe(event.kind, event.payload),
    )


# -- the night at a glance -----------------------------------------------------------------------

LABEL_W = 250  # px for the lane labels
PLOT_W = 1000  # px for the time axis
LANE_H = 12
LANE_GAP = 3
POD_H = 20
AXIS_H = 24
MAX_LANES = 400
TIMELINE_KINDS = (
    "session.status",
    "git.commit",
    "budget.exhausted",
    "tool.interrupted",
    "session.error",
    "escalation.opened",
    "grant.expired",
)
STATUS_LABELS = dict(Status.choices)


@dataclass
class Segment:
    x: float
    w: float
    status: str
    title: str
    href: str = ""


@dataclass
class Marker:
    x: float
    cls: str  # commit / deny / budget / fail
    title: str
    href: str
    y: float = 0.0  # the lane's middle

    @property
    def shape(self) -> str:
        return "circle" if self.cls in ("commit", "fail") else "rect"

    @property
    def r(self) -> float:
        return 4.0 if self.cls == "commit" else 3.5

    @property
    def rect(self) -> tuple[float, float, float, float]:
        """x, y, width, height of a square (denial) or a bar across the lane (budget stop)."""
        if self.cls == "budget":
            return self.x - 1.5, self.y - LANE_H / 2 - 2, 3.0, LANE_H + 4.0
        return self.x - 3.5, self.y - 3.5, 7.0, 7.0

    @property
    def rect_x(self) -> float:
        return round(self.rect[0], 1)

    @property
    def rect_y(self) -> float:
        return round(self.rect[1], 1)

    @property
    def rect_w(self) -> float:
        return self.rect[2]

    @property
    def rect_h(self) -> float:
        return self.rect[3]


@dataclass
class Span:
    x: float
    w: float
    cls: str  # "esc" or "esc open"
    title: str
    href: str
    y: float = 0.0
    h: float = LANE_H + 2.0


@dataclass
class LaneView:
    session: AgentSession
    y: float
    label: str
    segments: list[Segment] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)

    @property
    def mid(self) -> float:
        return self.y + LANE_H / 2

    @property
    def text_y(self) -> float:
        return self.y + LANE_H - 2


@dataclass
class PodBlock:
    pod: Pod
    y: float
    lanes: list[LaneView]

    @property
    def text_y(self) -> float:
        return self.y + POD_H - 6


@dataclass
class Tick:
    x: float
    label: str
    major: bool


@dataclass
class Timeline:
    window: Window
    pods: list[PodBlock]
    ticks: list[Tick]
    width: int
    height: int
    lane_count: int
    truncated: int  # sessions left out beyond MAX_LANES
    now_x: float | None
    label_w: int = LABEL_W
    plot_w: int = PLOT_W
    lane_h: int = LANE_H
    axis_h: int = AXIS_H

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for block in self.pods:
            for lane in block.lanes:
                for m in lane.markers:
                    counts[m.cls] += 1
                counts["esc"] += len(lane.spans)
        return dict(counts)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    return f"{hours}h{minutes:02d}" if hours else f"{minutes} min" if minutes else f"{seconds} s"


def _hm(value: datetime, tz=None) -> str:
    local = value.astimezone(tz or timezone.get_current_timezone())
    return f"{local.hour:02d}:{local.minute:02d}"


def _ticks(window: Window, x) -> list[Tick]:
    hours = window.seconds / 3600
    step = 1 if hours <= 18 else 2 if hours <= 36 else 6 if hours <= 96 else 24
    local = timezone.localtime(window.since)
    first = local.replace(minute=0, second=0, microsecond=0)
    if first < local:
        first += timedelta(hours=1)
    while first.hour % step:
        first += timedelta(hours=1)
    ticks = []
    t = first
    while t <= timezone.localtime(window.until):
        major = t.hour == 0 or not ticks
        label = t.strftime("%a %H:%M") if major else t.strftime("%H:%M")
        ticks.append(Tick(x(t), label, major))
        t = timezone.localtime(t + timedelta(hours=step))
    return ticks


def timeline(*, user: User, window: Window, pod: str = "", event_url=None, session_url=None) -> Timeline:
    """Swimlanes of the sessions ``user`` may see that lived during ``window``, grouped by pod:
    status over time (from ``session.status`` events), commits, denials, budget stops, failures,
    and escalation waits (from the question until a human answered, or until now)."""
    tz = timezone.get_current_timezone()
    event_url = event_url or (lambda event_id: f"/audit/event/{event_id}")
    session_url = session_url or (lambda session_id: f"/sessions/{session_id}/")
    now = timezone.now()
    sessions = (
        sessions_visible_to(user=user)
        .filter(created_at__lt=window.until)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=window.since))
    )
    if pod:
        sessions = sessions.filter(pod__slug=pod)
    sessions = list(sessions.order_by("pod__name", "pod_id", "priority", "pk")[: MAX_LANES + 1])
    truncated = 0
    if len(sessions) > MAX_LANES:
        total = (
            sessions_visible_to(user=user)
            .filter(created_at__lt=window.until)
            .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=window.since))
        )
        truncated = (total.filter(pod__slug=pod) if pod else total).count() - MAX_LANES
        sessions = sessions[:MAX_LANES]
    ids = [s.pk for s in sessions]
    span = window.seconds
    end_at = min(window.until, now)

    def x(at: datetime) -> float:
        offset = (at - window.since).total_seconds()
        return round(LABEL_W + max(0.0, min(1.0, offset / span)) * PLOT_W, 1)

    # status at the start of the window: the last status change before it
    last_before = (
        AuditEvent.objects.filter(kind="session.status", session_id__in=ids, created_at__lt=window.since)
        .order_by()
        .values("session_id")
        .annotate(m=Max("id"))
        .values_list("m", flat=True)
    )
    start_status = {
        sid: (payload or {}).get("to", Status.QUEUED)
        for sid, payload in AuditEvent.objects.filter(pk__in=list(last_before)).values_list("session_id", "payload")
    }
    # one query per family, each through the (kind, created_at) index
    in_window = AuditEvent.objects.filter(session_id__in=ids, created_at__gte=window.since, created_at__lt=window.until)
    fields = ("id", "session_id", "kind", "created_at", "actor_label", "payload")
    events = sorted(
        [
            *in_window.filter(kind__in=TIMELINE_KINDS).values_list(*fields),
            *in_window.filter(Q(kind="model.error") & _payload_is("final", True)).values_list(*fields),
            *in_window.filter(Q(kind="tool.call") & _payload_is("decision", "deny")).values_list(*fields),
        ]
    )
    by_session: dict[int, list[tuple]] = defaultdict(list)
    for row in events:
        by_session[row[1]].append(row)
    escalations = (
        Escalation.objects.filter(session_id__in=ids, created_at__lt=window.until)
        .filter(Q(decided_at__isnull=True) | Q(decided_at__gte=window.since))
        .select_related("decided_by")
        .order_by("created_at")
    )
    esc_by_session: dict[int, list[Escalation]] = defaultdict(list)
    for e in escalations:
        esc_by_session[e.session_id].append(e)
    opened_events = {}  # escalation id -> the event that opened it
    for rows in by_session.values():
        for event_id, _sid, kind, _at, _actor, payload in rows:
            if kind == "escalation.opened":
                opened_events[(payload or {}).get("escalation")] = event_id

    blocks: list[PodBlock] = []
    y = AXIS_H + 4
    for s in sessions:
        if not blocks or blocks[-1].pod.pk != s.pod_id:
            blocks.append(PodBlock(pod=s.pod, y=y, lanes=[]))
            y += POD_H
        lane = LaneView(session=s, y=y, label=_short(f"#{s.pk} {s.name}", 38))
        y += LANE_H + LANE_GAP
        blocks[-1].lanes.append(lane)
        # status segments
        cursor = max(window.since, s.created_at)
        status = start_status.get(s.pk, Status.QUEUED)
        opened_by = None
        changes = [r for r in by_session.get(s.pk, ()) if r[2] == "session.status"]
        for event_id, _sid, _kind, at, _actor, payload in changes:
            _segment(lane, x, cursor, at, status, opened_by, event_url, tz)
            status, cursor, opened_by = (payload or {}).get("to", status), at, event_id
        if cursor < end_at:
            _segment(lane, x, cursor, end_at, status, opened_by, event_url, tz)
        # markers
        for event_id, _sid, kind, at, _actor, payload in by_session.get(s.pk, ()):
            payload = payload or {}
            when = f"{_hm(at, tz)} — "
            if kind == "git.commit":
                lane.markers.append(Marker(x(at), "commit", when + describe(kind, payload), event_url(event_id)))
            elif kind == "tool.call":
                lane.markers.append(
                    Marker(x(at), "deny", when + "denied: " + describe(kind, payload), event_url(event_id))
                )
            elif kind == "budget.exhausted" or kind == "grant.expired":
                lane.markers.append(Marker(x(at), "budget", when + describe(kind, payload), event_url(event_id)))
            elif kind in ("tool.interrupted", "session.error", "model.error"):
                lane.markers.append(Marker(x(at), "fail", when + describe(kind, payload), event_url(event_id)))
            elif kind == "session.status" and payload.get("to") == Status.FAILED:
                lane.markers.append(
                    Marker(x(at), "fail", when + "failed: " + _short(payload.get("reason"), 140), event_url(event_id))
                )
        # escalation waits
        for e in esc_by_session.get(s.pk, ()):
            start = max(e.created_at, window.since)
            stop = max(start, min(e.decided_at or end_at, end_at))
            who = (
                f"{e.get_state_display().lower()} by {e.decided_by.username}"
                if e.decided_by
                else e.get_state_display().lower()
            )
            waited = (e.decided_at or now) - e.created_at
            title = (
                f"{_hm(e.created_at, tz)} asked: {_short(e.action, 100)} — "
                f"{who if e.state != Escalation.State.OPEN else 'still open'}"
                f"{' at ' + _hm(e.decided_at, tz) if e.decided_at else ''} (waited {_duration(waited.total_seconds())})"
            )
            opener = opened_events.get(e.pk)
            href = event_url(opener) if opener else f"/audit/?session={s.pk}&kind=escalation."
            lane.spans.append(
                Span(
                    x(start),
                    max(2.0, round(x(stop) - x(start), 1)),
                    "esc open" if e.state == Escalation.State.OPEN else "esc",
                    title,
                    href,
                    y=lane.y - 1,
                )
            )
        for m in lane.markers:
            m.y = lane.mid
    now_x = x(now) if window.since <= now <= window.until else None
    return Timeline(
        window=window,
        pods=blocks,
        ticks=_ticks(window, x),
        width=LABEL_W + PLOT_W + 10,
        height=int(y + 8),
        lane_count=len(sessions),
        truncated=truncated,
        now_x=now_x,
    )


def _segment(lane: LaneView, x, start: datetime, stop: datetime, status: str, event_id, event_url, tz) -> None:
    if stop <= start and lane.segments:
        return
    x0, x1 = x(start), x(stop)
    label = STATUS_LABELS.get(status, status)
    title = f"{label} {_hm(start, tz)}–{_hm(stop, tz)} ({_duration((stop - start).total_seconds())})"
    lane.segments.append(
        Segment(x0, max(1.0, round(x1 - x0, 1)), status, title, event_url(event_id) if event_id else "")
    )


# -- explaining a commit -------------------------------------------------------------------------

SHA_RE = re.compile(r"^[0-9a-fA-F]{4,64}$")
TRAILER_KEYS = ("Agent-Session", "Delegated-By", "Grant")
GIT_TIMEOUT_S = 15


class CommitNotFound(LookupError):
    """The sha names no agent commit we know of (message says why, for a human)."""


@dataclass
class Approval:
    event: AuditEvent
    text: str
    approval: str
    approved_by: str
    in_commit: bool  # after the session's previous commit: part of what this commit contains


@dataclass
class CommitExplanation:
    sha: str
    message: str = ""
    author: str = ""
    authored_at: str = ""
    repository: str = ""
    trailers: dict[str, str] = field(default_factory=dict)
    session_id: int | None = None
    session: AgentSession | None = None
    delegator: str = ""
    grant_id: int | None = None
    grant: Grant | None = None
    commit_event: AuditEvent | None = None
    approvals: list[Approval] = field(default_factory=list)
    human_decisions: list[AuditEvent] = field(default_factory=list)
    grant_events: list[AuditEvent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # mismatches and what could not be read

    @property
    def agent(self) -> str:
        if self.session is None:
            return f"agent #{self.session_id}" if self.session_id else "unknown agent"
        return f"agent #{self.session.pk} ({self.session.model})"

    @property
    def subject(self) -> str:
        return _first_line(self.message)


def _git_show(repo_path: Path, sha: str) -> dict:
    """The commit's author, date, message and trailers (GitPython, with a timeout)."""
    sep = "\x1f"
    out = git_ops.run(
        repo_path,
        "show",
        "-s",
        f"--format=%H{sep}%an <%ae>{sep}%aI{sep}%(trailers:only=true,unfold=true){sep}%B",
        sha,
        "--",
        what=f"reading commit {sha[:12]}",
        timeout_s=GIT_TIMEOUT_S,
    )
    full, author, date, trailer_text, message = (out.split(sep, 4) + ["", "", "", "", ""])[:5]
    trailers: dict[str, str] = {}
    for line in trailer_text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip():
            trailers.setdefault(key.strip(), value.strip())
    return {"sha": full.strip(), "author": author, "date": date, "trailers": trailers, "message": message.strip()}


def _resolve_in(repo_path: Path, sha: str) -> str | None:
    try:
        git_ops.check_repository(repo_path)
    except git_ops.GitOpsError:
        return None
    return git_ops.resolve(repo_path, sha)


def commit_explain(*, sha: str, user: User | None = None) -> CommitExplanation:
    """Who is behind an agent's commit: its session, agent, delegator and grant (from the commit's
    trailers and the audit log), and the approvals of the session's actions up to the commit.

    ``sha`` may be abbreviated (4+ hex digits). The commit is found through the ``git.commit``
    events of the audit log (their payload's sha), else in the registered repositories. With a
    ``user``, a session they may not see raises PermissionError. CommitNotFound says why otherwise.
    """
    sha = (sha or "").strip()
    if not SHA_RE.match(sha):
        raise CommitNotFound(f"{sha!r} is not a commit sha: give 4 to 40 hexadecimal digits")
    sha = sha.lower()
    found = list(AuditEvent.objects.filter(kind="git.commit", payload__sha__startswith=sha).order_by("id")[:20])
    full_shas = sorted({str(e.payload.get("sha", "")) for e in found})
    if len(full_shas) > 1:
        raise CommitNotFound(f"{sha} is ambiguous: it starts {', '.join(s[:12] for s in full_shas)}; give more digits")
    explanation = CommitExplanation(sha=full_shas[0] if full_shas else sha)
    commit_event = found[-1] if found else None
    info = None
    if commit_event is not None:
        explanation.commit_event = commit_event
        explanation.session_id = commit_event.session_id
        session = (
            AgentSession.objects.select_related("repository", "pod", "sto").filter(pk=commit_event.session_id).first()
        )
        if session is not None:
            repo_path = Path(session.repository.path)
            full = _resolve_in(repo_path, explanation.sha)
            if full:
                info = _git_show(repo_path, full)
                explanation.repository = session.repository.name
            else:
                explanation.notes.append(
                    f"the commit is no longer in {session.repository.name} ({repo_path}): shown from the audit log only"
                )
    else:
        for repository in Repository.objects.order_by("pk"):
            full = _resolve_in(Path(repository.path), sha)
            if full:
                info = _git_show(Path(repository.path), full)
                explanation.repository = repository.name
                break
        if info is None:
            raise CommitNotFound(
                f"no commit {sha} in the audit log's git.commit events or in any registered repository"
            )
        trailer_session = info["trailers"].get("Agent-Session", "")
        if not trailer_session.isdigit():
            raise CommitNotFound(
                f"commit {info['sha'][:12]} in {explanation.repository} has no Agent-Session trailer: no agent made it"
            )
        explanation.session_id = int(trailer_session)
        explanation.commit_event = (
            AuditEvent.objects.filter(kind="git.commit", session_id=explanation.session_id, payload__sha=info["sha"])
            .order_by("id")
            .first()
        )
        if explanation.commit_event is None:
            explanation.notes.append("no git.commit event records this commit in the audit log")
    if info is not None:
        explanation.sha = info["sha"]
        explanation.message, explanation.author, explanation.authored_at = info["message"], info["author"], info["date"]
        explanation.trailers = info["trailers"]
    elif commit_event is not None:
        explanation.message = str(commit_event.payload.get("message", ""))
    explanation.session = (
        AgentSession.objects.select_related("repository", "pod", "sto").filter(pk=explanation.session_id).first()
        if explanation.session_id
        else None
    )
    if user is not None and explanation.session_id is not None:
        visible = visible_session_ids(user=user)
        if visible is not None and explanation.session_id not in visible:
            raise PermissionError("This commit belongs to a session of a pod you are not a member of.")
    _explain_authority(explanation)
    return explanation


def _explain_authority(x: CommitExplanation) -> None:
    trailers = x.trailers
    event = x.commit_event
    if trailers.get("Agent-Session") and x.session_id and trailers["Agent-Session"] != str(x.session_id):
        x.notes.append(f"the Agent-Session trailer says {trailers['Agent-Session']}, the audit log says {x.session_id}")
    grant_id = trailers.get("Grant", "")
    x.grant_id = int(grant_id) if grant_id.isdigit() else (event.grant_id if event else None)
    if event and x.grant_id and event.grant_id and event.grant_id != x.grant_id:
        x.notes.append(f"the Grant trailer says {x.grant_id}, the audit log says {event.grant_id}")
    x.grant = (
        Grant.objects.select_related("delegator", "issued_by").filter(pk=x.grant_id).first() if x.grant_id else None
    )
    if x.grant is not None and x.session_id and x.grant.session_id != x.session_id:
        x.notes.append(f"grant {x.grant.pk} belongs to session #{x.grant.session_id}, not #{x.session_id}")
    x.delegator = (
        trailers.get("Delegated-By")
        or (event.on_behalf_of_label if event else "")
        or (x.grant.delegator.username if x.grant else "")
    )
    if x.grant is not None and trailers.get("Delegated-By") and trailers["Delegated-By"] != x.grant.delegator.username:
        x.notes.append(
            f"the Delegated-By trailer says {trailers['Delegated-By']}, grant {x.grant.pk} was delegated by {x.grant.delegator.username}"
        )
    if not x.session_id:
        return
    history = AuditEvent.objects.filter(session_id=x.session_id)
    if event is not None:
        history = history.filter(id__lte=event.id)
    elif x.authored_at:
        try:
            history = history.filter(created_at__lte=datetime.fromisoformat(x.authored_at) + timedelta(seconds=1))
        except ValueError:
            x.notes.append(f"cannot read the commit's date {x.authored_at!r}")
    previous_commit = None
    if event is not None:
        previous_commit = (
            AuditEvent.objects.filter(session_id=x.session_id, kind="git.commit", id__lt=event.id)
            .order_by("-id")
            .values_list("id", flat=True)
            .first()
        )
    decisions = _human_decisions([x.session_id])
    for e in history.filter(kind="tool.call").order_by("id"):
        approval, who = _approval(e, decisions)
        x.approvals.append(
            Approval(
                e,
                describe(e.kind, e.payload),
                approval,
                who,
                in_commit=previous_commit is None or e.id > previous_commit,
            )
        )
    x.human_decisions = list(history.filter(kind__in=("escalation.decided", "escalation.expired")).order_by("id"))
    x.grant_events = list(history.filter(kind__in=("grant.issued", "grant.revoked", "grant.expired")).order_by("id"))


def explanation_text(x: CommitExplanation) -> str:
    """The explanation as plain text (what ``manage.py audit_explain`` prints)."""
    out = [f"commit {x.sha}"]
    if x.subject:
        out.append(f"  {x.subject}")
    if x.author:
        out.append(f"  author {x.author}, {x.authored_at}" + (f", in {x.repository}" if x.repository else ""))
    s = x.session
    if s is not None:
        out.append(
            f"session  #{s.pk} {s.name} (pod {s.pod.name}, STO {s.sto.username}, status {s.status}, branch {s.branch})"
        )
    else:
        out.append(f"session  #{x.session_id} (no longer in the database)")
    out.append(f"agent    {x.agent}")
    out.append(f"on the authority of  {x.delegator or 'unknown'}")
    g = x.grant
    if g is not None:
        window = f"{timezone.localtime(g.not_before):%Y-%m-%d %H:%M}–{timezone.localtime(g.expires_at):%Y-%m-%d %H:%M}"
        state = (
            f"revoked {timezone.localtime(g.revoked_at):%Y-%m-%d %H:%M} ({g.revoke_reason})"
            if g.revoked_at
            else "in force"
        )
        out.append(
            f"grant    #{g.pk} version {g.version}, mode {g.mode}, delegated by {g.delegator.username}, "
            f"issued by {g.issued_by.username}, valid {window}, {state}"
        )
        out.append(f"  allow: {', '.join(g.allow) or '—'}")
        out.append(f"  ask:   {', '.join(g.ask) or '—'}")
        out.append(f"  deny:  {', '.join(g.deny) or '—'}")
    else:
        out.append(f"grant    #{x.grant_id} (not found)" if x.grant_id else "grant    unknown")
    if x.commit_event is not None:
        out.append(
            f"recorded as audit event #{x.commit_event.pk} ({x.commit_event.chain}#{x.commit_event.seq}) "
            f"at {timezone.localtime(x.commit_event.created_at):%Y-%m-%d %H:%M:%S}"
        )
    in_commit = [a for a in x.approvals if a.in_commit]
    out.append(f"tool calls behind it ({len(in_commit)} since the previous commit, {len(x.approvals)} in all):")
    for a in in_commit:
        out.append(f"  #{a.event.pk} {timezone.localtime(a.event.created_at):%H:%M:%S} {a.text}  [{a.approval}]")
    if x.human_decisions:
        out.append("human decisions:")
        for e in x.human_decisions:
            who = e.actor_label if e.actor_type == AuditEvent.Actor.USER else "nobody (expired)"
            out.append(f"  #{e.pk} {timezone.localtime(e.created_at):%H:%M:%S} {who}: {describe(e.kind, e.payload)}")
    else:
        out.append("human decisions: none")
    for note in x.notes:
        out.append(f"note: {note}")
    return "\n".join(out)
