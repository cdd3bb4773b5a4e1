"""The audit explorer: the events a viewer may see that match filters, newest first,
keyset-paginated by id (never OFFSET)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q

from agents import params as strict
from agents.models import AgentSession, Pod, User
from agents.windows import iso_minutes
from audit.models import AuditEvent
from reviews.digest.events import describe, events_visible_to, payload_is
from reviews.digest.windows import parse_time

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
                try:
                    setattr(f, name, strict.integer(raw, name=name, minimum=1))
                except strict.BadParameter as exc:
                    f.errors.append(str(exc))
        for name in ("pod", "sto", "delegator", "kind", "decision"):
            try:
                setattr(f, name, strict.text(params.get(name), name=name, max_length=100))
            except strict.BadParameter as exc:
                f.errors.append(str(exc))
        for name in ("since", "until"):
            raw = (params.get(name) or "").strip()
            if raw:
                try:
                    setattr(f, name, parse_time(raw, name=name))
                except ValueError as exc:
                    f.errors.append(str(exc))
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
            "since": iso_minutes(self.since) if self.since else "",
            "until": iso_minutes(self.until) if self.until else "",
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
        events = events.filter(payload_is("decision", filters.decision))
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
        event.summary = describe(event.kind, event.payload)  # type: ignore[attr-defined]  # for the template
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
        "session.recovered",
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
