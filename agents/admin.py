"""Admin: authority is never edited here without its audit event.

Roles, superuser/staff flags, groups and permissions, pod memberships, ``Pod.paused`` and
repositories are read-only in the admin: memberships change on the pod page and pause/resume
through the pod controls (``services.membership_set``/``membership_remove``, ``pod_pause``/
``pod_resume``; commands ``pause_pod``/``resume_pod``), repositories through ``launch_agent`` and
``repository_url``, each writing its audit event. The "active" box goes through
``services.user_set_active`` (audited). Sessions, grants and escalations are read-only.
"""

from typing import cast

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied

from agents import authority, services
from agents.models import AgentSession, Escalation, Grant, Pod, PodMembership, Repository, User

AUTHORITY_FIELDS = ("role", "is_staff", "is_superuser", "groups", "user_permissions", "last_login", "date_joined")


@admin.register(User)
class ControlRoomUserAdmin(UserAdmin):
    fieldsets = cast(tuple, UserAdmin.fieldsets) + (("Control room", {"fields": ("role",)}),)
    list_display = ("username", "first_name", "last_name", "role", "is_active")
    list_filter = ("role", "is_active")
    readonly_fields = AUTHORITY_FIELDS

    def has_delete_permission(self, request, obj=None):
        return False  # the audit log names people: stop them (uncheck "active") instead

    def save_model(self, request, obj, form, change):
        if change and "is_active" in form.changed_data:
            active = obj.is_active
            obj.is_active = not active  # saved as it was; the service changes it, with its event
            super().save_model(request, obj, form, change)
            try:
                services.user_set_active(user=obj, active=active, by=request.user)
            except authority.NotAllowed as exc:
                raise PermissionDenied(str(exc)) from None
            return
        super().save_model(request, obj, form, change)


class MembershipInline(admin.TabularInline):
    """Read-only: memberships change on the pod page (services.membership_set/remove, audited)."""

    model = PodMembership
    extra = 0
    readonly_fields = ("user", "role")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Pod)
class PodAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "paused", "review_wip_limit")
    readonly_fields = ("paused",)
    inlines = [MembershipInline]

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """State changes go through services (with their audit events), never through the admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Repository)
class RepositoryAdmin(ReadOnlyAdmin):
    list_display = ("name", "path", "default_branch")


@admin.register(PodMembership)
class PodMembershipAdmin(ReadOnlyAdmin):
    list_display = ("pod", "user", "role")
    list_filter = ("role", "pod")


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
