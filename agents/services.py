"""Writes. Every state change of the fleet goes through a function here: keyword-only, atomic,
and it writes its audit event in the same transaction (``audit.log.record``). Live updates
and step enqueues happen after commit.

Two callers besides views, tasks and commands: review decisions (``reviews.services``: close a
session, send it back to work, remove its worktree) and the runtime (``agents.runtime.loop``: park
a session, open an escalation, use an approval, record what the agent did). The runtime's services
run inside the step's own transactions and add no query of their own to a tool call.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone
from django.utils.text import Truncator

from agents import authority, links, params, permissions, selectors
from agents.dispatch import enqueue_step_on_commit, host_queue
from agents.endpoints import api_base_problem
from agents.errors import validation_text
from agents.events import send_on_commit
from agents.models import (
    TERMINAL_STATUSES,
    AgentKind,
    AgentSession,
    Escalation,
    FleetControl,
    Grant,
    Pod,
    PodMembership,
    Repository,
    Status,
    SteeringMessage,
    TaskType,
    ToolCall,
    TranscriptEntry,
    User,
)
from agents.runtime import worktrees
from agents.runtime.prepared import PreparedUpdate
from agents.selectors import active_grant
from audit.log import record

logger = logging.getLogger(__name__)

# What the worktree services raise: git could not create or remove a session's worktree.
WorktreeError = worktrees.WorktreeError


@dataclass(frozen=True)
class GrantSpec:
    """What a human delegates. Validated by ``grant_spec_errors``."""

    mode: str = Grant.Mode.EDITS
    allow: tuple[str, ...] = ()
    ask: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_steps: int | None = 200
    max_tokens: int | None = None
    max_cost_usd: Decimal | None = None
    max_wall_seconds: int | None = None
    max_tool_calls: int | None = None
    not_before: datetime | None = None
    expires_at: datetime | None = None
    hours: float = 8.0
    on_unanswered: str = Grant.OnUnanswered.WAIT
    justification: str = ""
    extra: dict = field(default_factory=dict)


#: The largest budgets a grant may carry (the database columns hold them on every backend).
BUDGET_MAXIMA = {
    "max_steps": params.MAX_STEPS,
    "max_tokens": params.MAX_TOKENS,
    "max_wall_seconds": 2**31 - 1,
    "max_tool_calls": params.MAX_TOOL_CALLS,
}


def grant_spec_errors(spec: GrantSpec) -> dict[str, str]:
    errors: dict[str, str] = {}
    if spec.mode not in Grant.Mode.values:
        errors["mode"] = f"Unknown mode {spec.mode!r}; use one of {', '.join(Grant.Mode.values)}."
    try:
        permissions.validate_rules(allow=list(spec.allow), ask=list(spec.ask), deny=list(spec.deny))
    except permissions.RuleError as exc:
        errors["rules"] = str(exc)
    if spec.not_before and spec.expires_at and spec.expires_at <= spec.not_before:
        errors["expires_at"] = "The grant must end after it starts."
    if spec.on_unanswered not in Grant.OnUnanswered.values:
        errors["on_unanswered"] = "Use wait or deny."
    for name in ("max_steps", "max_tokens", "max_wall_seconds", "max_tool_calls"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            errors[name] = "Must be at least 1 (or empty for no limit)."
    if spec.max_cost_usd is not None and spec.max_cost_usd <= 0:
        errors["max_cost_usd"] = "Must be positive (or empty for no limit)."
    for name, maximum in BUDGET_MAXIMA.items():
        value = getattr(spec, name)
        if value is not None and value > maximum:
            errors[name] = f"Must be at most {maximum:,} (or empty for no limit)."
    for name in ("not_before", "expires_at"):
        value = getattr(spec, name)
        if value is not None and not params.MIN_YEAR <= value.year <= params.MAX_YEAR:
            errors[name] = f"Choose a time between the years {params.MIN_YEAR} and {params.MAX_YEAR}."
    if not 0 < spec.hours <= 24 * 366:
        errors["expires_at"] = "A grant's default length must be between 0 and 366 days."
    return errors


def _grant_payload(grant: Grant) -> dict:
    return {
        "grant": grant.pk,
        "version": grant.version,
        "delegator": grant.delegator.username,
        "mode": grant.mode,
        "allow": grant.allow,
        "ask": grant.ask,
        "deny": grant.deny,
        "budget": {
            "max_steps": grant.max_steps,
            "max_tokens": grant.max_tokens,
            "max_cost_usd": grant.max_cost_usd,
            "max_wall_seconds": grant.max_wall_seconds,
            "max_tool_calls": grant.max_tool_calls,
        },
        "not_before": grant.not_before,
        "expires_at": grant.expires_at,
        "on_unanswered": grant.on_unanswered,
        "justification": grant.justification,
    }


def session_update(session: AgentSession, *, locked: bool = False, **changes) -> None:
    """Apply field changes, bump the version, save, and schedule the live update.

    ``locked``: ``session`` was read with select_for_update in this transaction, so its version is
    the current one and the new one is known without reading it back.
    """
    for key, value in changes.items():
        setattr(session, key, value)
    session.version = session.version + 1 if locked else F("version") + 1
    session.updated_at = timezone.now()
    session.save(update_fields=[*changes.keys(), "version", "updated_at"])
    if not locked:
        session.refresh_from_db(fields=["version"])
    send_on_commit(session.pk, session.pod_id)


def set_status(
    session: AgentSession,
    status: str,
    *,
    reason: str = "",
    by: User | None = None,
    agent: bool = False,
    locked: bool = False,
    **changes,
) -> None:
    """Change a session's status with its audit event (inside the caller's transaction)."""
    previous = session.status
    if status == Status.RUNNING and not session.started_at:
        changes["started_at"] = timezone.now()
    if status in TERMINAL_STATUSES and not session.finished_at:
        changes["finished_at"] = timezone.now()
    session_update(session, status=status, status_reason=Truncator(reason).chars(480), locked=locked, **changes)
    if previous != status:
        record(
            "session.status",
            session=session,
            user=by,
            agent=agent and by is None,
            payload={"from": previous, "to": status, "reason": reason},
        )


# --- pods and people ------------------------------------------------------------------


@transaction.atomic
def membership_set(*, pod: Pod, user: User, role: str, by: User) -> PodMembership:
    authority.require(authority.refuse_pod_admin(user=by, pod_id=pod.pk))
    if role not in PodMembership.Role.values:
        raise ValidationError({"role": f"Unknown pod role {role!r}."})
    membership, created = PodMembership.objects.update_or_create(user=user, pod=pod, defaults={"role": role})
    record(
        "pod.membership_set",
        user=by,
        pod_id=pod.pk,
        payload={"pod": pod.slug, "member": user.username, "role": role, "created": created},
    )
    return membership


@transaction.atomic
def membership_remove(*, pod: Pod, user: User, by: User) -> None:
    authority.require(authority.refuse_pod_admin(user=by, pod_id=pod.pk))
    owned = AgentSession.objects.filter(pod=pod, sto=user).exclude(status__in=TERMINAL_STATUSES).count()
    if owned:
        raise ValidationError(f"{user.username} still owns {owned} open session(s) in {pod.name}: reassign them first.")
    delegated = (
        Grant.objects.filter(session__pod=pod, delegator=user, revoked_at__isnull=True)
        .exclude(session__status__in=TERMINAL_STATUSES)
        .count()
    )
    if delegated and user.role != User.Role.MANAGER:
        raise ValidationError(
            f"{user.username} delegated {delegated} active grant(s) on open sessions of {pod.name}: "
            "revoke or reissue them first, so nobody acts on authority that has left the pod."
        )
    deleted, _ = PodMembership.objects.filter(pod=pod, user=user).delete()
    if deleted:
        record("pod.membership_removed", user=by, pod_id=pod.pk, payload={"pod": pod.slug, "member": user.username})


@transaction.atomic
def user_set_active(*, user: User, active: bool, by: User) -> User:
    """Let a person log in, or stop them (the admin's "active" box). Managers only; audited."""
    if by.role != User.Role.MANAGER and not by.is_superuser:
        raise authority.NotAllowed("Only a manager may let people log in or stop them.")
    if user.is_active != active:
        User.objects.filter(pk=user.pk).update(is_active=active)
        user.is_active = active
        record("user.active_set", user=by, payload={"member": user.username, "active": active})
    return user


# --- sessions -------------------------------------------------------------------------

API_KEY_ENV = re.compile(r"[A-Z][A-Z0-9_]{0,99}")
PRIVATE_ENV = frozenset(
    {
        "SECRET_KEY",
        "AUDIT_SIGNING_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "HEALTHZ_TOKEN",
        "SECRET_KEY_FILE",
        "AUDIT_SIGNING_KEY_FILE",
        "DEMO_PASSWORD",
    }
)
# git's ref rules, simplified and strict: no leading "-" or ".", no "..", no control or special characters
BRANCH_NAME = re.compile(r"(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]{1,200}(?<![./])")

SYSTEM_PROMPT = (
    "You are a careful software engineer working alone, overnight, in a git worktree, under authority "
    "delegated by a human. Use the tools to read, edit, run the tests and commit. Every action is "
    "checked against your grant and recorded. When a tool is denied, do not try to get around it: "
    "choose another way or write a handoff note. Commit your work with a clear message, write a "
    "handoff note (write_handoff), then call finish with a short summary."
)


@transaction.atomic
def session_launch(
    *,
    pod: Pod,
    sto: User,
    goal: str,
    by: User,
    repository: Repository,
    base_branch: str = "",
    name: str = "",
    success_criteria: str = "",
    task_type: str = TaskType.FEATURE,
    priority: int = 2,
    model: str = "",
    api_base: str = "",
    api_key_env: str = "",
    fallback_models: list[str] | None = None,
    seed: int = 0,
    tags: list[str] | None = None,
    grant: GrantSpec | None = None,
    delegator: User | None = None,
    start: bool = True,
    agent_kind: str = AgentKind.BUILTIN,
) -> AgentSession:
    """Create a session, its first grant, and (after commit) enqueue its first step. ``agent_kind``:
    the control room's own loop (``builtin``) or a supervised third-party CLI (``claude-code``, ``codex``)."""
    authority.require(authority.refuse_launch(user=by, pod_id=pod.pk, sto=sto))
    goal = (goal or "").strip()
    errors: dict[str, str] = {}
    if not goal:
        errors["goal"] = "Give the agent a goal."
    if task_type not in TaskType.values:
        errors["task_type"] = f"Unknown task type {task_type!r}."
    if priority not in (0, 1, 2, 3):
        errors["priority"] = "Priority is P0 to P3."
    if api_key_env and (not API_KEY_ENV.fullmatch(api_key_env) or api_key_env in PRIVATE_ENV):
        errors["api_key_env"] = (
            "Name an environment variable holding a model key (e.g. OPENAI_API_KEY); the control room's own "
            "secrets cannot be sent to a model endpoint."
        )
    if agent_kind not in AgentKind.values:
        errors["agent_kind"] = f"Unknown agent {agent_kind!r}: choose one of {', '.join(AgentKind.values)}."
    if base_branch and not BRANCH_NAME.fullmatch(base_branch):
        errors["base_branch"] = f"{base_branch!r} is not a usable branch name."
    api_base = (api_base or "").strip()
    api_base_refused = api_base_problem(api_base)
    if api_base_refused:
        errors["api_base"] = api_base_refused
    spec = grant or GrantSpec()
    errors.update(grant_spec_errors(spec))
    if errors:
        raise ValidationError(errors)
    now = timezone.now()
    session = AgentSession.objects.create(
        pod=pod,
        sto=sto,
        created_by=by,
        goal=goal,
        name=Truncator(name.strip() or goal.splitlines()[0]).chars(110),
        success_criteria=success_criteria.strip(),
        task_type=task_type,
        priority=priority,
        repository=repository,
        base_branch=base_branch or repository.default_branch,
        model=model or settings.CONTROLROOM["DEFAULT_MODEL"],
        api_base=api_base,
        api_key_env=api_key_env,
        fallback_models=list(fallback_models or []),
        seed=seed,
        tags=list(tags or []),
        agent_kind=agent_kind,
        status=Status.QUEUED,
        status_reason="waiting for a worker",
        created_at=now,
        updated_at=now,
    )
    from agents.runtime.worktrees import branch_name

    session.branch = branch_name(session.pk, session.name)
    session.worktree_path = str(settings.CONTROLROOM["WORKTREES_DIR"] / f"s{session.pk}")
    session.save(update_fields=["branch", "worktree_path"])
    record(
        "session.launched",
        session=session,
        user=by,
        on_behalf_of=sto,
        payload={
            "name": session.name,
            "goal": goal,
            "success_criteria": session.success_criteria,
            "pod": pod.slug,
            "sto": sto.username,
            "model": session.model,
            "agent_kind": session.agent_kind,
            "api_base": api_base,
            "repository": repository.name,
            "base_branch": session.base_branch,
            "branch": session.branch,
            "priority": priority,
            "task_type": task_type,
            "tags": session.tags,
        },
    )
    _issue_grant(session=session, spec=spec, by=by, delegator=delegator or sto, previous=None)
    TranscriptEntry.objects.create(session=session, seq=1, iteration=1, role="system", content=SYSTEM_PROMPT)
    TranscriptEntry.objects.create(session=session, seq=2, iteration=1, role="user", content=initial_brief(session))
    send_on_commit(session.pk, session.pod_id)
    if start:
        # when its first step went on the queue: the tick re-sends it if no worker ever took it
        # (a worker host lost with the message reserved), see agents.tasks.tick
        AgentSession.objects.filter(pk=session.pk).update(enqueued_at=timezone.now())
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=priority)
    return session


