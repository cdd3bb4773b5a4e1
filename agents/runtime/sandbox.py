"""Run an agent's shell command, inside a bubblewrap sandbox when one is available.

Pure of Django and the database: plain values in, a ``CommandOutcome`` out, so the runtime can call
it from a Celery task and tests can call it directly.

The bwrap sandbox sees the whole system read-only, with:
- the worktree writable, and the worktree's own git admin directory (``<repo>/.git/worktrees/<name>``:
  the index) writable so ``git status`` / ``git diff`` / ``git rm --cached`` work; the shared objects
  and refs stay read-only, so commits happen only through the ``git_commit`` tool, outside the
  sandbox; the worktree's ``.git`` file and its admin ``HEAD``, ``commondir`` and ``gitdir`` stay
  read-only too (the agent cannot switch branches or redirect git to a repository of its making);
- a private ``/tmp`` (tmpfs), minimal ``/dev``, its own ``/proc`` and PID namespace, no capabilities
  (as root, bwrap would otherwise keep them, and a capable root can remount ``/`` read-write);
- no network (its own empty network namespace) unless ``allow_network``; without network ``/run``
  is hidden too, because Unix sockets there (PostgreSQL, Docker, D-Bus) ignore network namespaces;
- only the environment the caller passes (``--clearenv``, then ``--setenv`` each variable);
- the grant's masks (:class:`agents.permissions.masks.Masks`), bound last, over the worktree:
  denied or secret files replaced by an empty read-only file (directories by an empty read-only directory),
  denied and protected paths read-only, and denied programs replaced by a stub that refuses
  (exit 126), says so on stderr and appends the rule to a refusal log only this command sees
  (``CommandOutcome.denied``).

Without a sandbox (mode ``none``, or ``auto`` where bwrap is missing or broken) the same command runs
with ``subprocess``; deciding whether that is acceptable is the caller's policy (see
``sandbox_available``). Either way the command runs in its own process group, which is killed on
timeout and after the command ends, and output is capped (head and tail kept, the cut marked).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.permissions.masks import Masks, ProgramMask

MODES = ("auto", "bwrap", "none")
PROBE_TIMEOUT_S = 10
# After the command exits, how long to keep reading output that its leftover children still write.
DRAIN_AFTER_EXIT_S = 1.0
MIN_OUTPUT_CAP = 256

# A failed probe is retried after this long (a probe can fail transiently on a loaded machine);
# a successful one is kept for the life of the process.
PROBE_RETRY_S = 60.0

_probe_lock = threading.Lock()
_probe_cache: dict[str, tuple[bool, float]] = {}


class SandboxError(RuntimeError):
    """The sandbox was required (mode "bwrap") but cannot run here, or the request is malformed."""


@dataclass
class CommandOutcome:
    exit_code: int | None  # None when timed out; negative when killed by a signal
    output: str  # stdout and stderr interleaved, capped
    timed_out: bool
    duration_ms: int
    sandboxed: bool
    truncated: bool = False
    total_bytes: int = 0  # output bytes before capping
    #: the masked programs the command tried to run: (program, deny rule), in order, once each
    denied: tuple[tuple[str, str], ...] = ()


#: Inside the sandbox: where a stub records a refusal (a file bound from the host per command).
DENIAL_LOG = "/tmp/.controlroom-denied"
#: The stderr line a stub prints (the rule follows the marker).
DENIAL_MARKER = "controlroom-sandbox: denied by grant:"
DENIED_EXIT_CODE = 126

_stub_lock = threading.Lock()
_stub_dir: list[str] = []


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"sandbox mode: expected one of {', '.join(MODES)}, got {mode!r}")


def bwrap_path() -> str | None:
    found = shutil.which("bwrap")
    if found:
        return found
    return "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None


def _probe(bwrap: str) -> bool:
    argv = [
        bwrap,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--",
        "/bin/sh",
        "-c",
        "exit 0",
    ]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=PROBE_TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def sandbox_available(mode: str = "auto") -> bool:
    """Whether commands will run sandboxed in this mode.

    "auto" and "bwrap": bwrap is installed and actually works here (probed once per process and
    cached; a failed probe is retried after PROBE_RETRY_S); "none": False.
    """
    _check_mode(mode)
    if mode == "none":
        return False
    bwrap = bwrap_path()
    if bwrap is None:
        return False
    with _probe_lock:
        cached = _probe_cache.get(bwrap)
        if cached is None or (not cached[0] and time.monotonic() - cached[1] > PROBE_RETRY_S):
            cached = (_probe(bwrap), time.monotonic())
            _probe_cache[bwrap] = cached
        return cached[0]


def _git_dirs(cwd: Path) -> tuple[Path | None, Path | None, Path | None]:
    """(common dir, per-worktree admin dir, in-tree .git dir) of the repository checked out at cwd.

    A linked worktree has a ``.git`` *file* ("gitdir: <repo>/.git/worktrees/<name>"); a main checkout
    has a ``.git`` directory. The ``.git`` file lives in the agent-writable worktree, so the admin
    directory it names is only trusted (and made writable) when it has the shape git gives it,
    ``<common>/worktrees/<name>``, and its own ``gitdir`` file points back at this worktree: a file
    the agent cannot have written outside its worktree.
    """
    dot_git = cwd / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        return None, None, dot_git
    if dot_git.is_symlink() or not dot_git.is_file():
        return None, None, None
    try:
        first = dot_git.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        return None, None, None
    if not first.startswith("gitdir:"):
        return None, None, None
    admin = Path(first[len("gitdir:") :].strip())
    admin = Path(os.path.realpath(admin if admin.is_absolute() else cwd / admin))
    if admin.parent.name != "worktrees" or not admin.is_dir():
        return None, None, None
    try:
        back = Path((admin / "gitdir").read_text(encoding="utf-8", errors="replace").strip())
    except OSError:
        return None, None, None
    if Path(os.path.realpath(back)) != Path(os.path.realpath(dot_git)):
        return None, None, None
    common = admin.parent.parent
    return (common if common.is_dir() else None), admin, None


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def stub_for(mask: ProgramMask) -> str:
    """The host path of the stub that replaces a denied program (written once per process)."""
    body = (
        "#!/bin/sh\n"
        f"echo {_shell_quote(f'{DENIAL_MARKER} {mask.rule} ({mask.program} cannot run in this sandbox)')} >&2\n"
        f"printf '%s\\n' {_shell_quote(mask.rule)} >> {DENIAL_LOG} 2>/dev/null\n"
        f"exit {DENIED_EXIT_CODE}\n"
    )
    return _host_file(hashlib.sha256(body.encode()).hexdigest()[:24], body, 0o755)


def empty_file() -> str:
    """The host path of an empty read-only file, bound over files the grant hides."""
    return _host_file("empty", "", 0o444)


def _host_file(name: str, body: str, mode: int) -> str:
    """A file in this process's private directory of sandbox files (made once, re-made if removed)."""
    with _stub_lock:
        if not _stub_dir or not os.path.isdir(_stub_dir[0]):
            _stub_dir[:] = [tempfile.mkdtemp(prefix="controlroom-stubs-")]
            os.chmod(_stub_dir[0], 0o755)
        path = os.path.join(_stub_dir[0], name)
        if not os.path.isfile(path):
            partial = path + f".{os.getpid()}.tmp"
            with open(partial, "w", encoding="utf-8") as handle:
                handle.write(body)
            os.chmod(partial, mode)
            os.replace(partial, path)
    return path


