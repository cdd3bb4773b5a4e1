"""Admin: reviews are read-only (decisions are made through the review services, which write
their audit events). The audit log's own admin is audit/admin.py."""

from __future__ import annotations

from django.contrib import admin

from audit.admin import ReadOnlyAdmin
from reviews.models import Review


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "session", "reviewer", "decision")
    list_filter = ("decision",)
    search_fields = ("session__name", "reviewer__username")
    list_select_related = ("session", "reviewer")
    ordering = ("-created_at",)
    readonly_fields = ("session", "reviewer", "decision", "comment", "details", "created_at")
