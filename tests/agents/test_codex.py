"""Codex sessions: the real Codex CLI (bin/codex-install), driven by a scripted loopback server
speaking the OpenAI Responses API, every tool call through the session's grant (Codex's PreToolUse
hook), in-process steps."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import git
import pytest

from agents import services
from agents.models import AgentSession, Status, ToolCall, TranscriptEntry
from agents.runtime import codex
from agents.runtime.runners import run_step, runner_class
from audit.models import AuditEvent
from tests.openai_server import INPUT_TOKENS, OUTPUT_TOKENS, ResponsesServer, add_file, call, shell, text

HOOK = Path(codex.__file__).resolve().parent.parent / "hook.py"
MODEL = "gpt-5.5"  # a model Codex 0.171 knows: it then offers apply_patch

needs_cli = pytest.mark.skipif(
    codex.codex_binary() is None and not os.environ.get("CI"),
    reason="the Codex CLI is not installed (bin/codex-install; bin/test installs it)",
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


def launch(fleet, server: ResponsesServer, *, spec: services.GrantSpec, goal="Add a notes file") -> AgentSession:
    return services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal=goal,
        by=fleet.lead,
        repository=fleet.repo,
        model=MODEL,
        api_base=server.url + "/v1",
        grant=spec,
        start=False,
        agent_kind="codex",
    )


@pytest.fixture
def responses():
    servers = []

    def make(script):
        server = ResponsesServer(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def _run_hook(env: dict, payload: dict, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-I", str(HOOK)],
        input=json.dumps(payload).encode(),
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "CR_HOOK_FORMAT": "codex", **env},
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


PAYLOAD = {
    "hook_event_name": "PreToolUse",
    "tool_name": "Bash",
    "tool_input": {"command": "ls"},
    "tool_use_id": "call_1",
    "permission_mode": "bypassPermissions",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_codex_kind_has_its_runner():
    assert runner_class("codex") is codex.CodexStep


def test_the_hook_denies_in_codexs_dialect_when_the_control_room_is_unreachable():
    port = _free_port()  # nothing listens there any more
    out = _run_hook({"CR_HOOK_URL": f"http://127.0.0.1:{port}/hook", "CR_HOOK_TOKEN": "x"}, PAYLOAD)
    answer = json.loads(out)["hookSpecificOutput"]
    assert answer["permissionDecision"] == "deny"
    assert "unreachable" in answer["permissionDecisionReason"]
    assert _run_hook({}, PAYLOAD) and json.loads(_run_hook({}, PAYLOAD))["hookSpecificOutput"][
        "permissionDecision"
    ] == ("deny")


def test_the_hook_allows_in_codexs_dialect_with_an_empty_answer():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"decision": "allow"}' if self.path == "/ok" else b'{"decision": "ask"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert _run_hook({"CR_HOOK_TOKEN": "x", "CR_HOOK_URL": base + "/ok"}, PAYLOAD) == ""
        # Codex has no "ask": anything but allow is a deny
        out = _run_hook({"CR_HOOK_TOKEN": "x", "CR_HOOK_URL": base + "/ask"}, PAYLOAD)
        assert json.loads(out)["hookSpecificOutput"]["permissionDecision"] == "deny"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_hook_as_codex_runs_it_refuses_with_status_2_when_it_cannot_run_at_all(tmp_path):
    """Codex runs a tool call whose hook failed in any other way (exit 1, garbage, killed): the
    configured command turns every failure to answer into exit 2 + a reason, which Codex blocks on."""
    import tomllib

    broken = codex.config_toml(
        model="m", base_url="http://127.0.0.1:9/v1", hook_command=[sys.executable, "-I", str(tmp_path / "gone.py")]
    )
    config = tomllib.loads(broken)
    command = config["hooks"]["PreToolUse"][0]["hooks"][0]["command"]
    assert config["hooks"]["PreToolUse"][0]["hooks"][0]["timeout"] > 30  # past the hook's own deadline
    done = subprocess.run(["/bin/sh", "-c", command], input=json.dumps(PAYLOAD).encode(), capture_output=True)
    assert done.returncode == 2 and b"denied" in done.stderr
    working = tomllib.loads(
        codex.config_toml(model="m", base_url="http://127.0.0.1:9/v1", hook_command=[sys.executable, "-I", str(HOOK)])
    )["hooks"]["PreToolUse"][0]["hooks"][0]["command"]
    port = _free_port()
    done = subprocess.run(
        ["/bin/sh", "-c", working],
        input=json.dumps(PAYLOAD).encode(),
        capture_output=True,
        env={
            "PATH": "/usr/bin:/bin",
            "CR_HOOK_FORMAT": "codex",
            "CR_HOOK_TOKEN": "x",
            "CR_HOOK_URL": f"http://127.0.0.1:{port}/hook",
        },
    )
    assert done.returncode == 0  # the hook answered: a deny in Codex's dialect
    assert json.loads(done.stdout)["hookSpecificOutput"]["permissionDecision"] == "deny"
    assert config["features"]["hooks"] is True and config["approval_policy"] == "never"


def test_codex_tools_map_onto_the_evaluators_resources():
    wt = "/w/s1"
    assert codex.map_tool("Bash", {"command": "ls -la"}, wt) == [("run_command", {"command": "ls -la"})]
    patch = (
        "*** Begin Patch\n*** Add File: NOTES.md\n+hello\n"
        "*** Update File: /w/s1/src/a.py\n@@\n-old\n+new\n*** Move to: src/b.py\n"
        "*** Delete File: gone.txt\n*** End Patch\n"
    )
    assert codex.map_tool("apply_patch", {"command": patch}, wt) == [
        ("write_file", {"path": "NOTES.md", "content": "hello\n"}),
        ("edit_file", {"path": "src/b.py", "old": "", "new": ""}),
        ("edit_file", {"path": "src/a.py", "old": "old", "new": "new"}),
        ("edit_file", {"path": "gone.txt", "old": "", "new": ""}),
    ]
    assert codex.map_tool("apply_patch", {"command": "not a patch"}, wt) is None  # a human decides
    assert codex.map_tool("mcp__github__create_issue", {"title": "x"}, wt) is None


def test_the_broker_keeps_the_unhooked_write_stdin_from_the_model_and_from_codex():
    inbox: queue.Queue = queue.Queue()
    broker = codex.CodexBroker(token="t", upstream="http://127.0.0.1:9", upstream_key="", inbox=inbox, api="openai")
    try:
        body = json.dumps({"tools": [{"type": "function", "name": "exec_command"}, {"name": "write_stdin"}]}).encode()
        assert [t["name"] for t in json.loads(broker.filter_request(body))["tools"]] == ["exec_command"]
        item = {"type": "function_call", "name": "write_stdin", "arguments": '{"chars": "touch x\\n"}'}
        added = json.dumps({"type": "response.output_item.done", "item": item}).encode()
        assert broker.filter_event(added) == b""  # dropped
        assert inbox.get_nowait()[0] == "unhooked_tool"
        other = {"type": "function_call", "name": "exec_command", "arguments": "{}"}
        done = {"type": "response.completed", "response": {"output": [other, item]}}
        filtered = json.loads(broker.filter_event(json.dumps(done).encode()))
        assert filtered["response"]["output"] == [other]
        plain = json.dumps({"type": "response.output_item.done", "item": other}).encode()
        assert broker.filter_event(plain) is None  # relayed as it came
    finally:
        broker.close()


pytestmark_db = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_codex_session_edits_runs_commits_with_the_trailers_and_finishes(fleet, worktrees_dir, responses):
    spec = services.GrantSpec(
        mode="edits", allow=("Bash(git status *)", "Bash(git add *)", "Bash(git commit *)", "Git(commit)")
    )
    server = responses(
        [
            [add_file("NOTES.md", "Notes from Codex")],
            [shell("git status --short")],
            [shell("git add NOTES.md && git commit -q -m 'Add notes'")],
            [text("Added NOTES.md and committed it.")],
        ]
    )
    session = drive(launch(fleet, server, spec=spec))
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert "NOTES.md" in session.summary
    repo = git.Repo(fleet.repo.path)
    commits = list(repo.iter_commits(f"main..{session.branch}"))
    assert len(commits) == 1, (
        list(ToolCall.objects.filter(session=session).values_list("name", "state", "decision", "reason", "result")),
        server.tool_outputs(),
    )
    message = commits[0].message
    grant = session.grants.get()
    assert f"Agent-Session: {session.pk}" in message
    assert "Delegated-By: sam" in message
    assert f"Grant: {grant.pk}" in message
    assert "Notes from Codex" in repo.git.show(f"{session.branch}:NOTES.md")
    # every tool call went through the grant and ran once
    calls = list(ToolCall.objects.filter(session=session).order_by("index"))
    assert [c.name for c in calls] == ["apply_patch", "Bash", "Bash"]
    assert all(c.state == ToolCall.State.DONE and c.decision == "allow" for c in calls), [
        (c.name, c.state, c.reason) for c in calls
    ]
    assert AuditEvent.objects.filter(session_id=session.pk, kind="tool.call").count() == 3
    # model calls metered: counters and one audit event each
    assert session.model_calls == server.agent_turns == 4
    assert session.tokens_in == INPUT_TOKENS * 4 and session.tokens_out == OUTPUT_TOKENS * 4
    assert AuditEvent.objects.filter(session_id=session.pk, kind="model.call").count() == 4
    assert AuditEvent.objects.filter(session_id=session.pk, kind="git.commit", payload__sha=commits[0].hexsha).exists()
    # the transcript: the agent's turns and what each tool returned
    roles = list(TranscriptEntry.objects.filter(session=session).values_list("role", flat=True))
    assert roles.count("tool") == 3 and roles.count("assistant") >= 4, roles
    assert session.agent_ref, "Codex's thread id is kept (for codex exec resume)"
    # the model endpoint never saw the run's secret, nor the unhooked write_stdin tool offered
    assert all(r["headers"].get("Authorization", "") == "" for r in server.requests)
    offered = {t.get("name") for r in server.requests for t in r["body"].get("tools") or []}
    assert "write_stdin" not in offered and "apply_patch" in offered


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_denied_touch_never_takes_effect_and_each_refusal_names_the_rule(fleet, worktrees_dir, responses):
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",), deny=("Bash(touch *)",))
    attempts = ["touch x", "bash -c 'touch x'", "env touch x"]
    server = responses([[shell(command)] for command in attempts] + [[text("I could not create x.")]])
    session = drive(launch(fleet, server, spec=spec, goal="Create a file named x"))
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert not (Path(session.worktree_path) / "x").exists()
    refusals = AuditEvent.objects.filter(session_id=session.pk, kind="tool.call", payload__decision="deny")
    assert refusals.count() == len(attempts)
    assert all(event.payload["rule"] == "Bash(touch *)" for event in refusals)
    outputs = server.tool_outputs()
    assert len(outputs) == len(attempts)
    assert all("blocked by PreToolUse hook" in o["output"] and "Bash(touch *)" in o["output"] for o in outputs), outputs
    assert not ToolCall.objects.filter(session=session, state=ToolCall.State.DONE).exists()


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_budget_of_two_model_calls_blocks_the_codex_session_at_the_limit(fleet, worktrees_dir, responses):
    spec = services.GrantSpec(mode="edits", allow=("Bash(git status *)",), max_steps=2)
    server = responses([[shell("git status --short")] for _ in range(5)])
    session = drive(launch(fleet, server, spec=spec))
    assert session.status == Status.BLOCKED, (session.status, session.status_reason)
    assert "max model calls (2)" in session.status_reason
    assert session.model_calls == 2 and server.agent_turns == 2
    assert AuditEvent.objects.filter(session_id=session.pk, kind="model.call").count() == 2
    assert AuditEvent.objects.filter(session_id=session.pk, kind="budget.exhausted").exists()


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_write_stdin_never_reaches_codex_so_a_denied_command_cannot_be_typed_into_a_shell(
    fleet, worktrees_dir, responses
):
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",), deny=("Bash(touch *)",))
    # (a shell reading its commands from a terminal asks a human anyway: the evaluator cannot see
    # what it will run; `cat` stands in for any allowed program that reads its standard input)
    typed = call("write_stdin", {"session_id": 1, "chars": "touch x\n", "yield_time_ms": 500})
    server = responses(
        [
            [call("exec_command", {"cmd": "cat", "tty": True, "yield_time_ms": 500})],
            [typed],
            [text("Done.")],
        ]
    )
    session = drive(launch(fleet, server, spec=spec, goal="Create a file named x"))
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert not (Path(session.worktree_path) / "x").exists()
    refused = AuditEvent.objects.get(session_id=session.pk, kind="tool.refused")
    assert refused.payload["tool"] == "write_stdin" and "touch x" in refused.payload["arguments"]
    assert typed["call_id"] not in {o["call_id"] for o in server.tool_outputs()}  # Codex never ran it


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_an_ask_parks_the_codex_session_and_allow_once_resumes_its_thread_which_runs_the_command_once(
    fleet, worktrees_dir, responses
):
    from agents.models import Escalation

    spec = services.GrantSpec(mode="edits")  # commands ask
    server = responses([[shell("touch y")], [shell("touch y")], [text("Created y after the approval.")]])
    session = drive(launch(fleet, server, spec=spec, goal="Create a file named y"))
    assert session.status == Status.NEEDS_APPROVAL, (session.status, session.status_reason)
    assert not (Path(session.worktree_path) / "y").exists()
    escalation = Escalation.objects.get(session=session, state=Escalation.State.OPEN)
    assert "touch y" in escalation.action and escalation.tool_call.name == "Bash"
    first_ref = session.agent_ref
    assert first_ref
    services.escalation_decide(escalation=escalation, by=fleet.sto, decision="allow-once")
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    assert (Path(session.worktree_path) / "y").exists()
    ran = ToolCall.objects.filter(session=session, name="Bash", state=ToolCall.State.DONE)
    assert ran.count() == 1 and ran.get().reason_type == "human"
    assert session.agent_ref == first_ref  # Codex's own thread was resumed, not started afresh
    last = json.dumps(server.requests[-2]["body"].get("input", []))
    assert "approved" in last and "Create a file named y" in last  # it saw the history and the decision


def test_the_broker_reads_which_executing_calls_a_model_request_reports_as_run():
    broker = codex.CodexBroker(
        token="t", upstream="http://127.0.0.1:9", upstream_key="", inbox=queue.Queue(), api="openai"
    )
    try:
        body = {
            "input": [
                {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "Process exited with code 0"},
                {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
                {
                    "type": "custom_tool_call_output",
                    "call_id": "c2",
                    "output": "Command blocked by PreToolUse hook: no",
                },
                {"type": "function_call", "call_id": "c3", "name": "request_user_input", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c3", "output": "not available"},
                {"type": "function_call", "call_id": "c4", "name": "mcp__fs__write", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c4", "output": "ok"},
            ]
        }
        ran = broker.ran_calls(json.dumps(body).encode())
        assert ran == [{"call_id": "c1", "name": "exec_command"}, {"call_id": "c4", "name": "mcp__fs__write"}]
        assert broker.ran_calls(b"not json") == []
    finally:
        broker.close()


@pytest.mark.django_db(transaction=True)
def test_a_result_of_a_call_the_hook_never_decided_stops_the_codex_session(fleet, worktrees_dir):
    """Codex runs a call whose hook failed to answer: if that ever happens, the next model call
    carries its result, and the session stops there (and says which call)."""
    session = services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="x",
        by=fleet.lead,
        repository=fleet.repo,
        model=MODEL,
        api_base="http://127.0.0.1:9/v1",
        grant=services.GrantSpec(mode="edits"),
        start=False,
        agent_kind="codex",
    )
    step = codex.CodexStep(session.pk, 1, "test")
    step.grant, step.stop = session.grants.get(), None
    assert step._unchecked_calls([]) == ""
    reason = step._unchecked_calls([{"call_id": "call_never_seen", "name": "exec_command"}])
    assert "without the control room's decision" in reason and step.stop == ("block", reason)
    event = AuditEvent.objects.get(session_id=session.pk, kind="tool.unchecked")
    assert event.payload["calls"] == [{"call_id": "call_never_seen", "name": "exec_command"}]


@pytest.mark.slow
@needs_cli
@pytest.mark.django_db(transaction=True)
def test_pause_ends_the_codex_process_before_its_next_tool_call_and_resume_carries_on(fleet, celery_workers, responses):
    import psutil
    from django.db import transaction

    from agents.dispatch import enqueue_step_on_commit
    from tests.conftest import wait_until

    server = responses([])
    spec = services.GrantSpec(mode="edits", allow=("Bash(echo *)", "Bash(sleep *)"))
    with transaction.atomic():
        session = launch(fleet, server, spec=spec, goal="Log two runs")
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
    worktree = Path(session.worktree_path)
    server.script = [
        [shell("echo started >> runs.log; sleep 9; echo finished >> runs.log")],
        [shell("echo second >> runs.log")],
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
    assert (worktree / "runs.log").read_text() == "started\n"  # the command was ended, no next tool call
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
def test_a_codex_session_survives_the_sigkill_of_its_worker_without_running_a_tool_twice(
    fleet, celery_workers, settings, responses
):
    import time

    from django.db import transaction

    from agents.dispatch import enqueue_step_on_commit
    from agents.tasks import tick
    from tests.conftest import wait_until

    settings.CONTROLROOM = {**settings.CONTROLROOM, "STALE_AFTER_S": 5}
    server = responses([])
    spec = services.GrantSpec(mode="edits", allow=("Bash(echo *)", "Bash(sleep *)"))
    with transaction.atomic():
        session = launch(fleet, server, spec=spec, goal="Log a run, then write after.txt")
        enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
    worktree = Path(session.worktree_path)
    server.script = [
        [shell("echo started >> runs.log; sleep 8; echo finished >> runs.log")],
        [add_file("after.txt", "carried on")],
        [text("Recovered and wrote after.txt.")],
    ]
    pool = celery_workers(processes=1, concurrency=1, STEP_LEASE_S=3)
    wait_until(lambda: (worktree / "runs.log").exists(), timeout=120, message=lambda: pool.log_tail())
    time.sleep(1.0)
    pool.kill(pool.procs[0])  # SIGKILL the worker: the sandbox (and the command in it) dies with it
    time.sleep(1.0)
    assert (worktree / "runs.log").read_text() == "started\n"
    pool.start_one(1)

    def recovered():
        tick()
        return AgentSession.objects.get(pk=session.pk).is_terminal

    wait_until(recovered, timeout=180, interval=1.0, message=lambda: f"recovery\n{pool.log_tail()}")
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason, pool.log_tail())
    assert (worktree / "runs.log").read_text() == "started\n"  # the command ran once, never again
    assert ToolCall.objects.get(session=session, name="Bash").state == ToolCall.State.INTERRUPTED
    assert AuditEvent.objects.filter(session_id=session.pk, kind="tool.interrupted").count() == 1
    assert (worktree / "after.txt").read_text() == "carried on\n"


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_the_commands_codex_runs_do_not_see_the_runs_secret(fleet, worktrees_dir, responses):
    server = responses([[shell("env")], [text("Listed.")]])
    session = drive(launch(fleet, server, spec=services.GrantSpec(mode="edits", allow=("Bash(env)",))))
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    (output,) = server.tool_outputs()
    assert "GIT_CONFIG_VALUE_0" in output["output"]  # the command ran, with the trailers' hook
    assert "CR_HOOK_TOKEN" not in output["output"] and codex.KEY_ENV not in output["output"]


@pytest.mark.slow
@needs_cli
@pytestmark_db
def test_a_read_denied_env_is_masked_in_the_codex_sandbox_for_a_recursive_grep(fleet, worktrees_dir, responses):
    """The evaluator allows ``grep -rn`` over the tree under ``Read(**/.env)``; inside Codex's
    sandbox .env is an empty file, so none of it reaches the tool call, the transcript or the model."""
    from agents.runtime.sandbox import sandbox_available

    if not sandbox_available("auto"):
        pytest.skip("bubblewrap does not work here")
    secret = "sk-live-codex-0123456789abcdef"
    server = responses([[shell("grep -rn SECRET .")], [text("Searched.")]])
    spec = services.GrantSpec(mode="edits", allow=("Bash(*)",), deny=("Read(**/.env)",))
    session = launch(fleet, server, spec=spec, goal="Find the SECRET markers")
    services.session_worktree_ensure(session=session)
    worktree = Path(session.worktree_path)
    (worktree / ".env").write_text(f"SECRET_KEY={secret}\n")
    (worktree / "notes.txt").write_text("the SECRET marker is visible here\n")
    session = drive(session)
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason)
    (call,) = ToolCall.objects.filter(session=session)
    assert call.decision == "allow" and call.state == ToolCall.State.DONE, (call.state, call.result)
    assert "notes.txt" in call.result
    recorded = [call.result, *(str(e.content) for e in TranscriptEntry.objects.filter(session=session))]
    recorded += [json.dumps(e.payload) for e in AuditEvent.objects.filter(session_id=session.pk)]
    assert not any(secret in part or "SECRET_KEY" in part for part in recorded)
    assert secret not in json.dumps(server.requests)
