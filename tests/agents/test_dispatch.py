"""Enqueueing agent work (agents/dispatch.py, agents/notify.py): tasks go by name through
``celery.current_app``, which must be the project's configured app in every thread (the ASGI
server's worker threads, a test's live server), never Celery's unconfigured fallback app."""

from __future__ import annotations

import json
import threading

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.db import transaction

from agents.dispatch import STEP_TASK, enqueue_step_now
from agents.notify import WEBHOOK_TASK, notify_needs_human_on_commit


def in_another_thread(fn):
    """``fn()`` run in a fresh thread (Celery's current app is per thread); its result or error."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "sending from another thread hung (trying an unconfigured broker?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def queued_tasks() -> list[dict]:
    """The messages waiting on the project's broker (kombu's Redis transport: one list per queue
    and priority step, named after the queue)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = [key for key in client.keys("*") if key.startswith(settings.CELERY_TASK_DEFAULT_QUEUE.encode())]
        return [json.loads(raw)["headers"] for key in keys for raw in client.lrange(key, 0, -1)]
    finally:
        client.close()


def test_every_thread_sees_the_projects_celery_app_as_the_current_one():
    from controlroom.celery import app

    assert current_app._get_current_object() is app
    assert in_another_thread(lambda: current_app._get_current_object()) is app


def test_a_step_enqueued_from_another_thread_reaches_the_projects_broker():
    # host="": a session with no worker host yet goes to the shared queue (no database lookup here)
    in_another_thread(lambda: enqueue_step_now(session_id=4321, step=7, priority=0, host=""))
    [message] = queued_tasks()
    assert message["task"] == STEP_TASK
    assert message["argsrepr"] == "[4321, 7]"


@pytest.mark.django_db(transaction=True)
def test_a_webhook_enqueued_after_a_commit_in_another_thread_reaches_the_projects_broker():
    def commit_and_notify() -> None:
        with transaction.atomic():
            notify_needs_human_on_commit(session_id=4321, escalation_id=None, reason="needs approval")

    in_another_thread(commit_and_notify)
    [message] = queued_tasks()
    assert message["task"] == WEBHOOK_TASK
    assert message["argsrepr"] == "[4321]"
