"""Enqueue agent steps — always after commit, never inside an open transaction.

Celery's Redis transport treats priority 0 as the highest, so a P0 session's steps are taken
before a P3's when workers are scarce.

Queues: a session's worktree lives on the disk of one worker host, so once it has one its steps
go to that host's own queue (``host.<name>``, consumed only by that host's workers); a session
without a host yet (its first step, or after its host was lost) goes to the shared ``celery``
queue, which every host consumes. See ``host_queue`` and agents/hosts.py.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db import transaction

STEP_TASK = "agents.tasks.agent_step"
SHARED_QUEUE = "celery"


def celery_priority(session_priority: int) -> int:
    return min(9, max(0, int(session_priority) * 3))


def host_queue(host: str) -> str:
    return f"host.{host}" if host else SHARED_QUEUE


def _host_of(session_id: int) -> str:
    from agents.models import AgentSession

    return AgentSession.objects.filter(pk=session_id).values_list("worker_host", flat=True).first() or ""


def enqueue_step_now(
    *, session_id: int, step: int, priority: int = 2, countdown: float | None = None, host: str | None = None
) -> None:
    """Send the step to the queue of the host holding the session's worktree (looked up when not given)."""
    queue = host_queue(_host_of(session_id) if host is None else host)
    current_app.send_task(
        STEP_TASK, args=[session_id, step], priority=celery_priority(priority), countdown=countdown, queue=queue
    )


def enqueue_step_on_commit(*, session_id: int, step: int, priority: int = 2, host: str | None = None) -> None:
    from agents.events import is_offline

    if is_offline():  # writing the past (agents.events.offline): no step of it may run
        return
    where: dict[str, Any] = {} if host is None else {"host": host}  # None: looked up when the step is sent
    transaction.on_commit(lambda: enqueue_step_now(session_id=session_id, step=step, priority=priority, **where))
