"""Single Task Owner: exactly one accountable human; reassignment is explicit, authorized and recorded."""

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from agents import services
from agents.authority import NotAllowed
from agents.models import AgentSession
from audit.models import AuditEvent
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(fleet, worktrees_dir):
    return services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="Fix the pricing bug", by=fleet.lead, repository=fleet.repo, start=False
    )


def reassignments(session):
    return list(
        AuditEvent.objects.filter(session_id=session.pk, kind="session.sto_reassigned").values_list(
            "payload", "actor_label"
        )
    )


def test_the_pod_lead_reassigns_and_it_is_recorded(fleet, session):
    services.sto_assign(session=session, new_sto=fleet.member, by=fleet.lead)
    session.refresh_from_db()
    assert session.sto == fleet.member
    [(payload, actor)] = reassignments(session)
    assert payload == {"from": "sam", "to": "mia"} and actor == "lena"


def test_a_manager_may_reassign(fleet, session):
    services.sto_assign(session=session, new_sto=fleet.lead, by=fleet.manager)
    session.refresh_from_db()
    assert session.sto == fleet.lead


def test_it_refuses_a_member_who_is_not_the_lead(fleet, session):
    with pytest.raises(NotAllowed, match="pod's lead or a manager"):
        services.sto_assign(session=session, new_sto=fleet.member, by=fleet.sto)
    session.refresh_from_db()
    assert session.sto == fleet.sto and reassignments(session) == []


def test_it_refuses_a_new_owner_from_outside_the_pod(fleet, session):
    with pytest.raises(ValidationError, match="otto is not a member of pod Alpha"):
        services.sto_assign(session=session, new_sto=fleet.outsider, by=fleet.lead)
    session.refresh_from_db()
    assert session.sto == fleet.sto


def test_it_refuses_a_leader(fleet, session):
    with pytest.raises(NotAllowed, match="Leaders"):
        services.sto_assign(session=session, new_sto=fleet.member, by=fleet.leader)


def test_the_cli_reassigns_as_the_lead(fleet, session, capsys):
    call_command("assign_sto", str(session.pk), "mia", "--as", "lena")
    assert "sam -> mia" in capsys.readouterr().out
    assert AgentSession.objects.get(pk=session.pk).sto == fleet.member


def test_the_cli_refuses_a_member_with_a_clear_message(fleet, session):
    with pytest.raises(CommandError, match="refused: Only the pod's lead or a manager"):
        call_command("assign_sto", str(session.pk), "mia", "--as", "sam")


def test_the_cli_refuses_an_owner_outside_the_pod(fleet, session):
    with pytest.raises(CommandError, match="otto is not a member of pod Alpha"):
        call_command("assign_sto", str(session.pk), "otto", "--as", "lena")


def test_the_cli_names_an_unknown_session(fleet):
    with pytest.raises(CommandError, match="no agent session with id '999'"):
        call_command("assign_sto", "999", "mia", "--as", "lena")


def test_the_pod_page_form_reassigns_for_the_lead(client, fleet, session):
    client.login(username="lena", password=PASSWORD)
    page = client.get(f"/pods/{fleet.alpha.slug}/")
    assert page.status_code == 200 and b"Reassign" in page.content
    response = client.post(f"/sessions/{session.pk}/sto", {"sto": "mia", "next": "/pods/alpha/"})
    assert response.status_code == 302
    assert AgentSession.objects.get(pk=session.pk).sto == fleet.member


def test_the_form_refuses_a_member_and_records_the_refusal(client, fleet, session):
    client.login(username="sam", password=PASSWORD)
    assert b"Reassign" not in client.get(f"/pods/{fleet.alpha.slug}/").content
    response = client.post(f"/sessions/{session.pk}/sto", {"sto": "mia"}, follow=True)
    assert response.status_code == 403
    assert "Only the pod&#x27;s lead or a manager may do this." in response.content.decode()
    assert AgentSession.objects.get(pk=session.pk).sto == fleet.sto
    assert AuditEvent.objects.filter(session_id=session.pk, kind="session.action_refused", actor_label="sam").exists()


def test_the_pod_page_lists_members_roles_and_what_each_owns(client, fleet, session):
    client.login(username="max", password=PASSWORD)
    html = client.get(f"/pods/{fleet.alpha.slug}/").content.decode()
    for text in ("lena", "Lead", "sam", "mia", f"#{session.pk} Fix the pricing bug", "P2"):
        assert text in html


def test_the_lead_manages_membership(client, fleet):
    client.login(username="lena", password=PASSWORD)
    client.post(f"/pods/{fleet.alpha.slug}/members", {"username": "leo", "role": "member", "action": "set"})
    assert fleet.alpha.memberships.filter(user=fleet.leader).exists()
    client.post(f"/pods/{fleet.alpha.slug}/members", {"username": "leo", "action": "remove"})
    assert not fleet.alpha.memberships.filter(user=fleet.leader).exists()
    kinds = list(AuditEvent.objects.filter(pod_id=fleet.alpha.pk).values_list("kind", flat=True))
    assert kinds == ["pod.membership_set", "pod.membership_removed"]


def test_an_owner_of_open_sessions_cannot_leave_the_pod(fleet, session):
    with pytest.raises(ValidationError, match="still owns 1 open session"):
        services.membership_remove(pod=fleet.alpha, user=fleet.sto, by=fleet.lead)
