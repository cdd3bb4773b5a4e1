"""agents.gitcli on real repositories: timeouts kill, errors say why, hooks never run, the
environment and the directory are the ones given."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agents import gitcli
from tests.gitrepo import git, make_repo

IDENTITY = {
    "GIT_AUTHOR_NAME": "Ada Agent",
    "GIT_AUTHOR_EMAIL": "ada@example.invalid",
    "GIT_COMMITTER_NAME": "Ada Agent",
    "GIT_COMMITTER_EMAIL": "ada@example.invalid",
}
HOOKS = ("pre-commit", "commit-msg", "post-commit", "post-checkout", "reference-transaction")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return True


def test_it_returns_gits_output_as_bytes_untouched(repo: Path) -> None:
    content = b"line one\r\nno newline at the end \xff"
    (repo / "raw.bin").write_bytes(content)
    git(repo, "add", "raw.bin")
    git(repo, "commit", "-q", "-m", "raw")
    assert gitcli.run(repo, "show", "HEAD:raw.bin", what="reading raw.bin").stdout == content
    assert gitcli.run(repo, "rev-parse", "HEAD", what="reading HEAD").out.endswith("\n")  # not stripped


def test_input_is_given_to_git_on_stdin(repo: Path) -> None:
    sha = gitcli.run(repo, "hash-object", "--stdin", what="hashing", input=b"hello\n").out.strip()
    assert sha == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_a_failure_is_a_git_error_with_the_command_the_exit_status_and_stderr(repo: Path) -> None:
    with pytest.raises(gitcli.GitError) as caught:
        gitcli.run(repo, "rev-parse", "--verify", "no-such-branch", what="resolving no-such-branch")
    error = caught.value
    assert str(error).startswith("resolving no-such-branch: fatal: Needed a single revision")
    assert "(git rev-parse: exit status 128)" in str(error)
    assert error.command == "git rev-parse --verify no-such-branch"
    assert error.status == 128
    assert "Needed a single revision" in error.stderr
    assert not error.timed_out


def test_a_long_message_keeps_its_end(repo: Path) -> None:
    result = gitcli.run(repo, "checkout", "x" * 200, check=False)
    detail = result.detail(limit=80)
    assert len(detail) == 80 and detail.startswith("…") and detail.endswith("did not match any file(s) known to git")


def test_unchecked_a_failure_is_a_result_not_an_error(repo: Path) -> None:
    result = gitcli.run(repo, "show-ref", "--verify", "--quiet", "refs/heads/nope", check=False)
    assert (result.ok, result.status, result.stdout) == (False, 1, b"")


def test_a_caller_gets_its_own_error_class(repo: Path, tmp_path: Path) -> None:
    class ReviewGitError(gitcli.GitError):
        pass

    with pytest.raises(ReviewGitError, match=r"listing: .*not a git repository"):
        gitcli.run(tmp_path, "status", what="listing", error=ReviewGitError)
    with pytest.raises(ReviewGitError, match=f"listing: {tmp_path / 'gone'} does not exist"):
        gitcli.run(tmp_path / "gone", "status", what="listing", check=False, error=ReviewGitError)


def test_a_hanging_git_is_killed_with_everything_it_started_when_the_timeout_expires(
    repo: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    hang = f"alias.hang=!sleep 60 & echo $$ $! > {pids}; wait"  # a shell, and a child of the shell
    started = time.monotonic()
    with pytest.raises(gitcli.GitError) as caught:
        gitcli.run(repo, "hang", what="hanging on purpose", check=False, config=[hang], timeout_s=1)
    assert time.monotonic() - started < 10
    assert caught.value.timed_out
    assert str(caught.value) == "hanging on purpose: git hang did not finish within 1s and was killed"
    shell, sleeper = (int(pid) for pid in pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (_dead(shell) and _dead(sleeper)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(shell) and _dead(sleeper)


def test_hooks_never_run_even_when_the_repository_configures_them(repo: Path, tmp_path: Path) -> None:
    ran = tmp_path / "hooks-ran"
    hooks_dir = tmp_path / "configured-hooks"
    hooks_dir.mkdir()
    for directory in (repo / ".git" / "hooks", hooks_dir):
        for name in HOOKS:
            (directory / name).write_text(f'#!/bin/sh\necho "$0" >> {ran}\n')
            (directory / name).chmod(0o755)
    git(repo, "commit", "-q", "--allow-empty", "-m", "plain git runs them")
    assert ran.exists()  # the hooks are real
    ran.unlink()

    gitcli.run(repo, "commit", "-q", "--allow-empty", "-m", "x", what="committing", env=IDENTITY)
    gitcli.run(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"), what="adding a worktree")
    gitcli.run(tmp_path / "wt", "checkout", "-q", "-b", "other", what="switching")
    gitcli.run(repo, "update-ref", "refs/heads/copy", "HEAD", what="copying a ref")
    git(repo, "config", "core.hooksPath", str(hooks_dir))
    gitcli.run(repo, "commit", "-q", "--allow-empty", "-m", "y", what="committing", env=IDENTITY)
    assert not ran.exists()


def test_inherited_git_variables_are_ignored(repo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "other-index"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Somebody Inherited")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.hooksPath'='/somewhere'")
    (repo / "new.txt").write_text("new\n")
    gitcli.run(repo, "add", "new.txt", what="staging")
    gitcli.run(repo, "commit", "-q", "-m", "mine", what="committing", env=IDENTITY)
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert git(repo, "log", "-1", "--format=%an %s") == "Ada Agent mine"
    assert not (tmp_path / "other-index").exists()


def test_the_environment_drops_git_variables_and_fixes_the_language(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GIT_WORK_TREE", "/x")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setenv("KEEP_ME", "1")
    env = gitcli.environment({"GIT_REFLOG_ACTION": "review"}, cwd=tmp_path)
    assert "GIT_WORK_TREE" not in env and env["KEEP_ME"] == "1"
    assert (env["LANG"], env["LC_ALL"], env["GIT_TERMINAL_PROMPT"]) == ("C", "C", "0")
    assert env["GIT_REFLOG_ACTION"] == "review"
    assert env["GIT_CEILING_DIRECTORIES"] == os.path.dirname(os.path.realpath(tmp_path))


def test_git_works_in_the_directory_given_and_never_in_a_repository_above_it(repo: Path) -> None:
    inside = repo / "sub"
    inside.mkdir()
    assert not gitcli.run(inside, "rev-parse", "--git-dir", check=False).ok
    assert gitcli.common_dir(inside) is None


def test_the_common_dir_of_a_checkout_a_linked_worktree_and_a_bare_repository(repo: Path, tmp_path: Path) -> None:
    git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(tmp_path / "bare.git"))
    common = Path(os.path.realpath(repo / ".git"))
    assert gitcli.common_dir(repo) == common
    assert gitcli.common_dir(tmp_path / "wt") == common
    assert gitcli.common_dir(tmp_path / "bare.git") == Path(os.path.realpath(tmp_path / "bare.git"))
    assert gitcli.common_dir(tmp_path) is None


def test_resolve_commit_names_a_commit_or_nothing(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    assert gitcli.resolve_commit(repo, "main") == head
    assert gitcli.resolve_commit(repo, "refs/heads/main") == head
    assert gitcli.resolve_commit(repo, "nope") is None
    assert gitcli.resolve_commit(repo, "--all") is None
    assert gitcli.resolve_commit(repo, "") is None