def initial_brief(session: AgentSession, *, extra: str = "") -> str:
    parts = [f"Goal: {session.goal}"]
    if session.success_criteria:
        parts.append(f"Success criteria: {session.success_criteria}")
    parts.append(f"Repository: {session.repository.name}, your branch {session.branch} (from {session.base_branch}).")
    if extra:
        parts.append(extra)
    return "\n\n".join(parts)


def _issue_grant(*, session: AgentSession, spec: GrantSpec, by: User, delegator: User, previous: Grant | None) -> Grant:
    authority.require(authority.refuse_delegation(delegator=delegator, session=session, mode=spec.mode))
    if by.pk != delegator.pk:
        # Issuing on someone else's authority: only the pod lead or a manager may record that.
        authority.require(authority.refuse_pod_admin(user=by, pod_id=session.pod_id))
    now = timezone.now()
    not_before = spec.not_before or now
    expires_at = spec.expires_at or (not_before + timedelta(hours=spec.hours))
    # Versions keep counting after a revocation (no active grant then): number from the newest one.
    latest = session.grants.order_by("-version").first()
    if previous is None and latest is not None:
        previous = latest if not hasattr(latest, "superseded_by") else None
    grant = Grant.objects.create(
        session=session,
        version=(latest.version + 1) if latest else 1,
        delegator=delegator,
        issued_by=by,
        mode=spec.mode,
        allow=list(spec.allow),
        ask=list(spec.ask),
        deny=list(spec.deny),
        max_steps=spec.max_steps,
        max_tokens=spec.max_tokens,
        max_cost_usd=spec.max_cost_usd,
        max_wall_seconds=spec.max_wall_seconds,
        max_tool_calls=spec.max_tool_calls,
        not_before=not_before,
        expires_at=expires_at,
        on_unanswered=spec.on_unanswered,
        justification=spec.justification,
        issued_at=now,
        supersedes=previous,
    )
    record("grant.issued", session=session, user=by, on_behalf_of=delegator, grant=grant, payload=_grant_payload(grant))
    return grant


