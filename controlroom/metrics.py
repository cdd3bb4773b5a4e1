"""Outcome metrics for leaders: accepted work, failure, cost and supervision load, for a time window,
overall and grouped by pod, by Single Task Owner and by task type.

Pure selectors over the database: every call reads the current rows (no cache, nothing that can go
stale). The dashboard (``controlroom/dashboard_views.py``) and ``manage.py metrics`` both call
``fleet_metrics(...)``, so the page and the command always show the same figures.

Timestamps (all from the database, never from ``review_state``):

- **created** — ``AgentSession.created_at``.
- **approved** — ``created_at`` of the session's first ``Review`` with decision ``approve``.
- **rejected** — ``created_at`` of its first ``reject`` Review.
- **reverted** — ``created_at`` of its first ``revert`` Review. *Reverted within 14 days* means
  ``reverted - approved <= 14 days``; a later revert does not un-accept the work.
- **cancelled** — ``finished_at`` of a session whose status is ``cancelled`` and which has neither an
  approve nor a reject Review (rejecting an unfinished session cancels it: it counts as rejected).
- **closed** — approved, else rejected, else cancelled: the first that applies. A session is
  *closed in the window* when that timestamp is in it. Failed or succeeded sessions nobody has
  reviewed are not closed (their work still awaits a decision).
- **accepted** — approved in the window and not reverted within 14 days (as of now: an approval
  younger than 14 days counts as accepted until someone reverts it).
- **first review** — the session's earliest Review (by ``created_at``, then id).
- **escalation requested / decided** — ``Escalation.created_at`` / ``Escalation.decided_at``.
  Escalations the grant denied at once (``on_unanswered=deny``: state ``denied`` with nobody as the
  decider) asked no human and are left out of every metric. An escalation that expired unanswered
  counts with its expiry as the decision time.
- **status time** — from ``session.status`` audit events (payload ``to``): a session is ``queued``
  from ``created`` until its first event, then in each event's ``to`` status until the next event.

A window is half-open, ``[start, end)``. Groups use a session's *current* pod, STO and task type.

The ten metrics (``Metrics`` fields) are defined on the fields below; every figure carries its n.
Proportions carry a 95% Wilson score interval; every figure but throughput (a count) is flagged
``small_sample`` when n < 20 (``SMALL_SAMPLE``). Percentiles interpolate linearly between closest
ranks (Hyndman & Fan type 7, as numpy's default and Excel's PERCENTILE.INC).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from statistics import NormalDist
from typing import cast

from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents.models import AgentSession, Escalation, Pod, Status, TaskType
from agents.windows import Window
from audit.models import AuditEvent
from reviews.models import Review

SMALL_SAMPLE = 20
REVERT_HORIZON = timedelta(days=14)
CONFIDENCE = 0.95
WINDOW_PRESETS = ("7d", "30d", "90d")
MAX_WINDOW_DAYS = 730
MIN_TREND_WEEKS = 8
_IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's variable limit

RUNNING_STATUSES = frozenset({Status.RUNNING})
QUEUED_STATUSES = frozenset({Status.QUEUED})
# Time in these statuses is time the work waits on a human: a question to answer, a stop switch
# to lift, or finished work (succeeded, failed, cancelled) to review.
WAITING_STATUSES = frozenset(
    {
        Status.NEEDS_APPROVAL,
        Status.BLOCKED,
        Status.PAUSED,
        Status.SUCCEEDED,
        Status.FAILED,
        Status.CANCELLED,
    }
)


# --- statistics -------------------------------------------------------------------------------------


def wilson_interval(*, successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (Wilson 1927; Newcombe 1998, method 3).

    With p = successes/n and z the two-sided normal quantile of ``confidence``:
    centre = (p + z²/2n) / (1 + z²/n), half-width = z/(1 + z²/n) · sqrt(p(1-p)/n + z²/4n²).
    None when n is 0 (no interval exists)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if n == 0:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = (z / denominator) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th quantile (0..1) with linear interpolation between closest ranks (type 7):
    h = (n-1)·q, result = x[floor h] + (h - floor h)·(x[floor h + 1] - x[floor h]). None if empty."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


# --- figures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One number with its sample size. ``value`` is None when it is undefined (nothing to divide by).

    ``unit``: ``ratio`` (0..1), ``per_week``, ``usd``, ``tokens`` or ``per_accepted``.
    ``low``/``high``: the 95% Wilson interval, for proportions only."""

    key: str
    label: str
    unit: str
    value: float | None
    n: int
    numerator: float = 0.0
    denominator: float = 0.0
    low: float | None = None
    high: float | None = None
    small_sample: bool = False
    note: str = ""


