"""Deciding escalations from the drawer: who may, what each decision does, and what a refusal leaves behind."""

from __future__ import annotations

import pytest
from django.db import transaction

from agents import services
from agents.models import Escalation, Status, ToolCall
from agents.selectors import active_grant
from audit.models import AuditEvent
from tests.personas import PASSWORD

HTMX = {"HTTP_HX_REQUEST": "true"}


def launch(fleet, **kwargs):
    return services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Publish the release branch",
        by=fleet.lead,
        repository=fleet.repo,
        grant=services.GrantSpec(mode="edits", allow=("Bash(pytest *)",)),
        start=False,
        **kwargs,
    )


def open_escalation(session, *, rule="Bash(git push)", action="run_command: git push") -> Escalation:
    """What the runtime leaves when a tool call asks: an open escalation and a session needing approval."""
    with transaction.atomic():
        escalation = Escalation.objects.create(
            session=session,
            grant=active_grant(session=session),
            tool="run_command",
            action=action,
            action_hash="a" * 64,
            reason="commands ask in edits mode",
            rule=rule,
        )
        services.set_status(session, Status.NEEDS_APPROVAL, reason="waiting for a human: git push", agent=True)
    return escalation


@pytest.fixture
def session(fleet, worktrees_dir):
    return launch(fleet)


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def decide(client, escalation, decision, reason="", **headers):
    return client.post(f"/escalations/{escalation.pk}/decide", {"decision": decision, "reason": reason}, **headers)


@pytest.mark.django_db
def test_the_drawer_shows_what_the_agent_asks_why_and_for_how_long(client, fleet, session):
    escalation = open_escalation(session)
    page = login(client, fleet.sto).get(f"/sessions/{session.pk}/", **HTMX).content.decode()
    assert f'data-escalation-id="{escalation.pk}"' in page
    assert "run_command: git push" in page and "commands ask in edits mode" in page
    assert "Grant v1" in page and "delegated by <strong>sam</strong>" in page
    assert "waiting <time" in page
    assert 'data-key="approve"' in page and 'data-key="deny"' in page
    assert 'value="allow-always"' in page and '<code class="rule">Bash(git push)</code>' in page


@pytest.mark.django_db
def test_allow_always_is_not_offered_when_a_guard_asked(client, fleet, session):
    open_escalation(session, rule="", action="edit_file: .github/workflows/ci.yml")
    page = login(client, fleet.sto).get(f"/sessions/{session.pk}/", **HTMX).content.decode()
    assert 'data-key="approve"' in page
    assert 'value="allow-always"' not in page
    assert "it can be allowed once, not always" in page


@pytest.mark.django_db
def test_a_leader_sees_the_question_but_no_buttons(client, fleet, session):
    open_escalation(session)
    page = login(client, fleet.leader).get(f"/sessions/{session.pk}/", **HTMX).content.decode()
    assert "run_command: git push" in page
    assert 'data-key="approve"' not in page and 'data-key="deny"' not in page


@pytest.mark.django_db
def test_the_sto_allows_once_and_the_session_runs_again(client, fleet, session, django_capture_on_commit_callbacks):
    escalation = open_escalation(session)
    with django_capture_on_commit_callbacks() as callbacks:
        response = decide(login(client, fleet.sto), escalation, "allow-once", **HTMX)
    assert response.status_code == 200
    escalation.refresh_from_db()
    session.refresh_from_db()
    assert escalation.state == Escalation.State.ALLOWED_ONCE and escalation.decided_by == fleet.sto
    assert session.status == Status.RUNNING
    assert callbacks, "the next step is enqueued after commit"
    page = response.content.decode()
    assert 'data-status="running"' in page and "allowed once" in page
    assert 'data-key="approve"' not in page, "the question is answered"
    assert "Allowed once" in page and "[human]" in page, "listed among the decided escalations"
    event = AuditEvent.objects.get(session_id=session.pk, kind="escalation.decided")
    assert event.actor_label == "sam" and event.on_behalf_of_label == "sam" and event.provenance == "human"


@pytest.mark.django_db
def test_allow_always_adds_the_rule_in_a_new_grant_version(client, fleet, session):
    escalation = open_escalation(session)
    response = decide(login(client, fleet.sto), escalation, "allow-always", **HTMX)
    assert response.status_code == 200
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.ALLOWED_ALWAYS
    old, new = session.grants.order_by("version")
    assert old.is_revoked and not new.is_revoked and new.version == 2
    assert new.allow == ["Bash(pytest *)", "Bash(git push)"]
    page = response.content.decode()
    assert 'data-grant-version="2"' in page and "+ Bash(git push)" in page