def mask_argv(masks: Masks, *, denial_log: str | None) -> list[str]:
    """The bwrap arguments that apply the masks (after the worktree is bound)."""
    argv: list[str] = []
    for path in masks.read_only:
        if os.path.lexists(path):
            argv += ["--ro-bind", path, path]
    for path in masks.missing:
        argv += ["--tmpfs", path, "--remount-ro", path]
    for path in masks.hidden:
        if os.path.isdir(path):
            argv += ["--tmpfs", path, "--remount-ro", path]
        elif os.path.lexists(path):
            argv += ["--ro-bind", empty_file(), path]
    for program in masks.programs:
        argv += ["--ro-bind", stub_for(program), program.path]
    if masks.programs and denial_log:
        argv += ["--bind", denial_log, DENIAL_LOG]
    return argv


def bwrap_argv(
    *,
    bwrap: str,
    command: str,
    cwd: Path,
    allow_network: bool,
    env: dict[str, str],
    hide_paths: Sequence[Path] = (),
    masks: Masks | None = None,
    denial_log: str | None = None,
    writable: Sequence[Path] = (),
    read_only: Sequence[Path] = (),
    exec_argv: Sequence[str] | None = None,
) -> list[str]:
    """The bwrap command line (exposed for tests and for the audit trail).

    ``writable``/``read_only``: more existing paths bound writable / read-only over what is already
    there (a supervised agent's home, the git objects it commits to; its pinned settings), applied
    last, in that order. ``exec_argv``: run this program instead of ``/bin/bash -c command``."""
    cwd = Path(cwd).resolve()
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if not allow_network and Path("/run").is_dir():
        argv += ["--tmpfs", "/run"]
    for hidden in hide_paths:
        hidden = Path(hidden)
        if hidden.is_dir():
            argv += ["--tmpfs", str(hidden)]
        elif hidden.exists():
            argv += ["--ro-bind", "/dev/null", str(hidden)]
    # The interpreter the agent's PATH starts with (the control room's own venv) stays visible even
    # when it lives under /tmp or a hidden path (a CI clone in /tmp, say): read-only.
    for prefix in dict.fromkeys(Path(p).resolve() for p in (sys.prefix, sys.base_prefix)):
        if prefix != Path("/") and prefix.is_dir():
            argv += ["--ro-bind", str(prefix), str(prefix)]
    common, admin, in_tree_git = _git_dirs(cwd)
    if common is not None:
        # Re-exposed read-only (it may sit under /tmp or a hidden path); the worktree's own admin
        # directory inside it is then bound writable below.
        argv += ["--ro-bind", str(common), str(common)]
    argv += ["--bind", str(cwd), str(cwd)]
    if admin is not None:
        argv += ["--bind", str(admin), str(admin)]
        # The files that say which repository and which branch this worktree is stay read-only:
        # rewriting them would let the agent point git_commit (run outside the sandbox) at another
        # branch, or at a repository configuration of its own making.
        for pinned in (admin / "HEAD", admin / "commondir", admin / "gitdir"):
            if pinned.is_file():
                argv += ["--ro-bind", str(pinned), str(pinned)]
    dot_git = cwd / ".git"
    if dot_git.is_file() and not dot_git.is_symlink():
        argv += ["--ro-bind", str(dot_git), str(dot_git)]
    if in_tree_git is not None:
        argv += ["--ro-bind", str(in_tree_git), str(in_tree_git)]
    for path in writable:
        argv += ["--bind", str(path), str(path)]
    for path in read_only:
        argv += ["--ro-bind", str(path), str(path)]
    if masks:
        argv += mask_argv(masks, denial_log=denial_log)
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "sandbox"]
    if not allow_network:
        argv += ["--unshare-net"]
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--chdir", str(cwd), "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--", *exec_argv] if exec_argv else ["--", "/bin/bash", "-c", command]
    return argv


