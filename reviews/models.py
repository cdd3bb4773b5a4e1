"""Review decisions on agent output. The audit log they write to lives in ``audit``."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Review(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve", "Approve and merge"
        REQUEST_CHANGES = "request_changes", "Request changes"
        REJECT = "reject", "Reject"
        REVERT = "revert", "Revert"

    session = models.ForeignKey("agents.AgentSession", on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    decision = models.CharField(max_length=20, choices=Decision.choices)
    comment = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)  # merge commit, conflicts, archive ref ...
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at"]
