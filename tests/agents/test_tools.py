"""The agent's tools: schemas, argument validation, path confinement and each tool's behaviour.

Real git repositories and worktrees in tmp_path, real bubblewrap for run_command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import tools
from agents.runtime.worktrees import ensure_worktree
from agents.tools import PathEscapeError, ToolArgumentError, ToolResult, execute, parse_arguments, resolve_path
from tests.gitrepo import git

TRAILERS = {"Agent-Session": "12", "Delegated-By": "alice", "Grant": "7"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    (path / "src").mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# Demo\n")
    (path / "src" / "app.py").write_text("def greet(name):\n    return 'hello ' + name\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def worktree(repo: Path, tmp_path: Path) -> Path:
    path = tmp_path / "worktrees" / "s12"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/12-demo", worktree_path=path)
    return path


def run(name: str, args: dict, worktree: Path, **kwargs) -> ToolResult:
    return execute(name, args, worktree=worktree, trailers=TRAILERS, **kwargs)


# -- schemas --------------------------------------------------------------------------------------


def test_the_schemas_offer_exactly_the_nine_tools_in_openai_format() -> None:
    names = [schema["function"]["name"] for schema in tools.TOOL_SCHEMAS]
    assert names == [
        "list_files",
        "read_file",
        "search",
        "write_file",
        "edit_file",
        "run_command",
        "git_commit",
        "write_handoff",
        "finish",
    ]
    assert frozenset(names) == tools.TOOL_NAMES
    for schema in tools.TOOL_SCHEMAS:
        assert schema["type"] == "function"
        function = schema["function"]
        assert function["description"]
        parameters = function["parameters"]
        assert parameters["type"] == "object"
        assert set(parameters["required"]) <= set(parameters["properties"])
        assert all(prop.get("description") for prop in parameters["properties"].values())
    json.dumps(tools.TOOL_SCHEMAS)  # serializable as sent to the model


def test_schema_requirements_match_the_spec() -> None:
    required = {s["function"]["name"]: s["function"]["parameters"]["required"] for s in tools.TOOL_SCHEMAS}
    assert required["search"] == ["pattern"]
    assert required["run_command"] == ["command"]
    assert required["write_handoff"] == ["status", "next_action", "do_not"]
    handoff = next(s for s in tools.TOOL_SCHEMAS if s["function"]["name"] == "write_handoff")
    assert handoff["function"]["parameters"]["properties"]["status"]["enum"] == ["active", "blocked", "done", "stale"]


# -- parse_arguments ------------------------------------------------------------------------------


def test_parse_arguments_accepts_json_text_bytes_and_dicts() -> None:
    assert parse_arguments("read_file", '{"path": "src/app.py"}') == {"path": "src/app.py"}
    assert parse_arguments("read_file", b'{"path": "src/app.py"}') == {"path": "src/app.py"}
    assert parse_arguments("read_file", {"path": "src/app.py"}) == {"path": "src/app.py"}
    assert parse_arguments("run_command", '{"command": "ls", "timeout_s": 30}') == {"command": "ls", "timeout_s": 30}
    assert parse_arguments("search", {"pattern": "x", "path": None}) == {"pattern": "x"}


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("read_file", "[1, 2]", "must be a JSON object"),
        ("read_file", '"src/app.py"', "must be a JSON object"),
        ("read_file", "42", "must be a JSON object"),
        ("read_file", '{"path": "a\\u0000b"}', "NUL byte"),
        ("read_file", '{"path": "a\x00b"}', "NUL byte"),
        ("read_file", b'{"path": "\xff\xfe"}', "not valid UTF-8"),
        ("read_file", '{"path": "\\ud800"}', "not valid Unicode"),
        ("read_file", '{"path": ', "not valid JSON"),
        ("read_file", "{'path': 'x'}", "not valid JSON"),
        ("run_command", '{"command": "ls", "timeout_s": NaN}', "not valid JSON"),
        ("read_file", "{}", 'missing required field "path"'),
        ("read_file", None, 'missing required field "path"'),
        ("write_file", {"path": "a.txt"}, 'missing required field "content"'),
        ("read_file", {"path": 3}, '"path" must be a string, got a number'),
        ("write_file", {"path": "a", "content": ["x"]}, '"content" must be a string, got an array'),
        ("run_command", {"command": "ls", "timeout_s": "30"}, '"timeout_s" must be an integer'),
        ("run_command", {"command": "ls", "timeout_s": True}, '"timeout_s" must be an integer'),
        ("run_command", {"command": "ls", "timeout_s": 0}, "between 1 and 600"),
        ("run_command", {"command": "ls", "timeout_s": 601}, "between 1 and 600"),
        ("run_command", {"command": "   "}, '"command" must not be empty'),
        ("run_command", {"command": "ls", "timeout": 5}, 'unknown field "timeout"'),
        (
            "write_handoff",
            {"status": "finished", "next_action": "x", "do_not": []},
            "must be one of active, blocked, done, stale",
        ),
        (
            "write_handoff",
            {"status": "done", "next_action": "x", "do_not": "push"},
            '"do_not" must be an array of strings',
        ),
        ("write_handoff", {"status": "done", "next_action": "x", "do_not": [1]}, '"do_not"[0] must be a string'),
        ("edit_file", {"path": "a", "old": "", "new": "x"}, '"old" must not be empty'),
        ("delete_everything", {}, 'unknown tool "delete_everything"'),
    ],
)
def test_parse_arguments_refuses_bad_input_with_a_readable_message(name: str, raw, message: str) -> None:
    with pytest.raises(ToolArgumentError, match=None) as caught:
        parse_arguments(name, raw)
    assert message in str(caught.value)


def test_parse_arguments_refuses_ten_megabytes_of_input() -> None:
    huge = json.dumps({"path": "a.txt", "content": "x" * 10_000_000})
    with pytest.raises(ToolArgumentError, match="too large"):
        parse_arguments("write_file", huge)
    with pytest.raises(ToolArgumentError, match="too large"):
        parse_arguments("write_file", huge.encode())


def test_parse_arguments_refuses_content_over_one_megabyte_even_as_a_dict() -> None:
    with pytest.raises(ToolArgumentError, match='"content" is too large'):
        parse_arguments("write_file", {"path": "a.txt", "content": "é" * 600_000})


def test_parse_arguments_refuses_deeply_nested_json_without_crashing() -> None:
    with pytest.raises(ToolArgumentError):
        parse_arguments("finish", "[" * 100_000 + "]" * 100_000)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(tools.TOOL_NAMES) + ["nope"]),
    raw=st.one_of(
        st.none(),
        st.text(max_size=200),
        st.binary(max_size=200),
        st.dictionaries(
            st.text(max_size=12),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(),
                st.text(max_size=20),
                st.lists(st.text(max_size=5)),
            ),
            max_size=4,
        ),
    ),
)
def test_parse_arguments_never_raises_anything_but_tool_argument_error(name: str, raw) -> None:
    try:
        parsed = parse_arguments(name, raw)
    except ToolArgumentError:
        return
    assert isinstance(parsed, dict)


def test_execute_reports_invalid_arguments_instead_of_raising(worktree: Path) -> None:
    result = run("read_file", {"path": 3}, worktree)
    assert result.ok is False
    assert '"path" must be a string' in result.output


# -- resolve_path ---------------------------------------------------------------------------------


def test_resolve_path_returns_the_absolute_path_inside_the_worktree(worktree: Path) -> None:
    assert resolve_path(worktree, "src/app.py") == worktree.resolve() / "src" / "app.py"
    assert resolve_path(worktree, "src/../README.md") == worktree.resolve() / "README.md"
    assert resolve_path(worktree, ".") == worktree.resolve()
    assert resolve_path(worktree, "new/dir/file.txt") == worktree.resolve() / "new" / "dir" / "file.txt"


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        "src/../../outside",
        "~/.ssh/id_rsa",
        ".git",
        ".git/config",
        "src/../.git/HEAD",
        ".GIT/config",
        "sub/.git/config",
    ],
)
def test_resolve_path_refuses_escapes_and_git_internals(worktree: Path, path: str) -> None:
    with pytest.raises(PathEscapeError):
        resolve_path(worktree, path)


def test_resolve_path_refuses_symlinks_pointing_outside_anywhere_in_the_path(worktree: Path, tmp_path: Path) -> None:
    (tmp_path / "secret-dir").mkdir()
    (worktree / "etc-link").symlink_to("/etc")
    (worktree / "src" / "deep-link").symlink_to(tmp_path / "secret-dir")
    (worktree / "dangling").symlink_to(tmp_path / "not-yet-there.txt")
    (worktree / "inside-link").symlink_to("src/app.py")
    for path in ("etc-link/passwd", "src/deep-link/x", "dangling"):
        with pytest.raises(PathEscapeError, match="outside"):
            resolve_path(worktree, path)
    assert resolve_path(worktree, "inside-link") == worktree.resolve() / "src" / "app.py"


def test_resolve_path_refuses_a_symlink_into_git(worktree: Path) -> None:
    (worktree / "gitlink").symlink_to(".git")
    with pytest.raises(PathEscapeError):
        resolve_path(worktree, "gitlink")


# -- list_files / read_file / search --------------------------------------------------------------


def test_list_files_lists_recursively_marks_directories_and_skips_git(worktree: Path) -> None:
    result = run("list_files", {"path": "."}, worktree)
    assert result.ok
    lines = result.output.splitlines()
    assert "README.md" in lines and "src/" in lines and "src/app.py" in lines
    assert not any(line.startswith(".git") for line in lines)


def test_list_files_stops_at_about_500_entries_and_says_so(worktree: Path) -> None:
    many = worktree / "many"
    many.mkdir()
    for i in range(600):
        (many / f"f{i:03}.txt").write_text("x")
    result = run("list_files", {"path": "many"}, worktree)
    assert result.ok
    assert result.data["capped"] is True
    assert "listing stopped at 500 entries" in result.output
    assert len(result.output.splitlines()) == 501


def test_list_files_of_a_missing_directory_is_an_error(worktree: Path) -> None:
    result = run("list_files", {"path": "nope"}, worktree)
    assert result.ok is False and "no such file or directory: nope" in result.output


def test_read_file_returns_the_text(worktree: Path) -> None:
    result = run("read_file", {"path": "src/app.py"}, worktree)
    assert result.ok
    assert result.output == "def greet(name):\n    return 'hello ' + name\n"


def test_read_file_truncates_a_large_file_with_a_note(worktree: Path) -> None:
    (worktree / "big.txt").write_text("a" * 300_000)
    result = run("read_file", {"path": "big.txt"}, worktree)
    assert result.ok
    assert result.output.startswith("a" * 200_000)
    assert "[truncated: showing the first 200,000 of 300,000 bytes" in result.output
    assert result.data["truncated"] is True


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "../repo/README.md"])
def test_read_file_refuses_paths_outside_the_worktree(worktree: Path, path: str) -> None:
    result = run("read_file", {"path": path}, worktree)
    assert result.ok is False
    assert "refused" in result.output
    assert "root:" not in result.output


def test_read_file_refuses_a_symlink_in_the_repository_pointing_outside(repo: Path, tmp_path: Path) -> None:
    (repo / "passwd").symlink_to("/etc/passwd")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a committed symlink")
    worktree = tmp_path / "wt2"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/13-link", worktree_path=worktree)
    assert (worktree / "passwd").is_symlink()
    result = run("read_file", {"path": "passwd"}, worktree)
    assert result.ok is False
    assert "outside the repository" in result.output
    assert "root:" not in result.output


def test_read_file_refuses_a_fifo_instead_of_hanging(worktree: Path) -> None:
    os.mkfifo(worktree / "pipe")
    started = time.monotonic()
    result = run("read_file", {"path": "pipe"}, worktree)
    assert result.ok is False and "not a regular file" in result.output
    assert time.monotonic() - started < 2


def test_search_finds_regex_matches_as_path_line_text(worktree: Path) -> None:
    result = run("search", {"pattern": r"def \w+\(name\)"}, worktree)
    assert result.ok
    assert result.output == "src/app.py:1: def greet(name):"


def test_search_falls_back_to_a_literal_search_for_an_invalid_regex(worktree: Path) -> None:
    result = run("search", {"pattern": "greet(", "path": "src"}, worktree)
    assert result.ok
    assert "searched as plain text" in result.output
    assert "src/app.py:1: def greet(name):" in result.output


def test_search_skips_git_and_binary_files_and_caps_results(worktree: Path) -> None:
    (worktree / "blob.bin").write_bytes(b"\x00\x01needle\x00")
    (worktree / "many.txt").write_text("needle\n" * 500)
    result = run("search", {"pattern": "needle"}, worktree)
    assert result.ok
    assert "blob.bin" not in result.output and ".git/" not in result.output
    assert result.data["capped"] is True and result.data["matches"] == 200
    assert "results capped" in result.output


def test_search_with_a_catastrophic_regex_returns_promptly(worktree: Path) -> None:
    (worktree / "evil.txt").write_text("a" * 5_000 + "!\n")
    started = time.monotonic()
    result = run("search", {"pattern": "(a+)+$"}, worktree)
    assert time.monotonic() - started < 10
    assert isinstance(result.output, str)


def test_search_outside_the_worktree_is_refused(worktree: Path) -> None:
    result = run("search", {"pattern": "root", "path": "/etc"}, worktree)
    assert result.ok is False and "refused" in result.output


def test_search_with_no_match_says_so(worktree: Path) -> None:
    result = run("search", {"pattern": "zebra"}, worktree)
    assert result.ok and "no matches" in result.output


# -- write_file / edit_file -----------------------------------------------------------------------


def test_write_file_creates_parent_directories(worktree: Path) -> None:
    result = run("write_file", {"path": "pkg/sub/mod.py", "content": "X = 1\n"}, worktree)
    assert result.ok, result.output
    assert (worktree / "pkg" / "sub" / "mod.py").read_text() == "X = 1\n"
    assert result.data == {"bytes": 6, "created": True}


def test_write_file_through_a_dangling_symlink_pointing_outside_is_refused(worktree: Path, tmp_path: Path) -> None:
    target = tmp_path / "planted.txt"
    (worktree / "trap").symlink_to(target)
    result = run("write_file", {"path": "trap", "content": "pwned"}, worktree)
    assert result.ok is False
    assert not target.exists()


def test_write_file_into_git_is_refused(worktree: Path) -> None:
    result = run("write_file", {"path": ".git/hooks/pre-commit", "content": "#!/bin/sh\n"}, worktree)
    assert result.ok is False and ".git directory is off limits" in result.output


def test_edit_file_replaces_the_one_occurrence(worktree: Path) -> None:
    result = run("edit_file", {"path": "src/app.py", "old": "'hello '", "new": "'hi '"}, worktree)
    assert result.ok, result.output
    assert (worktree / "src" / "app.py").read_text() == "def greet(name):\n    return 'hi ' + name\n"


def test_edit_file_with_no_occurrence_says_zero_and_changes_nothing(worktree: Path) -> None:
    before = (worktree / "src" / "app.py").read_text()
    result = run("edit_file", {"path": "src/app.py", "old": "goodbye", "new": "x"}, worktree)
    assert result.ok is False
    assert "0 occurrences" in result.output
    assert (worktree / "src" / "app.py").read_text() == before


def test_edit_file_with_two_occurrences_says_how_many_and_changes_nothing(worktree: Path) -> None:
    (worktree / "twice.txt").write_text("same\nsame\n")
    result = run("edit_file", {"path": "twice.txt", "old": "same", "new": "other"}, worktree)
    assert result.ok is False
    assert "occurs 2 times" in result.output
    assert (worktree / "twice.txt").read_text() == "same\nsame\n"


def test_edit_file_of_a_missing_file_is_an_error(worktree: Path) -> None:
    result = run("edit_file", {"path": "nope.py", "old": "a", "new": "b"}, worktree)
    assert result.ok is False and "no such file: nope.py" in result.output


# -- run_command ----------------------------------------------------------------------------------


def test_run_command_runs_in_the_worktree_and_reports_the_exit_code(worktree: Path) -> None:
    result = run("run_command", {"command": "cat README.md; exit 3"}, worktree)
    assert result.ok is False
    assert result.exit_code == 3
    assert result.output.startswith("# Demo\n")
    assert "[exit 3 in" in result.output
    assert result.summary.startswith("exit 3 in ")
    assert result.data["sandboxed"] is True


def test_run_command_finds_the_project_python_and_summarizes_pytest(worktree: Path) -> None:
    (worktree / "test_demo.py").write_text(
        "def test_one():\n    assert True\n\ndef test_two():\n    assert True\n\ndef test_three():\n    assert False\n"
    )
    result = run(
        "run_command", {"command": "python -m pytest -q -p no:cacheprovider test_demo.py"}, worktree, timeout_s=60
    )
    assert result.exit_code == 1, result.output
    assert result.summary.startswith("exit 1 in ")
    assert result.summary.endswith(": 1 failed, 2 passed")


@pytest.mark.parametrize("mode", ["auto", "none"])
def test_run_command_sees_a_scrubbed_environment_without_the_workers_secrets(
    worktree: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("SECRET_KEY", "django-insecure-leak-me")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:hunter2@db/x")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_leak")
    result = run(
        "run_command", {"command": "env"}, worktree, sandbox=mode, author=("Agent #12", "agent-12@controlroom.invalid")
    )
    assert result.exit_code == 0
    for leak in ("SECRET_KEY", "REDIS_URL", "DATABASE_URL", "OPENAI_API_KEY", "GITHUB_TOKEN", "hunter2", "leak"):
        assert leak not in result.output
    env = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line and not line.startswith("["))
    assert env["PATH"].split(":")[0] == os.path.dirname(sys.executable)
    assert env["PATH"].split(":")[1:] == ["/usr/local/bin", "/usr/bin", "/bin"]
    assert env["HOME"] == "/tmp" and env["LANG"] == "C.UTF-8" and env["TERM"] == "dumb"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["GIT_AUTHOR_NAME"] == "Agent #12" and env["GIT_COMMITTER_EMAIL"] == "agent-12@controlroom.invalid"


def test_run_command_caps_output_keeping_head_and_tail(worktree: Path) -> None:
    command = "echo START; head -c 300000 /dev/zero | tr '\\0' 'x'; echo; echo END"
    result = run("run_command", {"command": command}, worktree, output_cap=2_000)
    assert result.exit_code == 0
    assert result.output.startswith("START\n")
    assert "END\n[exit 0" in result.output
    assert "output truncated" in result.output
    assert len(result.output) < 2_300
    assert result.data["truncated"] is True


def test_run_command_timeout_kills_the_command_quickly(worktree: Path) -> None:
    started = time.monotonic()
    result = run("run_command", {"command": "sleep 30", "timeout_s": 1}, worktree)
    assert time.monotonic() - started < 5
    assert result.ok is False and result.exit_code is None
    assert result.data["timed_out"] is True
    assert "timed out after 1s" in result.output
    assert result.summary == "timed out after 1s"


def test_run_command_timeout_never_exceeds_the_callers_limit(worktree: Path) -> None:
    started = time.monotonic()
    result = run("run_command", {"command": "sleep 30", "timeout_s": 600}, worktree, timeout_s=1)
    assert time.monotonic() - started < 5
    assert result.data["timed_out"] is True and result.data["timeout_s"] == 1


def test_run_command_timeout_kills_the_whole_process_group_even_unsandboxed(worktree: Path) -> None:
    command = "sleep 300 & echo $! > bg.pid; sleep 30"
    result = run("run_command", {"command": command, "timeout_s": 1}, worktree, sandbox="none")
    assert result.data["timed_out"] is True and result.data["sandboxed"] is False
    pid = int((worktree / "bg.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the background child of a timed-out command survived")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (a killed process waiting to be reaped by init is a zombie: dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# -- git_commit -----------------------------------------------------------------------------------


def test_git_commit_stages_everything_and_signs_with_trailers_in_order(worktree: Path) -> None:
    (worktree / "src" / "app.py").write_text("def greet(name):\n    return 'hi ' + name\n")
    (worktree / "new.txt").write_text("new\n")
    result = run(
        "git_commit",
        {"message": "Say hi\n\nShorter greeting."},
        worktree,
        author=("Agent #12", "agent-12@controlroom.invalid"),
    )
    assert result.ok, result.output
    sha = result.data["sha"]
    assert git(worktree, "rev-parse", "HEAD") == sha
    assert git(worktree, "status", "--porcelain") == ""
    message = git(worktree, "log", "-1", "--format=%B")
    assert message.startswith("Say hi\n\nShorter greeting.\n\n")
    parsed = subprocess.run(
        ["git", "interpret-trailers", "--parse"], input=message, capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert parsed.splitlines() == ["Agent-Session: 12", "Delegated-By: alice", "Grant: 7"]
    assert git(worktree, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == (
        "Agent #12 <agent-12@controlroom.invalid>|Agent #12 <agent-12@controlroom.invalid>"
    )


def test_git_commit_defaults_to_the_control_room_agent_as_author(worktree: Path) -> None:
    (worktree / "x.txt").write_text("x\n")
    assert run("git_commit", {"message": "x"}, worktree).ok
    assert git(worktree, "log", "-1", "--format=%an <%ae>") == "Control Room agent <agent@controlroom.invalid>"


def test_git_commit_trailers_survive_a_message_that_looks_like_a_patch_or_has_its_own_trailers(worktree: Path) -> None:
    (worktree / "x.txt").write_text("x\n")
    message = "Tricky\n\n---\nnot a patch\n\nAgent-Session: 999\nGrant: 1"
    assert run("git_commit", {"message": message}, worktree).ok
    body = git(worktree, "log", "-1", "--format=%B")
    parsed = subprocess.run(
        ["git", "interpret-trailers", "--parse"], input=body, capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert parsed.splitlines() == ["Agent-Session: 12", "Delegated-By: alice", "Grant: 7"]


def test_git_commit_with_nothing_to_commit_is_an_error(worktree: Path) -> None:
    before = git(worktree, "rev-parse", "HEAD")
    result = run("git_commit", {"message": "empty"}, worktree)
    assert result.ok is False
    assert "nothing to commit" in result.output
    assert git(worktree, "rev-parse", "HEAD") == before


def test_git_commit_never_runs_repository_hooks(repo: Path, worktree: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    (worktree / "x.txt").write_text("x\n")
    result = run("git_commit", {"message": "x"}, worktree)
    assert result.ok, result.output
    assert not marker.exists()


def test_git_commit_only_commits_on_the_sessions_branch_when_told_which(worktree: Path) -> None:
    (worktree / "x.txt").write_text("x\n")
    result = run("git_commit", {"message": "x"}, worktree, branch="agents/99-other")
    assert result.ok is False
    assert "not the session's branch 'agents/99-other'" in result.output
    assert run("git_commit", {"message": "x"}, worktree, branch="agents/12-demo").ok


def test_git_commit_ignores_merge_state_planted_in_the_admin_directory(repo: Path, worktree: Path) -> None:
    commit_file = repo / "other.txt"
    commit_file.write_text("other\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "unrelated work on main")
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    (admin / "MERGE_HEAD").write_text(git(repo, "rev-parse", "main") + "\n")
    (worktree / "x.txt").write_text("x\n")
    result = run("git_commit", {"message": "x"}, worktree)
    assert result.ok, result.output
    assert len(git(worktree, "log", "-1", "--format=%P").split()) == 1


def test_git_commit_refuses_a_worktree_whose_git_file_was_redirected_into_the_worktree(
    worktree: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "fsmonitor-ran"
    fake = worktree / "fake" / ".git"
    subprocess.run(["git", "init", "-q", str(fake.parent)], check=True, timeout=30)
    subprocess.run(
        ["git", "config", "-f", str(fake / "config"), "core.fsmonitor", f"touch {marker}; false"],
        check=True,
        timeout=30,
    )
    (worktree / ".git").write_text(f"gitdir: {fake}\n")
    (worktree / "x.txt").write_text("x\n")
    result = run("git_commit", {"message": "x"}, worktree)
    assert result.ok is False
    assert "tampered" in result.output
    assert not marker.exists()


def test_execute_refuses_malformed_trailers_from_the_caller(worktree: Path) -> None:
    with pytest.raises(ValueError, match="trailer key"):
        execute("finish", {"summary": "x"}, worktree=worktree, trailers={"Bad Key": "1"})


# -- handoff and finish ---------------------------------------------------------------------------


def test_write_handoff_writes_handoff_md_and_returns_the_note(worktree: Path) -> None:
    result = run(
        "write_handoff",
        {"status": "blocked", "next_action": "Ask about the API key", "do_not": ["push to main", "delete tests"]},
        worktree,
    )
    assert result.ok
    assert result.data == {
        "handoff": {
            "status": "blocked",
            "next_action": "Ask about the API key",
            "do_not": ["push to main", "delete tests"],
        }
    }
    text = (worktree / "HANDOFF.md").read_text()
    assert "Status: blocked" in text
    assert "## Next action\n\nAsk about the API key" in text
    assert "- push to main\n- delete tests" in text


def test_write_handoff_carries_an_optional_goal(worktree: Path) -> None:
    result = run(
        "write_handoff",
        {"status": "active", "goal": "Shorter greeting", "next_action": "Run the tests", "do_not": []},
        worktree,
    )
    assert result.ok
    assert result.data["handoff"]["goal"] == "Shorter greeting"
    text = (worktree / "HANDOFF.md").read_text()
    assert "## Goal\n\nShorter greeting" in text and "- (nothing)" in text


def test_finish_returns_the_summary(worktree: Path) -> None:
    result = run("finish", {"summary": "Greeting shortened; tests pass."}, worktree)
    assert result.ok and result.data == {"finish": "Greeting shortened; tests pass."}


def test_execute_on_a_missing_worktree_is_an_error_not_an_exception(tmp_path: Path) -> None:
    result = run("read_file", {"path": "x"}, tmp_path / "gone")
    assert result.ok is False and "does not exist" in result.output