@transaction.atomic
def grant_issue(
    *, session: AgentSession, spec: GrantSpec, by: User, delegator: User | None = None, reason: str = "grant changed"
) -> Grant:
    """Change a session's authority: revoke the current grant and issue the next version."""
    errors = grant_spec_errors(spec)
    if errors:
        raise ValidationError(errors)
    session = AgentSession.objects.select_for_update().get(pk=session.pk)
    previous = active_grant(session=session)
    if previous is not None:
        _revoke(grant=previous, by=by, reason=f"superseded: {reason}")
    # by default the person who changes the authority is the one delegating it (they must hold it)
    grant = _issue_grant(session=session, spec=spec, by=by, delegator=delegator or by, previous=previous)
    if session.status == Status.BLOCKED and session.hold == "":
        # A new grant (more budget, a new window) lets a blocked session carry on.
        set_status(session, Status.RUNNING, reason=f"unblocked by grant v{grant.version}", by=by)
        enqueue_step_on_commit(session_id=session.pk, step=session.steps + 1, priority=session.priority)
    else:
        session_update(session)
    return grant


def _revoke(*, grant: Grant, by: User, reason: str) -> None:
    revoked = Grant.objects.filter(pk=grant.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=by, revoke_reason=Truncator(reason).chars(480)
    )
    if not revoked:
        return  # already revoked (a double submit): nothing changed, nothing to record
    record(
        "grant.revoked",
        session=grant.session,
        user=by,
        on_behalf_of=grant.delegator,
        grant=grant,
        payload={"grant": grant.pk, "version": grant.version, "reason": reason},
    )


@transaction.atomic
def grant_revoke(*, grant: Grant, by: User, reason: str) -> None:
    authority.require(authority.refuse_session_control(user=by, session=grant.session))
    if not reason.strip():
        raise ValidationError({"reason": "Say why the grant is revoked."})
    _revoke(grant=grant, by=by, reason=reason)
    session_update(grant.session)


@transaction.atomic
def sto_assign(*, session: AgentSession, new_sto: User, by: User) -> AgentSession:
    """Reassign the Single Task Owner: only the pod lead or a manager; the new STO must be in the pod."""
    authority.require(authority.refuse_pod_admin(user=by, pod_id=session.pod_id))
    if not PodMembership.objects.filter(pod_id=session.pod_id, user=new_sto).exists():
        raise ValidationError({"sto": f"{new_sto.username} is not a member of pod {session.pod.name}."})
    session = AgentSession.objects.select_for_update().select_related("sto", "pod").get(pk=session.pk)
    previous = session.sto
    if previous.pk == new_sto.pk:
        raise ValidationError({"sto": f"{new_sto.username} already owns this session."})
    session_update(session, sto=new_sto)
    record(
        "session.sto_reassigned",
        session=session,
        user=by,
        on_behalf_of=new_sto,
        payload={"from": previous.username, "to": new_sto.username},
    )
    return session


