"""Git for reviews: diff stats, per-file patches, commits, merge and revert (git through
``agents.gitcli``: every call has a timeout, none runs hooks).

Pure of Django and the database, like ``agents.runtime.worktrees``: paths, refs and shas in,
dataclasses out, ``GitOpsError`` (a message a human can act on) or ``Conflict`` (which files) on
failure.

Changing the base branch never touches the session's worktree, the session's branch or a
human's uncommitted work:

- the merge (or revert) commit is made in a *temporary detached worktree* under ``scratch_dir``,
  removed afterwards whatever happens; a conflict aborts there and is reported with its files;
- the base branch then moves to the new commit, which is always a descendant of its old tip:
  with a compare-and-swap ``git update-ref`` when the base is not checked out anywhere, or with
  ``git merge --ff-only`` inside the worktree that has it checked out (the main repository's
  working tree, typically), which updates that working tree too and refuses, changing nothing,
  when local changes there would be overwritten. A base that moved meanwhile is retried.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agents import gitcli
from agents.runtime import worktrees

GIT_TIMEOUT_S = 60
MERGE_TIMEOUT_S = 300
MAX_ATTEMPTS = 3
#: For the commands that merge and revert (hooks and signing are off for every git command).
MERGE_CONFIG = ("merge.renames=true",)


class GitOpsError(gitcli.GitError):
    """A repository, ref or git failure, with a message a human can act on."""


class Conflict(GitOpsError):
    """A merge or revert that cannot be done without a human resolving ``files``."""

    def __init__(self, message: str, *, files: list[str]) -> None:
        super().__init__(message)
        self.files = list(files)


# -- plumbing ------------------------------------------------------------------------------------


def _call(
    cwd: Path,
    *argv: str,
    timeout_s: float = GIT_TIMEOUT_S,
    env: dict[str, str] | None = None,
    config: tuple[str, ...] = (),
) -> gitcli.Result:
    return gitcli.run(cwd, *argv, check=False, timeout_s=timeout_s, env=env, config=config, error=GitOpsError)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def run(cwd: Path, *argv: str, what: str, timeout_s: float = GIT_TIMEOUT_S, env: dict[str, str] | None = None) -> str:
    """Run git in ``cwd``; its stdout as text, or ``GitOpsError("<what>: <git's message>")``."""
    return gitcli.run(cwd, *argv, what=what, timeout_s=timeout_s, env=env, error=GitOpsError).out


def _run_bytes(cwd: Path, *argv: str, what: str, timeout_s: float = GIT_TIMEOUT_S) -> bytes:
    return gitcli.run(cwd, *argv, what=what, timeout_s=timeout_s, error=GitOpsError).stdout


def check_repository(repo_path: Path) -> Path:
    """The repository's path, or ``GitOpsError`` when it is missing or not a git repository."""
    repo_path = Path(repo_path)
    if not repo_path.exists():
        raise GitOpsError(f"repository {repo_path} does not exist")
    if not _call(repo_path, "rev-parse", "--git-dir").ok:
        raise GitOpsError(f"{repo_path} is not a git repository")
    return repo_path


def resolve(repo_path: Path, rev: str) -> str | None:
    """The commit sha ``rev`` names, or None."""
    return gitcli.resolve_commit(repo_path, rev, timeout_s=GIT_TIMEOUT_S, error=GitOpsError)


def refs(repo_path: Path) -> dict[str, str]:
    """Every branch and archive ref of the repository → its commit sha, in one git call.

    Keys are full ref names (``refs/heads/main``, ``refs/archive/agents/12-x``)."""
    out = run(
        repo_path,
        "for-each-ref",
        "--format=%(objectname) %(refname)",
        "refs/heads",
        "refs/archive",
        what=f"listing the branches of {repo_path}",
    )
    result = {}
    for line in out.splitlines():
        sha, _, name = line.partition(" ")
        if name:
            result[name] = sha
    return result


def merge_base(repo_path: Path, a: str, b: str) -> str | None:
    result = _call(Path(repo_path), "merge-base", a, b)
    sha = result.out.strip()
    return sha if result.ok and sha else None


