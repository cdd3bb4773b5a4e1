"""Enqueue agent steps — always after commit, never inside an open transaction.

Celery's Redis transport treats priority 0 as the highest, so a P0 session's steps are taken
before a P3's when workers are scarce.

Tasks are sent by name through ``celery.current_app``: ``agents`` never imports the project's
Celery app (controlroom/celery.py, which makes itself every thread's default app).
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction

STEP_TASK = "agents.tasks.agent_step"


def celery_priority(session_priority: int) -> int:
    return min(9, max(0, int(session_priority) * 3))


def enqueue_step_now(*, session_id: int, step: int, priority: int = 2, countdown: float | None = None) -> None:
    current_app.send_task(STEP_TASK, args=[session_id, step], priority=celery_priority(priority), countdown=countdown)


def enqueue_step_on_commit(*, session_id: int, step: int, priority: int = 2) -> None:
    transaction.on_commit(lambda: enqueue_step_now(session_id=session_id, step=step, priority=priority))
