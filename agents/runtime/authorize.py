"""``authorize(session, tool_call)``: the one gate every tool call passes.

It gathers the facts from the database (grant, stop switches, budget, human approvals for this
exact action) into an ``EvalContext`` and asks the pure evaluator (agents/permissions/), which
decides without touching the database and fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from agents import permissions
from agents.models import AgentSession, Escalation, FleetControl, Grant, Pod
from agents.runtime.sandbox import sandbox_available
from agents.selectors import budget_exhausted, standing_approvals_q


@dataclass(frozen=True)
class ToolCallRequest:
    name: str
    args: dict


def grant_view(grant: Grant) -> permissions.GrantView:
    return permissions.GrantView(
        id=grant.pk,
        version=grant.version,
        mode=grant.mode,
        allow=tuple(grant.allow),
        ask=tuple(grant.ask),
        deny=tuple(grant.deny),
        not_before=grant.not_before,
        expires_at=grant.expires_at,
        revoked=grant.is_revoked,
    )


@dataclass(frozen=True)
class Switches:
    """The stop switches as the caller just read them (the runtime reads them with the session)."""

    fleet_stopped: bool
    pod_paused: bool
    session_stopped: bool


def read_switches(session: AgentSession) -> Switches:
    return Switches(
        fleet_stopped=FleetControl.objects.filter(pk=1, stopped=True).exists(),
        pod_paused=Pod.objects.filter(pk=session.pod_id, paused=True).exists(),
        session_stopped=AgentSession.objects.filter(pk=session.pk, status__in=["paused", "cancelled"]).exists(),
    )


def build_context(
    *,
    session: AgentSession,
    grant: Grant | None,
    now=None,
    check_budget: bool = True,
    switches: Switches | None = None,
    read_approvals: bool = True,
) -> permissions.EvalContext:
    """``switches``/``read_approvals=False``: the caller has just read the stop switches, and that
    no human approval stands for this session (the runtime reads both with its other facts)."""
    now = now or timezone.now()
    switches = switches or read_switches(session)
    approvals = (
        frozenset(
            Escalation.objects.filter(standing_approvals_q(), session=session).values_list("action_hash", flat=True)
        )
        if read_approvals
        else frozenset()
    )
    return permissions.EvalContext(
        worktree=str(Path(session.worktree_path)),
        now=now,
        grant=grant_view(grant) if grant else None,
        fleet_stopped=switches.fleet_stopped,
        pod_paused=switches.pod_paused,
        session_stopped=switches.session_stopped,
        delegator_active=bool(grant and grant.delegator.is_active),
        budget_exhausted=budget_exhausted(session=session, grant=grant, now=now) if (grant and check_budget) else None,
        sandbox_available=sandbox_available(settings.CONTROLROOM["SANDBOX"]),
        approved_action_hashes=approvals,
    )


def authorize(
    session: AgentSession,
    tool_call: ToolCallRequest,
    *,
    grant: Grant | None,
    switches: Switches | None = None,
    read_approvals: bool = True,
) -> permissions.Decision:
    context = build_context(session=session, grant=grant, switches=switches, read_approvals=read_approvals)
    return permissions.evaluate(tool_call.name, tool_call.args, context)