@dataclass(frozen=True)
class Spread:
    """A distribution of durations in seconds: median and one upper percentile (85th or 90th)."""

    key: str
    label: str
    n: int
    median: float | None
    upper: float | None
    upper_q: int
    total: float = 0.0
    small_sample: bool = False
    note: str = ""


@dataclass(frozen=True)
class LeadTime:
    """approved - created of accepted sessions, and how that time divides into the agent running,
    the work waiting on humans, and the session queued (waiting for capacity, neither of the two).

    Each part is its own distribution over the same sessions (medians of parts do not add up to
    the median of the whole); ``waiting_share`` is the sum of waiting time over the sum of lead time."""

    total: Spread
    running: Spread
    waiting: Spread
    queued: Spread
    waiting_share: Figure


@dataclass(frozen=True)
class Metrics:
    """The ten outcome metrics of one group (or the whole fleet) in one window.

    1. ``accepted_throughput`` — accepted sessions per week: accepted / (window days / 7); n = accepted.
    2. ``acceptance_yield`` — accepted / sessions closed in the window (approved, rejected or cancelled).
    3. ``first_pass_acceptance`` — sessions whose first review (in the window) is an approval /
       sessions whose first review is in the window.
    4. ``revert_rate`` — sessions approved in the window and reverted within 14 days / approved in the window.
    5. ``lead_time`` — approved - created of accepted sessions: median and 85th percentile, split into
       running, waiting on humans (needs_approval, blocked, paused, and succeeded/failed/cancelled
       until the approval) and queued.
    6. ``escalation_response`` — decided - requested of escalations requested in the window (open
       ones: now - requested): median and 90th percentile.
    7. ``autonomy_rate`` — accepted sessions that never escalated / accepted.
    8. ``cost_per_accepted`` — model cost (``cost_usd``) of the sessions closed in the window /
       accepted; ``tokens_per_accepted`` likewise with tokens_in + tokens_out.
    9. ``wasted_spend_share`` — cost of the sessions closed in the window that were rejected,
       cancelled or reverted within 14 days / cost of all sessions closed in the window; n = closed.
    10. ``supervision_load`` — (escalations requested + reject reviews + request-changes reviews, all
        in the window) / accepted.
    """

    group: str
    key: str
    label: str
    accepted_throughput: Figure
    acceptance_yield: Figure
    first_pass_acceptance: Figure
    revert_rate: Figure
    lead_time: LeadTime
    escalation_response: Spread
    autonomy_rate: Figure
    cost_per_accepted: Figure
    tokens_per_accepted: Figure
    wasted_spend_share: Figure
    supervision_load: Figure
    counts: dict[str, float] = field(default_factory=dict)

    def figures(self) -> list[Figure | Spread]:
        return [
            self.accepted_throughput,
            self.acceptance_yield,
            self.first_pass_acceptance,
            self.revert_rate,
            self.lead_time.total,
            self.escalation_response,
            self.autonomy_rate,
            self.cost_per_accepted,
            self.tokens_per_accepted,
            self.wasted_spend_share,
            self.supervision_load,
        ]


# --- windows and scope ------------------------------------------------------------------------------


_WINDOW_RE = re.compile(r"^\s*(\d{1,4})\s*d\s*$", re.IGNORECASE)


def window_last(*, text: str, now: datetime | None = None) -> Window:
    """``"7d"``, ``"30d"``, ``"90d"`` (any ``<N>d`` from 1 to 730): the N days up to now."""
    match = _WINDOW_RE.match(text or "")
    if not match:
        raise ValueError(f"Window {text!r} is not understood: use a number of days such as 7d, 30d or 90d.")
    days = int(match.group(1))
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise ValueError(f"Window {text!r} must be between 1d and {MAX_WINDOW_DAYS}d.")
    end = now or timezone.now()
    return Window(start=end - timedelta(days=days), end=end, label=f"last {days} days")