@transaction.atomic
def session_set_priority(*, session: AgentSession, priority: int, by: User) -> AgentSession:
    if by.pk != session.sto_id:
        authority.require(authority.refuse_pod_admin(user=by, pod_id=session.pod_id))
    authority.require(authority.refuse_session_control(user=by, session=session))
    if priority not in (0, 1, 2, 3):
        raise ValidationError({"priority": "Priority is P0 to P3."})
    previous = session.priority
    session_update(session, priority=priority)
    record("session.priority_set", session=session, user=by, payload={"from": previous, "to": priority})
    return session


def tool_call_reserve(*, session_id: int, limit: int | None, activity: str | None = None) -> bool:
    """Take one unit of the tool-call budget, atomically (a conditional UPDATE): however many calls
    race for the last units, exactly ``limit`` succeed.

    ``activity``: also show it as the session's current activity (version + 1, heartbeat) in the
    same statement. No live update is scheduled: the runtime broadcasts only tools that run long.
    """
    if activity is not None:  # the runtime's case, on every tool call: a prepared statement
        values: dict[str, Any] = dict(pk=session_id, activity=activity, now=timezone.now())
        if limit is None:
            return _RESERVE_UNLIMITED.run(**values) == 1
        return _RESERVE.run(**values, limit=limit) == 1
    rows = AgentSession.objects.filter(pk=session_id)
    if limit is not None:
        rows = rows.filter(tool_calls__lt=limit)
    return rows.update(tool_calls=F("tool_calls") + 1) == 1


def _reserve(v, *, limited: bool):
    rows = AgentSession.objects.filter(pk=v.pk)
    if limited:
        rows = rows.filter(tool_calls__lt=v.limit)
    changes = dict(
        tool_calls=F("tool_calls") + 1,
        current_activity=v.activity,
        heartbeat_at=v.now,
        updated_at=v.now,
        version=F("version") + 1,
    )
    return rows, changes


_RESERVE = PreparedUpdate(lambda v: _reserve(v, limited=True), pk=int, activity=str, now=datetime, limit=int)
_RESERVE_UNLIMITED = PreparedUpdate(lambda v: _reserve(v, limited=False), pk=int, activity=str, now=datetime)


# --- controls -------------------------------------------------------------------------


def _locked(session: AgentSession) -> AgentSession:
    return AgentSession.objects.select_for_update().select_related("pod", "sto").get(pk=session.pk)


@transaction.atomic
def session_pause(*, session: AgentSession, by: User, reason: str = "") -> AgentSession:
    authority.require(authority.refuse_session_control(user=by, session=session))
    session = _locked(session)
    if session.is_terminal:
        raise ValidationError(f"Session #{session.pk} has already ended ({session.status}).")
    if session.status != Status.PAUSED:
        set_status(session, Status.PAUSED, reason=reason or f"paused by {by.username}", by=by, hold="user")
        record("session.paused", session=session, user=by, payload={"reason": reason})
    return session


@transaction.atomic
def session_resume(*, session: AgentSession, by: User) -> AgentSession:
    authority.require(authority.refuse_session_control(user=by, session=session))
    session = _locked(session)
    if session.status not in (Status.PAUSED, Status.BLOCKED):
        raise ValidationError(f"Session #{session.pk} is {session.get_status_display().lower()}, not paused.")
    if FleetControl.current().stopped:
        raise ValidationError("The fleet is stopped: resume the fleet first.")
    if session.pod.paused:
        raise ValidationError(f"Pod {session.pod.name} is paused: resume the pod first.")
    set_status(session, Status.RUNNING, reason=f"resumed by {by.username}", by=by, hold="")
    record("session.resumed", session=session, user=by)
    enqueue_step_on_commit(session_id=session.pk, step=session.steps + 1, priority=session.priority)
    return session


@transaction.atomic
def session_cancel(*, session: AgentSession, by: User, reason: str = "") -> AgentSession:
    authority.require(authority.refuse_session_control(user=by, session=session))
    session = _locked(session)
    if session.is_terminal:
        raise ValidationError(f"Session #{session.pk} has already ended ({session.status}).")
    _deny_open_escalations(session=session, by=by, reason="session cancelled")
    set_status(session, Status.CANCELLED, reason=reason or f"cancelled by {by.username}", by=by, hold="")
    record("session.cancelled", session=session, user=by, payload={"reason": reason})
    return session


@transaction.atomic
def session_recover(*, session: AgentSession, by: User) -> AgentSession:
    """A person's one-click recovery of a stranded session (``selectors.is_stranded``: running, no
    heartbeat and no lease for STALE_AFTER_S): its next step is sent again, as the housekeeping
    tick's recovery does (``enqueue_step_on_commit``, the step number makes a duplicate harmless),
    now rather than at the next tick. Audited as ``session.recovered``. The tile stays stranded
    until a worker takes the step and beats."""
    authority.require(authority.refuse_session_control(user=by, session=session))
    session = _locked(session)
    now = timezone.now()
    if not selectors.is_stranded(session, now=now):
        if session.status != Status.RUNNING:
            raise ValidationError(
                f"Session #{session.pk} is {session.get_status_display().lower()}, not stranded: nothing to recover."
            )
        raise ValidationError(f"Session #{session.pk} is not stranded: its worker is alive (heartbeat or lease).")
    step = session.steps + 1
    record(
        "session.recovered",
        session=session,
        user=by,
        payload={
            "step": step,
            "heartbeat_at": session.heartbeat_at.isoformat() if session.heartbeat_at else None,
            "lease_owner": session.lease_owner,
            "lease_until": session.lease_until.isoformat() if session.lease_until else None,
            "worker_host": session.worker_host,
        },
    )
    session_update(
        session,
        locked=True,
        enqueued_at=now,
        current_activity=Truncator(f"recovering: step {step} sent again by {by.username}").chars(200),
    )
    enqueue_step_on_commit(session_id=session.pk, step=step, priority=session.priority)
    return session


def _deny_open_escalations(*, session: AgentSession, by: User, reason: str) -> None:
    Escalation.objects.filter(session=session, state=Escalation.State.OPEN).update(
        state=Escalation.State.DENIED, decided_by=by, decided_at=timezone.now(), decision_reason=reason
    )


