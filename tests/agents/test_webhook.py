"""Reach the human: a pod's webhook gets one Slack-compatible POST per new escalation, sent by its
own Celery task, so a dead endpoint never slows or fails the agent."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction

from agents import services
from agents.dispatch import enqueue_step_on_commit
from agents.models import AgentSession, AgentStep, Escalation, Status
from controlroom.localredis import free_port
from tests.agents.test_runtime import launch
from tests.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class Hook:
    """A loopback HTTP server that records every POST it receives."""

    def __init__(self):
        self.posts: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                hook.posts.append(
                    {"path": self.path, "content_type": self.headers.get("Content-Type"), "json": json.loads(body)}
                )
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alpha"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _launch_asking_session(fleet) -> AgentSession:
    """An engineer under "ask": reads are allowed, its first edit or command waits for a human."""
    with transaction.atomic():
        session = launch(fleet, spec=services.GrantSpec(mode="ask"))
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
    return session


def _status(session) -> str:
    return AgentSession.objects.values_list("status", flat=True).get(pk=session.pk)


def test_each_new_escalation_posts_exactly_once_to_the_pod_webhook(fleet, celery_workers):
    with Hook() as hook:
        fleet.alpha.webhook_url = hook.url
        fleet.alpha.save(update_fields=["webhook_url"])
        session = _launch_asking_session(fleet)
        pool = celery_workers(processes=1, concurrency=2)

        wait_until(
            lambda: _status(session) == Status.NEEDS_APPROVAL,
            timeout=120,
            message=f"the session to ask\n{pool.log_tail()}",
        )
        first = Escalation.objects.get(session=session, state=Escalation.State.OPEN)
        wait_until(lambda: hook.posts, timeout=30, message=f"the webhook POST\n{pool.log_tail()}")
        time.sleep(2.0)  # a duplicate would have arrived by now
        assert len(hook.posts) == 1, hook.posts
        post = hook.posts[0]
        assert post["path"] == "/hooks/alpha" and post["content_type"] == "application/json"
        body = post["json"]
        assert f"#{session.pk}" in body["text"] and "needs you" in body["text"] and first.action in body["text"]
        assert (body["session_id"], body["escalation_id"], body["pod"], body["sto"]) == (
            session.pk,
            first.pk,
            "alpha",
            "sam",
        )

        # the human answers; the agent carries on and asks again: a second escalation, a second POST
        services.escalation_decide(escalation=first, by=fleet.lead, decision="allow-once")
        wait_until(
            lambda: (
                Escalation.objects.filter(session=session, state=Escalation.State.OPEN).exclude(pk=first.pk).exists()
            ),
            timeout=120,
            message=f"a second escalation\n{pool.log_tail()}",
        )
        second = Escalation.objects.get(session=session, state=Escalation.State.OPEN)
        wait_until(lambda: len(hook.posts) >= 2, timeout=30, message=f"the second POST\n{pool.log_tail()}")
        time.sleep(2.0)
        assert [p["json"]["escalation_id"] for p in hook.posts] == [first.pk, second.pk]


def test_a_dead_webhook_endpoint_neither_slows_nor_fails_the_agent(fleet, celery_workers):
    fleet.alpha.webhook_url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    fleet.alpha.save(update_fields=["webhook_url"])
    session = _launch_asking_session(fleet)
    pool = celery_workers(processes=1, concurrency=1)  # one process: a stuck webhook would hold up the agent

    wait_until(
        lambda: _status(session) == Status.NEEDS_APPROVAL, timeout=120, message=f"the session to ask\n{pool.log_tail()}"
    )
    for step in AgentStep.objects.filter(session=session):
        # done, or (the step that asked) parked with the model's answer until a human decides
        assert step.state in (AgentStep.State.DONE, AgentStep.State.MODEL_DONE), (step.number, step.state, step.error)
        assert not step.error
        if step.finished_at:
            assert (step.finished_at - step.started_at).total_seconds() < 10, f"step {step.number} was slow"
    # the webhook fails in its own task and is retried there
    wait_until(
        lambda: "send_webhook" in pool.log_tail(400) and "Retry in" in pool.log_tail(400),
        timeout=30,
        message=f"the webhook task to retry\n{pool.log_tail()}",
    )

    # meanwhile the agent keeps working once a human answers
    steps_before = AgentSession.objects.values_list("steps", flat=True).get(pk=session.pk)
    escalation = Escalation.objects.get(session=session, state=Escalation.State.OPEN)
    services.escalation_decide(escalation=escalation, by=fleet.lead, decision="allow-once")
    wait_until(
        lambda: AgentSession.objects.values_list("steps", flat=True).get(pk=session.pk) > steps_before,
        timeout=60,
        message=f"the agent to carry on\n{pool.log_tail()}",
    )
    session.refresh_from_db()
    assert session.status != Status.FAILED, session.status_reason
