"""The admin never changes authority without its audit event: roles, superuser flags, memberships,
Pod.paused and repositories are read-only there; the "active" box goes through an audited service."""

from __future__ import annotations

import pytest

from agents.models import PodMembership, Repository, User
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, fleet):
    fleet.manager.is_staff = fleet.manager.is_superuser = True
    fleet.manager.save(update_fields=["is_staff", "is_superuser"])
    client.force_login(fleet.manager)
    return client


def _events() -> int:
    return AuditEvent.objects.count()


def test_a_membership_cannot_be_changed_added_or_deleted_in_the_admin(admin_client, fleet):
    membership = PodMembership.objects.get(pod=fleet.alpha, user=fleet.member)
    url = f"/admin/agents/podmembership/{membership.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200 and b'name="role"' not in page.content  # shown, not editable
    before = _events()
    response = admin_client.post(url, {"pod": fleet.alpha.pk, "user": fleet.member.pk, "role": "lead"})
    assert response.status_code == 403
    assert (
        admin_client.post(
            "/admin/agents/podmembership/add/", {"pod": fleet.bravo.pk, "user": fleet.member.pk, "role": "lead"}
        ).status_code
        == 403
    )
    assert admin_client.post(f"/admin/agents/podmembership/{membership.pk}/delete/", {"post": "yes"}).status_code == 403
    membership.refresh_from_db()
    assert membership.role == "member"
    assert not PodMembership.objects.filter(pod=fleet.bravo, user=fleet.member).exists()
    assert _events() == before


def test_the_pod_page_of_the_admin_changes_neither_pause_nor_memberships(admin_client, fleet):
    url = f"/admin/agents/pod/{fleet.alpha.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b'name="paused"' not in page.content and b"memberships-0-role" not in page.content
    response = admin_client.post(
        url,
        {
            "name": "Alpha",
            "slug": "alpha",
            "paused": "on",
            "review_wip_limit": fleet.alpha.review_wip_limit or "",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-0-user": fleet.outsider.pk,
            "memberships-0-role": "lead",
        },
    )
    assert response.status_code in {200, 302}
    fleet.alpha.refresh_from_db()
    assert not fleet.alpha.paused
    assert not PodMembership.objects.filter(pod=fleet.alpha, user=fleet.outsider).exists()


def test_roles_and_superuser_flags_are_read_only_in_the_admin(admin_client, fleet):
    url = f"/admin/agents/user/{fleet.member.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    for field in (b'name="role"', b'name="is_superuser"', b'name="is_staff"', b'name="groups"'):
        assert field not in page.content
    admin_client.post(
        url,
        {
            "username": fleet.member.username,
            "is_active": "on",
            "is_superuser": "on",
            "is_staff": "on",
            "role": "manager",
        },
    )
    fleet.member.refresh_from_db()
    assert (fleet.member.role, fleet.member.is_superuser, fleet.member.is_staff) == (User.Role.MEMBER, False, False)


def test_stopping_a_person_in_the_admin_leaves_an_audit_event(admin_client, fleet):
    url = f"/admin/agents/user/{fleet.member.pk}/change/"
    response = admin_client.post(url, {"username": fleet.member.username})  # "active" unchecked
    assert response.status_code == 302, response.content[:2000]
    fleet.member.refresh_from_db()
    assert not fleet.member.is_active
    event = AuditEvent.objects.filter(kind="user.active_set").latest("id")
    assert event.payload == {"member": fleet.member.username, "active": False}
    assert event.actor_label == fleet.manager.username


def test_repositories_are_read_only_in_the_admin(admin_client, fleet):
    url = f"/admin/agents/repository/{fleet.repo.pk}/change/"
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url, {"name": "demo", "path": "/etc", "default_branch": "main"})
    assert response.status_code == 403
    assert (
        admin_client.post(
            "/admin/agents/repository/add/", {"name": "x", "path": "/", "default_branch": "main"}
        ).status_code
        == 403
    )
    assert Repository.objects.get(pk=fleet.repo.pk).path != "/etc"
