""" "Did I do this work?": everything done on a person's delegated authority in a window, grouped
by session and grant, with how each action was authorised (and by whom, when a human decided)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

from django.db.models import BigIntegerField, Count, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast

from agents.models import AgentSession, Grant, User
from agents.windows import Window
from audit.models import AuditEvent
from reviews.digest.events import PROVENANCE_LABELS, describe

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


def human_decisions(session_ids: list[int]) -> dict[tuple[int, str], list[tuple[int, str, str]]]:
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
        decisions[(cast(int, session_id), str(payload.get("action_hash", "")))].append(  # session_id__in
            (event_id, who, str(payload.get("decision", "")))
        )
    return decisions


def authorised_by(event: AuditEvent, decisions) -> tuple[str, str]:
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
    mine = AuditEvent.objects.filter(on_behalf_of_id=user.pk, created_at__gte=window.start, created_at__lt=window.end)
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
    decisions = human_decisions(session_ids)
    groups: dict[tuple[int | None, int | None], MineGroup] = {}

    def group(session_id, grant_id) -> MineGroup:
        key = (session_id, grant_id)
        if key not in groups:
            groups[key] = MineGroup(session_id, sessions.get(session_id), grant_id, grants.get(grant_id))
        return groups[key]

    for event in events:
        approval, who = authorised_by(event, decisions)
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
