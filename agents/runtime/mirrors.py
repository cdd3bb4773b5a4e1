"""A worker host's own clone of each central repository (``WORKTREE_SOURCE=clone``).

With ``direct`` (the default: one machine, or a disk shared with the control room) worktrees are
made from the central repository itself. A host with a disk of its own cannot do that: it keeps a
bare clone per repository under ``WORKTREES_DIR/.repos/``, makes its sessions' worktrees from that
clone, and pushes the session branch to the central repository after every commit, so the branch
there is always the hand-over: if the host is lost, another host clones, fetches the branch and
carries on from the last pushed commit (agents/hosts.py reports what was not pushed).

The central repository is reached at ``Repository.remote_url`` (any git URL: ``ssh://…``, a path
on a shared mount, ``file://…``), or at ``Repository.path`` when that is empty.
Every git call goes through agents/gitcli.py (safe configuration, no hooks, timeouts).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from agents import gitcli
from agents.runtime.worktrees import WorktreeError, repository_lock

NETWORK_TIMEOUT_S = 120
LOCK_TIMEOUT_S = 180


def source_url(*, path: str, remote_url: str = "") -> str:
    return remote_url or path


def mirror_dir(*, worktrees_dir: Path, repository_id: int, name: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "repo"
    return Path(worktrees_dir) / ".repos" / f"{repository_id}-{slug}.git"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One clone/fetch of a mirror at a time on this host (threads and processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorktreeError(f"timed out waiting for the clone lock of {path}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _git(cwd: Path, *args: str, what: str) -> gitcli.Result:
    return gitcli.run(cwd, *args, what=what, timeout_s=NETWORK_TIMEOUT_S, error=WorktreeError)


def prepare(*, url: str, mirror: Path, base_branch: str, branch: str) -> bool:
    """Make ``mirror`` a clone of ``url`` holding an up-to-date ``base_branch`` and, if the central
    repository has it, the session ``branch`` (its last pushed state). Returns whether the branch
    came from the central repository (a session moving here) rather than being new."""
    with _locked(mirror):
        if not (mirror / "HEAD").is_file():
            partial = mirror.with_name(mirror.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _git(mirror.parent, "clone", "--bare", "--no-tags", "--quiet", url, str(partial), what=f"cloning {url}")
            partial.rename(mirror)
    # the same lock as `git worktree add/remove` on this clone: a fetch must not see a worktree's
    # HEAD half-made (it checks every worktree's HEAD: "bad object worktrees/<name>/HEAD")
    with repository_lock(mirror):
        _git(
            mirror,
            "fetch",
            "--no-tags",
            "--quiet",
            "origin",
            f"+refs/heads/{base_branch}:refs/heads/{base_branch}",
            what=f"fetching {base_branch!r} from {url}",
        )
        remote = _git(mirror, "ls-remote", "--heads", "origin", f"refs/heads/{branch}", what=f"asking {url}")
        if not remote.out.strip():
            return False
        local = gitcli.resolve_commit(mirror, f"refs/heads/{branch}", error=WorktreeError)
        if local is None:
            _git(
                mirror,
                "fetch",
                "--no-tags",
                "--quiet",
                "origin",
                f"refs/heads/{branch}:refs/heads/{branch}",
                what=f"fetching the session branch {branch!r} from {url}",
            )
        return True


def push(*, mirror: Path, worktree: Path, branch: str) -> str:
    """Push the worktree's HEAD to the session branch of the central repository (never forced: a
    host that was declared lost and came back cannot overwrite what another host pushed since).
    Returns the pushed sha; raises WorktreeError."""
    sha = gitcli.resolve_commit(worktree, "HEAD", error=WorktreeError)
    if sha is None:
        raise WorktreeError(f"{worktree} has no commit to push")
    with repository_lock(mirror):  # not while another session's worktree is half made in this clone
        _git(worktree, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", what=f"pushing {branch!r}")
    return sha
