"""Attestation: only the session's STO accepts or disowns its work; disowning needs a reason; the
verdict, its audit event and the live update go together."""

from __future__ import annotations

import html

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from agents.authority import NotAllowed
from agents.models import AgentSession, Status
from audit.models import AuditEvent
from reviews.attest import session_attest
from tests.reviews.test_digest import launch, login, status


@pytest.fixture
def finished(fleet) -> AgentSession:
    session = launch(fleet, name="Fix the cart total")
    status(session, Status.RUNNING)
    status(session, Status.SUCCEEDED, reason="finished")
    return session


def test_the_sto_accepts_the_work_with_an_audit_event_and_a_live_update(
    fleet, finished, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr("agents.events.broadcast_session", lambda session_id, pod_id=None: sent.append(session_id))
    version = finished.version
    with django_capture_on_commit_callbacks(execute=True):
        session_attest(session=finished, by=fleet.sto, verdict="accepted")
    finished.refresh_from_db()
    assert finished.attestation == "accepted" and finished.attestation_reason == ""
    assert finished.version == version + 1
    event = AuditEvent.objects.filter(session_id=finished.pk, kind="session.attested").get()
    assert event.actor_type == "user" and event.actor_user_id == fleet.sto.pk and event.provenance == "human"
    assert event.payload == {"verdict": "accepted", "reason": "", "previous": "", "previous_reason": ""}
    assert sent == [finished.pk]


def test_disowning_needs_a_reason(fleet, finished):
    with pytest.raises(ValidationError, match="Say why you disown"):
        session_attest(session=finished, by=fleet.sto, verdict="disowned", reason="   ")
    finished.refresh_from_db()
    assert finished.attestation == ""
    assert not AuditEvent.objects.filter(kind="session.attested").exists()


def test_disowning_with_a_reason_replaces_an_acceptance_and_both_stay_in_the_log(fleet, finished):
    session_attest(session=finished, by=fleet.sto, verdict="accepted")
    session_attest(
        session=finished, by=fleet.sto, verdict="disowned", reason="the agent touched the billing code I do not own"
    )
    finished.refresh_from_db()
    assert (finished.attestation, finished.attestation_reason) == (
        "disowned",
        "the agent touched the billing code I do not own",
    )
    verdicts = list(AuditEvent.objects.filter(kind="session.attested").order_by("id").values_list("payload", flat=True))
    assert [v["verdict"] for v in verdicts] == ["accepted", "disowned"] and verdicts[1]["previous"] == "accepted"


def test_an_unknown_verdict_is_a_clear_error(fleet, finished):
    with pytest.raises(ValidationError, match="Unknown verdict"):
        session_attest(session=finished, by=fleet.sto, verdict="maybe")


@pytest.mark.parametrize("who", ["lead", "member", "outsider", "manager", "leader"])
def test_only_the_sto_may_attest_not_even_the_lead_or_a_manager(fleet, finished, who):
    with pytest.raises(NotAllowed, match="Only the session's Single Task Owner"):
        session_attest(session=finished, by=getattr(fleet, who), verdict="accepted")
    finished.refresh_from_db()
    assert finished.attestation == ""


# -- the digest's buttons (htmx) ------------------------------------------------------------------


def test_the_sto_accepts_from_the_digest_and_gets_the_row_back(client, fleet, finished):
    login(client, fleet.sto)
    response = client.post(
        reverse("digest_attest", args=[finished.pk]), {"verdict": "accepted", "preset": "24h"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    row = response.content.decode()
    assert row.lstrip().startswith('<li class="drow') and f'id="digest-{finished.pk}"' in row
    assert 'data-attestation="accepted"' in row and "accepted by sam as theirs" in row
    finished.refresh_from_db()
    assert finished.attestation == "accepted"


def test_disowning_without_a_reason_from_the_digest_says_why_and_records_nothing(client, fleet, finished):
    login(client, fleet.sto)
    response = client.post(
        reverse("digest_attest", args=[finished.pk]), {"verdict": "disowned", "reason": ""}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "Say why you disown this work" in response.content.decode()
    finished.refresh_from_db()
    assert finished.attestation == ""


@pytest.mark.parametrize("who", ["lead", "manager", "member"])
def test_anyone_else_gets_403_and_the_attempt_is_recorded(client, fleet, finished, who):
    login(client, getattr(fleet, who))
    response = client.post(reverse("digest_attest", args=[finished.pk]), {"verdict": "accepted"})
    assert response.status_code == 403
    assert "Only the session's Single Task Owner (sam)" in html.unescape(response.content.decode())
    finished.refresh_from_db()
    assert finished.attestation == ""
    refused = AuditEvent.objects.get(session_id=finished.pk, kind="session.action_refused")
    assert refused.actor_label == getattr(fleet, who).username


def test_an_outsider_gets_403_too(client, fleet, finished):
    login(client, fleet.outsider)
    response = client.post(reverse("digest_attest", args=[finished.pk]), {"verdict": "accepted"})
    assert response.status_code == 403


def test_a_plain_form_post_redirects_to_the_digest_with_the_same_window(client, fleet, finished):
    login(client, fleet.sto)
    response = client.post(reverse("digest_attest", args=[finished.pk]), {"verdict": "accepted", "preset": "7d"})
    assert response.status_code == 302 and response["Location"] == "/digest?preset=7d"


def test_attesting_needs_a_post_and_a_csrf_token(fleet, finished):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    login(client, fleet.sto)
    assert client.get(reverse("digest_attest", args=[finished.pk])).status_code == 405
    assert client.post(reverse("digest_attest", args=[finished.pk]), {"verdict": "accepted"}).status_code == 403
    finished.refresh_from_db()
    assert finished.attestation == ""
