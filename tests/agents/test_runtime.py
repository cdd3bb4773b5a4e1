"""The agent loop, in-process (one step at a time, no broker): real git, real LiteLLM, real tools.

The Celery-driven end-to-end runs (workers, SIGKILL, 100 sessions) are in test_runtime_celery.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import git
import pytest

from agents import services
from agents.models import AgentSession, AgentStep, Status, ToolCall, TranscriptEntry
from agents.runtime.loop import run_step
from audit.models import AuditEvent
from tests.scripted_model import ScriptedModel, calls, finish

pytestmark = pytest.mark.django_db(transaction=True)


def drive(session: AgentSession, *, max_steps: int = 80) -> AgentSession:
    """Run steps in-process until the session stops running (what the Celery chain does)."""
    for _ in range(max_steps):
        session.refresh_from_db()
        if session.status not in (Status.QUEUED, Status.RUNNING):
            return session
        outcome = run_step(session.pk, session.steps + 1, owner="test")
        if outcome.result in ("parked", "stale", "gone"):
            session.refresh_from_db()
            return session
    session.refresh_from_db()
    return session


def launch(
    fleet, *, goal="Fix the failing test in shopcart", model="sim/engineer", spec=None, **kwargs
) -> AgentSession:
    spec = spec or services.GrantSpec(mode="edits", allow=("Bash(python -m pytest *)", "Bash(pytest *)", "Git(commit)"))
    # the STO (a member) may delegate up to "edits"; autonomous comes from the pod lead
    delegator = fleet.lead if spec.mode == "autonomous" else None
    return services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal=goal,
        by=fleet.lead,
        repository=fleet.repo,
        model=model,
        grant=spec,
        delegator=delegator,
        start=False,
        **kwargs,
    )


def scripted(fleet, model: ScriptedModel, *, spec=None, **kwargs) -> AgentSession:
    return launch(fleet, model="openai/scripted", spec=spec, api_base=model.api_base, **kwargs)


def test_a_sim_session_succeeds_with_a_commit_carrying_the_trailers(fleet, worktrees_dir):
    session = drive(launch(fleet))
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    repo = git.Repo(fleet.repo.path)
    commits = list(repo.iter_commits(f"main..{session.branch}"))
    assert commits, "the agent's branch has no commit"
    message = commits[0].message
    grant = session.grants.get()
    assert f"Agent-Session: {session.pk}" in message
    assert "Delegated-By: sam" in message
    assert f"Grant: {grant.pk}" in message
    assert repo.git.diff(f"main...{session.branch}").strip()
    assert session.tokens > 0 and session.steps >= 3
    assert session.cost_unknown_calls == session.steps  # the offline model has no price: cost recorded as unknown
    assert TranscriptEntry.objects.filter(session=session, role="tool").count() >= 3
    assert AuditEvent.objects.filter(session_id=session.pk, kind="model.call").count() == session.steps
    assert AuditEvent.objects.filter(session_id=session.pk, kind="git.commit").exists()


def test_a_budget_of_three_steps_blocks_the_session_with_the_reason(fleet, worktrees_dir):
    spec = services.GrantSpec(mode="edits", allow=("Bash(python -m pytest *)", "Git(commit)"), max_steps=3)
    session = drive(launch(fleet, spec=spec))
    assert session.status == Status.BLOCKED
    assert session.steps == 3
    assert "max steps (3)" in session.status_reason
    assert AuditEvent.objects.filter(session_id=session.pk, kind="budget.exhausted").exists()


def test_raising_the_budget_with_a_new_grant_lets_it_resume(fleet, worktrees_dir, django_capture_on_commit_callbacks):
    spec = services.GrantSpec(mode="edits", allow=("Bash(python -m pytest *)", "Git(commit)"), max_steps=3)
    session = drive(launch(fleet, spec=spec))
    assert session.status == Status.BLOCKED
    services.grant_issue(
        session=session,
        by=fleet.lead,
        spec=services.GrantSpec(mode="edits", allow=("Bash(python -m pytest *)", "Git(commit)"), max_steps=100),
    )
    session.refresh_from_db()
    assert session.status == Status.RUNNING
    assert drive(session).status == Status.SUCCEEDED


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "escape/passwd"])
def test_paths_outside_the_worktree_are_refused_and_recorded(fleet, worktrees_dir, path):
    with ScriptedModel([calls([("run_command", {"command": "ls"})])]) as model:
        # the first step creates the worktree; plant a symlink pointing outside for the third case
        session = scripted(fleet, model, spec=services.GrantSpec(mode="autonomous"))
        run_step(session.pk, 1, owner="test")
        session.refresh_from_db()
        Path(session.worktree_path, "escape").symlink_to("/etc")
        model.add(calls([("read_file", {"path": path})]), finish())
        session = drive(session)
    row = ToolCall.objects.get(session=session, name="read_file")
    assert row.decision == "deny" and row.state == ToolCall.State.DENIED
    assert row.reason_type == "guard"
    assert (
        "root:" not in TranscriptEntry.objects.filter(session=session, role="tool").values_list("content", flat=True)[1]
    )
    event = AuditEvent.objects.get(session_id=session.pk, kind="tool.call", payload__tool="read_file")
    assert event.payload["decision"] == "deny"


def test_bad_tool_arguments_become_a_recorded_tool_error(fleet, worktrees_dir):
    script = [
        calls([("read_file", "{not json")]),
        calls([("read_file", {"path": 42})]),
        calls([("no_such_tool", {})]),
        calls([("write_file", {"path": "big.txt", "content": "x" * (3 * 1024 * 1024)})]),
        finish(),
    ]
    with ScriptedModel(script) as model:
        session = drive(scripted(fleet, model))
    assert session.status == Status.SUCCEEDED
    errors = list(ToolCall.objects.filter(session=session, state=ToolCall.State.ERROR).order_by("step__number"))
    assert len(errors) == 4
    assert all(row.raw_arguments_hash for row in errors)
    assert "invalid arguments" in errors[0].reason
    tool_messages = list(TranscriptEntry.objects.filter(session=session, role="tool").values_list("content", flat=True))
    assert all(message.startswith("error:") for message in tool_messages[:4])


def test_http_500_then_success_is_retried_and_recorded(fleet, worktrees_dir, settings):
    with ScriptedModel([{"status": 500}, finish()]) as model:
        session = scripted(fleet, model)
        first = run_step(session.pk, 1, owner="test")
        assert first.result == "retry"
        session = drive(session)
    assert session.status == Status.SUCCEEDED
    error = AuditEvent.objects.get(session_id=session.pk, kind="model.error")
    assert "500" in error.payload["error"] or "InternalServerError" in error.payload["error"]


@pytest.mark.parametrize("item", [{"empty_choices": True}, {"raw": "this is not json"}, {"status": 500}])
def test_a_model_that_keeps_failing_ends_in_a_failed_session_with_a_readable_reason(
    fleet, worktrees_dir, settings, item
):
    with ScriptedModel([dict(item) for _ in range(6)]) as model:
        session = scripted(fleet, model)
        for _ in range(6):
            session.refresh_from_db()
            if session.status == Status.FAILED:
                break
            run_step(session.pk, 1, owner="test")
    session.refresh_from_db()
    assert session.status == Status.FAILED
    assert "model error after 4 attempt(s)" in session.status_reason
    assert AuditEvent.objects.filter(session_id=session.pk, kind="model.error").count() == 4


def test_a_model_timeout_is_a_recorded_retry(fleet, worktrees_dir, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "MODEL_TIMEOUT_S": 1.0}
    with ScriptedModel([{"sleep": 3}, finish()]) as model:
        session = scripted(fleet, model)
        assert run_step(session.pk, 1, owner="test").result == "retry"
        session = drive(session)
    assert session.status == Status.SUCCEEDED
    assert "Timeout" in AuditEvent.objects.get(session_id=session.pk, kind="model.error").payload["error"]


def test_a_call_the_budget_reservation_refuses_is_denied_recorded_and_blocks_the_session(
    fleet, worktrees_dir, monkeypatch
):
    # the evaluator saw room in the budget, the reservation (one conditional UPDATE) found none
    monkeypatch.setattr(services, "tool_call_reserve", lambda **kwargs: False)
    spec = services.GrantSpec(mode="edits", max_tool_calls=3)
    with ScriptedModel([calls([("write_file", {"path": "a.txt", "content": "a"})]), finish()]) as model:
        session = drive(scripted(fleet, model, spec=spec))
    assert session.status == Status.BLOCKED and session.status_reason == "budget: max tool calls (3) reached"
    row = ToolCall.objects.get(session=session)
    assert (row.state, row.decision, row.reason_type) == (ToolCall.State.DENIED, "deny", "budget")
    assert row.result == "denied: budget: max tool calls (3) reached" and row.finished_at is not None
    assert not (Path(session.worktree_path) / "a.txt").exists()
    assert TranscriptEntry.objects.filter(session=session, role="tool").get().content == row.result
    event = AuditEvent.objects.get(session_id=session.pk, kind="tool.call")
    assert event.provenance == "budget" and event.payload["decision"] == "deny"


def test_a_paused_session_runs_no_step(fleet, worktrees_dir):
    with ScriptedModel([calls([("list_files", {"path": "."})])]) as model:
        session = scripted(fleet, model)
        services.session_pause(session=session, by=fleet.sto)
        assert run_step(session.pk, 1, owner="test").result == "stale"
    assert ToolCall.objects.filter(session=session).count() == 0 and model.requests == []


def test_pause_takes_effect_before_the_next_tool_call_and_resume_carries_on(fleet, worktrees_dir, monkeypatch):
    from agents import tools

    real_execute = tools.execute

    def execute_then_pause(name, args, **kwargs):
        result = real_execute(name, args, **kwargs)
        if name == "list_files":
            services.session_pause(session=AgentSession.objects.get(pk=session.pk), by=fleet.sto)
        return result

    monkeypatch.setattr(tools, "execute", execute_then_pause)
    with ScriptedModel(
        [calls([("list_files", {"path": "."}), ("write_file", {"path": "y.txt", "content": "y"})]), finish()]
    ) as model:
        session = scripted(fleet, model, spec=services.GrantSpec(mode="autonomous"))
        session = drive(session)
        assert session.status == Status.PAUSED
        assert list(ToolCall.objects.filter(session=session).values_list("name", flat=True)) == ["list_files"]
        monkeypatch.setattr(tools, "execute", real_execute)
        services.session_resume(session=session, by=fleet.sto)
        session = drive(session)
    assert session.status == Status.SUCCEEDED
    assert Path(session.worktree_path, "y.txt").read_text() == "y"


def test_a_fleet_stop_halts_an_agent_between_two_tool_calls(fleet, worktrees_dir, monkeypatch):
    """The stop switch is checked before every tool call, including within one step."""
    from agents import tools

    real_execute = tools.execute

    def execute_then_stop(name, args, **kwargs):
        result = real_execute(name, args, **kwargs)
        if name == "list_files":
            services.fleet_stop(by=fleet.manager, reason="test")
        return result

    monkeypatch.setattr(tools, "execute", execute_then_stop)
    with ScriptedModel(
        [calls([("list_files", {"path": "."}), ("write_file", {"path": "x.txt", "content": "x"})])]
    ) as model:
        session = drive(scripted(fleet, model, spec=services.GrantSpec(mode="autonomous")))
    assert session.status == Status.PAUSED and session.hold == "fleet"
    assert list(ToolCall.objects.filter(session=session).values_list("name", flat=True)) == ["list_files"]
    assert not Path(session.worktree_path, "x.txt").exists()
    services.fleet_resume(by=fleet.manager)
    monkeypatch.setattr(tools, "execute", real_execute)
    session.refresh_from_db()
    assert session.status == Status.RUNNING
    with ScriptedModel([finish()]) as model:
        AgentSession.objects.filter(pk=session.pk).update(api_base=model.api_base)
        session = drive(session)
    # the step resumed from the unexecuted call: it ran once, the first one was not repeated
    assert list(
        ToolCall.objects.filter(session=session).order_by("step__number", "index").values_list("name", flat=True)
    ) == ["list_files", "write_file", "finish"]
    assert Path(session.worktree_path, "x.txt").read_text() == "x"


def test_cancel_stops_the_session_for_good(fleet, worktrees_dir):
    session = launch(fleet)
    run_step(session.pk, 1, owner="test")
    services.session_cancel(session=session, by=fleet.lead)
    assert run_step(session.pk, 2, owner="test").result == "stale"
    session.refresh_from_db()
    assert session.status == Status.CANCELLED


def test_a_redelivered_step_never_runs_a_tool_call_twice(fleet, worktrees_dir):
    """Simulate a worker that died after recording the intent of a tool call but before its result."""
    with ScriptedModel([calls([("run_command", {"command": "echo ran >> counter.txt"})]), finish()]) as model:
        session = scripted(fleet, model, spec=services.GrantSpec(mode="autonomous"))
        step_one = run_step(session.pk, 1, owner="test")
        assert step_one.result == "done"
        counter = Path(session.worktree_path, "counter.txt")
        assert counter.read_text() == "ran\n"
        # now fake the crash: the step is marked not completed and its tool call back to "intended"
        AgentSession.objects.filter(pk=session.pk).update(steps=0)
        ToolCall.objects.filter(session=session).update(state=ToolCall.State.INTENDED, result="")
        AgentStep.objects.filter(session=session).update(state=AgentStep.State.MODEL_DONE)
        assert run_step(session.pk, 1, owner="redelivered").result == "done"
        session = drive(session)
    assert counter.read_text() == "ran\n"
    row = ToolCall.objects.get(session=session, name="run_command")
    assert row.state == ToolCall.State.INTERRUPTED
    assert AuditEvent.objects.filter(session_id=session.pk, kind="tool.interrupted").count() == 1
    assert len(model.requests) == 2  # the model answer of step 1 was reused, not asked again


def test_fresh_context_iterations_carry_the_handoff_and_the_git_log(fleet, worktrees_dir, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "STEPS_PER_ITERATION": 6}
    session = drive(launch(fleet))
    assert session.status == Status.SUCCEEDED
    assert session.iteration > 1
    briefs = TranscriptEntry.objects.filter(session=session, role="user", content__contains="fresh context")
    assert briefs.exists()
    assert "git log --oneline" in briefs.last().content
    # the full transcript is kept across iterations
    assert TranscriptEntry.objects.filter(session=session, iteration=1).exists()


def test_two_claims_of_one_step_cannot_both_run(fleet, worktrees_dir):
    from agents.runtime.loop import _claim

    session = launch(fleet)
    assert _claim(session.pk, 1, "worker-a") is None
    second = _claim(session.pk, 1, "worker-b")
    assert second is not None and second.result == "retry"


def test_the_lease_is_free_after_every_kind_of_step_end(fleet, worktrees_dir):
    """A completed step gives the lease back in its own transaction, a retried or parked one in
    run_step's ``finally``: either way the next step finds the session free at once."""
    edit = calls([("write_file", {"path": "notes.txt", "content": "one\n"})])
    with ScriptedModel([{"status": 500}, edit, finish()]) as model:
        session = scripted(fleet, model)
        outcomes = []
        for number in (1, 1, 2):  # a retry (HTTP 500), then two completed steps
            outcomes.append(run_step(session.pk, number, owner="test").result)
            row = AgentSession.objects.values("lease_owner", "lease_until").get(pk=session.pk)
            assert row == {"lease_owner": "", "lease_until": None}, (outcomes, row)
    assert outcomes == ["retry", "done", "done"]


def test_a_steps_recorded_parts_add_up_within_its_wall_time(fleet, worktrees_dir, monkeypatch):
    """The step's recorded timings (read by the step benchmark and the drawer) count each part
    once: the claim and the runner's first read ("lock") are inside "total", and "total" is no
    longer than the wall time of run_step itself, however slow the first read is."""
    from agents.runtime import loop

    slow = 0.2
    real_refresh = loop._Step.refresh

    def slow_refresh(self):
        time.sleep(slow)
        return real_refresh(self)

    monkeypatch.setattr(loop._Step, "refresh", slow_refresh)
    session = launch(fleet)
    started = time.monotonic()
    outcome = run_step(session.pk, 1, owner="test")
    wall = time.monotonic() - started
    assert outcome.result == "done", outcome
    timings = AgentStep.objects.get(session=session, number=1).timings
    parts = sum(timings[name] for name in ("lock", "model", "authorize", "tool", "record"))
    assert timings["lock"] >= slow
    assert parts <= timings["total"] <= wall, (timings, wall)