def session_close(*, session: AgentSession, by: User, reason: str) -> str:
    """End a session a review decision closes (inside the caller's transaction, on a locked
    session): cancelled if it had not ended, its open questions denied. Its previous status."""
    previous = session.status
    if session.status not in TERMINAL_STATUSES:
        _deny_open_escalations(session=session, by=by, reason=reason)
        set_status(session, Status.CANCELLED, reason=reason, by=by, hold="")
    return previous


def session_back_to_work(
    *, session: AgentSession, by: User, reason: str, iteration_reason: str, note: str, activity: str, **changes
) -> None:
    """Send a session back to work (inside the caller's transaction, on a locked session): running
    again, a fresh iteration whose brief ends with ``note``, its next step enqueued after commit.
    ``changes``: other fields to set with the status (e.g. its review state)."""
    set_status(
        session,
        Status.RUNNING,
        reason=reason,
        by=by,
        hold="",
        finished_at=None,
        idle_steps=0,
        current_activity=Truncator(activity).chars(200),
        **changes,
    )
    session_start_iteration(session=session, reason=iteration_reason, extra=note, by=by)
    enqueue_step_on_commit(session_id=session.pk, step=session.steps + 1, priority=session.priority)


def _require_manager(by: User) -> None:
    if by.role != User.Role.MANAGER and not by.is_superuser:
        raise authority.NotAllowed("Only a manager may stop or resume the whole fleet.")


@transaction.atomic
def fleet_stop(*, by: User, reason: str = "") -> int:
    """Halt every agent before its next tool call. Running steps see the switch and park their session."""
    _require_manager(by)
    control = FleetControl.current()
    FleetControl.objects.filter(pk=control.pk).update(
        stopped=True, changed_by=by, changed_at=timezone.now(), reason=reason
    )
    sessions = list(AgentSession.objects.select_for_update().filter(status__in=[Status.QUEUED, Status.RUNNING]))
    for session in sessions:
        set_status(session, Status.PAUSED, reason=f"fleet stopped by {by.username}", by=by, hold="fleet")
    record("fleet.stopped", user=by, payload={"reason": reason, "sessions": [s.pk for s in sessions]})
    return len(sessions)


@transaction.atomic
def fleet_resume(*, by: User) -> int:
    _require_manager(by)
    FleetControl.objects.filter(pk=FleetControl.current().pk).update(
        stopped=False, changed_by=by, changed_at=timezone.now(), reason=""
    )
    sessions = list(
        AgentSession.objects.select_for_update().select_related("pod").filter(status=Status.PAUSED, hold="fleet")
    )
    resumed = []
    for session in sessions:
        if session.pod.paused:
            session_update(session, hold="pod")
            continue
        set_status(session, Status.RUNNING, reason=f"fleet resumed by {by.username}", by=by, hold="")
        enqueue_step_on_commit(session_id=session.pk, step=session.steps + 1, priority=session.priority)
        resumed.append(session.pk)
    record("fleet.resumed", user=by, payload={"sessions": resumed})
    return len(resumed)


@transaction.atomic
def pod_pause(*, pod: Pod, by: User, reason: str = "") -> int:
    authority.require(authority.refuse_pod_admin(user=by, pod_id=pod.pk))
    Pod.objects.filter(pk=pod.pk).update(paused=True)
    sessions = list(
        AgentSession.objects.select_for_update().filter(pod=pod, status__in=[Status.QUEUED, Status.RUNNING])
    )
    for session in sessions:
        set_status(session, Status.PAUSED, reason=f"pod paused by {by.username}", by=by, hold="pod")
    record(
        "pod.paused",
        user=by,
        pod_id=pod.pk,
        payload={"pod": pod.slug, "reason": reason, "sessions": [s.pk for s in sessions]},
    )
    return len(sessions)


@transaction.atomic
def pod_resume(*, pod: Pod, by: User) -> int:
    authority.require(authority.refuse_pod_admin(user=by, pod_id=pod.pk))
    Pod.objects.filter(pk=pod.pk).update(paused=False)
    stopped = FleetControl.current().stopped
    sessions = list(AgentSession.objects.select_for_update().filter(pod=pod, status=Status.PAUSED, hold="pod"))
    resumed = []
    for session in sessions:
        if stopped:
            session_update(session, hold="fleet")
            continue
        set_status(session, Status.RUNNING, reason=f"pod resumed by {by.username}", by=by, hold="")
        enqueue_step_on_commit(session_id=session.pk, step=session.steps + 1, priority=session.priority)
        resumed.append(session.pk)
    record("pod.resumed", user=by, pod_id=pod.pk, payload={"pod": pod.slug, "sessions": resumed})
    return len(resumed)


@transaction.atomic
def session_block_expired(*, session: AgentSession) -> str:
    """The grant's window closed: deny what is still waiting for a human (listed for the morning)
    and block the session with the reason."""
    session = _locked(session)
    grant = active_grant(session=session)
    if grant is None:
        reason = "no active grant: issue one to continue"
    else:
        reason = f"grant v{grant.version} expired at {timezone.localtime(grant.expires_at):%Y-%m-%d %H:%M %Z}"
        for escalation in Escalation.objects.select_for_update().filter(session=session, state=Escalation.State.OPEN):
            Escalation.objects.filter(pk=escalation.pk).update(
                state=Escalation.State.EXPIRED,
                decided_at=timezone.now(),
                decision_reason="the grant expired before anyone answered",
            )
            record(
                "escalation.expired",
                session=session,
                on_behalf_of=grant.delegator,
                grant=grant,
                provenance="expired",
                payload={"escalation": escalation.pk, "action": escalation.action},
            )
        record(
            "grant.expired",
            session=session,
            on_behalf_of=grant.delegator,
            grant=grant,
            provenance="expired",
            payload={"grant": grant.pk, "expires_at": grant.expires_at},
        )
    if session.status not in TERMINAL_STATUSES:
        set_status(session, Status.BLOCKED, reason=reason, current_activity=reason[:200])
    return reason


# --- escalations ----------------------------------------------------------------------

DECISIONS = ("allow-once", "allow-always", "deny")


