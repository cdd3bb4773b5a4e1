"""Reads. Every selector that returns fleet data takes the viewer, so "who may see what" lives here.

Visibility: managers and leaders see every pod; members see the pods they belong to.
Authority (who may *act*) lives in agents/authority.py.
"""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet

from agents.models import (
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


def pod_role_of(*, user: User, pod_id: int) -> str | None:
    return PodMembership.objects.filter(user=user, pod_id=pod_id).values_list("role", flat=True).first()


def active_grants(session) -> QuerySet[Grant]:
    """The session's unrevoked grants, the active one first (``session``: an instance, an id or an
    OuterRef — the runtime reads the active grant inside its per-tool-call query)."""
    return Grant.objects.filter(session=session, revoked_at__isnull=True).order_by("-version")


def active_grant(*, session: AgentSession) -> Grant | None:
    """The newest unrevoked grant of the session (expired ones included: expiry is checked at use)."""
    return active_grants(session).select_related("delegator").first()


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
