"""One git branch and worktree per agent session (git through ``agents.gitcli``: every call has a
timeout, none runs hooks).

Pure of Django and the database. Many workers create and remove worktrees of the same repository
at once (a hundred sessions, several processes): ``git worktree add/remove/prune`` are serialized per
repository with an fcntl lock on ``<git common dir>/controlroom-worktree.lock``, so git's own lock
files (``index.lock``, ``packed-refs.lock``, the worktrees directory) never make one of them fail.
Reusing an existing, healthy worktree (every agent step) takes no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from agents import gitcli

GIT_TIMEOUT_S = 60
LOCK_TIMEOUT_S = 180
LOCK_FILE = "controlroom-worktree.lock"
SLUG_MAX = 40


class WorktreeError(gitcli.GitError):
    """A repository, branch or worktree problem, with a message a human can act on."""


def branch_name(session_id: int, title: str) -> str:
    """``agents/<id>-<slug>``: slug is lowercase ASCII letters, digits and dashes, at most 40 chars."""
    if isinstance(session_id, bool) or not isinstance(session_id, int) or session_id <= 0:
        raise ValueError(f"session_id: expected a positive integer, got {session_id!r}")
    ascii_title = unicodedata.normalize("NFKD", title or "").encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    slug = slug[:SLUG_MAX].rstrip("-") or "task"
    return f"agents/{session_id}-{slug}"


# -- git plumbing --------------------------------------------------------------------------------


def _git(cwd: Path, *argv: str) -> gitcli.Result:
    return gitcli.run(cwd, *argv, check=False, timeout_s=GIT_TIMEOUT_S, error=WorktreeError)


def _ok(cwd: Path, *argv: str, what: str) -> str:
    return gitcli.run(cwd, *argv, what=what, timeout_s=GIT_TIMEOUT_S, error=WorktreeError).out


def _open_repo(repo_path: Path) -> Path:
    """The repository's git common directory (``.git`` of a checkout, or the bare repository)."""
    repo_path = Path(repo_path)
    if not repo_path.exists():
        raise WorktreeError(f"repository {repo_path} does not exist")
    common = gitcli.common_dir(repo_path, timeout_s=GIT_TIMEOUT_S, error=WorktreeError) if repo_path.is_dir() else None
    if common is None:
        raise WorktreeError(f"{repo_path} is not a git repository")
    return common


def _check_branch_name(repo_path: Path, branch: str, *, label: str) -> None:
    if not isinstance(branch, str) or not branch.strip():
        raise WorktreeError(f"{label}: a branch name is required")
    if not _git(repo_path, "check-ref-format", "--branch", branch).ok:
        raise WorktreeError(f"{label}: {branch!r} is not a valid branch name")


def _resolve_commit(repo_path: Path, rev: str) -> str | None:
    return gitcli.resolve_commit(repo_path, rev, timeout_s=GIT_TIMEOUT_S, error=WorktreeError)


def _local_branch_exists(repo_path: Path, branch: str) -> bool:
    return _git(repo_path, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}").ok


def _registered_worktrees(repo_path: Path) -> dict[Path, str | None]:
    """Registered worktree path → checked-out branch (None when detached or bare)."""
    out = _ok(repo_path, "worktree", "list", "--porcelain", what=f"listing the worktrees of {repo_path}")
    result: dict[Path, str | None] = {}
    current: Path | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            current = Path(os.path.realpath(line[len("worktree ") :]))
            result[current] = None
        elif line.startswith("branch ") and current is not None:
            ref = line[len("branch ") :]
            result[current] = ref.removeprefix("refs/heads/")
    return result


