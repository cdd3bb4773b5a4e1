"""Claude Code sessions: the real CLI (the ``[agents]`` extra), driven by a scripted loopback Anthropic
server, every tool call through the session's grant (the PreToolUse hook), in-process steps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import git
import pytest

from agents import services
from agents.models import AgentSession, Escalation, Status, ToolCall, TranscriptEntry
from agents.runtime import claude_code
from agents.runtime.runners import run_step
from audit.models import AuditEvent
from tests.anthropic_server import INPUT_TOKENS, OUTPUT_TOKENS, AnthropicServer, bash, text, write

HOOK = Path(claude_code.__file__).resolve().parent.parent / "hook.py"

needs_cli = pytest.mark.skipif(
    claude_code.claude_binary() is None and not os.environ.get("CI"),
    reason="the Claude Code CLI is not installed (pip install -e '.[agents]'; bin/test installs it)",
)


def drive(session: AgentSession, *, max_steps: int = 10) -> AgentSession:
    for _ in range(max_steps):
        session.refresh_from_db()
        if session.status not in (Status.QUEUED, Status.RUNNING):
            return session
        outcome = run_step(session.pk, session.steps + 1, owner="test")
        if outcome.result in ("parked", "stale", "gone"):
            break
    session.refresh_from_db()
    return session


def launch(fleet, server: AnthropicServer, *, spec: services.GrantSpec, goal="Add a notes file") -> AgentSession:
    return services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal=goal,
        by=fleet.lead,
        repository=fleet.repo,
        model="claude-sonnet-4-5",
        api_base=server.url,
        grant=spec,
        start=False,
        agent_kind="claude-code",
    )


@pytest.fixture
def anthropic():
    servers = []

    def make(script):
        server = AnthropicServer(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def _run_hook(env: dict, payload: dict, timeout: float = 60) -> dict:
    done = subprocess.run(
        [sys.executable, "-I", str(HOOK)],
        input=json.dumps(payload).encode(),
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["hookSpecificOutput"]


PAYLOAD = {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_use_id": "t1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_hook_denies_when_the_control_room_is_unreachable():
    port = _free_port()  # nothing listens there any more
    answer = _run_hook({"CR_HOOK_URL": f"http://127.0.0.1:{port}/hook", "CR_HOOK_TOKEN": "x"}, PAYLOAD)
    assert answer["permissionDecision"] == "deny"
    assert "unreachable" in answer["permissionDecisionReason"]


def test_the_hook_denies_when_unconfigured_or_the_control_room_errs_or_is_slow():
    assert _run_hook({}, PAYLOAD)["permissionDecision"] == "deny"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/slow":
                threading.Event().wait(3)
            status, body = (500, b"oops") if self.path == "/error" else (200, b'{"decision": "allow"}')
            if self.path == "/garbage":
                body = b"not json"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        env = {"CR_HOOK_TOKEN": "x", "CR_HOOK_TIMEOUT_S": "1"}
        assert _run_hook({**env, "CR_HOOK_URL": base + "/ok"}, PAYLOAD)["permissionDecision"] == "allow"
        for path in ("/error", "/slow", "/garbage"):
            answer = _run_hook({**env, "CR_HOOK_URL": base + path}, PAYLOAD)
            assert answer["permissionDecision"] == "deny", path
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_claude_code_tools_map_onto_the_evaluators_resources():
    wt = "/w/s1"
    assert claude_code.map_tool("Bash", {"command": "ls"}, wt) == ("run_command", {"command": "ls"})
    assert claude_code.map_tool("Write", {"file_path": "/w/s1/a.py", "content": "x"}, wt) == (
        "write_file",
        {"path": "a.py", "content": "x"},
    )
    assert claude_code.map_tool("Edit", {"file_path": "/w/s1/a.py", "old_string": "a", "new_string": "b"}, wt)[0] == (
        "edit_file"
    )
    assert claude_code.map_tool("Read", {"file_path": "/etc/passwd"}, wt) == ("read_file", {"path": "/etc/passwd"})
    assert claude_code.map_tool("Grep", {"pattern": "x"}, wt) == ("search", {"pattern": "x", "path": "."})
    tool, args = claude_code.map_tool("WebFetch", {"url": "https://pypi.org/x"}, wt)
    assert tool == "run_command" and "pypi.org" in args["command"]
    assert claude_code.map_tool("mcp__github__create_issue", {"title": "x"}, wt) is None  # unknown: a human decides


def test_a_tiles_activity_names_worktree_files_relative_to_the_worktree_as_the_builtin_loop_does():
    wt = "/w/s1"
    assert claude_code._shown("Read", {"file_path": "/w/s1/src/a.py"}, wt) == "src/a.py"
    assert claude_code._shown("LS", {"path": "/w/s1"}, wt) == "."
    assert claude_code._shown("Bash", {"command": "cat /w/s1/a.py && pytest /w/s1/tests"}, wt) == (
        "cat a.py && pytest tests"
    )
    # outside the worktree, a sibling worktree with the same prefix, and non-paths are shown as given
    assert claude_code._shown("Read", {"file_path": "/etc/passwd"}, wt) == "/etc/passwd"
    assert claude_code._shown("Read", {"file_path": "/w/s10/a.py"}, wt) == "/w/s10/a.py"
    assert claude_code._shown("Grep", {"pattern": "/w/s1/x"}, wt) == "/w/s1/x"
    assert claude_code._shown("Read", {"file_path": "/w/s1/a.py"}) == "/w/s1/a.py"


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_claude_code_session_edits_runs_commits_with_the_trailers_and_finishes(fleet, worktrees_dir, anthropic):
    spec = services.GrantSpec(
        mode="edits", allow=("Bash(git status *)", "Bash(git add *)", "Bash(git commit *)", "Git(commit)")
    )
    server = anthropic([])
    session = launch(fleet, server, spec=spec)
    worktree = Path(session.worktree_path)
    server.script = [
        [write(str(worktree / "NOTES.md"), "Notes from Claude Code\n")],
        [bash("git status --short")],
        [bash("git add NOTES.md && git commit -q -m 'Add notes'")],
        [text("Added NOTES.md and committed it.")],
    ]
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert "NOTES.md" in session.summary
    repo = git.Repo(fleet.repo.path)
    commits = list(repo.iter_commits(f"main..{session.branch}"))
    assert len(commits) == 1, "the agent's commit is on its branch"
    message = commits[0].message
    grant = session.grants.get()
    assert f"Agent-Session: {session.pk}" in message
    assert "Delegated-By: sam" in message
    assert f"Grant: {grant.pk}" in message
    assert "Notes from Claude Code" in repo.git.show(f"{session.branch}:NOTES.md")
    # every tool call went through the grant and ran once
    calls = list(ToolCall.objects.filter(session=session).order_by("index"))
    assert [c.name for c in calls] == ["Write", "Bash", "Bash"]
    assert all(c.state == ToolCall.State.DONE and c.decision == "allow" for c in calls), [
        (c.name, c.state, c.reason) for c in calls
    ]
    assert AuditEvent.objects.filter(session_id=session.pk, kind="tool.call").count() == 3
    # model calls metered: counters and one audit event each
    assert session.model_calls == server.agent_turns == 4
    assert session.tokens_in >= INPUT_TOKENS * 4 and session.tokens_out >= OUTPUT_TOKENS * 4
    assert AuditEvent.objects.filter(session_id=session.pk, kind="model.call").count() == session.model_calls
    assert AuditEvent.objects.filter(session_id=session.pk, kind="git.commit", payload__sha=commits[0].hexsha).exists()
    # the transcript: the agent's turns and what each tool returned
    roles = list(TranscriptEntry.objects.filter(session=session).values_list("role", flat=True))
    assert roles.count("assistant") >= 4 and roles.count("tool") == 3
    # the model endpoint never saw the control room's secret as its key, nor the agent the real endpoint
    assert all(r["headers"].get("x-api-key", "") != session.agent_ref for r in server.requests)


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_denied_touch_never_takes_effect_and_each_refusal_names_the_rule(fleet, worktrees_dir, anthropic):
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",), deny=("Bash(touch *)",))
    attempts = ["touch x", "bash -c 'touch x'", "env touch x"]
    server = anthropic([[bash(command)] for command in attempts] + [[text("I could not create x.")]])
    session = drive(launch(fleet, server, spec=spec, goal="Create a file named x"))
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert not (Path(session.worktree_path) / "x").exists()
    refusals = AuditEvent.objects.filter(session_id=session.pk, kind="tool.call", payload__decision="deny")
    assert refusals.count() == len(attempts)
    assert all(event.payload["rule"] == "Bash(touch *)" for event in refusals)
    results = server.tool_results()
    assert len(results) == len(attempts)
    assert all(result.get("is_error") and "Bash(touch *)" in json.dumps(result) for result in results)
    assert not ToolCall.objects.filter(session=session, state=ToolCall.State.DONE).exists()


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_an_ask_parks_the_session_and_allow_once_resumes_the_agent_which_runs_the_command_once(
    fleet, worktrees_dir, anthropic, client
):
    spec = services.GrantSpec(mode="edits")  # commands ask
    server = anthropic([[bash("touch y")], [bash("touch y")], [text("Created y after the approval.")]])
    session = drive(launch(fleet, server, spec=spec, goal="Create a file named y"))
    assert session.status == Status.NEEDS_APPROVAL, (session.status, session.status_reason)
    assert not (Path(session.worktree_path) / "y").exists()
    escalation = Escalation.objects.get(session=session, state=Escalation.State.OPEN)
    assert "touch y" in escalation.action
    assert escalation.tool_call.name == "Bash"
    first_ref = session.agent_ref
    assert first_ref
    # the STO decides from the session's drawer (its allow-once form posts to the decide view)
    client.force_login(fleet.sto)
    drawer = client.get(f"/sessions/{session.pk}/", HTTP_HX_REQUEST="true").content.decode()
    decide_url = f"/escalations/{escalation.pk}/decide"
    assert decide_url in drawer and 'value="allow-once"' in drawer and "Claude Code" in drawer
    response = client.post(decide_url, {"decision": "allow-once"}, HTTP_HX_REQUEST="true")
    assert response.status_code in (200, 204, 302), response.content.decode()[:500]
    # and the canvas sees the session work live: its tile (with its kind) reaches the pod's group
    from agents.events import pod_group
    from tests.agents.test_events import collect

    resumed: list[AgentSession] = []
    updates = collect(pod_group(session.pod_id), lambda: resumed.append(drive(session)), listen_s=0.5)
    session = resumed[0]
    tiles = [m for _, m in updates if m.get("session_id") == session.pk]
    assert tiles and all("Claude Code" in m["html"] for m in tiles)
    # updates from the runner's threads may arrive out of order; the canvas keeps the newest version
    assert max(tiles, key=lambda m: m["version"])["status"] == Status.SUCCEEDED
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert (Path(session.worktree_path) / "y").exists()
    ran = ToolCall.objects.filter(session=session, name="Bash", state=ToolCall.State.DONE)
    assert ran.count() == 1 and ran.get().reason_type == "human"
    escalation.refresh_from_db()
    assert escalation.consumed_at is not None
    assert session.agent_ref == first_ref  # the CLI's own session was resumed, not started afresh
    prompts = [json.dumps(r["body"].get("messages", [])) for r in server.requests if r["body"].get("tools")]
    assert "approved" in prompts[-2] and "Create a file named y" in prompts[-2]  # it saw the history and the decision


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_budget_of_two_model_calls_blocks_the_session_at_the_limit(fleet, worktrees_dir, anthropic):
    spec = services.GrantSpec(mode="edits", allow=("Bash(git status *)",), max_steps=2)
    server = anthropic([[bash("git status --short")] for _ in range(5)])
    session = drive(launch(fleet, server, spec=spec))
    assert session.status == Status.BLOCKED, (session.status, session.status_reason)
    assert "max model calls (2)" in session.status_reason
    assert session.model_calls == 2 and server.agent_turns == 2
    assert AuditEvent.objects.filter(session_id=session.pk, kind="model.call").count() == 2
    assert AuditEvent.objects.filter(session_id=session.pk, kind="budget.exhausted").exists()


@needs_cli
@pytestmark_db
def test_the_broker_refuses_a_hook_or_model_call_without_the_sessions_secret():
    import queue

    broker = claude_code.Broker(token="right", upstream="http://127.0.0.1:9", upstream_key="", inbox=queue.Queue())
    try:
        answer = _run_hook({"CR_HOOK_URL": broker.url + "/hook", "CR_HOOK_TOKEN": "wrong"}, PAYLOAD)
        assert answer["permissionDecision"] == "deny"
        assert "HTTP 403" in answer["permissionDecisionReason"]
        import urllib.error
        import urllib.request

        request = urllib.request.Request(broker.url + "/v1/messages", data=b"{}", headers={"x-api-key": "wrong"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        assert broker.inbox.empty()  # nothing reached the session's thread
    finally:
        broker.close()


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_the_sandboxed_agent_reaches_the_broker_and_nothing_else(fleet, worktrees_dir, anthropic):
    """Even a command the grant allows (curl, Net(*)) cannot reach the model server directly: the
    sandbox has no network, only its loopback relayed to the broker."""
    from agents.runtime.sandbox import sandbox_available

    if not sandbox_available("auto"):
        pytest.skip("bubblewrap does not work here")
    server = anthropic([])
    spec = services.GrantSpec(mode="edits", allow=("Bash(curl *)", "Net(*)"))
    session = launch(fleet, server, spec=spec, goal="Fetch the model server's page")
    server.script = [[bash(f"curl -sS -m 5 {server.url}/v1/models")], [text("It failed.")]]
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    call = ToolCall.objects.get(session=session, name="Bash")
    assert call.decision == "allow" and call.state == ToolCall.State.ERROR, (call.state, call.result)
    assert not [r for r in server.requests if "/v1/models" in r["path"]]


@pytest.mark.slow
@needs_cli
@pytest.mark.django_db(transaction=True)
def test_a_claude_code_session_runs_on_a_celery_worker_and_survives_its_sigkill_without_running_a_tool_twice(
    fleet, celery_workers, settings, anthropic
):
    import time

    from django.db import transaction

    from agents.dispatch import enqueue_step_on_commit
    from agents.tasks import tick
    from tests.conftest import wait_until

    settings.CONTROLROOM = {**settings.CONTROLROOM, "STALE_AFTER_S": 5}
    server = anthropic([])
    spec = services.GrantSpec(mode="edits", allow=("Bash(echo *)", "Bash(sleep *)"))
    with transaction.atomic():
        session = launch(fleet, server, spec=spec, goal="Log a run, then write after.txt")
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
    worktree = Path(session.worktree_path)
    server.script = [
        [bash("echo started >> runs.log; sleep 8; echo finished >> runs.log")],
        [write(str(worktree / "after.txt"), "carried on\n")],
        [text("Recovered and wrote after.txt.")],
    ]
    pool = celery_workers(processes=1, concurrency=1, STEP_LEASE_S=3)
    wait_until(
        lambda: (worktree / "runs.log").exists(),
        timeout=120,
        message=lambda: (
            f"the slow command to start: {AgentSession.objects.get(pk=session.pk).status_reason}\n{pool.log_tail()}"
        ),
    )
    time.sleep(1.0)
    pool.kill(pool.procs[0])  # SIGKILL the worker: the sandbox (and the command in it) dies with it
    time.sleep(1.0)
    assert (worktree / "runs.log").read_text() == "started\n"
    pool.start_one(1)

    def recovered():
        tick()
        return AgentSession.objects.get(pk=session.pk).is_terminal

    wait_until(recovered, timeout=180, interval=1.0, message=f"recovery\n{pool.log_tail()}")
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason, pool.log_tail())
    assert (worktree / "runs.log").read_text() == "started\n"  # the command ran once, never again
    command = ToolCall.objects.get(session=session, name="Bash")
    assert command.state == ToolCall.State.INTERRUPTED
    assert AuditEvent.objects.filter(session_id=session.pk, kind="tool.interrupted").count() == 1
    assert (worktree / "after.txt").read_text() == "carried on\n"
    assert ToolCall.objects.filter(session=session, name="Write", state=ToolCall.State.DONE).count() == 1


@pytest.mark.slow
@needs_cli
@pytest.mark.django_db(transaction=True)
def test_pause_ends_the_claude_code_process_before_its_next_tool_call_and_resume_carries_on(
    fleet, celery_workers, anthropic
):
    import psutil
    from django.db import transaction

    from agents.dispatch import enqueue_step_on_commit
    from tests.conftest import wait_until

    server = anthropic([])
    spec = services.GrantSpec(mode="edits", allow=("Bash(echo *)", "Bash(sleep *)"))
    with transaction.atomic():
        session = launch(fleet, server, spec=spec, goal="Log two runs")
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
    worktree = Path(session.worktree_path)
    server.script = [
        [bash("echo started >> runs.log; sleep 9; echo finished >> runs.log")],
        [bash("echo second >> runs.log")],
        [text("Logged.")],
    ]
    pool = celery_workers(processes=1, concurrency=1)
    wait_until(lambda: (worktree / "runs.log").exists(), timeout=120, message=lambda: pool.log_tail())

    def agent_processes() -> list:
        found = []
        for proc in psutil.process_iter(["cwd"]):
            if proc.info.get("cwd") and Path(proc.info["cwd"]) == worktree:
                found.append(proc)
        return found

    assert agent_processes(), "the CLI runs in the worktree"
    services.session_pause(session=session, by=fleet.sto, reason="checking")
    wait_until(lambda: not agent_processes(), timeout=5, message="the CLI to end within 5 s of the pause")
    wait_until(
        lambda: AgentSession.objects.get(pk=session.pk).lease_owner == "",
        timeout=10,
        message=lambda: pool.log_tail(),
    )
    session.refresh_from_db()
    assert session.status == Status.PAUSED
    assert (worktree / "runs.log").read_text() == "started\n", list(  # the command was ended, no next tool call
        ToolCall.objects.filter(session=session).values_list("name", "state", "result")
    )
    services.session_resume(session=AgentSession.objects.get(pk=session.pk), by=fleet.sto)
    wait_until(
        lambda: AgentSession.objects.get(pk=session.pk).is_terminal, timeout=120, message=lambda: pool.log_tail()
    )
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert (worktree / "runs.log").read_text() == "started\nsecond\n"
    assert ToolCall.objects.get(session=session, arguments__command__startswith="echo started").state == (
        ToolCall.State.INTERRUPTED
    )


@pytest.mark.slow
@needs_cli
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("control", ["cancel", "fleet stop"])
def test_cancel_and_fleet_stop_end_the_claude_code_process_within_5_s_before_its_next_tool_call(
    fleet, celery_workers, anthropic, control
):
    import psutil
    from django.db import transaction
    from django.utils import timezone

    from agents.dispatch import enqueue_step_on_commit
    from tests.conftest import wait_until

    server = anthropic([])
    spec = services.GrantSpec(mode="edits", allow=("Bash(echo *)", "Bash(sleep *)"))
    with transaction.atomic():
        session = launch(fleet, server, spec=spec, goal="Log two runs")
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
    worktree = Path(session.worktree_path)
    server.script = [
        [bash("echo started >> runs.log; sleep 9; echo finished >> runs.log")],
        [bash("echo second >> runs.log")],
        [text("Logged.")],
    ]
    pool = celery_workers(processes=1, concurrency=1)
    wait_until(lambda: (worktree / "runs.log").exists(), timeout=120, message=lambda: pool.log_tail())

    def agent_processes() -> list:
        found = []
        for proc in psutil.process_iter(["cwd"]):
            if proc.info.get("cwd") and Path(proc.info["cwd"]) == worktree:
                found.append(proc)
        return found

    assert agent_processes(), "the CLI runs in the worktree"
    turns_before = server.agent_turns
    took_effect = timezone.now()
    if control == "cancel":
        services.session_cancel(session=session, by=fleet.sto, reason="not needed after all")
    else:
        services.fleet_stop(by=fleet.manager, reason="incident")
    wait_until(lambda: not agent_processes(), timeout=5, message=f"the CLI to end within 5 s of the {control}")
    wait_until(
        lambda: AgentSession.objects.get(pk=session.pk).lease_owner == "",
        timeout=10,
        message=lambda: pool.log_tail(),
    )
    session.refresh_from_db()
    if control == "cancel":
        assert session.status == Status.CANCELLED, (session.status, session.status_reason)
    else:
        assert (session.status, session.hold) == (Status.PAUSED, "fleet"), (session.status, session.status_reason)
    calls = list(ToolCall.objects.filter(session=session).values_list("arguments__command", "state", "created_at"))
    # no tool call after the control took effect: the one in flight was ended, never finished, nothing after it
    assert (worktree / "runs.log").read_text() == "started\n", calls
    assert len(calls) == 1 and calls[0][0].startswith("echo started") and calls[0][2] < took_effect, calls
    assert calls[0][1] == ToolCall.State.INTERRUPTED, calls
    assert not AuditEvent.objects.filter(session_id=session.pk, kind="tool.call", created_at__gte=took_effect).exists()
    assert AuditEvent.objects.filter(session_id=session.pk, kind="tool.interrupted").count() == 1
    assert server.agent_turns == turns_before  # and no model call either


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_the_offline_model_drives_claude_code_through_a_demo_task(fleet, worktrees_dir):
    """No model server at all: the broker answers a ``sim/…`` session itself (agents/runtime/sim_anthropic.py)."""
    from agents.demo_repo import TASKS_BY_ID

    task = TASKS_BY_ID["fix-discount"]
    spec = services.GrantSpec(
        mode="edits",
        allow=(
            "Bash(ls *)",
            "Bash(grep *)",
            "Bash(python -m pytest *)",
            "Bash(git add *)",
            "Bash(git commit *)",
            "Git(commit)",
        ),
    )
    session = services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal=task["title"],
        by=fleet.lead,
        repository=fleet.repo,
        model="sim/engineer",
        grant=spec,
        start=False,
        agent_kind="claude-code",
    )
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    calls = list(ToolCall.objects.filter(session=session).order_by("index").values_list("name", "state", "decision"))
    assert [name for name, _, _ in calls][:4] == ["Bash", "Bash", "Read", "Edit"], calls  # ls, grep, the change
    assert all(state == ToolCall.State.DONE and decision == "allow" for _, state, decision in calls), calls
    tests = AuditEvent.objects.get(session_id=session.pk, kind="tests.run")
    assert tests.payload["passed"], tests.payload
    repo = git.Repo(fleet.repo.path)
    (commit,) = list(repo.iter_commits(f"main..{session.branch}"))
    assert commit.message.startswith(task["commit"]) and f"Agent-Session: {session.pk}" in commit.message
    assert "(1 - percent / 100)" in repo.git.show(f"{session.branch}:shopcart/pricing.py")
    assert "the tests pass" in session.summary
    assert session.model_calls >= 7 and session.tokens_in > 0
    assert AuditEvent.objects.filter(session_id=session.pk, kind="model.call").count() == session.model_calls


# -- deny by effect: the grant's masks inside the CLI's sandbox (agents/permissions/masks.py) ----------

ENV_SECRET = "sk-live-cc-0123456789abcdef"
WORKFLOW = "on: push  # the real workflow\n"


def needs_bwrap() -> None:
    from agents.runtime.sandbox import sandbox_available

    if not sandbox_available("auto"):
        pytest.skip("bubblewrap does not work here")


def _worktree_of(session: AgentSession) -> Path:
    """The session's worktree made now (its first step would), so a test can put files in it first."""
    services.session_worktree_ensure(session=session)
    return Path(session.worktree_path)


