"""The audit log's rows: events, chain heads, signed checkpoints.

AuditEvent and Checkpoint are append-only: the database refuses UPDATE and DELETE on them
(triggers: audit/triggers.py). They hold plain ids, not foreign keys, so the log never depends
on, cascades with, or blocks the deletion of the rows it describes.

The tables keep the names they had when these models lived in ``reviews`` (``db_table``): the
move was a change of Django's state only (reviews 0005, audit 0001), the rows and triggers stayed.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    class Actor(models.TextChoices):
        AGENT = "agent", "Agent"
        USER = "user", "Human"
        SYSTEM = "system", "System"

    chain = models.CharField(max_length=40)
    seq = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=48)
    actor_type = models.CharField(max_length=8, choices=Actor.choices)
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    actor_session_id = models.BigIntegerField(null=True, blank=True)
    actor_label = models.CharField(max_length=150, blank=True)
    on_behalf_of_id = models.BigIntegerField(null=True, blank=True)
    on_behalf_of_label = models.CharField(max_length=150, blank=True)
    grant_id = models.BigIntegerField(null=True, blank=True)
    provenance = models.CharField(max_length=16, blank=True)  # human / rule / mode / guard / budget / ...
    session_id = models.BigIntegerField(null=True, blank=True)
    pod_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        db_table = "reviews_auditevent"
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="gap_free_chain_sequence")]
        # Every index costs each append a page write: kind, on_behalf_of_id, session_id and pod_id
        # have none of their own (the composite indexes below lead with them); nothing looks events
        # up by actor_user_id.
        indexes = [
            models.Index(fields=["session_id", "id"]),
            models.Index(fields=["on_behalf_of_id", "created_at"]),
            models.Index(fields=["kind", "created_at"]),
            # keyset pages of the audit explorer (id descending) under its common filters
            models.Index(fields=["kind", "id"]),
            models.Index(fields=["on_behalf_of_id", "id"]),
            models.Index(fields=["pod_id", "id"]),
        ]

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq} {self.kind}"


class ChainHead(models.Model):
    """The latest (seq, hash) of each chain: the row writers lock to append. Not evidence itself
    (checkpoints are): verification recomputes everything from the events."""

    chain = models.CharField(max_length=40, primary_key=True)
    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64)

    class Meta:
        db_table = "reviews_chainhead"


class Checkpoint(models.Model):
    """Signed chain heads (HMAC-SHA256, key outside the database)."""

    created_at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=80, blank=True)
    heads = models.JSONField(default=dict)  # {chain: [seq, hash]}
    signature = models.CharField(max_length=128)

    class Meta:
        db_table = "reviews_checkpoint"
        ordering = ["id"]
