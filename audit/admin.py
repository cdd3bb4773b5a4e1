"""Admin: the audit log and checkpoints are read-only evidence (the database refuses changes
and deletions anyway: audit/triggers.py)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent, Checkpoint


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete from the admin (the database refuses the last two anyway)."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "created_at",
        "chain",
        "seq",
        "kind",
        "actor_type",
        "actor_label",
        "on_behalf_of_label",
        "grant_id",
        "provenance",
        "session_id",
    )
    list_filter = ("kind", "actor_type")
    search_fields = ("session_id",)
    search_help_text = "A session id (exact), or a chain name such as s:42 or system."
    ordering = ("-id",)
    show_full_result_count = False  # counting millions of rows on every page is slow
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        """Exact, indexed matches only: a session id or a chain name (never LIKE over the log)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isdigit():
            return queryset.filter(session_id=int(term)), False
        return queryset.filter(chain=term), False


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "reason", "chains_signed", "short_signature")
    search_fields = ("reason",)
    ordering = ("-id",)
    readonly_fields = ("created_at", "reason", "heads", "signature")

    @admin.display(description="chains signed")
    def chains_signed(self, obj: Checkpoint) -> int:
        return len(obj.heads) if isinstance(obj.heads, dict) else 0

    @admin.display(description="signature")
    def short_signature(self, obj: Checkpoint) -> str:
        return f"{obj.signature[:16]}…"
