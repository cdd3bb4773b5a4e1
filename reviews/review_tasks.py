"""Periodic disk hygiene for worktrees (Celery beat). Kept out of reviews/tasks.py (owned
elsewhere); the task keeps the ``reviews.tasks.`` name prefix of its app.

Beat entry (settings.CELERY_BEAT_SCHEDULE):
    "cleanup-worktrees": {"task": "reviews.tasks.cleanup_worktrees", "schedule": 3600}
and the module must be imported by workers: CELERY_IMPORTS = ["reviews.review_tasks"].
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from reviews.services import worktrees_cleanup


@shared_task(
    name="reviews.tasks.cleanup_worktrees",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,  # idempotent: a rerun finds nothing left to remove
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=600,
    time_limit=660,
)
def cleanup_worktrees() -> dict:
    """Remove worktrees of closed sessions; return what was freed and what worktrees still use."""
    hours = float(settings.CONTROLROOM.get("WORKTREE_RETENTION_HOURS", 24))
    report = worktrees_cleanup(older_than_hours=hours)
    return {
        "removed": [i.session_id for i in report.items if i.removed],
        "freed_bytes": report.freed,
        "worktrees_bytes": report.bytes_after,
    }