def _denials(masks: Masks, denial_log: str | None, buffer: _CappedBuffer) -> tuple[tuple[str, str], ...]:
    """The masked programs the command tried: from the refusal log, and the stubs' stderr lines
    (a program that captured its children's stderr still leaves the log)."""
    return denials(masks, read_denial_log(denial_log) if denial_log else (), buffer.text())


def read_denial_log(denial_log: str, offset: int = 0) -> list[str]:
    """The rules a refusal log names from byte ``offset`` on (at most 64 KiB of it)."""
    with contextlib.suppress(OSError):
        with open(denial_log, "rb") as handle:
            handle.seek(offset)
            return [line.strip() for line in handle.read(65536).decode("utf-8", "replace").splitlines()]
    return []


def denials(masks: Masks, logged: Sequence[str], output: str) -> tuple[tuple[str, str], ...]:
    """(program, rule) for each masked program named by the refusal log's lines ``logged`` or by a
    stub's stderr line in ``output``, in order, once each. Only rules actually masked count, so
    output that imitates a stub names nothing new."""
    by_rule: dict[str, str] = {}
    for mask in masks.programs:
        by_rule.setdefault(mask.rule, mask.program)
    named: list[str] = list(logged)
    for line in output.splitlines():
        if DENIAL_MARKER in line:
            rest = line.split(DENIAL_MARKER, 1)[1].strip()
            named += [rule for rule in by_rule if rest.startswith(rule + " (")]
    return tuple((by_rule[rule], rule) for rule in dict.fromkeys(named) if rule in by_rule)


