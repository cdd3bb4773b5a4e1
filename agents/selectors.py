"""Reads. Every selector that returns fleet data takes the viewer, so "who may see what" lives here.

Visibility: managers and leaders see every pod; members see the pods they belong to.
Authority (who may *act*) lives in agents/authority.py.
"""
from __future__ import annotations

from django.db.models import QuerySet

from agents.models import (
    AgentSession, Escalation, FleetControl, Grant, Pod, PodMembership, ReviewState, Status, User,
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


def active_grant(*, session: AgentSession) -> Grant | None:
    """The newest unrevoked grant of the session (expired ones included: expiry is checked at use)."""
    return session.grants.filter(revoked_at__isnull=True).order_by("-version").select_related("delegator").first()


def open_escalations(*, session: AgentSession) -> QuerySet[Escalation]:
    return session.escalations.filter(state=Escalation.State.OPEN)


def fleet_stopped() -> bool:
    return FleetControl.objects.filter(pk=1, stopped=True).exists()


def sessions_awaiting_review(*, pod_id: int) -> QuerySet[AgentSession]:
    return AgentSession.objects.filter(
        pod_id=pod_id, status=Status.SUCCEEDED, review_state__in=[ReviewState.NONE]
    )