@pytest.mark.django_db
def test_deny_with_a_reason_the_agent_will_see(client, fleet, session):
    escalation = open_escalation(session)
    response = decide(login(client, fleet.lead), escalation, "deny", reason="never push from an agent", **HTMX)
    assert response.status_code == 200
    escalation.refresh_from_db()
    session.refresh_from_db()
    assert escalation.state == Escalation.State.DENIED and escalation.decided_by == fleet.lead
    assert escalation.decision_reason == "never push from an agent"
    assert session.status == Status.RUNNING, "the agent carries on and reads the denial"
    assert "“never push from an agent”" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "who, message",
    [
        ("leader", "Leaders read the fleet; they cannot act on agents."),
        ("member", "Only the session&#x27;s Single Task Owner (sam), the pod lead or a manager may do this."),
        ("outsider", "You cannot act on this escalation: its session belongs to another pod."),
    ],
)
def test_it_refuses_anyone_without_authority_with_403_and_records_the_attempt(client, fleet, session, who, message):
    escalation = open_escalation(session)
    user = getattr(fleet, who)
    response = decide(login(client, user), escalation, "allow-once", **HTMX)
    assert response.status_code == 403
    assert message in response.content.decode()
    escalation.refresh_from_db()
    session.refresh_from_db()
    assert escalation.state == Escalation.State.OPEN and session.status == Status.NEEDS_APPROVAL
    refused = AuditEvent.objects.get(session_id=session.pk, kind="escalation.refused")
    assert refused.actor_label == user.username and refused.payload["escalation"] == escalation.pk


@pytest.mark.django_db
def test_a_second_decision_gets_a_clear_message_and_changes_nothing(client, fleet, session):
    escalation = open_escalation(session)
    login(client, fleet.sto)
    assert decide(client, escalation, "allow-once", **HTMX).status_code == 200
    again = decide(client, escalation, "deny", reason="changed my mind", **HTMX)
    assert again.status_code == 409
    assert f"Escalation #{escalation.pk} was already decided: allowed once by sam" in again.content.decode()
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.ALLOWED_ONCE and escalation.decision_reason == ""
    assert AuditEvent.objects.filter(session_id=session.pk, kind="escalation.decided").count() == 1


@pytest.mark.django_db
def test_an_unknown_decision_is_a_clear_error(client, fleet, session):
    escalation = open_escalation(session)
    response = decide(login(client, fleet.sto), escalation, "maybe", **HTMX)
    assert response.status_code == 400
    assert "Choose allow once, allow always or deny." in response.content.decode()


@pytest.mark.django_db
def test_a_plain_form_post_decides_and_redirects_to_the_drawer(client, fleet, session):
    escalation = open_escalation(session)
    response = decide(login(client, fleet.sto), escalation, "allow-once")
    assert response.status_code == 302 and response["Location"] == f"/sessions/{session.pk}/"
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.ALLOWED_ONCE


@pytest.mark.django_db(transaction=True)
def test_end_to_end_the_runtime_asks_the_sto_allows_once_from_the_drawer_and_the_command_runs(
    client, fleet, worktrees_dir
):
    from tests.agents.test_runtime import drive, scripted
    from tests.scripted_model import ScriptedModel, calls, finish

    with ScriptedModel([calls([("run_command", {"command": "git status --short"})]), finish("checked")]) as model:
        session = drive(scripted(fleet, model, spec=services.GrantSpec(mode="edits")))
        assert session.status == Status.NEEDS_APPROVAL, session.status_reason
        escalation = session.escalations.get(state=Escalation.State.OPEN)
        login(client, fleet.sto)
        page = client.get(f"/sessions/{session.pk}/", **HTMX).content.decode()
        assert "git status --short" in page and f'action="/escalations/{escalation.pk}/decide"' in page
        response = decide(client, escalation, "allow-once", **HTMX)
        assert response.status_code == 200
        session.refresh_from_db()
        assert session.status == Status.RUNNING
        session = drive(session)
    assert session.status == Status.SUCCEEDED, session.status_reason
    row = ToolCall.objects.get(session=session, name="run_command")
    assert row.state == ToolCall.State.DONE and row.reason_type == "human"
    page = client.get(f"/sessions/{session.pk}/", **HTMX).content.decode()
    assert "Allowed once" in page and 'data-status="succeeded"' in page


@pytest.mark.django_db
def test_allow_always_after_the_grant_changed_adds_the_rule_to_the_current_grant(client, fleet, session):
    escalation = open_escalation(session)
    services.grant_issue(session=session, by=fleet.sto, spec=services.GrantSpec(mode="edits", max_steps=10))
    response = decide(login(client, fleet.sto), escalation, "allow-always", **HTMX)
    assert response.status_code == 200
    assert active_grant(session=session).allow == ["Bash(git push)"]
