"""Reach the human: a pod's optional webhook fires when one of its sessions starts needing a human.

The POST happens in its own Celery task (retries with backoff, short timeout), after commit, so a
dead endpoint never slows or fails an agent step. Payload: Slack-compatible ``text`` plus fields.
The task is sent by name through ``celery.current_app`` (see agents/dispatch.py).
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction

WEBHOOK_TASK = "agents.tasks.send_webhook"


def notify_needs_human_on_commit(*, session_id: int, escalation_id: int | None = None, reason: str = "") -> None:
    transaction.on_commit(
        lambda: current_app.send_task(
            WEBHOOK_TASK, args=[session_id], kwargs={"escalation_id": escalation_id, "reason": reason}, priority=0
        )
    )
