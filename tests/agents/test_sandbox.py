"""The bubblewrap sandbox around agents' commands (real bwrap, real git, real loopback servers)."""

from __future__ import annotations

import http.server
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.runtime import sandbox
from agents.runtime.sandbox import SandboxError, run_command, sandbox_available
from agents.runtime.worktrees import ensure_worktree
from tests.gitrepo import git

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "app.py").write_text("print('hi')\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def worktree(repo: Path, tmp_path: Path) -> Path:
    path = tmp_path / "worktrees" / "s1"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-sandbox", worktree_path=path)
    return path


def sandboxed(
    command: str, cwd: Path, *, allow_network: bool = False, timeout_s: int = 20, **kwargs
) -> sandbox.CommandOutcome:
    outcome = run_command(
        command,
        cwd=cwd,
        timeout_s=timeout_s,
        output_cap=64_000,
        allow_network=allow_network,
        env=ENV,
        mode="bwrap",
        **kwargs,
    )
    assert outcome.sandboxed is True
    return outcome


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        return None


@pytest.fixture
def loopback_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_bwrap_is_available_and_works_on_this_machine() -> None:
    assert sandbox_available("auto") is True
    assert sandbox_available("bwrap") is True
    assert sandbox_available("none") is False


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sandbox mode"):
        sandbox_available("docker")


# -- network --------------------------------------------------------------------------------------


def test_python_cannot_reach_a_loopback_server_without_network(worktree: Path, loopback_server: int) -> None:
    probe = f'python3 -c \'import socket; socket.create_connection(("127.0.0.1", {loopback_server}), timeout=3); print("connected")\''
    outcome = sandboxed(probe, worktree)
    assert outcome.exit_code != 0
    assert "connected" not in outcome.output
    assert "Connection refused" in outcome.output or "unreachable" in outcome.output


def test_curl_cannot_reach_a_loopback_server_without_network(worktree: Path, loopback_server: int) -> None:
    outcome = sandboxed(f"curl -sS --max-time 3 http://127.0.0.1:{loopback_server}/", worktree)
    assert outcome.exit_code != 0
    assert "pong" not in outcome.output


def test_network_works_when_allowed(worktree: Path, loopback_server: int) -> None:
    outcome = sandboxed(f"curl -sS --max-time 5 http://127.0.0.1:{loopback_server}/", worktree, allow_network=True)
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output == "pong"
    probe = f'python3 -c \'import socket; socket.create_connection(("127.0.0.1", {loopback_server}), timeout=3); print("connected")\''
    assert sandboxed(probe, worktree, allow_network=True).output.strip() == "connected"


def test_the_same_probe_connects_without_the_sandbox(worktree: Path, loopback_server: int) -> None:
    # Control for the tests above: the server is reachable, so the refusal comes from the sandbox.
    outcome = run_command(
        f"curl -sS --max-time 5 http://127.0.0.1:{loopback_server}/",
        cwd=worktree,
        timeout_s=10,
        output_cap=1000,
        allow_network=False,
        env=ENV,
        mode="none",
    )
    assert outcome.sandboxed is False
    assert outcome.output == "pong"


def test_unix_sockets_under_run_are_hidden_without_network(worktree: Path) -> None:
    outcome = sandboxed("ls -A /run | wc -l", worktree)
    assert outcome.output.strip() == "0"


# -- file system ----------------------------------------------------------------------------------


def test_writing_outside_the_worktree_fails(worktree: Path) -> None:
    name = f"controlroom-sandbox-probe-{uuid.uuid4().hex}"
    outcome = sandboxed(f"touch /root/{name}; echo root=$?; echo x > /tmp/../etc/{name}; echo etc=$?", worktree)
    assert "root=1" in outcome.output and "etc=1" in outcome.output
    assert "Read-only file system" in outcome.output
    assert not Path(f"/root/{name}").exists()
    assert not Path(f"/etc/{name}").exists()


def test_root_in_the_sandbox_cannot_remount_the_system_writable(worktree: Path) -> None:
    name = f"controlroom-sandbox-probe-{uuid.uuid4().hex}"
    outcome = sandboxed(f"mount -o remount,rw / ; echo mount=$?; touch /root/{name}; echo touch=$?", worktree)
    assert "mount=0" not in outcome.output
    assert "touch=1" in outcome.output
    assert not Path(f"/root/{name}").exists()


def test_writing_inside_the_worktree_works(worktree: Path) -> None:
    outcome = sandboxed("mkdir -p out && echo made > out/result.txt && cat out/result.txt", worktree)
    assert outcome.exit_code == 0, outcome.output
    assert (worktree / "out" / "result.txt").read_text() == "made\n"


def test_tmp_is_private_to_the_sandbox(worktree: Path) -> None:
    name = f"controlroom-sandbox-probe-{uuid.uuid4().hex}"
    outcome = sandboxed(f"echo scratch > /tmp/{name} && cat /tmp/{name}", worktree)
    assert outcome.output == "scratch\n"
    assert not Path(f"/tmp/{name}").exists()


def test_the_shared_repository_stays_read_only(repo: Path, worktree: Path) -> None:
    before = git(repo, "rev-parse", "main")
    outcome = sandboxed(
        f"touch {repo}/.git/objects/planted; echo objects=$?; echo x >> app.py; git add app.py; echo add=$?; "
        f"git update-ref refs/heads/main HEAD~0 2>&1; git branch -f main HEAD 2>&1; echo branch=$?",
        worktree,
    )
    assert "objects=1" in outcome.output
    assert "add=0" not in outcome.output
    assert not (repo / ".git" / "objects" / "planted").exists()
    assert git(repo, "rev-parse", "main") == before


def test_git_status_and_diff_work_inside_the_sandbox(worktree: Path) -> None:
    (worktree / "app.py").write_text("print('changed')\n")
    (worktree / "new.txt").write_text("new\n")
    outcome = sandboxed("git status --short && git diff --stat && git log --oneline -1", worktree)
    assert outcome.exit_code == 0, outcome.output
    assert " M app.py" in outcome.output
    assert "?? new.txt" in outcome.output
    assert "1 file changed" in outcome.output
    assert "initial" in outcome.output


def test_the_worktrees_own_index_is_writable_inside_the_sandbox(worktree: Path) -> None:
    outcome = sandboxed("git rm -q --cached app.py && git status --short", worktree)
    assert outcome.exit_code == 0, outcome.output
    assert "D  app.py" in outcome.output and "?? app.py" in outcome.output


def test_the_agent_cannot_switch_branches_or_redirect_its_git_dir(repo: Path, worktree: Path) -> None:
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    dot_git_before = (worktree / ".git").read_text()
    outcome = sandboxed(
        f"git switch -q main; echo switch=$?; echo 'ref: refs/heads/main' > {admin}/HEAD; echo head=$?; "
        f"echo 'gitdir: /tmp/evil' > .git; echo dotgit=$?; echo /tmp/evil > {admin}/commondir; echo commondir=$?; "
        f"rm -f .git; echo rm=$?",
        worktree,
    )
    for step in ("switch", "head", "dotgit", "commondir", "rm"):
        assert f"{step}=0" not in outcome.output, outcome.output
    assert git(worktree, "symbolic-ref", "HEAD") == "refs/heads/agents/1-sandbox"
    assert (worktree / ".git").read_text() == dot_git_before


def test_a_forged_git_file_never_makes_the_sandbox_bind_a_foreign_directory_writable(tmp_path: Path) -> None:
    victim = tmp_path / "victim" / "worktrees" / "x"
    victim.mkdir(parents=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / ".git").write_text(f"gitdir: {victim}\n")
    argv = sandbox.bwrap_argv(bwrap="bwrap", command="true", cwd=plain, allow_network=False, env={})
    assert str(victim) not in argv


def test_hidden_paths_are_empty_but_the_worktree_inside_them_stays_visible(tmp_path: Path, repo: Path) -> None:
    data = tmp_path / "data"
    (data / "audit").mkdir(parents=True)
    (data / "audit" / "signing.key").write_text("top secret")
    (data / "db.sqlite3").write_text("rows")
    worktree = data / "worktrees" / "s5"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/5-hidden", worktree_path=worktree)
    outcome = sandboxed(
        f"cat {data}/audit/signing.key; cat {data}/db.sqlite3; cat app.py; git status --short; echo ok",
        worktree,
        hide_paths=[data],
    )
    assert "top secret" not in outcome.output and "rows" not in outcome.output
    assert "print('hi')" in outcome.output
    assert outcome.output.rstrip().endswith("ok")


def test_the_workers_processes_and_their_environment_are_invisible(worktree: Path) -> None:
    outcome = sandboxed(f"cat /proc/{os.getpid()}/environ; echo rc=$?; ls /proc | grep -c '^[0-9]'", worktree)
    assert "rc=1" in outcome.output
    assert int(outcome.output.strip().splitlines()[-1]) < 10


def test_only_the_given_environment_is_visible(worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "leak-me")
    outcome = run_command(
        "env",
        cwd=worktree,
        timeout_s=10,
        output_cap=10_000,
        allow_network=False,
        env={"PATH": "/usr/bin:/bin", "ONLY_ME": "1"},
        mode="bwrap",
    )
    assert "ONLY_ME=1" in outcome.output
    assert "leak-me" not in outcome.output and "SECRET_KEY" not in outcome.output


# -- process control and output -------------------------------------------------------------------


def test_a_timeout_kills_the_command_and_returns_quickly(worktree: Path) -> None:
    started = time.monotonic()
    outcome = sandboxed("echo before; sleep 30; echo after", worktree, timeout_s=1)
    assert time.monotonic() - started < 5
    assert outcome.timed_out is True and outcome.exit_code is None
    assert "before" in outcome.output and "after" not in outcome.output


def test_background_processes_do_not_outlive_the_command(worktree: Path) -> None:
    started = time.monotonic()
    outcome = sandboxed("sleep 100 & echo started", worktree)
    assert outcome.exit_code == 0 and outcome.output == "started\n"
    assert time.monotonic() - started < 5


def test_output_is_capped_keeping_head_and_tail(worktree: Path) -> None:
    outcome = run_command(
        "echo HEAD; seq 1 200000; echo TAIL",
        cwd=worktree,
        timeout_s=20,
        output_cap=1_000,
        allow_network=False,
        env=ENV,
        mode="bwrap",
    )
    assert outcome.truncated is True
    assert outcome.output.startswith("HEAD\n1\n")
    assert outcome.output.endswith("200000\nTAIL\n")
    assert "output truncated" in outcome.output
    assert len(outcome.output.encode()) < 1_200
    assert outcome.total_bytes > 1_000_000


def test_invalid_utf8_output_is_decoded_with_replacement(worktree: Path) -> None:
    outcome = sandboxed(r"printf 'ok \377\376 done'", worktree)
    assert outcome.output == "ok \ufffd\ufffd done"


def test_mode_none_runs_without_the_sandbox(worktree: Path) -> None:
    outcome = run_command(
        "echo plain", cwd=worktree, timeout_s=10, output_cap=1000, allow_network=False, env=ENV, mode="none"
    )
    assert outcome.sandboxed is False and outcome.output == "plain\n"


def test_without_bwrap_auto_falls_back_and_bwrap_mode_refuses(worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    assert sandbox_available("auto") is False
    outcome = run_command(
        "echo fallback", cwd=worktree, timeout_s=10, output_cap=1000, allow_network=False, env=ENV, mode="auto"
    )
    assert outcome.sandboxed is False and outcome.output == "fallback\n"
    with pytest.raises(SandboxError, match="bubblewrap is missing"):
        run_command("echo no", cwd=worktree, timeout_s=10, output_cap=1000, allow_network=False, env=ENV, mode="bwrap")


def test_a_missing_working_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="does not exist"):
        run_command("true", cwd=tmp_path / "gone", timeout_s=5, output_cap=1000, allow_network=False, env=ENV)


def test_the_probe_runs_once_when_it_works_and_is_retried_later_when_it_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([False, True])
    calls: list[str] = []

    def fake_probe(bwrap: str) -> bool:
        calls.append(bwrap)
        return next(answers)

    monkeypatch.setattr(sandbox, "_probe_cache", {})
    monkeypatch.setattr(sandbox, "_probe", fake_probe)
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: "/fake/bwrap")
    assert sandbox_available("auto") is False
    assert sandbox_available("auto") is False  # cached for a while
    assert len(calls) == 1
    monkeypatch.setattr(sandbox, "PROBE_RETRY_S", 0.0)
    time.sleep(0.01)
    assert sandbox_available("auto") is True
    monkeypatch.setattr(sandbox, "PROBE_RETRY_S", 3600.0)
    assert sandbox_available("bwrap") is True
    assert len(calls) == 2
