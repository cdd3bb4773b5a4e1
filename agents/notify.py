"""Reach the human: a pod's optional webhook fires when one of its sessions starts needing a human.

The POST happens in its own Celery task (retries with backoff, short timeout), after commit, so a
dead endpoint never slows or fails an agent step. Payload: Slack-compatible ``text`` plus fields.
"""

from __future__ import annotations

from django.db import transaction

from controlroom.celery import app

WEBHOOK_TASK = "agents.tasks.send_webhook"


def notify_needs_human_on_commit(*, session_id: int, escalation_id: int | None = None, reason: str = "") -> None:
    transaction.on_commit(
        lambda: app.send_task(
            WEBHOOK_TASK, args=[session_id], kwargs={"escalation_id": escalation_id, "reason": reason}, priority=0
        )
    )
