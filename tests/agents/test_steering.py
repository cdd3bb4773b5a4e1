"""Steering a running session: a person's message reaches the agent at its next step, as a user
message of its model context, and is an audit event (sent and delivered)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from agents import authority, services
from agents.models import SteeringMessage, TranscriptEntry
from agents.runtime.loop import run_step
from audit.models import AuditEvent
from tests.agents.test_runtime import scripted
from tests.personas import PASSWORD
from tests.scripted_model import ScriptedModel, calls

HTMX = {"HTTP_HX_REQUEST": "true"}
NOTE = "Use the helper in shopcart/util.py instead of writing a new one."


def user_messages(request: dict) -> list[str]:
    return [m.get("content") or "" for m in request["messages"] if m["role"] == "user"]


@pytest.mark.django_db
def test_the_sto_the_pod_lead_and_a_manager_may_steer_and_others_are_refused(fleet, worktrees_dir):
    session = services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="Fix it", by=fleet.lead, repository=fleet.repo, start=False
    )
    for user in (fleet.sto, fleet.lead, fleet.manager):
        services.session_steer(session=session, by=user, text=f"hello from {user.username}")
    for user in (fleet.member, fleet.outsider, fleet.leader):
        with pytest.raises(authority.NotAllowed):
            services.session_steer(session=session, by=user, text="let me in")
    assert list(SteeringMessage.objects.values_list("author__username", flat=True)) == ["sam", "lena", "max"]
    events = AuditEvent.objects.filter(session_id=session.pk, kind="session.steered").order_by("id")
    assert [(e.actor_label, e.payload["text"]) for e in events] == [
        ("sam", "hello from sam"),
        ("lena", "hello from lena"),
        ("max", "hello from max"),
    ]


@pytest.mark.django_db
def test_an_empty_or_oversized_message_is_a_clear_error_and_nothing_is_stored(client, fleet, worktrees_dir):
    session = services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="Fix it", by=fleet.lead, repository=fleet.repo, start=False
    )
    with pytest.raises(ValidationError, match="Write the message"):
        services.session_steer(session=session, by=fleet.sto, text="   ")
    assert client.login(username="sam", password=PASSWORD)
    response = client.post(f"/sessions/{session.pk}/steer", {"text": "x" * 5000}, **HTMX)
    assert response.status_code == 400 and "under 4000 characters" in response.content.decode()
    response = client.post(f"/sessions/{session.pk}/steer", {"text": "hi"}, **HTMX)
    assert response.status_code == 200 and "waiting for its next step" in response.content.decode()
    assert client.login(username="mia", password=PASSWORD)
    response = client.post(f"/sessions/{session.pk}/steer", {"text": "me too"}, **HTMX)
    assert response.status_code == 403
    assert SteeringMessage.objects.count() == 1
    assert AuditEvent.objects.filter(kind="session.action_refused", actor_label="mia").exists()


@pytest.mark.django_db(transaction=True)
def test_a_message_sent_during_a_step_is_in_the_next_model_calls_context_and_not_before(fleet, worktrees_dir):
    script = [calls([("list_files", {"path": "."})]), calls([("list_files", {"path": "."})])]
    with ScriptedModel(script) as model:
        session = scripted(fleet, model)
        run_step(session.pk, 1, owner="test")
        assert not any(NOTE in text for text in user_messages(model.requests[0]))
        services.session_steer(session=session, by=fleet.sto, text=NOTE)
        run_step(session.pk, 2, owner="test")
        run_step(session.pk, 3, owner="test")
    second, third = model.requests[1], model.requests[2]
    # the message is the last message of the second call's context, after step 1's tool results
    assert second["messages"][-1]["role"] == "user" and NOTE in second["messages"][-1]["content"]
    assert second["messages"][-2]["role"] == "tool"
    # it stays in the context (once) for the calls after
    assert sum(NOTE in text for text in user_messages(third)) == 1
    message = SteeringMessage.objects.get()
    assert message.delivered_step == 2 and message.transcript_entry.role == "user"
    entry = TranscriptEntry.objects.get(session=session, name="steering")
    assert NOTE in entry.content and entry.step == 2
    delivered = AuditEvent.objects.get(session_id=session.pk, kind="steering.delivered")
    assert delivered.payload["message"] == message.pk and delivered.payload["by"] == "sam"
    assert delivered.actor_type == "agent"
