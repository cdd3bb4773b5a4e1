from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from agents.models import AgentSession, Escalation, Grant, Pod, PodMembership, Repository, User


@admin.register(User)
class ControlRoomUserAdmin(UserAdmin):
    fieldsets = UserAdmin.fieldsets + (("Control room", {"fields": ("role",)}),)
    list_display = ("username", "first_name", "last_name", "role", "is_active")
    list_filter = ("role", "is_active")


class MembershipInline(admin.TabularInline):
    model = PodMembership
    extra = 0


@admin.register(Pod)
class PodAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "paused", "review_wip_limit")
    inlines = [MembershipInline]


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    list_display = ("name", "path", "default_branch")


class ReadOnlyAdmin(admin.ModelAdmin):
    """State changes go through services (with their audit events), never through the admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AgentSession)
class AgentSessionAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "pod", "sto", "status", "steps", "cost_usd", "updated_at")
    list_filter = ("status", "pod")
    search_fields = ("name", "goal")


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    list_display = ("id", "session", "version", "delegator", "mode", "not_before", "expires_at", "revoked_at")


@admin.register(Escalation)
class EscalationAdmin(ReadOnlyAdmin):
    list_display = ("id", "session", "tool", "state", "created_at", "decided_by")
    list_filter = ("state",)
