"""Worktrees: one branch and git worktree per session, safe under many concurrent workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents import gitcli
from agents.runtime import worktrees
from agents.runtime.worktrees import (
    WorktreeError,
    archive_branch,
    branch_name,
    disk_usage,
    ensure_worktree,
    remove_worktree,
)
from tests.gitrepo import git, make_repo

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def commit_file(cwd: Path, name: str, content: str, message: str) -> str:
    (cwd / name).write_text(content)
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message)
    return git(cwd, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


# -- branch names ---------------------------------------------------------------------------------


def test_branch_name_is_agents_id_and_an_ascii_slug() -> None:
    assert branch_name(12, "Fix the Login bug!") == "agents/12-fix-the-login-bug"
    assert branch_name(3, "Überprüfe café — naïve") == "agents/3-uberprufe-cafe-naive"


def test_branch_name_slug_is_at_most_40_chars_and_never_ends_with_a_dash() -> None:
    name = branch_name(7, "word " * 30)
    slug = name.split("/", 1)[1].split("-", 1)[1]
    assert len(slug) <= 40
    assert not slug.endswith("-")


def test_branch_name_of_an_unsluggable_title_is_still_a_valid_branch(repo: Path) -> None:
    name = branch_name(5, "☃☃☃ ...")
    assert name == "agents/5-task"
    assert subprocess.run(["git", "check-ref-format", "--branch", name], cwd=repo, timeout=10).returncode == 0


def test_branch_name_refuses_a_non_positive_session_id() -> None:
    with pytest.raises(ValueError, match="session_id"):
        branch_name(0, "x")


# -- ensure ---------------------------------------------------------------------------------------


def test_ensure_worktree_creates_the_branch_from_the_base_and_returns_the_base_commit(
    repo: Path, tmp_path: Path
) -> None:
    main_tip = git(repo, "rev-parse", "main")
    worktree = tmp_path / "worktrees" / "s1"
    base = ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-x", worktree_path=worktree)
    assert base == main_tip
    assert (worktree / "README.md").read_text() == "hello\n"
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "agents/1-x"
    assert git(repo, "rev-parse", "agents/1-x") == main_tip


def test_ensure_worktree_is_idempotent_and_keeps_returning_the_fork_point(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    first = ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-x", worktree_path=worktree)
    commit_file(worktree, "work.txt", "agent work\n", "agent commit")
    commit_file(repo, "other.txt", "moved on\n", "main moves on")
    (worktree / "uncommitted.txt").write_text("keep me\n")
    again = ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-x", worktree_path=worktree)
    assert again == first
    assert (worktree / "uncommitted.txt").read_text() == "keep me\n"
    assert (worktree / "work.txt").exists()


def test_ensure_worktree_checks_out_an_existing_branch_instead_of_recreating_it(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    base = ensure_worktree(repo_path=repo, base_branch="main", branch="agents/2-y", worktree_path=worktree)
    work = commit_file(worktree, "work.txt", "agent work\n", "agent commit")
    assert remove_worktree(repo_path=repo, worktree_path=worktree) is True
    assert ensure_worktree(repo_path=repo, base_branch="main", branch="agents/2-y", worktree_path=worktree) == base
    assert git(worktree, "rev-parse", "HEAD") == work
    assert (worktree / "work.txt").read_text() == "agent work\n"


def test_ensure_worktree_repairs_a_worktree_whose_git_file_was_overwritten(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    base = ensure_worktree(repo_path=repo, base_branch="main", branch="agents/4-r", worktree_path=worktree)
    (worktree / "keep.txt").write_text("uncommitted\n")
    (worktree / ".git").write_text("gitdir: /nonexistent/elsewhere\n")
    assert ensure_worktree(repo_path=repo, base_branch="main", branch="agents/4-r", worktree_path=worktree) == base
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "agents/4-r"
    assert (worktree / "keep.txt").read_text() == "uncommitted\n"


def test_a_known_base_reuses_a_healthy_worktree_without_starting_git(repo: Path, tmp_path: Path, monkeypatch) -> None:
    worktree = tmp_path / "wt"
    base = ensure_worktree(repo_path=repo, base_branch="main", branch="agents/5-f", worktree_path=worktree)
    commit_file(worktree, "work.txt", "agent work\n", "agent commit")

    def no_git(*args, **kwargs):
        raise AssertionError(f"git started: {args}")

    monkeypatch.setattr(gitcli, "_spawn", no_git)  # where every git process starts
    monkeypatch.setattr(worktrees, "_open_repo", no_git)
    assert (
        ensure_worktree(
            repo_path=repo, base_branch="main", branch="agents/5-f", worktree_path=worktree, known_base=base
        )
        == base
    )


def _break_head(worktree: Path, repo: Path) -> None:
    git(worktree, "checkout", "-q", "-b", "elsewhere")


def _break_git_file(worktree: Path, repo: Path) -> None:
    (worktree / ".git").write_text("gitdir: /nonexistent/elsewhere\n")


def _break_symlinked_git_file(worktree: Path, repo: Path) -> None:
    target = worktree.parent / "real-dot-git"
    target.write_text((worktree / ".git").read_text())
    (worktree / ".git").unlink()
    (worktree / ".git").symlink_to(target)


def _break_admin_dir(worktree: Path, repo: Path) -> None:
    import shutil

    shutil.rmtree(repo / ".git" / "worktrees" / worktree.name)


def _break_commondir(worktree: Path, repo: Path) -> None:
    other = make_repo(worktree.parent / "other")
    (repo / ".git" / "worktrees" / worktree.name / "commondir").write_text(str(other / ".git") + "\n")


def _break_back_pointer(worktree: Path, repo: Path) -> None:
    (repo / ".git" / "worktrees" / worktree.name / "gitdir").write_text("/nonexistent/.git\n")


@pytest.mark.parametrize(
    "damage",
    [
        None,
        _break_head,
        _break_git_file,
        _break_symlinked_git_file,
        _break_admin_dir,
        _break_commondir,
        _break_back_pointer,
    ],
)
def test_the_file_check_never_accepts_what_git_would_not(damage, repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/6-h", worktree_path=worktree)
    common = worktrees._open_repo(repo)
    if damage is not None:
        damage(worktree, repo)
    fast = worktrees._healthy_fast(Path(os.path.abspath(worktree)), worktrees._common_dir_fast(repo), "agents/6-h")
    assert fast == (damage is None)
    if fast:
        assert worktrees._healthy(Path(os.path.abspath(worktree)), common, "agents/6-h")


def test_a_known_base_on_a_damaged_worktree_takes_the_full_path_and_repairs_it(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    base = ensure_worktree(repo_path=repo, base_branch="main", branch="agents/7-d", worktree_path=worktree)
    (worktree / ".git").write_text("gitdir: /nonexistent/elsewhere\n")
    assert (
        ensure_worktree(
            repo_path=repo, base_branch="main", branch="agents/7-d", worktree_path=worktree, known_base=base
        )
        == base
    )
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "agents/7-d"


def test_the_fast_common_dir_matches_git_for_a_checkout_and_a_bare_repository(repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True, timeout=30)
    assert worktrees._common_dir_fast(repo) == worktrees._open_repo(repo)
    assert worktrees._common_dir_fast(bare) == worktrees._open_repo(bare)
    assert worktrees._common_dir_fast(tmp_path) is None


def test_ensure_worktree_refuses_a_missing_repository_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(WorktreeError, match=f"repository {missing} does not exist"):
        ensure_worktree(repo_path=missing, base_branch="main", branch="agents/1-x", worktree_path=tmp_path / "wt")


def test_ensure_worktree_refuses_a_directory_that_is_not_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(WorktreeError, match="is not a git repository"):
        ensure_worktree(repo_path=plain, base_branch="main", branch="agents/1-x", worktree_path=tmp_path / "wt")


def test_ensure_worktree_refuses_a_missing_base_branch_by_name(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(WorktreeError, match="base branch 'develop' not found in repository"):
        ensure_worktree(repo_path=repo, base_branch="develop", branch="agents/1-x", worktree_path=tmp_path / "wt")
    assert not (tmp_path / "wt").exists()


def test_ensure_worktree_refuses_an_invalid_branch_name(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(WorktreeError, match="not a valid branch name"):
        ensure_worktree(repo_path=repo, base_branch="main", branch="agents/bad..name", worktree_path=tmp_path / "wt")


def test_ensure_worktree_refuses_a_branch_checked_out_in_another_worktree(repo: Path, tmp_path: Path) -> None:
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-x", worktree_path=tmp_path / "a")
    with pytest.raises(WorktreeError, match="already checked out in another worktree"):
        ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-x", worktree_path=tmp_path / "b")


def test_ensure_worktree_refuses_to_take_over_a_non_empty_foreign_directory(repo: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "wt"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    with pytest.raises(WorktreeError, match="exists and is not a worktree"):
        ensure_worktree(repo_path=repo, base_branch="main", branch="agents/1-x", worktree_path=foreign)
    assert (foreign / "precious.txt").read_text() == "mine"


def test_ensure_worktree_works_on_a_bare_repository(repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True, timeout=30)
    base = ensure_worktree(repo_path=bare, base_branch="main", branch="agents/9-bare", worktree_path=tmp_path / "wt")
    assert base == git(repo, "rev-parse", "main")
    assert (tmp_path / "wt" / "README.md").exists()


def test_twenty_worktrees_created_at_once_from_two_processes_all_succeed(repo: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from concurrent.futures import ThreadPoolExecutor
        from pathlib import Path
        from agents.runtime.worktrees import ensure_worktree

        repo, root, first = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

        def make(i):
            return ensure_worktree(repo_path=repo, base_branch="main", branch=f"agents/{i}-c", worktree_path=root / f"s{i}")

        with ThreadPoolExecutor(max_workers=10) as pool:
            shas = list(pool.map(make, range(first, first + 10)))
        assert len(set(shas)) == 1, shas
        print(shas[0])
        """
    )
    root = tmp_path / "worktrees"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(repo), str(root), str(first)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for first in (1, 11)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert out.strip() == git(repo, "rev-parse", "main")
    listed = git(repo, "worktree", "list", "--porcelain").count("worktree ")
    assert listed == 21  # the main checkout and twenty session worktrees
    for i in range(1, 21):
        assert git(root / f"s{i}", "symbolic-ref", "--short", "HEAD") == f"agents/{i}-c"

    with ThreadPoolExecutor(max_workers=20) as pool:
        removed = list(pool.map(lambda i: remove_worktree(repo_path=repo, worktree_path=root / f"s{i}"), range(1, 21)))
    assert removed == [True] * 20
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


