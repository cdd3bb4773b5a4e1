"""Every state change writes its audit event in the same transaction: no change without its event,
no event without its change."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import transaction

from agents import services
from agents.authority import NotAllowed
from agents.models import AgentSession, Escalation, Grant, Status
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(fleet, worktrees_dir):
    return services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="Fix the pricing bug", by=fleet.lead, repository=fleet.repo, start=False
    )


def kinds(session) -> list[str]:
    return list(AuditEvent.objects.filter(session_id=session.pk).order_by("id").values_list("kind", flat=True))


class Boom(Exception):
    pass


def test_a_failed_transaction_keeps_neither_the_change_nor_its_event(fleet, session):
    before = AuditEvent.objects.count()
    with pytest.raises(Boom), transaction.atomic():
        services.session_pause(session=session, by=fleet.sto)
        services.sto_assign(session=session, new_sto=fleet.member, by=fleet.lead)
        raise Boom  # something after the change fails: the whole transaction rolls back
    session.refresh_from_db()
    assert session.status == Status.QUEUED and session.sto == fleet.sto
    assert AuditEvent.objects.count() == before


def test_a_failed_launch_leaves_no_session_and_no_event(fleet, worktrees_dir):
    before_events, before_sessions = AuditEvent.objects.count(), AgentSession.objects.count()
    with pytest.raises(Boom), transaction.atomic():
        services.session_launch(
            pod=fleet.alpha, sto=fleet.sto, goal="x", by=fleet.lead, repository=fleet.repo, start=False
        )
        raise Boom
    assert AuditEvent.objects.count() == before_events and AgentSession.objects.count() == before_sessions


def test_every_session_grant_and_escalation_mutation_produces_its_event(fleet, session):
    """Walk the mutations one by one; each must append exactly the events named."""
    grant = session.grants.get()

    def expect(action, *expected):
        start = AuditEvent.objects.filter(session_id=session.pk).count()
        action()
        new = kinds(session)[start:]
        for kind in expected:
            assert kind in new, (action, expected, new)
        assert new, f"{action} produced no audit event"

    assert kinds(session) == ["session.launched", "grant.issued"]
    expect(lambda: services.session_pause(session=session, by=fleet.sto), "session.paused", "session.status")
    expect(lambda: services.session_resume(session=session, by=fleet.sto), "session.resumed", "session.status")
    expect(lambda: services.sto_assign(session=session, new_sto=fleet.member, by=fleet.lead), "session.sto_reassigned")
    expect(lambda: services.session_set_priority(session=session, priority=0, by=fleet.lead), "session.priority_set")
    expect(
        lambda: services.grant_issue(session=session, by=fleet.lead, spec=services.GrantSpec(mode="ask")),
        "grant.revoked",
        "grant.issued",
    )
    grant = session.grants.get(revoked_at__isnull=True)
    expect(lambda: services.grant_revoke(grant=grant, by=fleet.lead, reason="stop"), "grant.revoked")
    expect(
        lambda: services.grant_issue(session=session, by=fleet.lead, spec=services.GrantSpec(mode="edits")),
        "grant.issued",
    )
    grant = session.grants.get(revoked_at__isnull=True)
    escalation = Escalation.objects.create(
        session=session,
        grant=grant,
        tool="run_command",
        action="run_command: git push",
        action_hash="a" * 64,
        reason="asks",
        rule="Bash(git push)",
    )
    expect(
        lambda: services.escalation_decide(escalation=escalation, by=fleet.lead, decision="allow-always"),
        "escalation.decided",
        "grant.revoked",
        "grant.issued",
    )
    second = Escalation.objects.create(
        session=session,
        grant=session.grants.get(revoked_at__isnull=True),
        tool="run_command",
        action="run_command: rm -rf build",
        action_hash="b" * 64,
        reason="asks",
    )

    def leader_decides() -> None:
        with pytest.raises(NotAllowed):
            services.escalation_decide(escalation=second, by=fleet.leader, decision="deny")

    expect(leader_decides, "escalation.refused")
    expect(
        lambda: services.escalation_decide(escalation=second, by=fleet.sto, decision="deny", reason="no"),
        "escalation.decided",
    )
    expect(lambda: services.session_block_expired(session=session), "grant.expired", "session.status")
    expect(lambda: services.session_cancel(session=session, by=fleet.lead), "session.cancelled", "session.status")
    # and the fleet- and pod-wide switches, on the system chain
    system_before = AuditEvent.objects.filter(session_id__isnull=True).count()
    services.fleet_stop(by=fleet.manager)
    services.fleet_resume(by=fleet.manager)
    services.pod_pause(pod=fleet.alpha, by=fleet.lead)
    services.pod_resume(pod=fleet.alpha, by=fleet.lead)
    system_kinds = list(
        AuditEvent.objects.filter(session_id__isnull=True).order_by("id").values_list("kind", flat=True)
    )[system_before:]
    assert system_kinds == ["fleet.stopped", "fleet.resumed", "pod.paused", "pod.resumed"]
    assert (
        Grant.objects.filter(session=session).count()
        == AuditEvent.objects.filter(session_id=session.pk, kind="grant.issued").count()
    )


def test_the_log_of_that_walk_verifies(fleet, session, capsys):
    services.session_pause(session=session, by=fleet.sto)
    services.session_resume(session=session, by=fleet.sto)
    call_command("audit_verify")
    assert capsys.readouterr().out.startswith("OK ")
