"""Many sessions at once on real Celery workers (threads pool) with a loopback model that takes its time.

Waiting on a model holds a thread, not a worker process; the runtime's guarantees still hold: a
SIGKILLed worker loses and repeats no tool call, pause and fleet stop act before the next tool call,
a provider's concurrency cap is never exceeded, and HTTP 429 waits as long as the provider asks.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.db import transaction

from agents import services
from agents.dispatch import enqueue_step_on_commit
from agents.models import AgentSession, Status, ToolCall
from agents.tasks import tick
from audit.models import AuditEvent
from bench.loopback_model import LoopbackModel
from tests.agents.test_runtime import launch
from tests.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.BLOCKED)


def _launch_many(fleet, count: int, model: LoopbackModel) -> list[int]:
    with transaction.atomic():
        ids = []
        for index in range(count):
            session = launch(
                fleet,
                goal=f"Fleet session {index}: leave a line per step",
                model="openai/loopback",
                api_base=model.api_base,
                spec=services.GrantSpec(mode="autonomous"),
                seed=index,
            )
            enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
            ids.append(session.pk)
    return ids


def _statuses(ids: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in AgentSession.objects.filter(pk__in=ids).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def _all_done(ids: list[int]) -> bool:
    return not AgentSession.objects.filter(pk__in=ids).exclude(status__in=TERMINAL).exists()


def test_a_worker_sigkilled_while_twenty_sessions_wait_on_the_model_loses_and_repeats_no_tool_call(
    fleet, celery_workers, settings
):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "STALE_AFTER_S": 5}
    with LoopbackModel(latency_s=4.0, steps=3, tool="run_command") as model:
        ids = _launch_many(fleet, 20, model)
        pool = celery_workers(processes=1, concurrency=32, pool="threads", STEP_LEASE_S=3)
        # all twenty have done their first command and are waiting on their second model call: one
        # worker process holds twenty calls in flight (a prefork slot would hold one)
        wait_until(
            lambda: (
                ToolCall.objects.filter(session_id__in=ids, name="run_command", state="done").count() == 20
                and model.in_flight_at(time.time()) == 20
            ),
            timeout=90,
            interval=0.2,
            message=lambda: f"twenty calls in flight ({model.in_flight_at(time.time())})\n{pool.log_tail()}",
        )
        pool.kill(pool.procs[0])  # SIGKILL: main process and its threads, mid-call
        calls_before = len(model.served())
        pool.start_one(1)

        def recovered() -> bool:
            tick()  # the housekeeping beat: stale sessions (no heartbeat, lease lapsed) get their step again
            return _all_done(ids)

        wait_until(recovered, timeout=180, interval=1.0, message=lambda: f"{_statuses(ids)}\n{pool.log_tail()}")
    assert _statuses(ids) == {Status.SUCCEEDED: 20}, pool.log_tail()
    assert len(model.served()) > calls_before  # the interrupted calls were asked again: nothing to repeat there
    for session in AgentSession.objects.filter(pk__in=ids):
        # from the records: each step's command ran exactly once, and its line is in the log exactly once
        done = ToolCall.objects.filter(session=session, name="run_command", state="done")
        assert done.count() == 2
        assert not ToolCall.objects.filter(session=session, state="interrupted").exists()
        assert Path(session.worktree_path, "runs.log").read_text().splitlines() == ["step-1", "step-2"]


def test_pause_and_fleet_stop_act_before_the_next_tool_call_while_the_model_is_thinking(fleet, celery_workers):
    with LoopbackModel(latency_s=3.0, steps=3, tool="run_command") as model:
        paused, stopped = _launch_many(fleet, 2, model)
        pool = celery_workers(processes=1, concurrency=8, pool="threads")
        wait_until(
            lambda: model.in_flight_at(time.time()) == 2, timeout=60, interval=0.1, message="two calls in flight"
        )
        services.session_pause(session=AgentSession.objects.get(pk=paused), by=fleet.sto)
        wait_until(
            lambda: (
                AgentSession.objects.get(pk=paused).status == Status.PAUSED
                and ToolCall.objects.filter(session_id=stopped).exists()
            ),
            timeout=60,
            message=lambda: pool.log_tail(),
        )
        # the paused session's answer came back while it was paused: its command never ran
        assert not ToolCall.objects.filter(session_id=paused, state="done").exists()
        assert not Path(AgentSession.objects.get(pk=paused).worktree_path, "runs.log").exists()
        wait_until(lambda: model.in_flight_at(time.time()) == 1, timeout=30, interval=0.1, message="the next call")
        services.fleet_stop(by=fleet.manager, reason="test")
        wait_until(
            lambda: AgentSession.objects.get(pk=stopped).status == Status.PAUSED, timeout=60, message=pool.log_tail
        )
        stopped_session = AgentSession.objects.get(pk=stopped)
        assert stopped_session.hold == "fleet"
        assert ToolCall.objects.filter(session_id=stopped, state="done").count() == 1
        assert Path(stopped_session.worktree_path, "runs.log").read_text().splitlines() == ["step-1"]
        services.fleet_resume(by=fleet.manager)
        services.session_resume(session=AgentSession.objects.get(pk=paused), by=fleet.sto)
        wait_until(lambda: _all_done([paused, stopped]), timeout=120, message=pool.log_tail)
    assert _statuses([paused, stopped]) == {Status.SUCCEEDED: 2}
    for session_id in (paused, stopped):
        log = Path(AgentSession.objects.get(pk=session_id).worktree_path, "runs.log")
        assert log.read_text().splitlines() == ["step-1", "step-2"]  # each command once, none skipped


def test_a_provider_cap_of_two_never_has_more_than_two_calls_in_flight(fleet, celery_workers):
    with LoopbackModel(latency_s=1.0, steps=2) as model:
        pool = celery_workers(processes=2, concurrency=16, pool="threads", MODEL_CONCURRENCY=f"{model.api_base}=2")
        ids = _launch_many(fleet, 8, model)
        seen_waiting = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _all_done(ids):
            activities = AgentSession.objects.filter(pk__in=ids).values_list("current_activity", flat=True)
            seen_waiting = seen_waiting or any(a.startswith("waiting for model capacity") for a in activities)
            time.sleep(0.1)
    assert _statuses(ids) == {Status.SUCCEEDED: 8}, pool.log_tail()
    assert model.max_in_flight == 2  # never more than the cap, across both worker processes (and it was used)
    assert seen_waiting  # the tiles said why they waited instead of looking stuck


def test_http_429_with_retry_after_two_is_retried_after_two_seconds_without_failing(fleet, celery_workers):
    with LoopbackModel(latency_s=0.1, steps=2, rate_limit_first=1, retry_after_s=2) as model:
        pool = celery_workers(processes=1, concurrency=4, pool="threads")
        [session_id] = _launch_many(fleet, 1, model)
        # a ceiling, not a speed claim: a worker's first step imports and warms LiteLLM, which on
        # a loaded 2-core machine has taken most of a minute
        wait_until(lambda: _all_done([session_id]), timeout=180, message=pool.log_tail)
        calls = sorted(model.calls, key=lambda c: c.started)
    session = AgentSession.objects.get(pk=session_id)
    assert session.status == Status.SUCCEEDED, (session.status_reason, pool.log_tail())
    refused, retried = calls[0], calls[1]
    assert refused.status == 429 and retried.status == 200
    assert retried.started - refused.ended >= 2.0
    error = AuditEvent.objects.get(session_id=session_id, kind="model.error")
    assert error.payload["rate_limited"] is True and error.payload["retry_after_s"] == 2.0
    assert error.payload["final"] is False