def is_ancestor(repo_path: Path, ancestor: str, descendant: str) -> bool:
    result = _call(Path(repo_path), "merge-base", "--is-ancestor", ancestor, descendant)
    if result.status not in (0, 1):
        raise result.error(f"comparing {ancestor[:12]} and {descendant[:12]}", GitOpsError)
    return result.ok


def archive_ref_for(branch: str) -> str:
    return f"refs/archive/{branch}"


# -- diff stats ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStat:
    path: str
    old_path: str = ""
    status: str = "M"  # A added, M modified, D deleted, R renamed, C copied, T type changed
    additions: int = 0
    deletions: int = 0
    binary: bool = False

    @property
    def lines(self) -> int:
        return self.additions + self.deletions

    @property
    def renamed(self) -> bool:
        return self.status == "R"


@dataclass(frozen=True)
class DiffStat:
    files: tuple[FileStat, ...] = ()

    @property
    def additions(self) -> int:
        return sum(f.additions for f in self.files)

    @property
    def deletions(self) -> int:
        return sum(f.deletions for f in self.files)

    @property
    def lines(self) -> int:
        return self.additions + self.deletions

    @property
    def binary_files(self) -> int:
        return sum(1 for f in self.files if f.binary)

    def get(self, path: str) -> FileStat | None:
        return next((f for f in self.files if f.path == path), None)


def parse_raw_numstat(data: bytes) -> DiffStat:
    """Parse ``git diff --raw --numstat -z -M`` output (raw records first, then numstat records)."""
    tokens = data.split(b"\0")
    statuses: dict[str, tuple[str, str]] = {}  # new path -> (status letter, old path)
    order: list[str] = []
    counts: dict[str, tuple[int, int, bool]] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.strip(b"\n"):
            i += 1
            continue
        if token.startswith(b":"):
            letter = _text(token.split()[-1])[:1]
            if letter in ("R", "C"):
                old, new = _text(tokens[i + 1]), _text(tokens[i + 2])
                i += 3
            else:
                old = new = _text(tokens[i + 1])
                i += 2
            statuses[new] = (letter, old if letter in ("R", "C") else "")
            order.append(new)
            continue
        parts = token.split(b"\t", 2)
        if len(parts) != 3:
            raise GitOpsError(f"unexpected git diff output near {token[:80]!r}")
        raw_added, raw_deleted, raw_path = parts
        if raw_path == b"":  # a rename: old and new paths follow
            raw_path = tokens[i + 2]
            i += 3
        else:
            i += 1
        binary = raw_added == b"-" and raw_deleted == b"-"
        counts[_text(raw_path)] = (0 if binary else int(raw_added), 0 if binary else int(raw_deleted), binary)
    files = []
    for path in order or list(counts):
        letter, old = statuses.get(path, ("M", ""))
        added, deleted, binary = counts.get(path, (0, 0, False))
        files.append(
            FileStat(path=path, old_path=old, status=letter, additions=added, deletions=deleted, binary=binary)
        )
    return DiffStat(files=tuple(files))


def _diff_stat(repo_path: Path, *revs: str, what: str) -> DiffStat:
    out = _run_bytes(
        repo_path, "diff", "--no-color", "--no-ext-diff", "--raw", "--numstat", "-z", "-M", *revs, "--", what=what
    )
    return parse_raw_numstat(out)


def diff_stat(repo_path: Path, base: str, tip: str) -> DiffStat:
    """What ``tip`` changes since it forked from ``base`` (``git diff base...tip``): one git call."""
    return _diff_stat(repo_path, f"{base}...{tip}", what=f"diff stat of {tip[:12]} against {base[:12]}")


# -- patches -------------------------------------------------------------------------------------


@dataclass
class DiffLine:
    kind: str  # "+", "-", " ", "\\" (no newline at end of file)
    text: str
    old_no: int | None = None
    new_no: int | None = None


@dataclass
class Hunk:
    header: str
    lines: list[DiffLine] = field(default_factory=list)


