"""reviews.git_ops on real repositories: diff stats, patches, merge, conflicts, revert."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reviews import git_ops

AUTHOR = ("Rita Reviewer", "rita@example.com")


def git(cwd: Path, *argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=cwd, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


def commit(cwd: Path, files: dict[str, str | bytes | None], message: str) -> str:
    for name, content in files.items():
        path = cwd / name
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message)
    return git(cwd, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "Dev")
    commit(
        path, {"app.py": "def f():\n    return 1\n", "old_name.txt": "same\ncontent\n", "README.md": "# demo\n"}, "init"
    )
    return path


@pytest.fixture
def agent_worktree(repo, tmp_path) -> Path:
    """A session branch checked out in its own worktree, like the runtime makes it."""
    path = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "agents/1-task", str(path), "main")
    return path


def test_the_diff_stat_counts_lines_and_handles_renames_binary_files_and_odd_names(repo, agent_worktree):
    git(agent_worktree, "mv", "old_name.txt", "new_name.txt")
    commit(
        agent_worktree,
        {
            "app.py": "def f():\n    return 2\n\n\ndef g():\n    return 3\n",
            "logo.png": b"\x89PNG\x00\x01\x02",
            "dir with space/é.py": "x = 1\n",
        },
        "work",
    )
    stat = git_ops.diff_stat(repo, "main", "agents/1-task")
    by_path = {f.path: f for f in stat.files}
    assert set(by_path) == {"app.py", "new_name.txt", "logo.png", "dir with space/é.py"}
    assert (by_path["app.py"].status, by_path["app.py"].additions, by_path["app.py"].deletions) == ("M", 5, 1)
    assert by_path["new_name.txt"].renamed and by_path["new_name.txt"].old_path == "old_name.txt"
    assert by_path["new_name.txt"].lines == 0
    assert by_path["logo.png"].binary and by_path["logo.png"].status == "A"
    assert by_path["dir with space/é.py"].additions == 1
    assert stat.binary_files == 1 and stat.additions == 6


def test_the_patch_of_one_file_has_numbered_hunks_and_follows_a_rename(repo, agent_worktree):
    commit(agent_worktree, {"old_name.txt": "".join(f"line {i}\n" for i in range(1, 11))}, "longer")
    git(agent_worktree, "mv", "old_name.txt", "new_name.txt")
    commit(
        agent_worktree,
        {"new_name.txt": "".join(f"line {i}\n" if i != 5 else "five\n" for i in range(1, 11))},
        "rename, edit",
    )
    stat = git_ops.diff_stat(repo, "main", "agents/1-task")
    base, tip = git_ops.merge_base(repo, "main", "agents/1-task"), git_ops.resolve(repo, "agents/1-task")
    first = git_ops.diff_stat(repo, base, git_ops.resolve(repo, "agents/1-task~1"))
    renamed = git_ops.diff_stat(repo, git_ops.resolve(repo, "agents/1-task~1"), tip).get("new_name.txt")
    assert renamed.renamed and renamed.old_path == "old_name.txt" and (renamed.additions, renamed.deletions) == (1, 1)
    patch = git_ops.file_patch(
        repo, git_ops.resolve(repo, "agents/1-task~1"), tip, path="new_name.txt", old_path="old_name.txt"
    )
    lines = [(line.kind, line.text, line.old_no, line.new_no) for h in patch.hunks for line in h.lines]
    assert ("-", "line 5", 5, None) in lines and ("+", "five", None, 5) in lines and (" ", "line 4", 4, 4) in lines
    assert all(kind in "+- " for kind, *_ in lines) and len(lines) == 8  # 3 context lines either side
    assert stat.get("new_name.txt") is not None and first.get("old_name.txt") is not None


def test_the_patch_parser_ends_each_hunk_by_its_counts_so_odd_lines_are_not_headers():
    text = (
        "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n--- looks like a header\n+++ too\n keep\n"
        "diff --git a/b.txt b/b.txt\n--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+y\n"
    )
    patch = git_ops.parse_patch(text, path="a.txt")
    assert [[(line.kind, line.text) for line in h.lines] for h in patch.hunks] == [
        [("-", "-- looks like a header"), ("+", "++ too"), (" ", "keep")],
        [("-", "x"), ("\\", "No newline at end of file"), ("+", "y")],
    ]


def test_a_long_patch_is_cut_at_the_limit_and_says_so(repo, agent_worktree):
    commit(agent_worktree, {"big.txt": "".join(f"line {i}\n" for i in range(500))}, "big")
    patch = git_ops.file_patch(
        repo, git_ops.resolve(repo, "main"), git_ops.resolve(repo, "agents/1-task"), path="big.txt", max_lines=100
    )
    assert patch.truncated and patch.total_lines == 500
    assert sum(len(h.lines) for h in patch.hunks) == 100


def test_commits_come_with_their_trailers(repo, agent_worktree):
    commit(
        agent_worktree,
        {"a.txt": "a\n"},
        "feat: add a\n\nWhy it matters.\n\nAgent-Session: 7\nDelegated-By: sam\nGrant: 3",
    )
    [info] = git_ops.commits(repo, "main", "agents/1-task")
    assert info.subject == "feat: add a"
    assert info.body == "Why it matters."
    assert info.trailers == [("Agent-Session", "7"), ("Delegated-By", "sam"), ("Grant", "3")]


def test_a_branch_ahead_of_a_checked_out_base_fast_forwards_it_and_its_working_tree(repo, agent_worktree, tmp_path):
    tip = commit(agent_worktree, {"a.txt": "a\n"}, "add a")
    result = git_ops.merge_branch(
        repo_path=repo,
        base_branch="main",
        branch="agents/1-task",
        message="m",
        author=AUTHOR,
        scratch_dir=tmp_path / "scratch",
    )
    assert result.method == "fast-forward" and result.base_after == tip
    assert git(repo, "rev-parse", "main") == tip
    assert (repo / "a.txt").read_text() == "a\n"  # the main working tree follows its branch
    assert git(repo, "status", "--porcelain") == ""


def test_a_base_that_moved_on_gets_a_merge_commit_by_the_reviewer(repo, agent_worktree, tmp_path):
    tip = commit(agent_worktree, {"a.txt": "a\n"}, "add a")
    base = commit(repo, {"b.txt": "b\n"}, "add b on main")
    result = git_ops.merge_branch(
        repo_path=repo,
        base_branch="main",
        branch="agents/1-task",
        message="Merge session #1",
        author=AUTHOR,
        scratch_dir=tmp_path / "scratch",
    )
    assert result.method == "merge" and result.base_before == base
    assert git(repo, "rev-parse", "main") == result.merge_commit
    assert git(repo, "log", "-1", "--format=%P", "main").split() == [base, tip]
    assert (
        git(repo, "log", "-1", "--format=%an <%ae>|%s", "main") == "Rita Reviewer <rita@example.com>|Merge session #1"
    )
    assert (repo / "a.txt").exists() and (repo / "b.txt").exists()
    assert not list((tmp_path / "scratch").iterdir())  # the temporary worktree is gone
    assert "scratch" not in git(repo, "worktree", "list")


def test_a_conflict_names_the_files_and_changes_nothing(repo, agent_worktree, tmp_path):
    tip = commit(agent_worktree, {"app.py": "def f():\n    return 'agent'\n"}, "agent edit")
    base = commit(repo, {"app.py": "def f():\n    return 'human'\n"}, "human edit")
    (agent_worktree / "scratchpad.txt").write_text("uncommitted agent work\n")
    with pytest.raises(git_ops.Conflict) as caught:
        git_ops.merge_branch(
            repo_path=repo,
            base_branch="main",
            branch="agents/1-task",
            message="m",
            author=AUTHOR,
            scratch_dir=tmp_path / "scratch",
        )
    assert caught.value.files == ["app.py"]
    assert git(repo, "rev-parse", "main") == base and git(repo, "rev-parse", "agents/1-task") == tip
    assert git(repo, "status", "--porcelain") == ""
    assert (agent_worktree / "scratchpad.txt").read_text() == "uncommitted agent work\n"
    assert len(git(repo, "worktree", "list", "--porcelain").split("\n\n")) == 2  # main + the agent's, no leftover


def test_local_changes_in_the_checked_out_base_that_the_merge_would_overwrite_refuse_it(repo, agent_worktree, tmp_path):
    commit(agent_worktree, {"README.md": "# agent\n"}, "agent readme")
    before = git(repo, "rev-parse", "main")
    (repo / "README.md").write_text("# human, not committed\n")
    with pytest.raises(git_ops.GitOpsError, match="checked out in"):
        git_ops.merge_branch(
            repo_path=repo,
            base_branch="main",
            branch="agents/1-task",
            message="m",
            author=AUTHOR,
            scratch_dir=tmp_path / "scratch",
        )
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "README.md").read_text() == "# human, not committed\n"


def test_a_base_not_checked_out_anywhere_moves_by_ref_alone(repo, agent_worktree, tmp_path):
    git(repo, "checkout", "-q", "--detach")
    tip = commit(agent_worktree, {"a.txt": "a\n"}, "add a")
    git_ops.merge_branch(
        repo_path=repo,
        base_branch="main",
        branch="agents/1-task",
        message="m",
        author=AUTHOR,
        scratch_dir=tmp_path / "scratch",
    )
    assert git(repo, "rev-parse", "main") == tip
    assert not (repo / "a.txt").exists()  # the detached working tree was left alone


@pytest.mark.parametrize("moved_on", [False, True], ids=["fast-forward", "merge-commit"])
def test_a_revert_commit_undoes_the_merged_work_on_the_base(repo, agent_worktree, tmp_path, moved_on):
    commit(agent_worktree, {"a.txt": "a\n", "app.py": "def f():\n    return 42\n"}, "agent work")
    commit(agent_worktree, {"c.txt": "c\n"}, "more agent work")
    if moved_on:
        commit(repo, {"b.txt": "b\n"}, "human work")
    merged = git_ops.merge_branch(
        repo_path=repo,
        base_branch="main",
        branch="agents/1-task",
        message="merge",
        author=AUTHOR,
        scratch_dir=tmp_path / "scratch",
    )
    later = commit(repo, {"later.txt": "later\n"}, "later human work")
    reverted = git_ops.revert_merge(
        repo_path=repo,
        base_branch="main",
        merged=merged,
        message="Revert session #1",
        author=AUTHOR,
        scratch_dir=tmp_path / "scratch",
    )
    assert git(repo, "rev-parse", "main") == reverted.revert_commit
    assert git(repo, "log", "-1", "--format=%P", "main") == later
    assert not (repo / "a.txt").exists() and not (repo / "c.txt").exists()
    assert (repo / "app.py").read_text() == "def f():\n    return 1\n"
    assert (repo / "later.txt").exists() and (repo / "b.txt").exists() == moved_on


def test_a_revert_that_conflicts_with_later_work_changes_nothing(repo, agent_worktree, tmp_path):
    commit(agent_worktree, {"app.py": "def f():\n    return 42\n"}, "agent work")
    merged = git_ops.merge_branch(
        repo_path=repo,
        base_branch="main",
        branch="agents/1-task",
        message="merge",
        author=AUTHOR,
        scratch_dir=tmp_path / "scratch",
    )
    later = commit(repo, {"app.py": "def f():\n    return 43\n"}, "human builds on it")
    with pytest.raises(git_ops.Conflict) as caught:
        git_ops.revert_merge(
            repo_path=repo,
            base_branch="main",
            merged=merged,
            message="revert",
            author=AUTHOR,
            scratch_dir=tmp_path / "scratch",
        )
    assert caught.value.files == ["app.py"]
    assert git(repo, "rev-parse", "main") == later


def test_a_missing_repository_is_a_readable_error(tmp_path):
    with pytest.raises(git_ops.GitOpsError, match="does not exist"):
        git_ops.merge_branch(
            repo_path=tmp_path / "nope",
            base_branch="main",
            branch="x",
            message="m",
            author=AUTHOR,
            scratch_dir=tmp_path / "scratch",
        )
