"""How Control Room runs git: the command line, the environment, the timeout and the error, in one place.

Every git command the control room runs itself (worktrees, the reviews' diffs, merges and reverts,
the ``git_commit`` tool, the session page's diff stat, a fresh iteration's git log) goes through
:func:`run`. Pure of Django and the database. What each call gets:

* **Safe configuration** (:data:`SAFE_CONFIG`, given as ``-c`` options, which beat every
  configuration file, the repository's included): no hooks (``core.hooksPath=/dev/null``; worktrees
  are agent-writable and these commands run outside the sandbox, so a hook would be agent-written
  code running unconfined), no fsmonitor (a configured program), no signing (no gpg prompt or
  agent), no automatic gc or maintenance (they race other sessions' ref updates in the shared
  repository).
* **Environment** (:func:`environment`): the worker's, minus every ``GIT_*`` variable (a stray
  ``GIT_DIR``, ``GIT_INDEX_FILE``, ``GIT_CONFIG_PARAMETERS`` or ``GIT_AUTHOR_NAME`` must not redirect
  or shape what we do), plus ``LC_ALL=C``/``LANG=C`` (messages we can read), ``GIT_TERMINAL_PROMPT=0``
  (never wait for a password), ``GIT_OPTIONAL_LOCKS=0`` (reading a worktree never takes its index
  lock from under an agent) and ``GIT_CEILING_DIRECTORIES`` set so that git works in the repository
  or worktree it is given and never in one it finds above it. What a call needs beyond that (an
  identity, a reflog message) the caller passes as ``env``.
* **A timeout**: when it expires, the process group git leads (git, its helpers, an alias's shell)
  is killed and the call raises.
* **One error type**, :class:`GitError`: ``"<what>: <the end of git's stderr> (git <subcommand>:
  exit status N)"``, carrying the command, the exit status and stderr. A module raises its own
  subclass by passing ``error=`` (``WorktreeError``, ``GitOpsError``), so its callers keep catching
  what they always caught.

Why ``subprocess`` and not GitPython's ``Repo.git``/``Git.execute``: GitPython can only add to the
inherited environment, never remove from it (so an inherited ``GIT_DIR`` would win); it kills a
timed-out git by listing its children with ``ps`` rather than killing its process group; it
decodes and strips output on its own terms; and long-lived ``Repo`` objects leak file handles and
``cat-file`` processes in worker processes. All we need is a command line.

Natural additions (not yet needed): pushing a session branch to a remote and cloning or fetching
a mirror are :func:`run` calls with a network-sized timeout and the transport's credentials passed
in ``env`` (``GIT_SSH_COMMAND``, ``GIT_ASKPASS``: given, never inherited); installing a hook file
for external agents' commits writes a file below ``git rev-parse --git-path hooks`` and changes
nothing here: these calls never run hooks, whoever installed them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 60
KILL_GRACE_S = 5  # after killing a timed-out git, how long to wait for its pipes to close
DETAIL_CHARS = 500  # how much of git's stderr an error message keeps (its end)

#: Given to every git command as ``-c`` options.
SAFE_CONFIG: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "gc.auto=0",
    "commit.gpgSign=false",
    "maintenance.auto=false",
)
#: Set for every git command, after the worker's environment has lost its ``GIT_*`` variables.
FIXED_ENV: dict[str, str] = {
    "LC_ALL": "C",
    "LANG": "C",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
}


class GitError(RuntimeError):
    """git failed, timed out or could not start. ``str()`` is a message a human can act on."""

    def __init__(
        self, message: str, *, command: str = "", status: int | None = None, stderr: str = "", timed_out: bool = False
    ) -> None:
        super().__init__(message)
        self.command = command  # the git command line (without SAFE_CONFIG), shell-quoted
        self.status = status  # git's exit status; None when it did not exit by itself
        self.stderr = stderr
        self.timed_out = timed_out


@dataclass(frozen=True)
class Result:
    """What one git command did. ``stdout`` and ``stderr`` are git's bytes, untouched."""

    command: str
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def detail(self, limit: int = DETAIL_CHARS) -> str:
        """The end of git's message (stderr, else stdout) on one line; "" when git said nothing."""
        text = " ".join((self.err or self.out).split())
        return "…" + text[-(limit - 1) :] if len(text) > limit else text

    def error(self, what: str, error: type[GitError] = GitError) -> GitError:
        """The exception for this failed command: ``"<what>: <detail> (git <sub>: exit status N)"``."""
        sub, detail = _subcommand(self.command), self.detail()
        message = (
            f"{what}: {detail} ({sub}: exit status {self.status})"
            if detail
            else f"{what}: {sub} failed with exit status {self.status}"
        )
        return error(message, command=self.command, status=self.status, stderr=self.err)