@dataclass
class FilePatch:
    path: str
    old_path: str = ""
    binary: bool = False
    hunks: list[Hunk] = field(default_factory=list)
    truncated: bool = False
    total_lines: int = 0


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")


def parse_patch(text: str, *, path: str, old_path: str = "", max_lines: int = 4000) -> FilePatch:
    """The hunks of a unified diff (file headers skipped), at most ``max_lines`` diff lines. Each
    hunk's line counts (from its ``@@`` header) decide where it ends, so a removed line that reads
    ``-- x`` is never taken for the next file's header."""
    patch = FilePatch(path=path, old_path=old_path)
    hunk: Hunk | None = None
    old_no = new_no = old_left = new_left = 0
    shown = 0
    for line in text.split("\n"):
        if hunk is not None and old_left <= 0 and new_left <= 0 and not line.startswith("\\"):
            hunk = None  # the hunk is complete
        if hunk is None:
            match = _HUNK.match(line)
            if match:
                old_no, new_no = int(match.group(1)), int(match.group(3))
                old_left = int(match.group(2)) if match.group(2) is not None else 1
                new_left = int(match.group(4)) if match.group(4) is not None else 1
                hunk = Hunk(header=line)
                patch.hunks.append(hunk)
            elif line.startswith("Binary files ") or line.startswith("GIT binary patch"):
                patch.binary = True
            continue
        kind = line[:1]
        if kind == "\\":
            if shown < max_lines:
                hunk.lines.append(DiffLine("\\", line[1:].strip()))
            continue
        if kind not in ("+", "-", " ") and line != "":
            hunk = None  # malformed: stop reading this hunk
            continue
        kind = kind or " "  # an empty context line whose space was stripped
        patch.total_lines += 1
        if kind in ("-", " "):
            old_left -= 1
        if kind in ("+", " "):
            new_left -= 1
        if shown >= max_lines:
            patch.truncated = True
            old_no += kind in ("-", " ")
            new_no += kind in ("+", " ")
            continue
        shown += 1
        if kind == "+":
            hunk.lines.append(DiffLine("+", line[1:], None, new_no))
            new_no += 1
        elif kind == "-":
            hunk.lines.append(DiffLine("-", line[1:], old_no, None))
            old_no += 1
        else:
            hunk.lines.append(DiffLine(" ", line[1:], old_no, new_no))
            old_no += 1
            new_no += 1
    patch.hunks = [h for h in patch.hunks if h.lines]
    return patch


def file_patch(
    repo_path: Path, base: str, tip: str, *, path: str, old_path: str = "", max_lines: int = 4000
) -> FilePatch:
    """The patch of one file between two commits (renames followed when ``old_path`` is given)."""
    paths = [p for p in dict.fromkeys([old_path, path]) if p]
    out = _run_bytes(
        repo_path,
        "-c",
        "core.quotePath=false",
        "diff",
        "--no-color",
        "--no-ext-diff",
        "-M",
        "--src-prefix=a/",
        "--dst-prefix=b/",
        base,
        tip,
        "--",
        *[f":(literal){p}" for p in paths],
        what=f"diff of {path}",
    )
    return parse_patch(_text(out), path=path, old_path=old_path, max_lines=max_lines)


# -- commits -------------------------------------------------------------------------------------


@dataclass
class CommitInfo:
    sha: str
    author: str
    date: str
    subject: str
    body: str
    trailers: list[tuple[str, str]]

    @property
    def short(self) -> str:
        return self.sha[:10]


def commits(repo_path: Path, base: str, tip: str, *, limit: int = 200) -> list[CommitInfo]:
    """Commits reachable from ``tip`` and not from ``base``, newest first, with their trailers."""
    out = run(
        repo_path,
        "log",
        "--no-color",
        f"--max-count={limit}",
        "--format=%H%x1f%an <%ae>%x1f%aI%x1f%s%x1f%b%x1f%(trailers:only,unfold)%x1e",
        f"{base}..{tip}",
        "--",
        what=f"commits of {tip[:12]} since {base[:12]}",
    )
    result = []
    for record in out.split("\x1e"):
        record = record.strip("\n")
        if not record:
            continue
        sha, author, date, subject, body, trailer_text = (record.split("\x1f") + [""] * 6)[:6]
        trailers = []
        for line in trailer_text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                trailers.append((key.strip(), value.strip()))
        trailer_lines = {line.strip() for line in trailer_text.splitlines() if line.strip()}
        body_lines = [line for line in body.rstrip().splitlines() if line.strip() not in trailer_lines]
        result.append(
            CommitInfo(
                sha=sha.strip(),
                author=author,
                date=date,
                subject=subject,
                body="\n".join(body_lines).strip(),
                trailers=trailers,
            )
        )
    return result