def _recorded(session: AgentSession) -> str:
    """Everything the control room recorded of the session's tool calls: results, transcript, audit."""
    parts = [str(c.result) for c in ToolCall.objects.filter(session=session)]
    parts += [str(e.content) for e in TranscriptEntry.objects.filter(session=session)]
    parts += [json.dumps(e.payload) for e in AuditEvent.objects.filter(session_id=session.pk)]
    return "\n".join(parts)


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_read_denied_env_is_masked_in_the_claude_code_sandbox_whatever_command_reads_it(
    fleet, worktrees_dir, anthropic
):
    """The evaluator allows a recursive grep (and a script it cannot see into); inside the CLI's
    sandbox .env is an empty file, so no byte of it reaches the transcript, the tool call or the model."""
    needs_bwrap()
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",), deny=("Read(**/.env)",))
    server = anthropic([])
    session = launch(fleet, server, spec=spec, goal="Find the SECRET markers")
    worktree = _worktree_of(session)
    (worktree / ".env").write_text(f"SECRET_KEY={ENV_SECRET}\n")  # untracked, as secrets are
    (worktree / "notes.txt").write_text("the SECRET marker is visible here\n")
    server.script = [
        [bash("grep -rn SECRET .")],
        [bash("bash -c 'cat .env'")],
        [bash("printf 'cat .env; wc -c < .env\\n' > r.sh && sh r.sh")],
        [text("Searched.")],
    ]
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    grep, cat, script = ToolCall.objects.filter(session=session).order_by("index")
    assert grep.decision == "allow" and grep.state == ToolCall.State.DONE, (grep.state, grep.result)
    assert "notes.txt" in grep.result and "SECRET marker" in grep.result  # the search ran over the tree
    assert cat.decision == "deny" and cat.rule == "Read(**/.env)"
    assert script.decision == "allow" and script.state == ToolCall.State.DONE, (script.state, script.result)
    assert script.result.strip().splitlines()[-1].strip() == "0", script.result  # .env reads as empty
    recorded = _recorded(session)
    assert "notes.txt" in recorded
    assert ENV_SECRET not in recorded and "SECRET_KEY" not in recorded
    assert ENV_SECRET not in json.dumps(server.requests)  # nor did the model see it
    assert ENV_SECRET in (worktree / ".env").read_text()  # the host's file is untouched


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_write_to_a_protected_path_fails_read_only_in_the_claude_code_sandbox(fleet, worktrees_dir, anthropic):
    """A script the evaluator cannot see into writes .github/workflows/x.yml and creates .husky: both
    fail with EROFS inside the CLI's sandbox; the empty mount point of .husky is gone after the run."""
    needs_bwrap()
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",))
    server = anthropic([])
    session = launch(fleet, server, spec=spec, goal="Fix the workflow")
    worktree = _worktree_of(session)
    workflow = worktree / ".github" / "workflows" / "x.yml"
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text(WORKFLOW)
    assert not (worktree / ".husky").exists()
    script = "echo pwned > .github/workflows/x.yml; mkdir .husky/hooks; echo ok > elsewhere.txt"
    server.script = [[bash(f"printf '{script}\\n' > w.sh && sh w.sh")], [text("Tried.")]]
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    (call,) = ToolCall.objects.filter(session=session)
    assert call.decision == "allow", (call.decision, call.reason)
    assert call.result.count("Read-only file system") == 2, call.result
    assert workflow.read_text() == WORKFLOW
    assert (worktree / "elsewhere.txt").read_text() == "ok\n"  # the rest of the worktree is writable
    assert not (worktree / ".husky").exists()


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_denied_program_is_a_refusing_stub_in_the_claude_code_sandbox_and_each_refusal_is_recorded(
    fleet, worktrees_dir, anthropic
):
    """``Bash(touch)`` denies the bare program name; an absolute path or a wrapper gets past the
    evaluator, and the stub inside the CLI's sandbox refuses (tool.denied_by_sandbox)."""
    needs_bwrap()
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",), deny=("Bash(touch)",))
    attempts = ["/usr/bin/touch x", "sh -c 'touch y'"]
    server = anthropic([[bash(command)] for command in attempts] + [[text("I could not create them.")]])
    session = drive(launch(fleet, server, spec=spec, goal="Create files named x and y"))
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    worktree = Path(session.worktree_path)
    assert not (worktree / "x").exists() and not (worktree / "y").exists()
    calls = list(ToolCall.objects.filter(session=session).order_by("index"))
    assert [c.decision for c in calls] == ["allow", "allow"], [(c.decision, c.reason) for c in calls]
    assert all("denied by grant: Bash(touch)" in c.result for c in calls), [c.result for c in calls]
    refusals = AuditEvent.objects.filter(session_id=session.pk, kind="tool.denied_by_sandbox").order_by("pk")
    assert [(e.payload["index"], e.payload["program"], e.payload["rule"]) for e in refusals] == [
        (calls[0].index, "touch", "Bash(touch)"),
        (calls[1].index, "touch", "Bash(touch)"),
    ]


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_an_approved_protected_path_edit_happens_in_the_resumed_claude_code_run(fleet, worktrees_dir, anthropic):
    """The approval's guard is lifted in the resumed run's sandbox; a deny rule's mask never is."""
    needs_bwrap()
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",), deny=("Edit(docs/**)",))
    server = anthropic([])
    session = launch(fleet, server, spec=spec, goal="Fix the workflow")
    worktree = _worktree_of(session)
    workflow = worktree / ".github" / "workflows" / "x.yml"
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text(WORKFLOW)
    (worktree / "docs").mkdir(exist_ok=True)
    (worktree / "docs" / "guide.md").write_text("# Guide\n")
    command = "echo fixed > .github/workflows/x.yml"
    sneaky = "printf 'echo x > docs/guide.md\\n' > d.sh && sh d.sh"
    server.script = [[bash(command)], [bash(command)], [bash(sneaky)], [text("Fixed the workflow.")]]
    session = drive(session)
    assert session.status == Status.NEEDS_APPROVAL, (session.status, session.status_reason)
    escalation = Escalation.objects.get(session=session, state=Escalation.State.OPEN)
    services.escalation_decide(escalation=escalation, by=fleet.sto, decision="allow-once")
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert workflow.read_text() == "fixed\n"
    assert (worktree / "docs" / "guide.md").read_text() == "# Guide\n"
    denied_edit = ToolCall.objects.get(session=session, arguments__command=sneaky)
    assert denied_edit.decision == "allow" and "Read-only file system" in denied_edit.result
