"""Reads. Every selector that returns fleet data takes the viewer, so "who may see what" lives here.

Visibility: managers and leaders see every pod; members see the pods they belong to.
Authority (who may *act*) lives in agents/authority.py.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from django.conf import settings
from django.db.models import Exists, F, OuterRef, Prefetch, Q, QuerySet
from django.db.models.fields.json import KT
from django.utils import timezone

from agents import authority
from agents.models import (
    TERMINAL_STATUSES,
    AgentSession,
    Escalation,
    FleetControl,
    Grant,
    Pod,
    PodMembership,
    ReviewState,
    Status,
    ToolCall,
    User,
)
from agents.runtime import worktrees
from agents.tools.schemas import HANDOFF_FILE


def sees_everything(user: User) -> bool:
    return bool(user.is_authenticated and (user.role in (User.Role.MANAGER, User.Role.LEADER) or user.is_superuser))


def pod_ids_visible_to(*, user: User) -> set[int] | None:
    """None means every pod."""
    if sees_everything(user):
        return None
    return set(PodMembership.objects.filter(user=user).values_list("pod_id", flat=True))


def pods_visible_to(*, user: User) -> QuerySet[Pod]:
    pods = Pod.objects.all()
    ids = pod_ids_visible_to(user=user)
    return pods if ids is None else pods.filter(pk__in=ids)


def sessions_visible_to(*, user: User) -> QuerySet[AgentSession]:
    sessions = AgentSession.objects.select_related("pod", "sto", "repository")
    ids = pod_ids_visible_to(user=user)
    return sessions if ids is None else sessions.filter(pod_id__in=ids)


def session_visible_to(*, user: User, session_id: int) -> AgentSession | None:
    return sessions_visible_to(user=user).filter(pk=session_id).first()


def _unrevoked_grants() -> QuerySet[Grant]:
    """The active grant of a session is the first of these (expired ones included: expiry is
    checked at use)."""
    return Grant.objects.filter(revoked_at__isnull=True).order_by("-version")


def active_grants(session) -> QuerySet[Grant]:
    """The session's unrevoked grants, the active one first (``session``: an instance, an id or an
    OuterRef — the runtime reads the active grant inside its per-tool-call query)."""
    return _unrevoked_grants().filter(session=session)


def tile_grants() -> Prefetch:
    """The active grant of every tile in one query (the tile reads ``s.grants.all.0``)."""
    return Prefetch(
        "grants",
        queryset=_unrevoked_grants().only("id", "session_id", "version", "max_cost_usd", "max_steps", "revoked_at"),
    )


def active_grant(*, session: AgentSession) -> Grant | None:
    """The newest unrevoked grant of the session (expired ones included: expiry is checked at use)."""
    return active_grants(session).select_related("delegator").first()


def budget_exhausted(*, session: AgentSession, grant: Grant, now=None) -> str | None:
    """A readable reason when a budget of the grant is used up, else None (no query: the counters
    are the session's own)."""
    now = now or timezone.now()
    if grant.max_steps is not None and session.steps >= grant.max_steps:
        return f"budget: max steps ({grant.max_steps}) reached"
    if grant.max_tokens is not None and session.tokens >= grant.max_tokens:
        return f"budget: max tokens ({grant.max_tokens:,}) reached ({session.tokens:,} used)"
    if grant.max_cost_usd is not None and session.cost_usd >= grant.max_cost_usd:
        return f"budget: max cost (${grant.max_cost_usd}) reached (${session.cost_usd:.4f} spent)"
    if grant.max_wall_seconds is not None and session.started_at is not None:
        elapsed = (now - session.started_at).total_seconds()
        if elapsed >= grant.max_wall_seconds:
            return f"budget: max wall time ({grant.max_wall_seconds}s) reached"
    if grant.max_tool_calls is not None and session.tool_calls >= grant.max_tool_calls:
        return f"budget: max tool calls ({grant.max_tool_calls}) reached"
    return None


def standing_approvals_q() -> Q:
    """Escalations whose approval still stands: allowed once and not used yet, or allowed always."""
    return Q(state=Escalation.State.ALLOWED_ONCE, consumed_at__isnull=True) | Q(state=Escalation.State.ALLOWED_ALWAYS)


def open_escalations(*, session: AgentSession) -> QuerySet[Escalation]:
    return session.escalations.filter(state=Escalation.State.OPEN)


def fleet_stopped() -> bool:
    return FleetControl.objects.filter(pk=1, stopped=True).exists()


# -- "awaiting review": ONE definition, shared by the runtime (review WIP limit) and the review queue --

OPEN_REVIEW_STATES = (ReviewState.NONE, ReviewState.CHANGES_REQUESTED)
STOPPED_STATUSES = (Status.FAILED, Status.CANCELLED, Status.BLOCKED)


def committed_q() -> Q:
    """The session ran a commit successfully (the git_commit tool, or ``git commit`` in a shell)."""
    commits = ToolCall.objects.filter(session_id=OuterRef("pk"), state=ToolCall.State.DONE).filter(
        Q(name="git_commit") | Q(name="run_command", action__contains="git commit")
    )
    return Q(Exists(commits))


def awaiting_review_q() -> Q:
    """Sessions whose work awaits a human review: succeeded and not reviewed yet (or succeeded again
    after a change request), or stopped without succeeding after committing something."""
    return Q(review_state__in=OPEN_REVIEW_STATES) & (
        Q(status=Status.SUCCEEDED) | (Q(status__in=STOPPED_STATUSES) & committed_q())
    )


def awaiting_review_count(*, pod_id: int) -> int:
    """How many of a pod's sessions await review: what the runtime compares with
    ``pod.review_wip_limit`` before starting the pod's next session."""
    return AgentSession.objects.filter(awaiting_review_q(), pod_id=pod_id).count()


# -- "tonight's work": ONE definition of what the canvas shows by default -------------------------

EVENING_HOUR = 18  # tonight starts at 18:00 local time


def tonight_start(now: datetime | None = None) -> datetime:
    """18:00 local time today, or yesterday's when it is not yet 18:00: where "tonight" starts
    (the canvas's "Tonight" cost and what it shows by default)."""
    now = timezone.localtime(now or timezone.now())
    start = now.replace(hour=EVENING_HOUR, minute=0, second=0, microsecond=0)
    return start if now >= start else start - timedelta(days=1)


def current_q(*, now: datetime | None = None) -> Q:
    """The sessions of tonight's work, what the canvas (tiles, compact, map, live catch-up) shows
    unless asked for older ones: every session that has not ended (queued, running, paused, needing
    a human), finished work that awaits its review (never hidden: someone has to review it), and
    any session that changed since tonight started (ended, reviewed or cancelled tonight). What is
    left out is closed earlier: reviewed, or ended with nothing to review, before ``tonight_start``."""
    return ~Q(status__in=TERMINAL_STATUSES) | awaiting_review_q() | Q(updated_at__gte=tonight_start(now))


# -- "stale": ONE definition, for the canvas (its tiles and summary count) and the tick ------------


def stale_after() -> timedelta:
    return timedelta(seconds=settings.CONTROLROOM["STALE_AFTER_S"])


def stale_q(*, now: datetime | None = None) -> Q:
    """Running sessions that show no sign of life: no heartbeat (before the first one: no change)
    for ``STALE_AFTER_S``, and no live lease. A lost message or a dead worker leaves a session so:
    the tick enqueues its next step again, the canvas marks it."""
    now = now or timezone.now()
    return (
        Q(status=Status.RUNNING)
        & (Q(heartbeat_at__lt=now - stale_after()) | Q(heartbeat_at__isnull=True, updated_at__lt=now - stale_after()))
        & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    )


def never_taken_q(*, now: datetime | None = None) -> Q:
    """Sessions launched to start at once whose first step no worker has taken for ``STALE_AFTER_S``:
    its message went down with a worker (host) that had reserved it. Not those launched without
    starting (no ``enqueued_at``) or parked by a check (a status reason says why)."""
    now = now or timezone.now()
    return Q(status=Status.QUEUED, status_reason="", steps=0, enqueued_at__lt=now - stale_after()) & (
        Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    )


def is_stale(session: AgentSession, *, now: datetime | None = None) -> bool:
    """``stale_q`` for a session already read (a tile)."""
    now = now or timezone.now()
    last = session.heartbeat_at or session.updated_at
    leased = session.lease_until is not None and session.lease_until >= now
    return session.status == Status.RUNNING and last is not None and last < now - stale_after() and not leased


# -- "stranded": what the canvas shows instead of "running" for a stale session -------------------
# A stranded session is a stale one (``stale_q``): it says it runs, but its worker's heartbeat and
# lease vanished, or nothing was ever heard from it, so whether it runs cannot be told. The canvas
# shows it as "stranded" (tile, fleet-map cell, drawer) with its last commit, Recover and Cancel.


def is_stranded(session: AgentSession, *, now: datetime | None = None) -> bool:
    return is_stale(session, now=now)


def last_commit_q() -> dict:
    """Annotations for a tile: the subject of the session's last commit that reached the central
    repository (its ``pushed_commit``, made by ``pushed_call``): one join, no query per tile."""
    return {"last_commit_arguments": F("pushed_call__arguments")}


def last_commit_of(session: AgentSession) -> tuple[str, str] | None:
    """(short sha, subject) of the session's last commit, from the ``last_commit_q`` annotation."""
    if not session.pushed_commit:
        return None
    arguments = getattr(session, "last_commit_arguments", None)
    message = arguments.get("message", "") if isinstance(arguments, dict) else ""
    message = message if isinstance(message, str) else ""
    subject = message.strip().splitlines()[0] if message.strip() else ""
    return session.pushed_commit[:8], subject


# -- overlapping edits: two unmerged sessions of one repository that edited the same file ---------

EDIT_TOOLS = ("write_file", "edit_file")
FEW_SESSIONS = 20


def unmerged_q() -> Q:
    """Sessions whose work is still to be merged: not ended, or awaiting a review."""
    return ~Q(status__in=[Status.SUCCEEDED, Status.FAILED, Status.CANCELLED]) | awaiting_review_q()


def _normal_path(path: object) -> str:
    if not isinstance(path, str) or not path.strip():
        return ""
    normal = posixpath.normpath(path.strip())
    return "" if normal in (".", "") or normal.startswith("../") else normal


def _edited_paths(calls: QuerySet[ToolCall]) -> dict[int, set[str]]:
    """session id -> the normalized paths its finished write_file/edit_file calls edited."""
    edited: dict[int, set[str]] = {}
    rows = (
        calls.filter(name__in=EDIT_TOOLS, state=ToolCall.State.DONE)
        .annotate(edited_path=KT("arguments__path"))
        .order_by()
        .values_list("session_id", "edited_path")
        .distinct()
    )
    for session_id, path in rows:
        normal = _normal_path(path)
        if normal:
            edited.setdefault(session_id, set()).add(normal)
    return edited


@dataclass(frozen=True)
class Overlap:
    """Another unmerged session of the same repository that edited some of the same files."""

    session_id: int
    name: str
    pod_id: int
    pod_name: str
    paths: tuple[str, ...]


def _overlaps_among(
    edited: dict[int, set[str]], facts: dict[int, tuple], *, wanted: set[int]
) -> dict[int, list[Overlap]]:
    """The overlaps of the ``wanted`` sessions only: a tile asks for one session, and when a hundred
    sessions of a batch all edited the same file, pairing every one with every other (10,000
    pairs per file) on each step's tile was most of the fleet's CPU."""
    by_repo_path: dict[tuple[int, str], list[int]] = {}
    for session_id, paths in edited.items():
        repo = facts[session_id][0]
        for path in paths:
            by_repo_path.setdefault((repo, path), []).append(session_id)
    shared: dict[int, dict[int, set[str]]] = {}
    for (_repo, path), ids in by_repo_path.items():
        if len(ids) < 2:
            continue
        for a in ids:
            if a not in wanted:
                continue
            for b in ids:
                if a != b:
                    shared.setdefault(a, {}).setdefault(b, set()).add(path)
    return {
        a: [
            Overlap(
                session_id=b,
                name=facts[b][1],
                pod_id=facts[b][2],
                pod_name=facts[b][3],
                paths=tuple(sorted(paths)),
            )
            for b, paths in sorted(others.items())
        ]
        for a, others in shared.items()
    }


def overlaps_for(
    session_ids: Iterable[int], *, also_edited: dict[int, Iterable[str]] | None = None
) -> dict[int, list[Overlap]]:
    """For each given session that is unmerged: the other unmerged sessions of its repository that
    edited a file it edited, from the recorded write_file/edit_file calls (a few queries in all,
    whatever the number of sessions). ``also_edited``: more files the given sessions changed (the
    review page passes the branch's diff, which sees edits made by shell commands too)."""
    ids = set(session_ids)
    extra = {
        sid: {p for p in map(_normal_path, paths) if p} for sid, paths in (also_edited or {}).items() if sid in ids
    }
    if not ids:
        return {}
    few = len(ids) <= FEW_SESSIONS
    if few:
        # a tile or a review page: first what these sessions edited (one query, and the only one
        # for a session that edited nothing), then only the rows of those files
        own = _edited_paths(ToolCall.objects.filter(session_id__in=ids))
        for sid, paths in extra.items():
            own.setdefault(sid, set()).update(paths)
        own = {sid: paths for sid, paths in own.items() if paths}
        if not own:
            return {}
        ids = set(own)
    mine = AgentSession.objects.filter(unmerged_q(), pk__in=ids)
    candidates = AgentSession.objects.filter(unmerged_q(), repository_id__in=mine.order_by().values("repository_id"))
    calls = ToolCall.objects.filter(session__in=candidates.values("pk"))
    if few:
        paths = set().union(*own.values())
        calls = calls.filter(arguments__path__in=sorted(paths | {f"./{p}" for p in paths}))
    edited = _edited_paths(calls)
    unmerged = set(mine.values_list("pk", flat=True)) if extra else set()
    for sid, paths in extra.items():
        if sid in unmerged and paths:
            edited.setdefault(sid, set()).update(paths)
    if not any(session_id in ids for session_id in edited):
        return {}
    facts = {
        row[0]: row[1:]
        for row in AgentSession.objects.filter(pk__in=list(edited)).values_list(
            "pk", "repository_id", "name", "pod_id", "pod__name"
        )
    }
    return _overlaps_among(edited, facts, wanted=ids)


# -- worktrees on disk -----------------------------------------------------------------------------


def disk_usage(path: Path) -> int:
    """Bytes under ``path`` (files, symlinks not followed): a worktree, or all of them."""
    return worktrees.disk_usage(Path(path))


def uncommitted_work(paths: Iterable[str]) -> list[str]:
    """Of a worktree's uncommitted paths, those that are the agent's work: all but its handoff note
    (kept on the session itself, ``session.handoff``: nothing is lost if it is not committed)."""
    return [path for path in paths if path != HANDOFF_FILE]


# -- grouped decisions: open escalations asking for the same canonical action, across sessions -----


@dataclass
class EscalationGroup:
    """Open escalations that ask for the same canonical action (equal action hash: the same command,
    host or path), each in its own session. ``members`` the viewer may decide; ``excluded`` (with
    the refusal) they may see but not decide: a grouped decision leaves those alone."""

    tool: str
    action: str
    action_hash: str
    rule: str
    members: list[Escalation] = field(default_factory=list)
    excluded: list[tuple[Escalation, str]] = field(default_factory=list)

    @property
    def since(self) -> datetime:
        return min(e.created_at for e in [*self.members, *(e for e, _ in self.excluded)])

    @property
    def first(self) -> Escalation:
        """The oldest ask of the group (its reason is shown for all)."""
        return min([*self.members, *(e for e, _ in self.excluded)], key=lambda e: (e.created_at, e.pk))

    @property
    def rules_to_add(self) -> list[str]:
        return [line.strip() for line in self.rule.splitlines() if line.strip()]

    @property
    def can_allow_always(self) -> bool:
        """Every member asked because of a rule (not a guard): "allow always" can add it."""
        return bool(self.members) and all(e.rule for e in self.members)


def escalation_groups(*, user: User) -> list[EscalationGroup]:
    """The open escalations of the sessions ``user`` may see, grouped by canonical action, the
    largest group first (then the longest wait). Authority is asked once per (pod, is-STO)."""
    visible = sessions_visible_to(user=user).values("pk")
    escalations = (
        Escalation.objects.filter(state=Escalation.State.OPEN, session__in=visible)
        .select_related("session__pod", "session__sto", "grant__delegator")
        .order_by("created_at", "pk")
    )
    refusals: dict[tuple[int, bool], str | None] = {}
    groups: dict[str, EscalationGroup] = {}
    for escalation in escalations:
        session = escalation.session
        key = (session.pod_id, session.sto_id == user.pk)
        if key not in refusals:
            refusals[key] = authority.refuse_session_control(user=user, session=session)
        group = groups.get(escalation.action_hash)
        if group is None:
            group = groups[escalation.action_hash] = EscalationGroup(
                tool=escalation.tool,
                action=escalation.action,
                action_hash=escalation.action_hash,
                rule=escalation.rule,
            )
        if refusals[key] is None:
            group.members.append(escalation)
        else:
            group.excluded.append((escalation, cast(str, refusals[key])))  # not None: the branch above
    return sorted(groups.values(), key=lambda g: (-len(g.members), g.since, g.action_hash))