def escalation_decide(
    *, escalation: Escalation, by: User, decision: str, reason: str = "", via: str = ""
) -> Escalation:
    """A human answers an escalation. A refused attempt (leader, outsider, agent) is recorded too."""
    if decision not in DECISIONS:
        raise ValidationError({"decision": f"Unknown decision {decision!r}; use {', '.join(DECISIONS)}."})
    refusal = authority.refuse_session_control(user=by, session=escalation.session)
    if refusal:
        with transaction.atomic():
            record(
                "escalation.refused",
                session=escalation.session,
                user=by,
                provenance="human",
                payload={"escalation": escalation.pk, "decision": decision, "refusal": refusal},
            )
        raise authority.NotAllowed(refusal)
    if decision == "allow-always" and not escalation.rule:
        raise ValidationError(
            "This action asked because of a guard (protected path or a command that cannot be analysed): "
            "it can be allowed once, not always."
        )
    return _escalation_decide(escalation=escalation, by=by, decision=decision, reason=reason, via=via)


@transaction.atomic
def _escalation_decide(*, escalation: Escalation, by: User, decision: str, reason: str, via: str = "") -> Escalation:
    escalation = Escalation.objects.select_for_update().select_related("grant", "session").get(pk=escalation.pk)
    if escalation.state != Escalation.State.OPEN:
        raise ValidationError(
            f"Escalation #{escalation.pk} was already decided ({escalation.get_state_display().lower()})."
        )
    session = _locked(escalation.session)
    now = timezone.now()
    new_state = {
        "allow-once": Escalation.State.ALLOWED_ONCE,
        "allow-always": Escalation.State.ALLOWED_ALWAYS,
        "deny": Escalation.State.DENIED,
    }[decision]
    Escalation.objects.filter(pk=escalation.pk).update(
        state=new_state, decided_by=by, decided_at=now, decision_reason=reason
    )
    escalation.refresh_from_db()
    record(
        "escalation.decided",
        session=session,
        user=by,
        on_behalf_of=escalation.grant.delegator,
        grant=escalation.grant,
        provenance="human",
        payload={
            "escalation": escalation.pk,
            "decision": decision,
            "reason": reason,
            "action": escalation.action,
            "action_hash": escalation.action_hash,
            "tool": escalation.tool,
            **({"via": via} if via else {}),
        },
    )
    if decision == "allow-always":
        # add the rule to the session's grant as it is now (it may have changed since the question)
        grant = active_grant(session=session) or escalation.grant
        rules = [line for line in escalation.rule.splitlines() if line.strip()]
        rule = ", ".join(rules)
        spec = GrantSpec(
            mode=grant.mode,
            allow=tuple(dict.fromkeys([*grant.allow, *rules])),
            ask=tuple(grant.ask),
            deny=tuple(grant.deny),
            max_steps=grant.max_steps,
            max_tokens=grant.max_tokens,
            max_cost_usd=grant.max_cost_usd,
            max_wall_seconds=grant.max_wall_seconds,
            max_tool_calls=grant.max_tool_calls,
            not_before=grant.not_before,
            expires_at=grant.expires_at,
            on_unanswered=grant.on_unanswered,
            justification=f"allow always: {rule}",
        )
        if not grant.is_revoked:
            _revoke(grant=grant, by=by, reason=f"superseded: allow always {rule}")
        _issue_grant(
            session=session,
            spec=spec,
            by=by,
            delegator=by if by.role == User.Role.MANAGER else grant.delegator,
            previous=grant,
        )
    if (
        session.status == Status.NEEDS_APPROVAL
        and not Escalation.objects.filter(session=session, state=Escalation.State.OPEN).exists()
    ):
        set_status(session, Status.RUNNING, reason=f"{by.username}: {decision}", by=by)
        enqueue_step_on_commit(session_id=session.pk, step=session.steps + 1, priority=session.priority)
    else:
        session_update(session)
    return escalation


@dataclass(frozen=True)
class GroupOutcome:
    """What a grouped decision did to one of its escalations."""

    escalation_id: int
    session_id: int | None
    decided: bool
    text: str


def escalation_group_decide(
    *, escalation_ids: list[int], action_hash: str, by: User, decision: str, reason: str = ""
) -> list[GroupOutcome]:
    """One human decision for several sessions asking for the same canonical action: each
    escalation is decided by ``escalation_decide`` in its own transaction (its own audit event,
    decider, delegator and provenance), so one that cannot be decided (answered meanwhile, not the
    decider's to decide, a grant changed) is reported and leaves the others decided. An id whose
    escalation asks for another action than ``action_hash`` is left alone: a stale preview never
    decides something the human did not see."""
    if decision not in DECISIONS:
        raise ValidationError({"decision": f"Unknown decision {decision!r}; use {', '.join(DECISIONS)}."})
    if not escalation_ids:
        raise ValidationError("Choose at least one session to decide for.")
    found = {
        e.pk: e
        for e in Escalation.objects.select_related("session__pod", "session__sto", "grant__delegator").filter(
            pk__in=escalation_ids
        )
    }
    outcomes = []
    for escalation_id in dict.fromkeys(escalation_ids):
        escalation = found.get(escalation_id)
        if escalation is None:
            outcomes.append(GroupOutcome(escalation_id, None, False, f"Escalation #{escalation_id} does not exist."))
            continue
        if escalation.action_hash != action_hash:
            outcomes.append(
                GroupOutcome(
                    escalation.pk,
                    escalation.session_id,
                    False,
                    f"Escalation #{escalation.pk} asks for another action: left for its own decision.",
                )
            )
            continue
        try:
            escalation_decide(escalation=escalation, by=by, decision=decision, reason=reason)
        except authority.NotAllowed as exc:
            outcomes.append(GroupOutcome(escalation.pk, escalation.session_id, False, str(exc)))
        except ValidationError as exc:
            outcomes.append(GroupOutcome(escalation.pk, escalation.session_id, False, validation_text(exc)))
        except IntegrityError:
            outcomes.append(
                GroupOutcome(
                    escalation.pk,
                    escalation.session_id,
                    False,
                    f"Escalation #{escalation.pk}: the grant changed since it asked; allow it once or edit the grant.",
                )
            )
        else:
            outcomes.append(GroupOutcome(escalation.pk, escalation.session_id, True, ""))
    return outcomes


# --- decision links ---------------------------------------------------------------------