# -- remove ---------------------------------------------------------------------------------------


def test_remove_worktree_discards_the_checkout_but_keeps_the_branch_and_its_commits(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/3-z", worktree_path=worktree)
    work = commit_file(worktree, "work.txt", "x\n", "agent commit")
    (worktree / "dirty.txt").write_text("uncommitted\n")
    assert remove_worktree(repo_path=repo, worktree_path=worktree) is True
    assert not worktree.exists()
    assert git(repo, "rev-parse", "refs/heads/agents/3-z") == work
    assert str(worktree) not in git(repo, "worktree", "list")


def test_remove_worktree_twice_reports_nothing_removed_the_second_time(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/3-z", worktree_path=worktree)
    assert remove_worktree(repo_path=repo, worktree_path=worktree) is True
    assert remove_worktree(repo_path=repo, worktree_path=worktree) is False


def test_remove_worktree_cleans_up_a_worktree_whose_directory_was_deleted(repo: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/3-z", worktree_path=worktree)
    subprocess.run(["rm", "-rf", str(worktree)], check=True, timeout=30)
    remove_worktree(repo_path=repo, worktree_path=worktree)
    assert str(worktree) not in git(repo, "worktree", "list")
    # and the session can start over on its branch
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/3-z", worktree_path=worktree)
    assert (worktree / "README.md").exists()


def test_remove_worktree_refuses_a_directory_that_is_not_its_worktree(repo: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    with pytest.raises(WorktreeError, match="is not a worktree"):
        remove_worktree(repo_path=repo, worktree_path=foreign)
    assert (foreign / "precious.txt").exists()


def test_remove_worktree_refuses_to_remove_the_repository_itself(repo: Path) -> None:
    with pytest.raises(WorktreeError, match="the repository itself"):
        remove_worktree(repo_path=repo, worktree_path=repo)
    assert (repo / "README.md").exists()


# -- archive --------------------------------------------------------------------------------------


def test_archive_branch_keeps_the_commits_reachable_after_the_branch_is_deleted_and_gc(
    repo: Path, tmp_path: Path
) -> None:
    worktree = tmp_path / "wt"
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/12-x", worktree_path=worktree)
    work = commit_file(worktree, "work.txt", "x\n", "agent commit")
    remove_worktree(repo_path=repo, worktree_path=worktree)
    sha = archive_branch(
        repo_path=repo, branch="agents/12-x", archive_ref="refs/archive/agents/12-x", delete_branch=True
    )
    assert sha == work
    assert (
        subprocess.run(
            ["git", "show-ref", "--verify", "--quiet", "refs/heads/agents/12-x"], cwd=repo, timeout=10
        ).returncode
        == 1
    )
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    assert git(repo, "rev-parse", "refs/archive/agents/12-x") == work
    assert git(repo, "cat-file", "-t", work) == "commit"
    assert work in git(repo, "rev-list", "refs/archive/agents/12-x")


def test_archive_branch_keeps_the_branch_unless_asked_to_delete_it(repo: Path, tmp_path: Path) -> None:
    ensure_worktree(repo_path=repo, base_branch="main", branch="agents/13-y", worktree_path=tmp_path / "wt")
    sha = archive_branch(repo_path=repo, branch="agents/13-y", archive_ref="refs/archive/agents/13-y")
    assert git(repo, "rev-parse", "refs/heads/agents/13-y") == sha


def test_archive_branch_refuses_a_missing_branch_and_a_ref_under_refs_heads(repo: Path) -> None:
    with pytest.raises(WorktreeError, match="branch 'agents/404-x' not found"):
        archive_branch(repo_path=repo, branch="agents/404-x", archive_ref="refs/archive/agents/404-x")
    with pytest.raises(WorktreeError, match="outside refs/heads"):
        archive_branch(repo_path=repo, branch="main", archive_ref="refs/heads/archived")


# -- disk usage -----------------------------------------------------------------------------------


def test_disk_usage_sums_file_sizes_without_following_symlinks_or_double_counting_hard_links(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"x" * 10_000)
    (root / "sub" / "b.bin").write_bytes(b"y" * 2_345)
    os.link(root / "a.bin", root / "sub" / "a-again.bin")
    outside = tmp_path / "big.bin"
    outside.write_bytes(b"z" * 1_000_000)
    (root / "link").symlink_to(outside)
    link_size = (root / "link").lstat().st_size
    assert disk_usage(root) == 10_000 + 2_345 + link_size


def test_disk_usage_of_a_missing_path_is_zero(tmp_path: Path) -> None:
    assert disk_usage(tmp_path / "missing") == 0