def window_between(*, first_day: date, last_day: date) -> Window:
    """From the start of ``first_day`` to the end of ``last_day`` (both included), local time."""
    if last_day < first_day:
        raise ValueError(f"The window ends ({last_day:%Y-%m-%d}) before it starts ({first_day:%Y-%m-%d}).")
    if (last_day - first_day).days + 1 > MAX_WINDOW_DAYS:
        raise ValueError(f"A window can span at most {MAX_WINDOW_DAYS} days.")
    zone = timezone.get_current_timezone()
    start = timezone.make_aware(datetime.combine(first_day, time.min), zone)
    end = timezone.make_aware(datetime.combine(last_day + timedelta(days=1), time.min), zone)
    return Window(start=start, end=end, label=f"{first_day:%Y-%m-%d} to {last_day:%Y-%m-%d}")


def parse_date(text: str, *, what: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"The {what} date {text!r} is not a date: write it as YYYY-MM-DD.") from None


@dataclass(frozen=True)
class Scope:
    """Which sessions count: all, or one pod (slug), one task type, one tag."""

    pod: str = ""
    task_type: str = ""
    tag: str = ""

    def validate(self) -> None:
        if self.pod and not Pod.objects.filter(slug=self.pod).exists():
            raise ValueError(f"There is no pod {self.pod!r}.")
        if self.task_type and self.task_type not in TaskType.values:
            raise ValueError(f"Task type {self.task_type!r} is unknown: use one of {', '.join(TaskType.values)}.")

    def session_q(self, prefix: str = "") -> Q:
        q = Q()
        if self.pod:
            q &= Q(**{f"{prefix}pod__slug": self.pod})
        if self.task_type:
            q &= Q(**{f"{prefix}task_type": self.task_type})
        return q


# --- facts (one row per session, read in a few set-based queries) -----------------------------------


@dataclass
class SessionFacts:
    id: int
    pod_id: int
    pod_slug: str
    pod_name: str
    sto_id: int
    sto_username: str
    task_type: str
    tags: list
    status: str
    created_at: datetime
    finished_at: datetime | None
    cost: Decimal
    tokens: int
    approved_at: datetime | None
    rejected_at: datetime | None
    reverted_at: datetime | None
    first_review_at: datetime | None
    first_review_decision: str | None
    escalations_ever: int
    # seconds per class of status between created and approved (accepted sessions only)
    running_s: float = 0.0
    waiting_s: float = 0.0
    queued_s: float = 0.0

    @property
    def reverted_soon(self) -> bool:
        return (
            self.approved_at is not None
            and self.reverted_at is not None
            and self.reverted_at - self.approved_at <= REVERT_HORIZON
        )

    @property
    def closed_at(self) -> datetime | None:
        if self.approved_at is not None:
            return self.approved_at
        if self.rejected_at is not None:
            return self.rejected_at
        if self.status == Status.CANCELLED:
            return self.finished_at
        return None

    @property
    def wasted(self) -> bool:
        """Closed without lasting value: rejected, cancelled, or reverted within 14 days."""
        return self.closed_at is not None and (self.approved_at is None or self.reverted_soon)


@dataclass
class EscalationRow:
    session_id: int
    requested: datetime
    decided: datetime | None


@dataclass
class ReviewRow:
    session_id: int
    decision: str
    at: datetime