def escalation_link(*, escalation: Escalation, user: User) -> str:
    """The path of a signed, expiring, single-use decision link of ``escalation`` for ``user``
    (agents/links.py). An escalation made before links existed gets its nonce now."""
    if not escalation.link_nonce:
        Escalation.objects.filter(pk=escalation.pk, link_nonce="").update(link_nonce=links.new_nonce())
        escalation.link_nonce = Escalation.objects.filter(pk=escalation.pk).values_list("link_nonce", flat=True).get()
    return links.link_path(escalation_id=escalation.pk, user_id=user.pk, nonce=escalation.link_nonce)


class LinkUsed(ValidationError):
    """The decision link was used already (or replaced): it is good once."""


def escalation_decide_by_link(
    *, escalation: Escalation, by: User, nonce: str, decision: str, reason: str = ""
) -> Escalation:
    """Decide through a signed link: the link is used in the same transaction as the decision (a
    failed decision leaves it usable), then ``escalation_decide`` as from the queue."""
    authority.require(authority.refuse_session_control(user=by, session=escalation.session))
    with transaction.atomic():
        used = Escalation.objects.filter(pk=escalation.pk, link_nonce=nonce, link_used_at__isnull=True).update(
            link_used_at=timezone.now()
        )
        if not used:
            raise LinkUsed("This decision link was already used: each link decides once.")
        return escalation_decide(escalation=escalation, by=by, decision=decision, reason=reason, via="link")


# --- steering ---------------------------------------------------------------------------

STEER_MAX_CHARS = 4000


@transaction.atomic
def session_steer(*, session: AgentSession, by: User, text: str) -> SteeringMessage:
    """A person (the STO, the pod lead or a manager) tells a running agent something without
    waiting for it to finish: stored and audited now, in the agent's context at its next step
    (``steering_deliver``)."""
    authority.require(authority.refuse_session_control(user=by, session=session))
    text = (text or "").strip()
    if not text:
        raise ValidationError({"text": "Write the message for the agent."})
    if len(text) > STEER_MAX_CHARS:
        raise ValidationError({"text": f"Keep the message under {STEER_MAX_CHARS} characters ({len(text)} now)."})
    session = _locked(session)
    if session.is_terminal:
        raise ValidationError(f"Session #{session.pk} has ended ({session.status}): no agent would read it.")
    message = SteeringMessage.objects.create(session=session, author=by, text=text)
    record(
        "session.steered",
        session=session,
        user=by,
        provenance="human",
        payload={"message": message.pk, "text": text, "status": session.status},
    )
    session_update(session, locked=True)
    return message


def steering_text(message: SteeringMessage) -> str:
    """How a steering message reads in the agent's context."""
    return (
        f"Message from {message.author.username} (a human supervising this session), sent while you were "
        f"working. Take it into account from now on:\n\n{message.text}"
    )


def steering_deliver(*, session: AgentSession, grant: Grant | None, step: int, seq: int) -> int:
    """Put the session's undelivered steering messages into its transcript, as user messages
    numbered from ``seq``, before the step's model call (inside the runner's transaction). The
    number of entries appended."""
    pending = list(
        SteeringMessage.objects.select_for_update()
        .filter(session=session, delivered_at__isnull=True)
        .select_related("author")
        .order_by("created_at", "pk")
    )
    now = timezone.now()
    for offset, message in enumerate(pending):
        entry = transcript_append(
            session_id=session.pk,
            iteration=session.iteration,
            step=step,
            role="user",
            content=steering_text(message),
            name="steering",  # shown in the transcript; not sent (a user message carries no name)
            seq=seq + offset,
        )
        SteeringMessage.objects.filter(pk=message.pk).update(
            delivered_at=now, delivered_step=step, transcript_entry=entry
        )
        agent_event_record(
            kind="steering.delivered",
            session=session,
            grant=grant,
            provenance="human",
            payload={"message": message.pk, "by": message.author.username, "step": step, "seq": entry.seq},
        )
    return len(pending)


def record_refused_action(*, session: AgentSession, by: User, action: str, refusal: str) -> None:
    """Record that someone tried an action on a session and was refused (own transaction)."""
    with transaction.atomic():
        record("session.action_refused", session=session, user=by, payload={"action": action, "refusal": refusal})


# --- worktrees ------------------------------------------------------------------------


def _leased(session: AgentSession, now: datetime | None = None) -> bool:
    """A worker is inside a step of this session right now."""
    return bool(session.lease_until and session.lease_until > (now or timezone.now()))


def session_worktree_ensure(*, session: AgentSession) -> None:
    """The session's worktree on its branch, re-created if it was removed (WorktreeError if git cannot).
    A worktree on another worker host's own disk is left to that host: its next step recreates it."""
    from agents import hosts

    repo_path = hosts.worktree_repository(session)
    if repo_path is None:
        return
    worktrees.ensure_worktree(
        repo_path=repo_path,
        base_branch=session.base_branch,
        branch=session.branch,
        worktree_path=Path(session.worktree_path),
    )


def session_worktree_remove(*, session: AgentSession, reason: str, by: User | None = None) -> int | None:
    """Remove the session's worktree (the branch and its commits stay). Bytes freed, or None when
    nothing was removed (no worktree, a step running, or git refused: logged)."""
    from agents import hosts

    if not session.worktree_path:
        return None
    repo_path = hosts.worktree_repository(session)
    if repo_path is None:  # on another host's own disk: that host removes it (its queue)
        current_app.send_task(
            "agents.tasks.worktree_remove", args=[session.pk, reason], queue=host_queue(session.worker_host)
        )
        return None
    path = Path(session.worktree_path)
    if not path.exists() or _leased(session):
        return None
    try:
        size = worktrees.disk_usage(path)
        removed = worktrees.remove_worktree(repo_path=repo_path, worktree_path=path)
    except worktrees.WorktreeError as exc:
        logger.warning("worktree of session %s not removed: %s", session.pk, exc)
        return None
    if not removed:
        return None
    with transaction.atomic():
        record(
            "session.worktree_removed",
            session=session,
            user=by,
            payload={"path": str(path), "bytes": size, "reason": reason},
        )
    return size


# --- the runtime ----------------------------------------------------------------------
#
# Called by the step runner (agents/runtime/loop.py) inside the transactions it opens: none of
# these opens its own (a savepoint per tool call would cost the hot path two statements).