def _exited(pid: int) -> bool:
    """True once the process has exited, without reaping it (its pid, hence its process group id,
    cannot be reused until we reap it, so killing the group afterwards is safe)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _CappedBuffer:
    """Keeps the first and last bytes of a stream of unknown length."""

    def __init__(self, cap: int) -> None:
        self.head_cap = cap // 2
        self.tail_cap = cap - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + min(len(self.tail), self.tail_cap)

    def text(self) -> str:
        tail = bytes(self.tail[-self.tail_cap :]) if self.tail_cap else b""
        if not self.truncated:
            return (bytes(self.head) + tail).decode("utf-8", errors="replace")
        omitted = self.total - len(self.head) - len(tail)
        marker = f"\n\n[... output truncated: {omitted:,} of {self.total:,} bytes omitted ...]\n\n"
        return bytes(self.head).decode("utf-8", errors="replace") + marker + tail.decode("utf-8", errors="replace")


def run_argv(
    argv: list[str], *, cwd: Path, timeout_s: float, output_cap: int, env: dict[str, str]
) -> tuple[int | None, _CappedBuffer, bool, int]:
    """Run argv in its own process group: (exit code or None, output, timed out, duration ms).

    The whole group is killed on timeout and once the command has ended (no leftover background
    processes). Output is read while the command runs, so a chatty command cannot fill memory.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    buffer = _CappedBuffer(max(output_cap, MIN_OUTPUT_CAP))
    proc = subprocess.Popen(
        argv,
        cwd=str(cwd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    pgid = proc.pid  # start_new_session: the child leads its own group
    assert proc.stdout is not None  # stdout=PIPE
    fd = proc.stdout.fileno()
    timed_out = False
    exited_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = not _exited(proc.pid)
                break
            if exited_at is None and _exited(proc.pid):
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT_S:
                break  # the command is done; a leftover child still holds the pipe open
            ready, _, _ = select.select([fd], [], [], min(deadline - now, 0.2))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    # EOF: every writer is gone. Wait for the exit (the command may have closed its
                    # output early and still run).
                    while not _exited(proc.pid):
                        if time.monotonic() >= deadline:
                            timed_out = True
                            break
                        time.sleep(0.01)
                    break
                buffer.add(chunk)
    finally:
        _kill_group(pgid)
        if timed_out:
            # Whatever the killed group wrote before dying is still worth showing.
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buffer.add(chunk)
        proc.stdout.close()
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
    duration_ms = int((time.monotonic() - started) * 1000)
    return (None if timed_out else code), buffer, timed_out, duration_ms


def run_command(
    command: str,
    *,
    cwd: Path,
    timeout_s: int,
    output_cap: int,
    allow_network: bool,
    env: dict[str, str],
    mode: str = "auto",
    hide_paths: Sequence[Path] = (),
    masks: Masks | None = None,
) -> CommandOutcome:
    """Run ``bash -c command`` with cwd as the working directory.

    mode "auto": sandboxed when bwrap works here, else plain subprocess; "bwrap": sandboxed or
    ``SandboxError``; "none": plain subprocess. ``env`` is the complete environment (nothing is
    inherited). ``hide_paths``: directories replaced by an empty tmpfs (files by /dev/null) inside
    the sandbox, e.g. the data directory with the database and signing key; the worktree and its
    repository are re-exposed on top. ``masks``: the grant's masks (module docstring), applied only
    inside the sandbox; ``CommandOutcome.denied`` lists the masked programs the command tried.
    """
    _check_mode(mode)
    if not isinstance(command, str) or not command.strip():
        raise SandboxError("command: expected a non-empty string")
    if "\x00" in command:
        raise SandboxError("command: contains a NUL byte")
    if timeout_s <= 0:
        raise SandboxError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    cwd = Path(cwd)
    if not cwd.is_dir():
        raise SandboxError(f"working directory {cwd} does not exist")
    sandboxed = mode != "none" and sandbox_available(mode)
    if mode == "bwrap" and not sandboxed:
        raise SandboxError(
            "sandbox mode is 'bwrap' but bubblewrap is missing or does not work on this machine "
            "(is /usr/bin/bwrap installed, and are user namespaces allowed?)"
        )
    denial_log: str | None = None
    if sandboxed and masks and masks.programs:
        handle, denial_log = tempfile.mkstemp(prefix="controlroom-denied-")
        os.close(handle)
    try:
        if sandboxed:
            argv = bwrap_argv(
                bwrap=bwrap_path() or "bwrap",
                command=command,
                cwd=cwd,
                allow_network=allow_network,
                env=env,
                hide_paths=hide_paths,
                masks=masks,
                denial_log=denial_log,
            )
        else:
            argv = ["/bin/bash", "-c", command]
        code, buffer, timed_out, duration_ms = run_argv(
            argv, cwd=cwd, timeout_s=timeout_s, output_cap=output_cap, env=dict(env)
        )
        denied = _denials(masks, denial_log, buffer) if sandboxed and masks else ()
    finally:
        if denial_log:
            with contextlib.suppress(OSError):
                os.unlink(denial_log)
        if sandboxed and masks:
            for path in masks.missing:  # the empty mount points bwrap made for missing directories
                with contextlib.suppress(OSError):
                    os.rmdir(path)
    return CommandOutcome(
        denied=denied,
        exit_code=code,
        output=buffer.text(),
        timed_out=timed_out,
        duration_ms=duration_ms,
        sandboxed=sandboxed,
        truncated=buffer.truncated,
        total_bytes=buffer.total,
    )
