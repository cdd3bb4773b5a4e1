"""Who may act on what. Pure decisions over the actor's role and pod role, each returning a
readable refusal (or None when allowed), so views, commands and services share one rule.

- Leaders read, never act.
- Session controls (pause/resume/cancel), escalation decisions and review decisions: the
  session's STO, the lead of its pod, or a manager.
- STO reassignment and membership management: the pod's lead or a manager.
- Launching: a member of the pod (for themselves or, as lead, for anyone in the pod) or a manager.
- Delegation: the delegator must be the session's STO, the pod lead or a manager, and can delegate
  no more than they hold: an STO who is not lead may delegate up to ``edits``; ``autonomous``
  needs the pod lead or a manager.
"""

from __future__ import annotations

from agents.models import AgentSession, PodMembership, User

#: The refusal for someone of another pod: it names no one of the session's pod.
OUTSIDER_REFUSAL = (
    "This session belongs to a pod you are not a member of: only its Single Task Owner, "
    "the pod lead or a manager may do this."
)


def sto_named_for(*, user: User, session: AgentSession) -> str:
    """The session's STO as a refusal may name them to ``user``: by name to someone who may see the
    session (its pod's members, managers, leaders), as "its Single Task Owner" to anyone else."""
    if user.is_authenticated and (
        user.role in (User.Role.MANAGER, User.Role.LEADER)
        or user.is_superuser
        or _pod_role(user, session.pod_id) is not None
    ):
        return f"the session's Single Task Owner ({session.sto.username})"
    return "the session's Single Task Owner"


class NotAllowed(PermissionError):
    """Raised by services when the actor lacks authority; the message is shown to the user."""


def _pod_role(user: User, pod_id: int) -> str | None:
    return PodMembership.objects.filter(user=user, pod_id=pod_id).values_list("role", flat=True).first()


def refuse_session_control(*, user: User, session: AgentSession) -> str | None:
    if not user.is_authenticated:
        return "You must be logged in."
    if user.role == User.Role.LEADER:
        return "Leaders read the fleet; they cannot act on agents."
    if user.role == User.Role.MANAGER or user.pk == session.sto_id:
        return None
    role = _pod_role(user, session.pod_id)
    if role == PodMembership.Role.LEAD:
        return None
    if role is None:  # someone of another pod: the refusal names nobody of this one
        return OUTSIDER_REFUSAL
    return f"Only the session's Single Task Owner ({session.sto.username}), the pod lead or a manager may do this."


def refuse_pod_admin(*, user: User, pod_id: int) -> str | None:
    if not user.is_authenticated:
        return "You must be logged in."
    if user.role == User.Role.LEADER:
        return "Leaders read the fleet; they cannot act on agents."
    if user.role == User.Role.MANAGER or _pod_role(user, pod_id) == PodMembership.Role.LEAD:
        return None
    return "Only the pod's lead or a manager may do this."


def refuse_launch(*, user: User, pod_id: int, sto: User) -> str | None:
    if not user.is_authenticated:
        return "You must be logged in."
    if user.role == User.Role.LEADER:
        return "Leaders read the fleet; they cannot launch agents."
    if _pod_role(sto, pod_id) is None:
        return f"The Single Task Owner {sto.username} is not a member of this pod."
    if user.role == User.Role.MANAGER:
        return None
    role = _pod_role(user, pod_id)
    if role == PodMembership.Role.LEAD:
        return None
    if role == PodMembership.Role.MEMBER:
        return (
            None
            if sto.pk == user.pk
            else "Members launch sessions they own themselves; ask the pod lead to assign others."
        )
    return "You are not a member of this pod."


def refuse_delegation(*, delegator: User, session: AgentSession, mode: str) -> str | None:
    if not delegator.is_active:
        return f"{delegator.username} is not an active user."
    if delegator.role == User.Role.LEADER:
        return "Leaders cannot delegate authority to agents."
    if delegator.role == User.Role.MANAGER:
        return None
    role = _pod_role(delegator, session.pod_id)
    if role == PodMembership.Role.LEAD:
        return None
    if delegator.pk == session.sto_id and role is not None:
        if mode == "autonomous":
            return "Only the pod lead or a manager may delegate autonomous mode."
        return None
    return (
        f"{delegator.username} holds no authority over this session: the delegator must be its "
        "Single Task Owner, the pod lead or a manager."
    )


def require(refusal: str | None) -> None:
    if refusal:
        raise NotAllowed(refusal)