# -- worktrees of the base branch ---------------------------------------------------------------


def worktree_with(repo_path: Path, branch: str) -> Path | None:
    """The worktree (the main working tree included) that has ``branch`` checked out, if any."""
    out = run(repo_path, "worktree", "list", "--porcelain", what=f"listing the worktrees of {repo_path}")
    current: Path | None = None
    bare = False
    for line in out.splitlines():
        if line.startswith("worktree "):
            current, bare = Path(line[len("worktree ") :]), False
        elif line == "bare":
            bare = True
        elif line.startswith("branch ") and current is not None and not bare:
            if line[len("branch ") :] == f"refs/heads/{branch}":
                return current
    return None


def is_dirty(worktree_path: Path) -> list[str]:
    """Paths with uncommitted changes in a worktree (untracked files included); [] when clean or missing."""
    if not (Path(worktree_path) / ".git").exists():
        return []
    out = _run_bytes(
        worktree_path, "status", "--porcelain", "-z", "--untracked-files=normal", what=f"status of {worktree_path}"
    )
    tokens = out.split(b"\0")
    paths, i = [], 0
    while i < len(tokens):
        entry = tokens[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.append(_text(entry[3:]))
        if entry[:1] in (b"R", b"C"):
            i += 1  # the rename's source path
    return paths


def _common_dir(repo_path: Path) -> Path:
    common = gitcli.common_dir(repo_path, timeout_s=GIT_TIMEOUT_S, error=GitOpsError)
    if common is None:
        raise GitOpsError(f"opening {repo_path}: not a git repository")
    return common


class _Scratch:
    """A temporary detached worktree at ``commit`` (removed on exit, whatever happened)."""

    def __init__(self, repo_path: Path, commit: str, scratch_dir: Path) -> None:
        self.repo_path, self.commit = Path(repo_path), commit
        self.path = Path(scratch_dir) / f"review-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with worktrees.repository_lock(_common_dir(self.repo_path)):
            run(
                self.repo_path,
                "worktree",
                "add",
                "--detach",
                "--no-checkout",
                str(self.path),
                self.commit,
                what="creating a temporary worktree",
                timeout_s=MERGE_TIMEOUT_S,
            )
        try:
            run(
                self.path,
                "checkout",
                "--detach",
                "--quiet",
                self.commit,
                what="checking out the base in a temporary worktree",
                timeout_s=MERGE_TIMEOUT_S,
            )
        except BaseException:
            self.__exit__()
            raise
        return self.path

    def __exit__(self, *exc) -> None:
        try:
            worktrees.remove_worktree(repo_path=self.repo_path, worktree_path=self.path)
        except worktrees.WorktreeError:
            if self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
            with contextlib.suppress(GitOpsError):  # best effort: the next prune finishes the job
                _call(self.repo_path, "worktree", "prune")


def _identity_env(author: tuple[str, str]) -> dict[str, str]:
    name, email = author
    name = " ".join(name.replace("<", "").replace(">", "").split()) or "Control Room"
    email = " ".join(email.replace("<", "").replace(">", "").split()) or "reviewer@controlroom.invalid"
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def _unmerged(worktree_path: Path) -> list[str]:
    out = _run_bytes(worktree_path, "diff", "--name-only", "--diff-filter=U", "-z", what="listing conflicting files")
    return sorted({_text(p) for p in out.split(b"\0") if p})


def _move_base(repo_path: Path, base_branch: str, *, old: str, new: str, reason: str) -> None:
    """Move ``base_branch`` from ``old`` to ``new`` (a descendant of ``old``), updating the working
    tree that has it checked out, if any. ``_BaseMoved`` when the base is no longer at ``old``."""
    holder = worktree_with(repo_path, base_branch)
    if holder is None:
        result = _call(Path(repo_path), "update-ref", "-m", reason, f"refs/heads/{base_branch}", new, old)
        if not result.ok:
            if resolve(repo_path, f"refs/heads/{base_branch}") != old:
                raise _BaseMoved()
            raise result.error(f"updating {base_branch}", GitOpsError)
        return
    if resolve(holder, "HEAD") != old:
        raise _BaseMoved()
    result = _call(
        holder,
        "merge",
        "--ff-only",
        "--no-edit",
        "--quiet",
        new,
        timeout_s=MERGE_TIMEOUT_S,
        env={"GIT_REFLOG_ACTION": reason},
        config=MERGE_CONFIG,
    )
    if not result.ok:
        if resolve(holder, "HEAD") != old:
            raise _BaseMoved()
        detail = result.detail() or f"exit status {result.status}"
        raise GitOpsError(
            f"{base_branch} is checked out in {holder} and git refused to update that working tree ({detail}); "
            "commit or stash the local changes there, then try again. Nothing was changed."
        )


class _BaseMoved(Exception):
    pass


def _apply(
    scratch: Path, argv: list[str], *, author: tuple[str, str], what: str, conflict: Callable[[list[str]], str]
) -> None:
    """Run a merge or revert (``argv``) in a scratch worktree. On failure it is aborted, and the error
    is ``Conflict(conflict(files))`` when files conflict, ``GitOpsError("<what>: ...")`` otherwise."""
    result = _call(scratch, *argv, timeout_s=MERGE_TIMEOUT_S, env=_identity_env(author), config=MERGE_CONFIG)
    if result.ok:
        return
    files = _unmerged(scratch)
    with contextlib.suppress(GitOpsError):  # the scratch worktree is removed anyway
        _call(scratch, argv[0], "--abort")
    if files:
        raise Conflict(conflict(files), files=files)
    raise result.error(what, GitOpsError)


# -- merge ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeResult:
    method: str  # "fast-forward", "merge" or "up-to-date"
    base_branch: str
    base_before: str  # the base's tip before the merge
    base_after: str  # its tip after (the merge commit, or the branch tip for a fast-forward)
    branch_tip: str
    merge_base: str
    merge_commit: str = ""


def merge_branch(
    *, repo_path: Path, base_branch: str, branch: str, message: str, author: tuple[str, str], scratch_dir: Path
) -> MergeResult:
    """Merge ``branch`` into ``base_branch``: fast-forward when possible, a merge commit otherwise.

    ``Conflict`` (with the files) leaves the base, the branch and every worktree untouched."""
    repo_path = check_repository(repo_path)
    for _attempt in range(MAX_ATTEMPTS):
        base = resolve(repo_path, f"refs/heads/{base_branch}")
        if base is None:
            raise GitOpsError(f"base branch {base_branch!r} not found in {repo_path}")
        tip = resolve(repo_path, f"refs/heads/{branch}")
        if tip is None:
            raise GitOpsError(f"branch {branch!r} not found in {repo_path}")
        fork = merge_base(repo_path, base, tip)
        if fork is None:
            raise GitOpsError(f"branch {branch!r} shares no history with {base_branch!r}")
        if fork == tip:
            return MergeResult("up-to-date", base_branch, base, base, tip, fork)
        try:
            if fork == base:
                _move_base(repo_path, base_branch, old=base, new=tip, reason=f"review: fast-forward {branch}")
                return MergeResult("fast-forward", base_branch, base, tip, tip, fork)
            merge_commit = _merge_commit(
                repo_path,
                base=base,
                tip=tip,
                branch=branch,
                base_branch=base_branch,
                message=message,
                author=author,
                scratch_dir=scratch_dir,
            )
            _move_base(repo_path, base_branch, old=base, new=merge_commit, reason=f"review: merge {branch}")
            return MergeResult("merge", base_branch, base, merge_commit, tip, fork, merge_commit)
        except _BaseMoved:
            continue
    raise GitOpsError(f"{base_branch} kept moving while merging {branch}; try again")


def _merge_commit(
    repo_path: Path,
    *,
    base: str,
    tip: str,
    branch: str,
    base_branch: str,
    message: str,
    author: tuple[str, str],
    scratch_dir: Path,
) -> str:
    with _Scratch(repo_path, base, scratch_dir) as scratch:
        _apply(
            scratch,
            ["merge", "--no-ff", "--no-edit", "--no-log", "-m", message, tip],
            author=author,
            what=f"merging {branch} into {base_branch}",
            conflict=lambda files: f"{branch} conflicts with {base_branch} in {len(files)} file(s): {', '.join(files)}",
        )
        return run(scratch, "rev-parse", "HEAD", what="reading the merge commit").strip()


# -- revert --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevertResult:
    base_branch: str
    base_before: str
    revert_commit: str


def revert_merge(
    *,
    repo_path: Path,
    base_branch: str,
    merged: MergeResult | dict,
    message: str,
    author: tuple[str, str],
    scratch_dir: Path,
) -> RevertResult:
    """Undo an earlier ``merge_branch`` with one revert commit on the base branch: the merge commit
    reverted with ``-m 1``, or the fast-forwarded range ``base_before..base_after``.

    ``Conflict`` when later commits on the base changed the same lines (nothing is changed)."""
    repo_path = check_repository(repo_path)
    info = merged if isinstance(merged, dict) else merged.__dict__
    method, before, after = info.get("method"), info.get("base_before", ""), info.get("base_after", "")
    if method not in ("fast-forward", "merge") or not before or not after:
        raise GitOpsError("nothing to revert: the approval merged no commits")
    for sha in (before, after):
        if resolve(repo_path, sha) is None:
            raise GitOpsError(f"commit {sha[:12]} of the approval is no longer in {repo_path}")
    for _attempt in range(MAX_ATTEMPTS):
        head = resolve(repo_path, f"refs/heads/{base_branch}")
        if head is None:
            raise GitOpsError(f"base branch {base_branch!r} not found in {repo_path}")
        if not is_ancestor(repo_path, after, head):
            raise GitOpsError(f"{base_branch} no longer contains the merged commits ({after[:12]}): nothing to revert")
        with _Scratch(repo_path, head, scratch_dir) as scratch:
            argv = (
                ["revert", "--no-commit", "-m", "1", after]
                if method == "merge"
                else ["revert", "--no-commit", f"{before}..{after}"]
            )
            _apply(
                scratch,
                argv,
                author=author,
                what=f"reverting on {base_branch}",
                conflict=lambda files: (
                    f"reverting conflicts with later changes to {base_branch} in {len(files)} "
                    f"file(s): {', '.join(files)}"
                ),
            )
            if _call(scratch, "diff", "--cached", "--quiet").ok:
                raise GitOpsError(f"nothing to revert: {base_branch} no longer holds these changes")
            run(
                scratch,
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                message,
                what="committing the revert",
                timeout_s=MERGE_TIMEOUT_S,
                env=_identity_env(author),
            )
            revert_commit = run(scratch, "rev-parse", "HEAD", what="reading the revert commit").strip()
        try:
            _move_base(repo_path, base_branch, old=head, new=revert_commit, reason="review: revert")
        except _BaseMoved:
            continue
        return RevertResult(base_branch, head, revert_commit)
    raise GitOpsError(f"{base_branch} kept moving while reverting; try again")


def archive_branch(*, repo_path: Path, branch: str, delete_branch: bool) -> str:
    """``refs/archive/<branch>`` at the branch's tip (commits stay reachable); optionally delete the branch."""
    return worktrees.archive_branch(
        repo_path=Path(repo_path), branch=branch, archive_ref=archive_ref_for(branch), delete_branch=delete_branch
    )


def scratch_leftovers(scratch_dir: Path) -> list[Path]:
    """Temporary review worktrees left behind by a process that died mid-merge."""
    root = Path(scratch_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("review-") and p.is_dir() and not os.path.islink(p))
