"""Celery tasks of the audit app: thin adapters over the chain code (audit/chain.py)."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from audit.chain import checkpoint_export, checkpoint_if_changed


@shared_task(
    name="audit.tasks.audit_checkpoint",
    acks_late=True,
    reject_on_worker_lost=True,  # idempotent: a rerun signs nothing new
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=120,
    time_limit=180,
)
def audit_checkpoint() -> int | None:
    """Periodic (beat, every CONTROLROOM["AUDIT_CHECKPOINT_EVERY_S"]): sign the chains that moved
    since the last checkpoint, if any, and append new checkpoints to the file outside the DB."""
    checkpoint = checkpoint_if_changed(reason="periodic")
    checkpoint_export()
    return checkpoint.pk if checkpoint is not None else None
