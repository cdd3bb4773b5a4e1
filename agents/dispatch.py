"""Enqueue agent steps — always after commit, never inside an open transaction.

Celery's Redis transport treats priority 0 as the highest, so a P0 session's steps are taken
before a P3's when workers are scarce.
"""

from __future__ import annotations

from django.db import transaction

from controlroom.celery import app

STEP_TASK = "agents.tasks.agent_step"


def celery_priority(session_priority: int) -> int:
    return min(9, max(0, int(session_priority) * 3))


def enqueue_step_now(*, session_id: int, step: int, priority: int = 2, countdown: float | None = None) -> None:
    app.send_task(STEP_TASK, args=[session_id, step], priority=celery_priority(priority), countdown=countdown)


def enqueue_step_on_commit(*, session_id: int, step: int, priority: int = 2) -> None:
    transaction.on_commit(lambda: enqueue_step_now(session_id=session_id, step=step, priority=priority))
