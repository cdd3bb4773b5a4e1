"""The morning digest: one row per session of the viewer's that did something in the window or
waits for a human now, the sessions needing a decision first.

Everything is computed from the audit log itself, with a few aggregate queries over the window
(``GROUP BY session_id, kind``), never a query per session per kind: the digest stays fast over
tens of thousands of events. Diff stats come from git (``reviews.selectors.diff_stats``: memoised
by commit shas, computed in parallel, with timeouts).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.db.models import BigIntegerField, Count, F, FloatField, Max, Q, QuerySet, Sum
from django.db.models.expressions import Window as SqlWindow
from django.db.models.functions import RowNumber

from agents.models import AgentSession, Escalation, Grant, Status, User
from agents.selectors import sees_everything, sessions_visible_to
from agents.windows import Window
from audit.models import AuditEvent
from reviews import git_ops
from reviews.digest.events import PayloadValue, describe, first_line, payload_is, short

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


def _model_sum(key: str, output) -> Sum:
    return Sum(PayloadValue(key, output), filter=Q(kind="model.call"))


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
    in_window = AuditEvent.objects.filter(created_at__gte=window.start, created_at__lt=window.end)
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
            unknown=Count("id", filter=Q(kind="model.call") & payload_is("cost_known", False)),
            denied=Count("id", filter=Q(kind="tool.call") & payload_is("decision", "deny")),
            passed=Count("id", filter=Q(kind="tests.run") & (payload_is("passed", True) | payload_is("exit_code", 0))),
            final=Count("id", filter=Q(kind="model.error") & payload_is("final", True)),
            failed=Count("id", filter=Q(kind="session.status") & payload_is("to", str(Status.FAILED))),
            last_denied=Max("id", filter=Q(kind="tool.call") & payload_is("decision", "deny")),
            last_final=Max("id", filter=Q(kind="model.error") & payload_is("final", True)),
            last_failed=Max("id", filter=Q(kind="session.status") & payload_is("to", str(Status.FAILED))),
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
        .filter(Q(created_at__gte=window.start, created_at__lt=window.end) | Q(state=Escalation.State.OPEN))
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
                short(first_line(payload.get("message")), 120),
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
        row.anomalies.append(Line(event_id, kind, at, f"failed: {short(payload.get('reason'), 160)}", actor, "bad"))
    elif kind in ("budget.exhausted", "grant.expired"):
        row.anomalies.append(Line(event_id, kind, at, describe(kind, payload), actor, "warn"))
    elif kind == "tool.interrupted":
        row.anomalies.append(Line(event_id, kind, at, f"crash: {describe(kind, payload)}", actor, "bad"))
    elif kind == "session.error":
        row.anomalies.append(Line(event_id, kind, at, f"error: {short(payload.get('error'), 160)}", actor, "bad"))


def digest_row(*, user: User, session_id: int, window: Window) -> DigestRow | None:
    """One session's row of the digest (after an attestation), or None when the user may not see it."""
    rows = digest(user=user, window=window, scope="all", only=session_id).rows
    return rows[0] if rows else None