@dataclass
class Facts:
    sessions: dict[int, SessionFacts]
    escalations: list[EscalationRow]
    reviews: list[ReviewRow]  # reject and request_changes reviews in the span
    now: datetime
    escalations_of: dict[int, list[EscalationRow]] = field(default_factory=dict)
    reviews_of: dict[int, list[ReviewRow]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for row in self.escalations:
            self.escalations_of.setdefault(row.session_id, []).append(row)
        for review in self.reviews:
            self.reviews_of.setdefault(review.session_id, []).append(review)


def human_escalations_q(prefix: str = "") -> Q:
    """Escalations that asked a human: all but those the grant denied at once (denied, no decider)."""
    return ~Q(**{f"{prefix}state": Escalation.State.DENIED, f"{prefix}decided_by__isnull": True})


def _first_review(field_name: str, decision: str | None = None) -> Subquery:
    reviews = Review.objects.filter(session_id=OuterRef("pk"))
    if decision:
        reviews = reviews.filter(decision=decision)
    return Subquery(reviews.order_by("created_at", "id").values(field_name)[:1])


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for index in range(0, len(ids), _IN_CHUNK):
        yield ids[index : index + _IN_CHUNK]


def collect_facts(*, start: datetime, end: datetime, scope: Scope, now: datetime) -> Facts:
    """Read everything the metrics of ``[start, end)`` need, in four queries (plus one per 500
    accepted sessions for their status events): sessions with their review timestamps and
    escalation count aggregated in SQL, the escalations and the reject / request-changes reviews
    of the span, and one pass over the ``session.status`` events of the accepted sessions."""
    escalation_count = (
        Escalation.objects.filter(human_escalations_q(), session_id=OuterRef("pk"))
        .order_by()
        .values("session_id")
        .annotate(c=Count("id"))
        .values("c")
    )
    # Sessions with something in the span, found through indexes (reviews and escalations by
    # created_at, sessions by status) rather than by scanning every session ever run.
    relevant = (
        Q(pk__in=Review.objects.filter(created_at__gte=start, created_at__lt=end).values("session_id"))
        | Q(pk__in=Escalation.objects.filter(created_at__gte=start, created_at__lt=end).values("session_id"))
        | Q(status=Status.CANCELLED, finished_at__gte=start, finished_at__lt=end)
    )
    rows = (
        AgentSession.objects.filter(relevant)
        .filter(scope.session_q())
        .annotate(
            approved_at=_first_review("created_at", Review.Decision.APPROVE),
            rejected_at=_first_review("created_at", Review.Decision.REJECT),
            reverted_at=_first_review("created_at", Review.Decision.REVERT),
            first_review_at=_first_review("created_at"),
            first_review_decision=_first_review("decision"),
            escalations_ever=Coalesce(Subquery(escalation_count, output_field=IntegerField()), Value(0)),
        )
        .order_by()
        .values_list(
            "id",
            "pod_id",
            "pod__slug",
            "pod__name",
            "sto_id",
            "sto__username",
            "task_type",
            "tags",
            "status",
            "created_at",
            "finished_at",
            "cost_usd",
            "tokens_in",
            "tokens_out",
            "approved_at",
            "rejected_at",
            "reverted_at",
            "first_review_at",
            "first_review_decision",
            "escalations_ever",
        )
    )
    sessions: dict[int, SessionFacts] = {}
    for (
        sid,
        pod_id,
        pod_slug,
        pod_name,
        sto_id,
        sto_username,
        task_type,
        tags,
        status,
        created_at,
        finished_at,
        cost,
        tokens_in,
        tokens_out,
        approved_at,
        rejected_at,
        reverted_at,
        first_review_at,
        first_review_decision,
        escalations_ever,
    ) in rows:
        tags = tags if isinstance(tags, list) else []
        if scope.tag and scope.tag not in tags:
            continue  # JSON containment is not portable to SQLite: the tag filter runs here
        sessions[sid] = SessionFacts(
            id=sid,
            pod_id=pod_id,
            pod_slug=pod_slug,
            pod_name=pod_name,
            sto_id=sto_id,
            sto_username=sto_username,
            task_type=task_type,
            tags=tags,
            status=status,
            created_at=created_at,
            finished_at=finished_at,
            cost=cost or Decimal(0),
            tokens=(tokens_in or 0) + (tokens_out or 0),
            approved_at=approved_at,
            rejected_at=rejected_at,
            reverted_at=reverted_at,
            first_review_at=first_review_at,
            first_review_decision=first_review_decision,
            escalations_ever=escalations_ever or 0,
        )

    escalations = [
        EscalationRow(session_id=sid, requested=requested, decided=decided)
        for sid, requested, decided in Escalation.objects.filter(
            human_escalations_q(), created_at__gte=start, created_at__lt=end
        )
        .filter(scope.session_q("session__"))
        .order_by()
        .values_list("session_id", "created_at", "decided_at")
        if sid in sessions
    ]
    reviews = [
        ReviewRow(session_id=sid, decision=decision, at=at)
        for sid, decision, at in Review.objects.filter(
            created_at__gte=start,
            created_at__lt=end,
            decision__in=(Review.Decision.REJECT, Review.Decision.REQUEST_CHANGES),
        )
        .filter(scope.session_q("session__"))
        .order_by()
        .values_list("session_id", "decision", "created_at")
        if sid in sessions
    ]
    accepted = sorted(
        s.id
        for s in sessions.values()
        if s.approved_at is not None and start <= s.approved_at < end and not s.reverted_soon
    )
    _split_status_time([sessions[sid] for sid in accepted])
    return Facts(sessions=sessions, escalations=escalations, reviews=reviews, now=now)


def _split_status_time(accepted: list[SessionFacts]) -> None:
    """Divide each accepted session's lead time (created → approved) by the status it was in,
    from its ``session.status`` events: one ordered pass over those events."""
    if not accepted:
        return
    by_id = {s.id: s for s in accepted}
    ids = sorted(by_id)
    earliest = min(s.created_at for s in accepted)
    latest = max(cast(datetime, s.approved_at) for s in accepted)  # accepted: approved
    timelines: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    for chunk in _chunks(ids):
        events = (
            AuditEvent.objects.filter(
                kind="session.status", session_id__in=chunk, created_at__gte=earliest, created_at__lte=latest
            )
            .order_by("session_id", "id")
            .values_list("session_id", "created_at", "payload__to")
        )
        for sid, at, to in events:
            timelines[cast(int, sid)].append((at, to))  # session_id__in
    for sid, session in by_id.items():
        running = waiting = queued = 0.0
        status, since = Status.QUEUED.value, session.created_at
        assert session.approved_at is not None  # accepted: approved
        for at, to in [*timelines.get(sid, []), (session.approved_at, None)]:
            at = min(max(at, session.created_at), session.approved_at)
            seconds = (at - since).total_seconds()
            if seconds > 0:
                if status in RUNNING_STATUSES:
                    running += seconds
                elif status in WAITING_STATUSES:
                    waiting += seconds
                else:
                    queued += seconds
            since = max(since, at)
            if to is not None:
                status = str(to)
        session.running_s, session.waiting_s, session.queued_s = running, waiting, queued


# --- computing the metrics of one group -------------------------------------------------------------


def _flag(n: int) -> tuple[bool, str]:
    if n < SMALL_SAMPLE:
        return True, f"n = {n} < {SMALL_SAMPLE}: too few to rely on"
    return False, ""


def _proportion(key: str, label: str, successes: int, n: int) -> Figure:
    small, note = _flag(n)
    interval = wilson_interval(successes=successes, n=n)
    return Figure(
        key=key,
        label=label,
        unit="ratio",
        value=successes / n if n else None,
        n=n,
        numerator=successes,
        denominator=n,
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
        small_sample=small,
        note=note,
    )


def _per(key: str, label: str, unit: str, numerator: float, denominator: float, n: int) -> Figure:
    small, note = _flag(n)
    return Figure(
        key=key,
        label=label,
        unit=unit,
        value=numerator / denominator if denominator else None,
        n=n,
        numerator=numerator,
        denominator=denominator,
        small_sample=small,
        note=note,
    )


def _spread(key: str, label: str, seconds: list[float], upper_q: int) -> Spread:
    small, note = _flag(len(seconds))
    return Spread(
        key=key,
        label=label,
        n=len(seconds),
        median=percentile(seconds, 0.5),
        upper=percentile(seconds, upper_q / 100),
        upper_q=upper_q,
        total=float(sum(seconds)),
        small_sample=small,
        note=note,
    )


def compute(
    *,
    facts: Facts,
    session_ids: Iterable[int] | None,
    window: Window,
    group: str = "overall",
    key: str = "",
    label: str = "All sessions",
) -> Metrics:
    """The metrics of the sessions ``session_ids`` (None: every session in ``facts``) in ``window``."""
    if session_ids is None:
        members = list(facts.sessions.values())
    else:
        members = [facts.sessions[sid] for sid in session_ids if sid in facts.sessions]
    member_escalations = [e for s in members for e in facts.escalations_of.get(s.id, ())]
    member_reviews = [r for s in members for r in facts.reviews_of.get(s.id, ())]

    approved = [s for s in members if window.contains(s.approved_at)]
    reverted = [s for s in approved if s.reverted_soon]
    accepted = [s for s in approved if not s.reverted_soon]
    closed = [s for s in members if window.contains(s.closed_at)]
    first_reviewed = [s for s in members if window.contains(s.first_review_at)]
    first_pass = [s for s in first_reviewed if s.first_review_decision == Review.Decision.APPROVE]
    autonomous = [s for s in accepted if s.escalations_ever == 0]
    escalations = [e for e in member_escalations if window.contains(e.requested)]
    rejections = sum(1 for r in member_reviews if r.decision == Review.Decision.REJECT and window.contains(r.at))
    change_requests = sum(
        1 for r in member_reviews if r.decision == Review.Decision.REQUEST_CHANGES and window.contains(r.at)
    )
    closed_cost = float(sum((s.cost for s in closed), Decimal(0)))
    wasted_cost = float(sum((s.cost for s in closed if s.wasted), Decimal(0)))
    closed_tokens = sum(s.tokens for s in closed)
    n_accepted = len(accepted)

    throughput = Figure(
        key="accepted_throughput",
        label="Accepted per week",
        unit="per_week",
        value=n_accepted / window.weeks if window.weeks else None,
        n=n_accepted,
        numerator=n_accepted,
        denominator=window.weeks,
    )
    lead = [(cast(datetime, s.approved_at) - s.created_at).total_seconds() for s in accepted]  # approved
    waiting_total = sum(s.waiting_s for s in accepted)
    lead_time = LeadTime(
        total=_spread("lead_time", "Lead time to acceptance", lead, 85),
        running=_spread("lead_time_running", "Agent running", [s.running_s for s in accepted], 85),
        waiting=_spread("lead_time_waiting", "Waiting on humans", [s.waiting_s for s in accepted], 85),
        queued=_spread("lead_time_queued", "Queued", [s.queued_s for s in accepted], 85),
        waiting_share=_per(
            "waiting_share", "Share of lead time waiting on humans", "ratio", waiting_total, sum(lead), n_accepted
        ),
    )
    response = [((e.decided or facts.now) - e.requested).total_seconds() for e in escalations]
    supervision_events = len(escalations) + rejections + change_requests
    return Metrics(
        group=group,
        key=key,
        label=label,
        accepted_throughput=throughput,
        acceptance_yield=_proportion("acceptance_yield", "Acceptance yield", n_accepted, len(closed)),
        first_pass_acceptance=_proportion(
            "first_pass_acceptance", "First-pass acceptance", len(first_pass), len(first_reviewed)
        ),
        revert_rate=_proportion("revert_rate", "Revert rate (14 days)", len(reverted), len(approved)),
        lead_time=lead_time,
        escalation_response=_spread("escalation_response", "Escalation response time", response, 90),
        autonomy_rate=_proportion("autonomy_rate", "Autonomy rate", len(autonomous), n_accepted),
        cost_per_accepted=_per(
            "cost_per_accepted", "Cost per accepted session", "usd", closed_cost, n_accepted, n_accepted
        ),
        tokens_per_accepted=_per(
            "tokens_per_accepted", "Tokens per accepted session", "tokens", closed_tokens, n_accepted, n_accepted
        ),
        wasted_spend_share=_per(
            "wasted_spend_share", "Wasted-spend share", "ratio", wasted_cost, closed_cost, len(closed)
        ),
        supervision_load=_per(
            "supervision_load", "Supervision load", "per_accepted", supervision_events, n_accepted, n_accepted
        ),
        counts={
            "approved": len(approved),
            "accepted": n_accepted,
            "reverted": len(reverted),
            "closed": len(closed),
            "rejected": sum(1 for s in closed if s.approved_at is None and s.rejected_at is not None),
            "cancelled": sum(1 for s in closed if s.approved_at is None and s.rejected_at is None),
            "escalations": len(escalations),
            "rejections": rejections,
            "change_requests": change_requests,
            "closed_cost_usd": closed_cost,
            "wasted_cost_usd": wasted_cost,
            "closed_tokens": closed_tokens,
        },
    )


# --- the report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendPoint:
    start: datetime
    end: datetime
    metrics: Metrics


@dataclass(frozen=True)
class Report:
    window: Window
    scope: Scope
    generated_at: datetime
    overall: Metrics
    by_pod: list[Metrics]
    by_sto: list[Metrics]
    by_task_type: list[Metrics]
    trend: list[TrendPoint]

    def to_dict(self) -> dict:
        """JSON-ready (datetimes as ISO 8601 strings; durations in seconds). The window as its start,
        end and label (what the pages' windows also carry, a preset or an error, is not the report's)."""
        data = asdict(self)
        data["window"] = {key: data["window"][key] for key in ("start", "end", "label")}
        return _jsonable(data)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def trend_weeks(window: Window) -> list[Window]:
    """Whole weeks ending at the window's end, oldest first: enough to cover the window, at least 8."""
    count = max(MIN_TREND_WEEKS, math.ceil(window.days / 7 - 1e-9))
    weeks = []
    for index in range(count, 0, -1):
        end = window.end - timedelta(days=7 * (index - 1))
        weeks.append(Window(start=end - timedelta(days=7), end=end, label=f"week to {end:%Y-%m-%d}"))
    return weeks


def fleet_metrics(
    *, window: Window, scope: Scope | None = None, now: datetime | None = None, with_trend: bool = True
) -> Report:
    """The report the dashboard and ``manage.py metrics`` show: overall, by pod, by STO, by task type,
    and (``with_trend``) the weekly trend of the overall figures."""
    scope = scope or Scope()
    scope.validate()
    now = now or timezone.now()
    weeks = trend_weeks(window) if with_trend else []
    span_start = min([window.start, *(w.start for w in weeks)])
    facts = collect_facts(start=span_start, end=window.end, scope=scope, now=now)

    pods: dict[int, tuple[str, str]] = {}
    stos: dict[int, str] = {}
    members_of: dict[tuple[str, object], list[int]] = defaultdict(list)
    for s in facts.sessions.values():
        pods[s.pod_id] = (s.pod_slug, s.pod_name)
        stos[s.sto_id] = s.sto_username
        members_of[("pod", s.pod_id)].append(s.id)
        members_of[("sto", s.sto_id)].append(s.id)
        members_of[("task_type", s.task_type)].append(s.id)
    pod_rows = Pod.objects.filter(slug=scope.pod) if scope.pod else Pod.objects.all()
    for pod_id, slug, name in pod_rows.values_list("id", "slug", "name"):
        pods.setdefault(pod_id, (slug, name))

    def group_metrics(kind: str, ident: object, key: str, label: str) -> Metrics:
        return compute(
            facts=facts, session_ids=members_of.get((kind, ident), []), window=window, group=kind, key=key, label=label
        )

    by_pod = sorted(
        (group_metrics("pod", pid, slug, name) for pid, (slug, name) in pods.items()), key=lambda m: m.label.lower()
    )
    by_sto = [m for m in (group_metrics("sto", uid, name, name) for uid, name in stos.items()) if _active(m)]
    by_sto.sort(key=lambda m: m.label.lower())
    types = [(value, text) for value, text in TaskType.choices if not scope.task_type or value == scope.task_type]
    by_task_type = [group_metrics("task_type", value, value, text) for value, text in types]
    trend = [
        TrendPoint(
            start=w.start,
            end=w.end,
            metrics=compute(facts=facts, session_ids=None, window=w, key=w.start.date().isoformat(), label=w.label),
        )
        for w in weeks
    ]
    return Report(
        window=window,
        scope=scope,
        generated_at=now,
        overall=compute(facts=facts, session_ids=None, window=window),
        by_pod=by_pod,
        by_sto=by_sto,
        by_task_type=by_task_type,
        trend=trend,
    )


def _active(m: Metrics) -> bool:
    """Anything happened to the group's sessions in the window."""
    return (
        any(m.counts[k] for k in ("approved", "closed", "escalations", "rejections", "change_requests"))
        or m.first_pass_acceptance.n > 0
    )
