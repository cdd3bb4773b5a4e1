"""The runtime end to end with real Celery worker processes, the real Redis broker and real git."""

from __future__ import annotations

import itertools
import os
import time
from collections import defaultdict
from pathlib import Path

import git
import pytest
from django.db import transaction

from agents import services
from agents.dispatch import enqueue_step_on_commit
from agents.models import AgentSession, AgentStep, Status, ToolCall
from agents.tasks import tick
from audit.models import AuditEvent
from tests.agents.test_runtime import launch
from tests.conftest import wait_until
from tests.scripted_model import ScriptedModel, calls, finish

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _launch_started(fleet, **kwargs) -> AgentSession:
    """Launch (the shared helper launches without enqueuing) and enqueue the first step after commit."""
    with transaction.atomic():
        session = launch(fleet, **kwargs)
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
    return session


def test_a_sim_session_run_by_a_celery_worker_succeeds(fleet, celery_workers):
    pool = celery_workers(processes=1, concurrency=1)
    session = _launch_started(fleet)
    wait_until(
        lambda: AgentSession.objects.get(pk=session.pk).is_terminal,
        timeout=120,
        message=f"session to finish\n{pool.log_tail()}",
    )
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED, (session.status_reason, pool.log_tail())
    commit = next(git.Repo(fleet.repo.path).iter_commits(f"main..{session.branch}"))
    assert f"Agent-Session: {session.pk}" in commit.message


@pytest.mark.timeout(900)
def test_a_hundred_sim_sessions_on_two_workers_never_run_one_session_twice_at_once(fleet, celery_workers):
    count = int(os.environ.get("CR_FLEET_SESSIONS", "100"))  # to try smaller fleets by hand
    with transaction.atomic():
        sessions = []
        for index in range(count):
            session = launch(fleet, goal=f"Task {index}: fix the failing test in shopcart", seed=index)
            enqueue_step_on_commit(session_id=session.pk, step=1, priority=index % 4)
            sessions.append(session.pk)
    pool = celery_workers(processes=2, concurrency=1)

    def progress() -> str:
        counts = defaultdict(int)
        for status in AgentSession.objects.filter(pk__in=sessions).values_list("status", flat=True):
            counts[status] += 1
        steps = AgentStep.objects.filter(session_id__in=sessions, state="done").count()
        return f"sessions to finish: {dict(counts)}, {steps} steps done\n{pool.log_tail()}"

    wait_until(
        lambda: (
            not AgentSession.objects.filter(pk__in=sessions)
            .exclude(status__in=["succeeded", "failed", "cancelled", "blocked"])
            .exists()
        ),
        timeout=540,
        interval=1.0,
        message=progress,
    )
    statuses = defaultdict(int)
    for status in AgentSession.objects.filter(pk__in=sessions).values_list("status", flat=True):
        statuses[status] += 1
    assert statuses == {"succeeded": count}, (dict(statuses), pool.log_tail())
    # the recorded steps prove no session ever had two steps running at once
    by_session = defaultdict(list)
    for session_id, number, started, finished, worker in AgentStep.objects.filter(session_id__in=sessions).values_list(
        "session_id", "number", "started_at", "finished_at", "worker"
    ):
        by_session[session_id].append((number, started, finished, worker))
    workers_seen = set()
    for session_id, steps in by_session.items():
        steps.sort()
        assert [n for n, *_ in steps] == list(range(1, len(steps) + 1)), f"gap in the steps of {session_id}"
        for (_, _, previous_end, _), (number, start, _, _) in itertools.pairwise(steps):
            assert previous_end is not None and start >= previous_end, f"session {session_id}: step {number} overlapped"
        workers_seen.update(worker.split(":")[0] for *_, worker in steps)
    assert len(workers_seen) == 2, workers_seen  # both worker processes took part


def test_a_worker_killed_mid_step_loses_nothing_and_runs_no_tool_call_twice(fleet, celery_workers, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "STALE_AFTER_S": 5}
    script = [
        calls([("run_command", {"command": "echo started >> runs.log; sleep 8; echo finished >> runs.log"})]),
        calls([("write_file", {"path": "after.txt", "content": "carried on"})]),
        finish("recovered"),
    ]
    with ScriptedModel(script) as model:
        spec = services.GrantSpec(mode="autonomous")
        session = _launch_started(fleet, model="openai/scripted", api_base=model.api_base, spec=spec)
        pool = celery_workers(processes=1, concurrency=1, STEP_LEASE_S=3)
        wait_until(
            lambda: ToolCall.objects.filter(
                session_id=session.pk, name="run_command", state=ToolCall.State.INTENDED
            ).exists(),
            timeout=60,
            message=f"the slow command to start\n{pool.log_tail()}",
        )
        time.sleep(1.0)
        pool.kill(pool.procs[0])  # SIGKILL the whole worker (main process and its pool child)
        log = Path(AgentSession.objects.get(pk=session.pk).worktree_path, "runs.log")
        assert log.read_text() == "started\n"
        pool.start_one(1)  # a worker is back

        # the heartbeat goes stale; the housekeeping tick recovers the session
        def recovered():
            tick()
            return AgentSession.objects.get(pk=session.pk).is_terminal

        wait_until(recovered, timeout=120, interval=1.0, message=f"recovery\n{pool.log_tail()}")
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED, (session.status_reason, pool.log_tail())
    # asserted from the records: the command ran once (its log has one start), it was marked interrupted, not re-run
    assert log.read_text() == "started\n"
    command = ToolCall.objects.get(session=session, name="run_command")
    assert command.state == ToolCall.State.INTERRUPTED
    assert AuditEvent.objects.filter(session_id=session.pk, kind="tool.interrupted").count() == 1
    assert ToolCall.objects.filter(session=session, name="write_file", state=ToolCall.State.DONE).count() == 1
    assert Path(session.worktree_path, "after.txt").read_text() == "carried on"
    assert len([r for r in model.requests if r.get("messages")]) == 3  # step 1's answer was reused, not asked again


def test_a_scripted_model_over_real_http_drives_a_session_through_a_worker(fleet, celery_workers):
    script = [
        calls([("read_file", {"path": "{broken"})]),
        calls([("bogus_tool", {})]),
        {"empty_choices": True},
        {"status": 500},
        calls([("list_files", {"path": "."})]),
        finish("scripted done"),
    ]
    with ScriptedModel(script) as model:
        session = _launch_started(fleet, model="openai/scripted", api_base=model.api_base)
        pool = celery_workers(processes=1, concurrency=1)
        wait_until(
            lambda: AgentSession.objects.get(pk=session.pk).is_terminal,
            timeout=120,
            message=f"scripted session to finish\n{pool.log_tail()}",
        )
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED, (session.status_reason, pool.log_tail())
    assert session.summary == "scripted done"
    errors = AuditEvent.objects.filter(session_id=session.pk, kind="model.error")
    assert errors.count() == 2  # empty choices, HTTP 500: recorded and retried
    assert ToolCall.objects.filter(session=session, state=ToolCall.State.ERROR).count() == 2  # bad JSON, unknown tool
