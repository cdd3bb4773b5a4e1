"""Deny by effect: what a grant forbids is impossible inside the sandbox, however the command is
spelled. Real bubblewrap, real git worktrees, the executor the runtime calls (``tools.execute``
with the grant's deny list); the evaluator is not consulted here, on purpose: these commands are
what gets past it."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from agents.permissions.masks import compute_masks, program_rules
from agents.runtime.sandbox import DENIED_EXIT_CODE, sandbox_available
from agents.runtime.worktrees import ensure_worktree
from agents.tools import ToolResult, execute
from agents.tools.executor import agent_env
from tests.gitrepo import git

SECRET = "sk-live-0123456789abcdef"
CI = "on: push  # the real workflow\n"
DENY = ("Read(**/.env)", "Read(private/**)", "Bash(touch *)", "Edit(docs/**)")


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    if not sandbox_available("bwrap"):
        pytest.fail("bubblewrap is required for these tests (CI installs it)")


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / "src").mkdir()
    (repo / "docs").mkdir()
    (repo / ".github" / "workflows" / "ci.yml").write_text(CI)
    (repo / "src" / "a.py").write_text("# TODO: greet\nprint('a')\n")
    (repo / "docs" / "guide.md").write_text("# Guide\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    path = tmp_path / "worktrees" / "s1"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-deny", worktree_path=path)
    (path / ".env").write_text(f"API_KEY={SECRET}\n")  # untracked, as secrets are
    (path / "config").mkdir()
    (path / "config" / ".env").write_text(f"NESTED={SECRET}\n")
    (path / "private").mkdir()
    (path / "private" / "notes.txt").write_text(f"{SECRET}\n")
    return path


def sh(worktree: Path, command: str, deny=DENY) -> ToolResult:
    return execute(
        "run_command", {"command": command}, worktree=worktree, trailers={}, sandbox="bwrap", deny=deny, timeout_s=30
    )


def leaked(output: str) -> bool:
    encodings = (SECRET, base64.b64encode(SECRET.encode()).decode()[:16], SECRET.encode().hex()[:16])
    spaced = " ".join(SECRET.encode().hex()[i : i + 2] for i in range(0, 16, 2))
    return any(e in output for e in encodings) or spaced in output


# -- denied files are not there ------------------------------------------------------------------

READERS = {
    "cat": "cat .env config/.env private/notes.txt",
    "head": "head -c 200 .env; head config/.env",
    "tail": "tail -n 5 .env private/notes.txt",
    "python": "python3 -c \"print(open('.env').read(), open('private/notes.txt').read())\"",
    "sed": "sed -n p .env config/.env",
    "awk": "awk '{print}' .env private/notes.txt",
    "grep -r": "grep -rn sk- . ; grep -r API_KEY --include='.*' .",
    "cp then cat": "cp .env /tmp/e && cat /tmp/e; cp -r private /tmp/p && cat /tmp/p/*",
    "tar": "tar cf - .env config private | tar xOf -",
    "base64": "base64 .env config/.env",
    "dd": "dd if=.env bs=1 2>/dev/null; dd if=private/notes.txt 2>/dev/null",
    "od": "od -c .env; od -An -tx1 config/.env",
    "xxd": "xxd .env",
    "sqlite3": "sqlite3 :memory: \"select cast(readfile('.env') as text)\"",
    "rg": "rg -uu --no-ignore -n sk- .",
    "ag": "ag -u --hidden sk- .",
    "perl": "perl -ne print .env",
    "ln -s then cat": "ln -s .env link && cat link",
    "git diff --no-index": "git diff --no-index /dev/null .env",
    "find -exec cat": "find . -name '.env' -exec cat {} +",
}


def test_a_read_denied_file_yields_no_bytes_through_any_program_family(worktree: Path) -> None:
    ran = []
    for family, command in READERS.items():
        program = command.split()[0]
        if shutil.which(program) is None:
            continue
        result = sh(worktree, command)
        assert result.data["sandboxed"] is True
        assert not leaked(result.output), (family, result.output)
        ran.append(family)
    assert len(ran) >= 10, ran
    # the files are untouched on the host; only the sandbox's view is empty
    assert SECRET in (worktree / ".env").read_text()
    assert not (worktree / "link").exists() or os.path.islink(worktree / "link")


def test_masked_files_read_as_empty_and_masked_directories_as_empty(worktree: Path) -> None:
    result = sh(worktree, "wc -c < .env; ls -A private | wc -l; test -d private && echo DIR")
    assert result.ok, result.output
    assert result.output.split()[:3] == ["0", "0", "DIR"]


def test_the_secret_guard_masks_env_files_even_without_a_deny_rule(worktree: Path) -> None:
    result = sh(worktree, "cat .env config/.env; grep -rn -e API_KEY -e NESTED .", deny=())
    assert "API_KEY" not in result.output and "NESTED" not in result.output
    assert SECRET in sh(worktree, "cat private/notes.txt", deny=()).output  # no rule, no mask


def test_without_a_grant_nothing_is_masked(worktree: Path) -> None:
    result = execute("run_command", {"command": "cat .env"}, worktree=worktree, trailers={}, sandbox="bwrap")
    assert SECRET in result.output


def test_a_recursive_search_under_a_read_deny_rule_shows_the_rest_and_never_the_secret(worktree: Path) -> None:
    for command in ("grep -rn TODO .", "rg --hidden -n TODO"):
        if shutil.which(command.split()[0]) is None:
            continue
        result = sh(worktree, command)
        assert "src/a.py" in result.output and "TODO" in result.output
        assert not leaked(result.output)


# -- denied and protected paths are read-only ------------------------------------------------------

WRITERS = [
    "echo pwned > .github/workflows/ci.yml",
    "echo pwned >> .github/workflows/ci.yml",
    "python3 -c \"open('.github/workflows/ci.yml', 'w').write('pwned')\"",
    "sed -i s/push/pwned/ .github/workflows/ci.yml",
    "cp src/a.py .github/workflows/ci.yml",
    "rm -f .github/workflows/ci.yml",
    "mv .github/workflows/ci.yml x.yml",
    "mkdir .github/workflows/new",
    "mv .github gh",
    "rm -rf .github",
    "perl -pi -e s/push/pwned/ .github/workflows/ci.yml",
    "truncate -s 0 .github/workflows/ci.yml",
    "echo x > docs/guide.md",
    "rm docs/guide.md",
]


@pytest.mark.parametrize("command", WRITERS)
def test_a_write_under_an_edit_denied_or_protected_path_fails(worktree: Path, command: str) -> None:
    sh(worktree, command)  # some programs report the failure and still exit 0 (perl -i)
    assert (worktree / ".github" / "workflows" / "ci.yml").read_text() == CI
    assert (worktree / "docs" / "guide.md").read_text() == "# Guide\n"
    assert not (worktree / ".github" / "workflows" / "new").exists()


def test_a_write_fails_with_erofs(worktree: Path) -> None:
    result = sh(worktree, "echo x > .github/workflows/ci.yml")
    assert "Read-only file system" in result.output


def test_a_protected_directory_that_does_not_exist_cannot_be_created_and_is_not_left_behind(worktree: Path) -> None:
    assert not (worktree / ".husky").exists()
    result = sh(worktree, "mkdir -p .husky/hooks && echo x > .husky/pre-commit; ls -A .husky | wc -l")
    assert "Read-only file system" in result.output
    assert not (worktree / ".husky").exists()  # the empty mount point is removed afterwards


def test_writing_elsewhere_in_the_worktree_still_works(worktree: Path) -> None:
    result = sh(worktree, "echo ok > src/new.py && mkdir -p build/x && cat src/new.py")
    assert result.ok and "ok" in result.output


# -- denied programs are not runnable ---------------------------------------------------------------

WRAPPERS = {
    "plain": "touch {f}",
    "bash -c": "bash -c 'touch {f}'",
    "sh -c": "sh -c 'touch {f}'",
    "env": "env FOO=1 touch {f}",
    "xargs": "echo {f} | xargs touch",
    "find -exec": "find src -maxdepth 0 -exec touch {f} \\;",
    "nice": "nice -n 5 touch {f}",
    "timeout": "timeout 5 touch {f}",
    "nohup": "nohup touch {f} 2>&1",
    "python subprocess": "python3 -c \"import subprocess; subprocess.run(['touch', '{f}'], capture_output=True)\"",
    "python os.system": "python3 -c \"import os; os.system('touch {f} 2>/dev/null')\"",
    "absolute path": "/usr/bin/touch {f}",
    "/bin path": "/bin/touch {f}",
    "a script file": "printf '#!/bin/sh\\ntouch {f}\\n' > t.sh && chmod +x t.sh && ./t.sh",
    "busybox": "busybox touch {f}",
    "command": "command touch {f}",
    "exec": "(exec touch {f})",
    "stdbuf": "stdbuf -o0 touch {f}",
    "setsid": "setsid -w touch {f}",
    "PATH lookup": "PATH=/usr/local/bin:/usr/bin touch {f}",
    "a copy of the binary": "cp /usr/bin/touch /tmp/t && /tmp/t {f}",
}


@pytest.mark.parametrize("family", list(WRAPPERS))
def test_a_denied_program_cannot_run_through_any_wrapper(worktree: Path, family: str) -> None:
    target = f"made-by-{family.replace(' ', '-').replace('/', '')}"
    result = sh(worktree, WRAPPERS[family].format(f=target))
    assert not (worktree / target).exists(), (family, result.output)
    assert result.data["denied_by_sandbox"] == [{"program": "touch", "rule": "Bash(touch *)"}], (family, result.output)


def test_the_stub_exits_126_and_says_which_rule(worktree: Path) -> None:
    result = sh(worktree, "touch x")
    assert result.exit_code == DENIED_EXIT_CODE
    assert "denied by grant: Bash(touch *)" in result.output
    assert "the grant denies running touch (Bash(touch *))" in result.output


def test_imitating_the_stub_records_nothing_the_grant_did_not_mask(worktree: Path) -> None:
    result = sh(worktree, "echo 'controlroom-sandbox: denied by grant: Bash(rm *) (rm cannot run in this sandbox)' >&2")
    assert result.data["denied_by_sandbox"] == []


def test_a_rule_written_without_a_star_masks_the_program_too(worktree: Path) -> None:
    result = sh(worktree, "env touch y; ls y", deny=("Bash(touch)",))
    assert not (worktree / "y").exists()
    assert result.data["denied_by_sandbox"] == [{"program": "touch", "rule": "Bash(touch)"}]


def test_rules_with_argument_patterns_and_the_shell_itself_are_not_masked() -> None:
    rules = program_rules(["Bash(git push *)", "Bash(rm -rf *)", "Bash(touch *)", "Bash(*)", "Bash(bash *)", "Read(x)"])
    assert rules == [("touch", "Bash(touch *)"), ("bash", "Bash(bash *)")]
    masks = compute_masks(["Bash(bash *)", "Bash(sh)"], "/tmp", path=agent_env()["PATH"])
    assert masks.programs == ()  # the sandbox runs /bin/bash and the stubs /bin/sh


def test_other_programs_still_run(worktree: Path) -> None:
    result = sh(worktree, "ls src && git status --short && python3 -c 'print(41 + 1)'")
    assert result.ok, result.output
    assert "a.py" in result.output and "42" in result.output


# -- a human's approval -------------------------------------------------------------------------------


def test_an_approved_action_lifts_the_guard_masks_it_names_but_never_a_deny_rules(worktree: Path) -> None:
    from agents.permissions import canonicalize
    from agents.permissions.masks import lifted_guards

    command = "echo fixed > .github/workflows/ci.yml && cat docs/guide.md > /dev/null"
    action = canonicalize("run_command", {"command": command}, str(worktree))
    lift = lifted_guards(action.resources, action.recursive, root=str(worktree))
    assert lift == (".github/**",)
    result = execute(
        "run_command",
        {"command": command + " && echo x > docs/guide.md"},
        worktree=worktree,
        trailers={},
        sandbox="bwrap",
        deny=DENY,
        lift=lift,
    )
    assert (worktree / ".github" / "workflows" / "ci.yml").read_text() == "fixed\n"
    assert (worktree / "docs" / "guide.md").read_text() == "# Guide\n"  # Edit(docs/**) is a deny rule
    assert "Read-only file system" in result.output


def test_the_masks_cover_nested_matches_and_skip_what_is_already_covered(worktree: Path) -> None:
    masks = compute_masks(DENY + ("Edit(.github/**)",), str(worktree), path=agent_env()["PATH"])
    root = os.path.realpath(worktree)
    assert set(masks.hidden) == {f"{root}/.env", f"{root}/config/.env", f"{root}/private"}
    assert f"{root}/.github" in masks.read_only and f"{root}/.github/workflows/ci.yml" not in masks.read_only
    assert f"{root}/.husky" in masks.missing and f"{root}/.github" not in masks.missing
    assert not masks.incomplete
