"""The grant editor in the drawer: presets, rules with inline validation, budget, window, who may
delegate what, versions (never edited in place), revocation with a reason."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import services
from agents.models import Grant
from agents.selectors import active_grant
from audit.models import AuditEvent
from tests.personas import PASSWORD

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def session(fleet, worktrees_dir):
    return services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Tidy the docs",
        by=fleet.lead,
        repository=fleet.repo,
        grant=services.GrantSpec(mode="edits", allow=("Bash(pytest *)",), deny=("Bash(git push *)",), max_steps=50),
        start=False,
    )


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def form(**changes) -> dict:
    data = {
        "mode": "edits",
        "allow": "Bash(pytest *)\nGit(commit)",
        "ask": "",
        "deny": "Bash(git push *)",
        "max_steps": "80",
        "max_tokens": "",
        "max_cost_usd": "2.50",
        "max_wall_minutes": "90",
        "max_tool_calls": "",
        "not_before": "",
        "expires_at": "",
        "on_unanswered": "wait",
        "justification": "let it commit",
    }
    data.update(changes)
    return data


def issue(client, session, **changes):
    return client.post(f"/sessions/{session.pk}/grant/issue", form(**changes), **HTMX)


def test_the_editor_opens_with_the_current_grant_and_the_mode_presets(client, fleet, session):
    page = login(client, fleet.sto).get(f"/sessions/{session.pk}/", **HTMX).content.decode()
    editor = page[page.index('class="grant-editor"') : page.index('class="revoke"')]
    assert 'name="mode" value="edits" checked' in editor
    for mode in ("plan", "ask", "edits", "autonomous"):
        assert f'name="mode" value="{mode}"' in editor
    assert "Read only: the agent reads and plans" in editor
    assert ">Bash(pytest *)</textarea>" in editor and ">Bash(git push *)</textarea>" in editor
    assert 'name="max_steps" value="50"' in editor
    assert "Only the pod lead or a manager may delegate autonomous mode." in editor, "the STO is told up front"
    assert 'type="datetime-local"' in editor


def test_inline_validation_names_the_bad_rule(client, fleet, session):
    response = login(client, fleet.sto).post(
        f"/sessions/{session.pk}/grant/validate",
        {"field": "allow", "allow": "Bash(pytest *)\nFoo(x)\nRead(/etc/passwd)"},
        **HTMX,
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert f'id="grant-check-{session.pk}-allow"' in body and 'data-valid="no"' in body
    assert "&quot;Foo(x)&quot;: unknown tool &quot;Foo&quot;" in body
    assert "&quot;Read(/etc/passwd)&quot;: paths are relative to the worktree" in body
    ok = client.post(f"/sessions/{session.pk}/grant/validate", {"field": "deny", "deny": "Net(*)\nGit(*)"}, **HTMX)
    assert 'data-valid="yes"' in ok.content.decode() and "2 deny rules OK" in ok.content.decode()


def test_a_bad_rule_shows_the_error_naming_it_and_creates_nothing(client, fleet, session):
    before = AuditEvent.objects.filter(session_id=session.pk).count()
    response = issue(login(client, fleet.sto), session, allow="Bash(pytest *)\nBash(git push:*)")
    assert response.status_code == 422
    body = response.content.decode()
    assert "The grant was not changed" in body
    assert "&quot;Bash(git push:*)&quot;: write &quot;git push *&quot;" in body
    assert '<details class="grant-editor" open>' in body, "the editor stays open with what was typed"
    assert "Bash(git push:*)</textarea>" in body
    assert session.grants.count() == 1 and not session.grants.get().is_revoked
    assert AuditEvent.objects.filter(session_id=session.pk).count() == before


def test_a_valid_change_issues_version_two_and_revokes_version_one(client, fleet, session):
    response = issue(login(client, fleet.sto), session)
    assert response.status_code == 200
    v1, v2 = session.grants.order_by("version")
    assert v1.is_revoked and v1.revoked_by == fleet.sto and v1.revoke_reason.startswith("superseded")
    assert not v2.is_revoked and v2.supersedes == v1
    assert v2.allow == ["Bash(pytest *)", "Git(commit)"] and v2.deny == ["Bash(git push *)"]
    assert v2.max_steps == 80 and str(v2.max_cost_usd) == "2.5000" and v2.max_wall_seconds == 5400
    assert v2.delegator == fleet.sto and v2.issued_by == fleet.sto and v2.justification == "let it commit"
    body = response.content.decode()
    assert 'data-grant-version="2"' in body and "Grant v2 issued" in body
    history = body[body.index('class="grant-history"') :]
    assert re.search(r'data-grant-version="2" data-revoked="no"', history)
    assert re.search(r'data-grant-version="1" data-revoked="yes"', history)
    assert '<span class="rule added">+ Git(commit)</span>' in history
    assert "max steps 50 → 80" in history and "revoked" in history and "by sam" in history
    kinds = list(
        AuditEvent.objects.filter(session_id=session.pk, kind__startswith="grant.").values_list("kind", flat=True)
    )
    assert kinds == ["grant.issued", "grant.revoked", "grant.issued"]


def test_a_window_in_the_future_is_kept(client, fleet, session):
    start = timezone.localtime() + timedelta(days=1)
    end = start + timedelta(hours=6)
    fmt = "%Y-%m-%dT%H:%M"
    response = issue(login(client, fleet.sto), session, not_before=start.strftime(fmt), expires_at=end.strftime(fmt))
    assert response.status_code == 200
    grant = active_grant(session=session)
    assert grant.not_before.replace(second=0, microsecond=0) == start.replace(second=0, microsecond=0)
    assert grant.expires_at - grant.not_before == timedelta(hours=6)


def test_a_window_that_ends_before_it_starts_is_refused(client, fleet, session):
    now = timezone.localtime()
    fmt = "%Y-%m-%dT%H:%M"
    response = issue(
        login(client, fleet.sto),
        session,
        not_before=(now + timedelta(hours=2)).strftime(fmt),
        expires_at=(now + timedelta(hours=1)).strftime(fmt),
    )
    assert response.status_code == 422
    assert "The grant must end after it starts." in response.content.decode()
    assert session.grants.count() == 1


def test_a_member_sto_asking_for_autonomous_is_refused_and_nothing_changes(client, fleet, session):
    response = issue(login(client, fleet.sto), session, mode="autonomous")
    assert response.status_code == 403
    assert (
        "Refused, nothing changed: Only the pod lead or a manager may delegate autonomous mode."
        in response.content.decode()
    )
    assert session.grants.count() == 1 and not session.grants.get().is_revoked
    refused = AuditEvent.objects.get(session_id=session.pk, kind="session.action_refused")
    assert refused.actor_label == "sam" and "autonomous" in refused.payload["refusal"]


def test_the_pod_lead_may_delegate_autonomous_and_becomes_the_delegator(client, fleet, session):
    response = issue(login(client, fleet.lead), session, mode="autonomous")
    assert response.status_code == 200
    grant = active_grant(session=session)
    assert grant.version == 2 and grant.mode == Grant.Mode.AUTONOMOUS and grant.delegator == fleet.lead


@pytest.mark.parametrize("who", ["leader", "member"])
def test_people_without_authority_cannot_issue(client, fleet, session, who):
    response = issue(login(client, getattr(fleet, who)), session)
    assert response.status_code == 403
    assert session.grants.count() == 1 and not session.grants.get().is_revoked


def test_revoking_requires_a_reason(client, fleet, session):
    login(client, fleet.sto)
    response = client.post(f"/sessions/{session.pk}/grant/revoke", {"reason": "   "}, **HTMX)
    assert response.status_code == 422
    assert "Say why the grant is revoked." in response.content.decode()
    assert not session.grants.get().is_revoked
    response = client.post(f"/sessions/{session.pk}/grant/revoke", {"reason": "wrong repository"}, **HTMX)
    assert response.status_code == 200
    grant = session.grants.get()
    assert grant.is_revoked and grant.revoke_reason == "wrong repository" and grant.revoked_by == fleet.sto
    body = response.content.decode()
    assert "No active grant" in body and "revoked" in body and "wrong repository" in body
    assert AuditEvent.objects.filter(
        session_id=session.pk, kind="grant.revoked", payload__reason="wrong repository"
    ).exists()


def test_a_leader_cannot_revoke(client, fleet, session):
    response = login(client, fleet.leader).post(f"/sessions/{session.pk}/grant/revoke", {"reason": "stop"}, **HTMX)
    assert response.status_code == 403
    assert not session.grants.get().is_revoked


def test_a_new_grant_can_be_issued_after_a_revoke(client, fleet, session):
    login(client, fleet.sto)
    client.post(f"/sessions/{session.pk}/grant/revoke", {"reason": "pause the authority"}, **HTMX)
    response = issue(client, session)
    assert response.status_code == 200
    assert active_grant(session=session).version == 2