def environment(env: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> dict[str, str]:
    """The environment of one git command: the worker's without ``GIT_*``, :data:`FIXED_ENV`, and ``env``.

    With ``cwd``, ``GIT_CEILING_DIRECTORIES`` is its parent: git looks for the repository in ``cwd``
    itself and does not search the directories above it."""
    result = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    result.update(FIXED_ENV)
    if cwd is not None:
        result["GIT_CEILING_DIRECTORIES"] = os.path.dirname(os.path.realpath(cwd))
    result.update(env or {})
    return result


def run(
    cwd: Path | str,
    *args: str,
    what: str = "",
    check: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    config: Iterable[str] = (),
    input: bytes | None = None,
    error: type[GitError] = GitError,
) -> Result:
    """Run ``git <args>`` in ``cwd``; its :class:`Result`.

    ``what`` says what the call is for, in error messages. With ``check`` (the default) a non-zero
    exit raises ``error("<what>: <git's message> ...")``; with ``check=False`` the caller reads the
    status. Either way ``error`` (a :class:`GitError`) is raised when git cannot run in ``cwd`` or
    does not finish within ``timeout_s`` (it is then killed, with everything it started).
    ``config`` adds ``-c`` options after :data:`SAFE_CONFIG`; ``env`` adds to :func:`environment`;
    ``input`` is git's stdin (otherwise it reads nothing)."""
    cwd = Path(cwd)
    command = shlex.join(["git", *args])
    what = what or f"running {_subcommand(command)} in {cwd}"
    if not cwd.is_dir():
        raise error(f"{what}: {cwd} does not exist", command=command)
    argv = ["git"]
    for option in (*SAFE_CONFIG, *config):
        argv += ["-c", option]
    argv += args
    try:
        status, stdout, stderr, timed_out = _spawn(argv, cwd, environment(env, cwd=cwd), input, timeout_s)
    except FileNotFoundError as exc:
        raise error(f"{what}: git is not installed or not on PATH ({exc})", command=command) from exc
    except OSError as exc:
        raise error(f"{what}: git could not start in {cwd}: {exc}", command=command) from exc
    result = Result(command, status, stdout, stderr)
    if timed_out:
        raise error(
            f"{what}: {_subcommand(command)} did not finish within {timeout_s:g}s and was killed",
            command=command,
            stderr=result.err,
            timed_out=True,
        )
    if check and not result.ok:
        raise result.error(what, error)
    return result


def common_dir(
    path: Path | str, *, timeout_s: float = DEFAULT_TIMEOUT_S, error: type[GitError] = GitError
) -> Path | None:
    """The git common directory (resolved) of the repository or worktree at exactly ``path``: the
    ``.git`` of a checkout, the repository itself when bare. None when ``path`` is not one (a
    directory inside a repository is not); ``error`` when git cannot tell (and says why)."""
    result = run(
        path,
        "rev-parse",
        "--path-format=absolute",
        "--git-common-dir",
        what=f"opening {path}",
        check=False,
        timeout_s=timeout_s,
        error=error,
    )
    if not result.ok:
        if "not a git repository" in result.err:
            return None
        raise result.error(f"opening {path}", error)
    return Path(os.path.realpath(result.out.strip()))


def resolve_commit(
    cwd: Path | str, rev: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, error: type[GitError] = GitError
) -> str | None:
    """The sha of the commit ``rev`` names in the repository at ``cwd``; None when there is none (or
    ``rev`` is empty or reads as an option)."""
    if not rev or rev.startswith("-"):
        return None
    result = run(
        cwd,
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        f"{rev}^{{commit}}",
        what=f"resolving {rev}",
        check=False,
        timeout_s=timeout_s,
        error=error,
    )
    sha = result.out.strip()
    return sha if result.ok and sha else None


# -- the process ---------------------------------------------------------------------------------


def _subcommand(command: str) -> str:
    """``git worktree`` for ``git -c x=y worktree add ...``: how an error message names the command."""
    words = shlex.split(command)[1:]
    i = 0
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] in ("-c", "-C") else 1
    return f"git {words[i]}" if i < len(words) else "git"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _spawn(
    argv: list[str], cwd: Path, env: dict[str, str], input: bytes | None, timeout_s: float
) -> tuple[int, bytes, bytes, bool]:
    """Run argv in a new session: (exit status, stdout, stderr, timed out). On a timeout, or
    anything interrupting the wait (a Celery time limit, a signal), the whole process group is
    killed before git is reaped (so the group id cannot have been reused)."""
    proc = subprocess.Popen(
        argv,
        cwd=str(cwd),
        env=env,
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:  # something outside the group still holds the pipes
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
            stdout, stderr = b"", b""
        return proc.returncode, stdout or b"", stderr or b"", True
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    return proc.returncode, stdout, stderr, False
