"""Grouped decisions: the open escalations asking for the same canonical action across sessions,
decided in one go, each session still getting its own decision, audit event, decider and delegator."""

from __future__ import annotations

import pytest

from agents import selectors, services
from agents.models import Escalation, Status
from audit.models import AuditEvent
from tests.decision_seed import CI_EDIT, CURL, seed_waiting_night
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def night(fleet, worktrees_dir):
    return seed_waiting_night(fleet)


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def test_the_manager_sees_one_group_per_distinct_action_largest_first(fleet, night):
    groups = selectors.escalation_groups(user=fleet.manager)
    assert [(g.action, len(g.members)) for g in groups] == [(CURL, 5), (CI_EDIT, 2), ("run_command: rm -rf build/", 1)]
    assert groups[0].can_allow_always and not groups[1].can_allow_always
    assert all(not g.excluded for g in groups)


def test_a_pod_member_sees_the_sessions_of_others_in_the_group_as_excluded_with_the_reason(fleet, night):
    # mia (a member of alpha) owns two of the curl sessions; sam owns the other two
    groups = selectors.escalation_groups(user=fleet.member)
    curl = next(g for g in groups if g.action == CURL)
    assert {e.session.sto_id for e in curl.members} == {fleet.member.pk}
    assert len(curl.members) == 2 and len(curl.excluded) == 2
    assert all("Single Task Owner" in refusal for _, refusal in curl.excluded)
    # the bravo session is not even visible to her
    assert night["bravo"][0].pk not in [e.pk for e, _ in curl.excluded]


def test_one_group_decision_decides_each_escalation_with_its_own_audit_event(fleet, night):
    curl = night["curl"] + night["bravo"]
    outcomes = services.escalation_group_decide(
        escalation_ids=[e.pk for e in curl], action_hash=curl[0].action_hash, by=fleet.manager, decision="allow-once"
    )
    assert [o.decided for o in outcomes] == [True] * 5
    for escalation in curl:
        escalation.refresh_from_db()
        assert escalation.state == Escalation.State.ALLOWED_ONCE and escalation.decided_by == fleet.manager
        event = AuditEvent.objects.get(session_id=escalation.session_id, kind="escalation.decided")
        assert event.payload["escalation"] == escalation.pk and event.payload["decision"] == "allow-once"
        assert event.actor_label == "max" and event.provenance == "human"
        assert event.on_behalf_of_label == escalation.grant.delegator.username
        assert event.grant_id == escalation.grant_id
        assert escalation.session.__class__.objects.get(pk=escalation.session_id).status == Status.RUNNING
    # the other groups are untouched
    assert Escalation.objects.filter(state=Escalation.State.OPEN).count() == 3


def test_allow_always_for_each_adds_the_rule_to_each_sessions_own_grant(fleet, night):
    curl = night["curl"]
    services.escalation_group_decide(
        escalation_ids=[e.pk for e in curl], action_hash=curl[0].action_hash, by=fleet.lead, decision="allow-always"
    )
    for escalation in curl:
        grant = selectors.active_grant(session=escalation.session)
        assert grant.version == 2 and "Net(pypi.org)" in grant.allow


def test_a_session_the_decider_may_not_decide_is_left_open_and_said_so(fleet, night):
    curl = night["curl"]
    outcomes = services.escalation_group_decide(
        escalation_ids=[e.pk for e in curl], action_hash=curl[0].action_hash, by=fleet.member, decision="deny"
    )
    mine = {e.pk for e in curl if e.session.sto_id == fleet.member.pk}
    for outcome in outcomes:
        assert outcome.decided == (outcome.escalation_id in mine)
        if not outcome.decided:
            assert "Single Task Owner" in outcome.text
    assert Escalation.objects.filter(pk__in=[e.pk for e in curl], state=Escalation.State.OPEN).count() == 2
    assert AuditEvent.objects.filter(kind="escalation.refused", actor_label="mia").count() == 2


def test_an_escalation_asking_for_another_action_is_never_decided_by_the_group(fleet, night):
    own = night["own"][0]
    outcomes = services.escalation_group_decide(
        escalation_ids=[night["curl"][0].pk, own.pk],
        action_hash=night["curl"][0].action_hash,
        by=fleet.manager,
        decision="allow-once",
    )
    assert [o.decided for o in outcomes] == [True, False]
    assert "another action" in outcomes[1].text
    own.refresh_from_db()
    assert own.state == Escalation.State.OPEN


def test_allow_always_on_a_guard_ask_is_refused_per_escalation_and_nothing_changes(fleet, night):
    ci = night["ci"]
    outcomes = services.escalation_group_decide(
        escalation_ids=[e.pk for e in ci], action_hash=ci[0].action_hash, by=fleet.manager, decision="allow-always"
    )
    assert not any(o.decided for o in outcomes) and "allowed once, not always" in outcomes[0].text
    assert Escalation.objects.filter(pk__in=[e.pk for e in ci], state=Escalation.State.OPEN).count() == 2


def test_the_decisions_page_previews_each_group_and_the_post_decides_it(client, fleet, night):
    page = login(client, fleet.manager).get("/decisions").content.decode()
    assert "8 open asks in 3 distinct actions" in page
    assert page.count('name="escalation"') == 8
    assert "Allow always for each (5)" in page and "Deny each (2)" in page
    ci = night["ci"]
    response = client.post(
        "/decisions/group",
        {"action_hash": ci[0].action_hash, "decision": "deny", "escalation": [e.pk for e in ci], "reason": "not CI"},
        follow=True,
    )
    assert response.status_code == 200
    assert "Denied for 2 session(s)" in response.content.decode()
    assert set(Escalation.objects.filter(pk__in=[e.pk for e in ci]).values_list("state", flat=True)) == {"denied"}


def test_bad_input_to_the_group_decision_is_a_clear_error_not_a_500(client, fleet, night):
    login(client, fleet.manager)
    for data in ({"decision": "maybe", "action_hash": "x", "escalation": "1"}, {"decision": "deny", "escalation": "x"}):
        response = client.post("/decisions/group", data, follow=True)
        assert response.status_code == 200
        text = response.content.decode()
        assert "Unknown decision" in text or "Choose at least one session" in text
    assert Escalation.objects.filter(state=Escalation.State.OPEN).count() == 8


def test_the_canvas_queue_points_at_the_grouped_page_when_asks_are_shared(client, fleet, night):
    page = login(client, fleet.manager).get("/").content.decode()
    assert "Decide together: 7 asks share 2 actions" in page