def transcript_append(
    *,
    session_id: int,
    iteration: int,
    step: int,
    role: str,
    content: str,
    tool_calls=None,
    tool_call_id: str = "",
    name: str = "",
    seq: int | None = None,
) -> TranscriptEntry:
    """One transcript entry; ``seq`` the next sequence number when the caller keeps it (the runner
    does), else read (the (session, seq) unique key refuses a clash)."""
    if seq is None:
        seq = (TranscriptEntry.objects.filter(session_id=session_id).aggregate(m=Max("seq"))["m"] or 0) + 1
    return TranscriptEntry.objects.create(
        session_id=session_id,
        seq=seq,
        iteration=iteration,
        step=step,
        role=role,
        content=content or "",
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        name=name,
    )


def session_start_iteration(*, session: AgentSession, reason: str, extra: str = "", by: User | None = None) -> None:
    """Begin a fresh context: goal, latest handoff note, the branch's git log, and any extra note.
    By the runtime (every N steps or past a token threshold, ``by`` None) or a person (a review's
    change request)."""
    from agents.runtime.loop import git_log_summary  # the runtime imports this module

    with transaction.atomic():
        session = AgentSession.objects.select_for_update().select_related("repository").get(pk=session.pk)
        iteration = session.iteration + 1
        handoff = session.handoff or {}
        handoff_text = (
            f"Latest handoff note: status {handoff.get('status', '?')}; next action: {handoff.get('next_action', '?')}; "
            f"do not: {'; '.join(handoff.get('do_not') or []) or 'nothing listed'}."
            if handoff
            else "No handoff note yet."
        )
        brief = initial_brief(
            session,
            extra="\n\n".join(
                filter(
                    None,
                    [
                        f"This is iteration {iteration}: a fresh context. {handoff_text}",
                        "Commits on your branch so far (git log --oneline):\n" + git_log_summary(session),
                        extra,
                    ],
                )
            ),
        )
        AgentSession.objects.filter(pk=session.pk).update(iteration=iteration, iteration_started_step=session.steps)
        transcript_append(
            session_id=session.pk,
            iteration=iteration,
            step=session.steps,
            role="system",
            content=SYSTEM_PROMPT,
        )
        transcript_append(session_id=session.pk, iteration=iteration, step=session.steps, role="user", content=brief)
        record(
            "session.iteration",
            session=session,
            user=by,
            agent=by is None,
            payload={"iteration": iteration, "reason": reason, "extra": extra},
        )
        send_on_commit(session.pk, session.pod_id)


def agent_event_record(
    *, kind: str, session: AgentSession, grant: Grant | None, payload: dict, provenance: str = ""
) -> None:
    """Record what the agent did, on its delegator's authority under ``grant`` (tool calls,
    commits, test runs, interruptions, model calls), inside the caller's transaction."""
    record(
        kind,
        session=session,
        agent=True,
        on_behalf_of=grant.delegator if grant else None,
        grant=grant,
        provenance=provenance,
        payload=payload,
    )


@transaction.atomic
def session_park(
    *,
    session_id: int,
    status: str,
    reason: str,
    hold: str = "",
    grant: Grant | None = None,
    event: str | None = None,
    payload: dict | None = None,
) -> str | None:
    """The runtime stops a session's work: ``status`` with its reason (and ``event`` recorded on the
    grant's authority). A human's pause or cancel stands: then nothing changes and the status it
    was left in is returned (None when parked)."""
    session = AgentSession.objects.select_for_update().select_related("pod").get(pk=session_id)
    if session.is_terminal or (session.status == Status.PAUSED and status != Status.PAUSED):
        return session.status
    set_status(
        session,
        status,
        reason=reason,
        agent=True,
        hold=hold or session.hold,
        current_activity=Truncator(" ".join(reason.split())).chars(200),
    )
    if event:
        agent_event_record(kind=event, session=session, grant=grant, payload=payload or {"reason": reason})
    return None


def escalation_open(
    *,
    session: AgentSession,
    grant: Grant,
    tool_call: ToolCall,
    action: str,
    action_hash: str,
    reason: str,
    reason_type: str,
    matched_rule: str,
    suggested_rules: list[str],
    deny_now: bool = False,
) -> Escalation:
    """The agent asks a human to allow ``action`` (inside the caller's transaction, with its tool
    call). ``deny_now``: the grant denies unanswered questions, so it is asked and denied at once
    (listed for the morning). ``suggested_rules``: what "allow always" would add."""
    escalation = Escalation.objects.create(
        session=session,
        grant=grant,
        tool_call=tool_call,
        tool=tool_call.name,
        action=action,
        action_hash=action_hash,
        reason=reason,
        rule="\n".join(suggested_rules),
        state=Escalation.State.DENIED if deny_now else Escalation.State.OPEN,
        decision_reason="nobody may be awake: the grant denies unanswered questions at once" if deny_now else "",
        decided_at=timezone.now() if deny_now else None,
        link_nonce=links.new_nonce(),
    )
    agent_event_record(
        kind="escalation.opened",
        session=session,
        grant=grant,
        provenance=reason_type,
        payload={
            "escalation": escalation.pk,
            "tool": tool_call.name,
            "action": action,
            "action_hash": action_hash,
            "reason": reason,
            "rule": matched_rule,
            "on_unanswered": grant.on_unanswered,
        },
    )
    return escalation


def approval_consume(*, session_id: int, action_hash: str) -> bool:
    """Use a human's approval of this exact action (inside the caller's transaction): "allow always"
    stands and is not used up; an "allow once" is consumed by a conditional UPDATE, so it lets one
    call through however many race for it. False when no approval stands."""
    approvals = Escalation.objects.filter(session_id=session_id, action_hash=action_hash)
    if approvals.filter(state=Escalation.State.ALLOWED_ALWAYS).exists():
        return True
    once = (
        approvals.filter(state=Escalation.State.ALLOWED_ONCE, consumed_at__isnull=True)
        .order_by("pk")
        .values_list("pk", flat=True)
        .first()
    )
    return (
        once is not None
        and Escalation.objects.filter(pk=once, consumed_at__isnull=True).update(consumed_at=timezone.now()) == 1
    )