@contextlib.contextmanager
def repository_lock(common_dir: Path, *, timeout_s: float = LOCK_TIMEOUT_S, shared: bool = False) -> Iterator[None]:
    """Per-repository lock across threads and processes (flock on a fresh descriptor). Exclusive by
    default; ``shared`` holders run at once and exclude only the exclusive ones (a session's first
    ``worktree add`` of a new branch into a new directory is shared: a hundred of them at once touch
    different files, while prune, remove, relink, fetch and push must see no half-made worktree)."""
    lock_path = Path(common_dir) / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorktreeError(
                        f"timed out after {timeout_s:g}s waiting for the worktree lock {lock_path}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _head_branch(worktree_path: Path) -> str | None:
    result = _git(worktree_path, "symbolic-ref", "--short", "-q", "HEAD")
    return result.out.strip() if result.ok else None


def _base_of(repo_path: Path, base_branch: str, branch: str) -> str:
    base = _resolve_commit(repo_path, base_branch)
    if base is None:
        raise WorktreeError(f"base branch {base_branch!r} not found in repository {repo_path}")
    out = _ok(
        repo_path,
        "merge-base",
        base,
        f"refs/heads/{branch}",
        what=f"branch {branch!r} shares no history with base branch {base_branch!r}",
    )
    return out.strip()


def _common_dir_fast(repo_path: Path) -> Path | None:
    """The git common directory read from the file system (no git process): ``<repo>/.git`` of a
    plain checkout, or the repository itself when it is bare. None when unsure (then ask git)."""
    dot_git = repo_path / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        candidate = dot_git
    elif (repo_path / "HEAD").is_file() and (repo_path / "objects").is_dir() and (repo_path / "refs").is_dir():
        candidate = repo_path
    else:
        return None
    if (candidate / "commondir").exists():
        return None  # a linked worktree given as the repository: let git answer
    return Path(os.path.realpath(candidate))


def _read_first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline().strip()
    except OSError:
        return None


def _gitdir_of(worktree_path: Path, *, allow_symlink: bool = False) -> Path | None:
    """The admin directory a worktree's ``.git`` file names ("gitdir: …", resolved), or None when
    ``.git`` is not such a file (missing, a directory, unreadable, a symlink unless allowed)."""
    dot_git = worktree_path / ".git"
    if (dot_git.is_symlink() and not allow_symlink) or not dot_git.is_file():
        return None
    first = _read_first_line(dot_git)
    if not first or not first.startswith("gitdir:"):
        return None
    target = Path(first[len("gitdir:") :].strip())
    return Path(os.path.realpath(target if target.is_absolute() else worktree_path / target))


def _healthy_fast(worktree_path: Path, common_dir: Path, branch: str) -> bool:
    """``_healthy`` from the files git itself reads (``.git``, the admin dir's ``commondir``, ``gitdir``
    and ``HEAD``), without starting git: the check of every agent step. False means "not sure", and
    the caller falls back to asking git."""
    dot_git = worktree_path / ".git"
    admin = _gitdir_of(worktree_path)
    if admin is None or admin.parent != common_dir / "worktrees":
        return False
    back, common, head = (_read_first_line(admin / name) for name in ("gitdir", "commondir", "HEAD"))
    if not back or not common or not head:
        return False
    common_path = Path(common)
    if Path(os.path.realpath(common_path if common_path.is_absolute() else admin / common_path)) != common_dir:
        return False
    if Path(os.path.realpath(back)) != Path(os.path.realpath(dot_git)):
        return False
    return head == f"ref: refs/heads/{branch}"


def _healthy(worktree_path: Path, common_dir: Path, branch: str) -> bool:
    """The worktree exists, belongs to this repository and has the branch checked out."""
    dot_git = worktree_path / ".git"
    if not dot_git.is_file():
        return False
    result = _git(worktree_path, "rev-parse", "--git-common-dir")
    if not result.ok:
        return False
    found = Path(result.out.strip())
    if not found.is_absolute():
        found = worktree_path / found
    return found.resolve() == common_dir and _head_branch(worktree_path) == branch


# -- public API ----------------------------------------------------------------------------------


def ensure_worktree(
    *, repo_path: Path, base_branch: str, branch: str, worktree_path: Path, known_base: str | None = None
) -> str:
    """Make ``worktree_path`` a worktree of ``repo_path`` with ``branch`` checked out; return the base
    commit (where ``branch`` forked from ``base_branch``).

    Idempotent: an existing worktree is reused, an existing branch is checked out (not recreated
    from the base), a new branch starts at the tip of ``base_branch``.

    ``known_base``: the base commit the caller recorded when it first made the worktree. With it, a
    healthy worktree is recognised from its files alone and ``known_base`` is returned — no git
    process, which is what every agent step after the first does. Anything unusual takes the full
    path below.
    """
    repo_path = Path(repo_path)
    worktree_path = Path(os.path.abspath(worktree_path))
    if known_base:
        fast_common = _common_dir_fast(repo_path)
        if fast_common is not None and _healthy_fast(worktree_path, fast_common, branch):
            return known_base
    common_dir = _open_repo(repo_path)
    if _healthy(worktree_path, common_dir, branch):
        return _base_of(repo_path, base_branch, branch)
    _check_branch_name(repo_path, branch, label="branch")
    base_commit = _resolve_commit(repo_path, base_branch)
    if base_commit is None:
        raise WorktreeError(f"base branch {base_branch!r} not found in repository {repo_path}")
    worktree_path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(worktree_path):
        # The common case, a session's first step: a new branch into a new directory, under the shared
        # lock, so a hundred sessions starting at once make their worktrees side by side. The branch
        # starts at the resolved commit (which is then its base: no merge-base to ask, no upstream
        # tracking written to the shared config). Anything unusual (the branch exists, git refuses)
        # falls through to the exclusive path below.
        with repository_lock(common_dir, shared=True):
            if not _local_branch_exists(repo_path, branch) and (
                _git(repo_path, "worktree", "add", "-b", branch, str(worktree_path), base_commit).ok
            ):
                return base_commit
    with repository_lock(common_dir):
        if _healthy(worktree_path, common_dir, branch):  # another worker made it meanwhile
            return _base_of(repo_path, base_branch, branch)
        _ok(repo_path, "worktree", "prune", what="pruning stale worktrees")
        registered = _registered_worktrees(repo_path)
        real = Path(os.path.realpath(worktree_path))
        if real in registered:
            checked_out = registered[real]
            if checked_out == branch:
                # Registered with the right branch, but its .git file no longer leads back to this
                # repository (edited or restored from elsewhere): point it back at its admin dir.
                if _relink(common_dir, real) and _healthy(worktree_path, common_dir, branch):
                    return _base_of(repo_path, base_branch, branch)
                raise WorktreeError(
                    f"{worktree_path} is registered for {branch!r} but git cannot repair it; "
                    "remove it (remove_worktree) and start it again"
                )
            raise WorktreeError(
                f"{worktree_path} is already a worktree of {repo_path} with "
                f"{('branch ' + repr(checked_out)) if checked_out else 'a detached HEAD'} checked out, not {branch!r}"
            )
        if _leftover_of(worktree_path, common_dir):
            raise WorktreeError(
                f"{worktree_path} is the remains of a worktree of {repo_path} that git no longer knows; remove it "
                "(remove_worktree) to recreate it from the branch (its uncommitted changes are lost)"
            )
        if worktree_path.exists() and (not worktree_path.is_dir() or any(worktree_path.iterdir())):
            raise WorktreeError(f"{worktree_path} exists and is not a worktree of {repo_path}; move it away first")
        holder = next((path for path, name in registered.items() if name == branch), None)
        if holder is not None:
            raise WorktreeError(f"branch {branch!r} is already checked out in another worktree: {holder}")
        if _local_branch_exists(repo_path, branch):
            _ok(
                repo_path,
                "worktree",
                "add",
                str(worktree_path),
                branch,
                what=f"checking out branch {branch!r} into {worktree_path}",
            )
        else:
            _ok(
                repo_path,
                "worktree",
                "add",
                "-b",
                branch,
                str(worktree_path),
                base_branch,
                what=f"creating branch {branch!r} from {base_branch!r} in {worktree_path}",
            )
    return _base_of(repo_path, base_branch, branch)


def remove_worktree(*, repo_path: Path, worktree_path: Path) -> bool:
    """Force-remove the worktree (uncommitted changes are lost, the branch and its commits stay) and
    prune git's records. True if something was removed.

    A directory at ``worktree_path`` that is not (or no longer) a worktree of this repository is
    left alone with a ``WorktreeError``, except an empty directory or the remains of a worktree of
    this repository whose registration was already pruned.
    """
    repo_path = Path(repo_path)
    worktree_path = Path(os.path.abspath(worktree_path))
    common_dir = _open_repo(repo_path)
    real = Path(os.path.realpath(worktree_path))
    toplevel = Path(os.path.realpath(common_dir.parent if common_dir.name == ".git" else common_dir))
    if real in (toplevel, common_dir) or real in toplevel.parents or common_dir in real.parents:
        raise WorktreeError(f"refusing to remove {worktree_path}: it is (or contains) the repository itself")
    removed = False
    with repository_lock(common_dir):
        registered = _registered_worktrees(repo_path)
        if real in registered:
            _ok(
                repo_path,
                "worktree",
                "remove",
                "--force",
                "--force",
                str(real),
                what=f"removing worktree {worktree_path}",
            )
            removed = True
        if worktree_path.exists() or worktree_path.is_symlink():
            if worktree_path.is_dir() and not worktree_path.is_symlink() and not any(worktree_path.iterdir()):
                worktree_path.rmdir()
                removed = True
            elif _leftover_of(worktree_path, common_dir):
                shutil.rmtree(worktree_path)
                removed = True
            else:
                raise WorktreeError(f"{worktree_path} is not a worktree of {repo_path}; not removing it")
        _ok(repo_path, "worktree", "prune", what="pruning stale worktrees")
    return removed


def _relink(common_dir: Path, worktree_real: Path) -> bool:
    """Rewrite a registered worktree's ``.git`` file to point at its admin directory (what
    ``git worktree repair`` does, which gives up when the file names a missing directory)."""
    target = worktree_real / ".git"
    for admin in sorted((common_dir / "worktrees").glob("*/gitdir")):
        try:
            back = Path(admin.read_text(encoding="utf-8").strip())
        except OSError:
            continue
        if Path(os.path.realpath(back)) == target:
            if target.is_symlink() or target.is_dir():
                return False
            target.write_text(f"gitdir: {admin.parent}\n", encoding="utf-8")
            return True
    return False


def _leftover_of(worktree_path: Path, common_dir: Path) -> bool:
    """A directory whose .git file points into this repository's worktrees/ (a pruned worktree)."""
    if worktree_path.is_symlink():
        return False
    target = _gitdir_of(worktree_path, allow_symlink=True)
    return target is not None and (common_dir / "worktrees") in target.parents


def archive_branch(*, repo_path: Path, branch: str, archive_ref: str, delete_branch: bool = False) -> str:
    """Point ``archive_ref`` (e.g. ``refs/archive/agents/12-x``) at the tip of ``branch`` so its
    commits stay reachable (and survive gc) whatever happens to the branch; return that sha.

    With ``delete_branch`` the branch is then deleted (it must not be checked out in a worktree).
    """
    repo_path = Path(repo_path)
    common_dir = _open_repo(repo_path)
    if not isinstance(archive_ref, str) or not archive_ref.startswith("refs/") or archive_ref.startswith("refs/heads/"):
        raise WorktreeError(
            f"archive ref {archive_ref!r}: expected a full ref outside refs/heads/, e.g. refs/archive/agents/12-x"
        )
    if not _git(repo_path, "check-ref-format", archive_ref).ok:
        raise WorktreeError(f"archive ref {archive_ref!r} is not a valid ref name")
    sha = _resolve_commit(repo_path, f"refs/heads/{branch}")
    if sha is None:
        raise WorktreeError(f"branch {branch!r} not found in repository {repo_path}")
    _ok(repo_path, "update-ref", "-m", f"archive {branch}", archive_ref, sha, what=f"writing {archive_ref}")
    if delete_branch:
        with repository_lock(common_dir):
            _ok(repo_path, "update-ref", "-d", f"refs/heads/{branch}", sha, what=f"deleting branch {branch!r}")
    return sha


def disk_usage(path: Path) -> int:
    """Bytes (apparent size) of the files under ``path``, symlinks not followed, hard links counted
    once; 0 when it does not exist."""
    root = Path(path)
    try:
        first = root.lstat()
    except FileNotFoundError:
        return 0
    if not root.is_dir() or root.is_symlink():
        return first.st_size
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked: it no longer takes space
        except PermissionError as exc:
            raise WorktreeError(f"cannot measure {directory}: {exc.strerror}") from exc
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walked
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
                continue
            key = (info.st_dev, info.st_ino)
            if info.st_nlink > 1:
                if key in seen:
                    continue
                seen.add(key)
            total += info.st_size
    return total
