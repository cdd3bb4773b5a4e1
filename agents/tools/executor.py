"""Carry out one tool call inside a worktree.

Plain values in (the worktree path, the trailers, the policy knobs), a ``ToolResult`` out; no Django,
no database. ``execute`` does not raise for problems the model can cause or fix (bad arguments, a
path outside the worktree, a missing file, an ambiguous edit, nothing to commit, a timeout...): it
returns ``ToolResult(ok=False, output=<a readable error>)``. It raises only for the caller's own
mistakes (malformed trailers, an unknown sandbox mode).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents import gitcli
from agents.permissions import path_denied
from agents.permissions.masks import compute_masks
from agents.runtime import sandbox as sandbox_runtime
from agents.tools.paths import PathEscapeError, display_path, resolve_path
from agents.tools.schemas import HANDOFF_FILE, ToolArgumentError, parse_arguments

DEFAULT_AUTHOR = ("Control Room agent", "agent@controlroom.invalid")
LIST_CAP = 500
READ_CAP_BYTES = 200_000
SEARCH_MAX_RESULTS = 200
SEARCH_LINE_CHARS = 300
SEARCH_TIMEOUT_S = 30
GIT_TIMEOUT_S = 120  # git_commit's ceiling (git runs outside the sandbox, hooks off: agents.gitcli)
_TRAILER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_PYTEST_TOTALS = re.compile(
    r"^[=\s]*((?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|warnings?|deselected|rerun)(?:, )?)+)"
    r"(?: in [\d.]+s)?.*?[=\s]*$"
)


@dataclass
class ToolResult:
    ok: bool
    output: str
    exit_code: int | None = None
    duration_ms: int = 0
    summary: str = ""
    data: dict = field(default_factory=dict)


def _one_line(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _clean_identity(value: str, fallback: str) -> str:
    value = " ".join(str(value).replace("<", "").replace(">", "").split())
    return value or fallback


def agent_env(author: tuple[str, str] | None = None) -> dict[str, str]:
    """The complete environment of an agent's command: nothing inherited from the worker (no
    SECRET_KEY, DATABASE_URL, REDIS_URL, API keys or tokens)."""
    name, email = author or DEFAULT_AUTHOR
    name = _clean_identity(name, DEFAULT_AUTHOR[0])
    email = _clean_identity(email, DEFAULT_AUTHOR[1])
    bindir = os.path.dirname(sys.executable)
    path = ":".join(dict.fromkeys(p for p in (bindir, "/usr/local/bin", "/usr/bin", "/bin") if p))
    return {
        "PATH": path,
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONDONTWRITEBYTECODE": "1",
        # The python on PATH is the control room's own: its pytest plugins (pytest-django set up for the
        # control room, hypothesis, …) are not the repository's, so pytest must not autoload them.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def format_trailers(trailers: dict[str, str]) -> str:
    """``Key: value`` lines, in the given order, as ``git interpret-trailers --parse`` reads them."""
    lines = []
    for key, value in trailers.items():
        if not isinstance(key, str) or not _TRAILER_KEY.match(key):
            raise ValueError(f"trailer key {key!r}: expected letters, digits and dashes, e.g. 'Agent-Session'")
        text = " ".join(str(value).split())
        if not text:
            raise ValueError(f"trailer {key!r} has an empty value")
        lines.append(f"{key}: {text}")
    return "\n".join(lines)


def commit_message(message: str, trailers: dict[str, str]) -> str:
    body = "\n".join(line.rstrip() for line in message.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n"))
    # A line starting with "---" ends the message for `git interpret-trailers` (it reads it as a
    # patch divider), which would hide our trailers: indent such lines.
    body = re.sub(r"(?m)^---", " ---", body)
    block = format_trailers(trailers)
    return f"{body}\n\n{block}\n" if block else f"{body}\n"


# -- individual tools ---------------------------------------------------------------------------


def _list_files(worktree: Path, args: dict) -> ToolResult:
    target = resolve_path(worktree, args["path"])
    shown = display_path(worktree, target)
    if not target.exists():
        return ToolResult(ok=False, output=f"list_files: no such file or directory: {shown}")
    if not target.is_dir():
        return ToolResult(ok=True, output=shown, summary=f"{shown} is a file", data={"count": 1})
    entries: list[str] = []
    more = False
    queue = deque([target])
    root = Path(os.path.realpath(worktree))
    while queue and not more:
        directory = queue.popleft()
        try:
            children = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            entries.append(f"{directory.relative_to(root).as_posix()}/ (unreadable: {exc.strerror})")
            continue
        for entry in children:
            if entry.name.casefold() == ".git":
                continue
            if len(entries) >= LIST_CAP:
                more = True
                break
            relative = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                try:
                    entries.append(f"{relative} -> {os.readlink(entry.path)}")
                except OSError:
                    entries.append(f"{relative} -> ?")
            elif entry.is_dir(follow_symlinks=False):
                entries.append(f"{relative}/")
                queue.append(Path(entry.path))
            else:
                entries.append(relative)
    entries.sort()
    output = "\n".join(entries) if entries else f"({shown} is empty)"
    if more:
        output += f"\n[listing stopped at {LIST_CAP} entries; list a subdirectory to see more]"
    return ToolResult(
        ok=True,
        output=output,
        summary=f"{len(entries)} entries under {shown}" + (" (capped)" if more else ""),
        data={"count": len(entries), "capped": more},
    )


def _open_regular(path: Path, flags: int) -> int:
    """Open without following a symlink and without blocking on a FIFO; refuse non-regular files."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{path.name} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _read_file(worktree: Path, args: dict) -> ToolResult:
    target = resolve_path(worktree, args["path"])
    shown = display_path(worktree, target)
    if target.is_dir():
        return ToolResult(ok=False, output=f"read_file: {shown} is a directory; use list_files")
    if not target.exists():
        return ToolResult(ok=False, output=f"read_file: no such file: {shown}")
    if not target.is_file():
        return ToolResult(ok=False, output=f"read_file: {shown} is not a regular file")
    fd = _open_regular(target, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(READ_CAP_BYTES)
    if b"\x00" in data[:8192]:
        return ToolResult(ok=False, output=f"read_file: {shown} is a binary file ({size:,} bytes)")
    text = data.decode("utf-8", errors="replace")
    truncated = size > READ_CAP_BYTES
    if truncated:
        text += (
            f"\n\n[truncated: showing the first {READ_CAP_BYTES:,} of {size:,} bytes; use search, or run_command "
            "with sed -n 'FROM,TOp' for the rest]"
        )
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    return ToolResult(
        ok=True,
        output=text,
        summary=f"read {shown} ({size:,} bytes{', truncated' if truncated else ''})",
        data={"bytes": size, "lines": lines, "truncated": truncated},
    )


def _search(worktree: Path, args: dict, deny_read: Sequence[str] = ()) -> ToolResult:
    pattern = args["pattern"]
    target = resolve_path(worktree, args.get("path") or ".")
    shown = display_path(worktree, target)
    if not target.exists():
        return ToolResult(ok=False, output=f"search: no such file or directory: {shown}")
    note = ""
    try:
        re.compile(pattern)
        mode = "-P"
    except re.error as exc:
        mode = "-F"
        note = f"(not a valid regular expression: {exc}; searched as plain text)\n"
    root = Path(os.path.realpath(worktree))
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def grep(flag: str) -> tuple[int | None, str, bool, bool]:
        argv = [
            "grep",
            "-r",
            "-n",
            "-I",
            "-H",
            "-Z",
            "-s",
            "-D",
            "skip",
            "--exclude-dir=.git",
            flag,
            "-e",
            pattern,
            "--",
            shown,
        ]
        code, buffer, timed_out, _ = sandbox_runtime.run_argv(
            argv, cwd=root, timeout_s=SEARCH_TIMEOUT_S, output_cap=1_000_000, env=env
        )
        return code, buffer.text(), timed_out, buffer.truncated

    code, text, timed_out, cut = grep(mode)
    if mode == "-P" and code == 2 and "\x00" not in text:
        # PCRE refused the pattern (syntax Python accepts, or its backtracking limit): search literally.
        mode, note = "-F", f"(the regular expression failed: {_one_line(text, 200)}; searched as plain text)\n"
        code, text, timed_out, cut = grep(mode)
    if timed_out and "\x00" not in text:
        return ToolResult(
            ok=False, output=f"search: timed out after {SEARCH_TIMEOUT_S}s; narrow the path or the pattern"
        )
    if code == 2 and "\x00" not in text:
        return ToolResult(ok=False, output=f"search: failed: {_one_line(text, 300)}")
    cut = cut or timed_out
    results = []
    hidden: set[str] = set()
    for raw_line in text.split("\n"):
        if "\x00" not in raw_line:
            continue
        name, _, rest = raw_line.partition("\x00")
        number, _, line = rest.partition(":")
        if not number.isdigit():
            continue
        name = name[2:] if name.startswith("./") else name
        if deny_read and (name in hidden or path_denied(name, deny_read)):
            hidden.add(name)  # the grant denies reading this file: its lines are not shown
            continue
        line = line.strip()
        if len(line) > SEARCH_LINE_CHARS:
            line = line[:SEARCH_LINE_CHARS] + "…"
        results.append(f"{name}:{number}: {line}")
        if len(results) > SEARCH_MAX_RESULTS:
            break
    capped = cut or len(results) > SEARCH_MAX_RESULTS
    results = results[:SEARCH_MAX_RESULTS]
    if hidden:
        note += f"({len(hidden)} file(s) your grant denies reading were left out)\n"
    if not results:
        return ToolResult(
            ok=True, output=f"{note}no matches for {pattern!r} in {shown}", summary="0 matches", data={"matches": 0}
        )
    output = note + "\n".join(results)
    if capped:
        output += f"\n[results capped at {len(results)}; narrow the pattern or the path]"
    return ToolResult(
        ok=True,
        output=output,
        summary=f"{len(results)}{'+' if capped else ''} matches for {_one_line(pattern, 60)!r}",
        data={"matches": len(results), "capped": capped},
    )


def _write_bytes(target: Path, data: bytes) -> None:
    fd = _open_regular(target, os.O_WRONLY | os.O_CREAT)
    with os.fdopen(fd, "wb") as handle:
        handle.truncate(0)
        handle.write(data)


def _write_file(worktree: Path, args: dict) -> ToolResult:
    target = resolve_path(worktree, args["path"])
    shown = display_path(worktree, target)
    if target.is_dir():
        return ToolResult(ok=False, output=f"write_file: {shown} is a directory")
    existed = target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    # The parents were created through a resolved path; check again in case of a race with a
    # symlink planted meanwhile.
    resolve_path(worktree, shown)
    data = args["content"].encode("utf-8")
    _write_bytes(target, data)
    verb = "updated" if existed else "created"
    return ToolResult(
        ok=True,
        output=f"{verb} {shown} ({len(data):,} bytes)",
        summary=f"{verb} {shown}",
        data={"bytes": len(data), "created": not existed},
    )


def _edit_file(worktree: Path, args: dict) -> ToolResult:
    target = resolve_path(worktree, args["path"])
    shown = display_path(worktree, target)
    if not target.is_file():
        return ToolResult(
            ok=False,
            output=f"edit_file: no such file: {shown}"
            if not target.exists()
            else f"edit_file: {shown} is not a regular file",
        )
    fd = _open_regular(target, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ToolResult(ok=False, output=f"edit_file: {shown} is not UTF-8 text; rewrite it with write_file")
    old, new = args["old"], args["new"]
    count = text.count(old)
    if count == 0:
        hint = ""
        if "\r\n" in text and "\r\n" not in old and "\n" in old:
            hint = " (the file uses CRLF line endings)"
        elif " ".join(old.split()) and " ".join(old.split()) in " ".join(text.split()):
            hint = " (it matches if whitespace is ignored: copy the exact indentation and line breaks)"
        return ToolResult(
            ok=False,
            output=f"edit_file: the old text was not found in {shown} (0 occurrences){hint}; "
            "read the file and copy the exact text",
        )
    if count > 1:
        return ToolResult(
            ok=False,
            output=f"edit_file: the old text occurs {count} times in {shown}; it must occur exactly "
            "once: include more surrounding lines to make it unique",
        )
    updated = text.replace(old, new, 1)
    _write_bytes(target, updated.encode("utf-8"))
    line = text[: text.index(old)].count("\n") + 1
    return ToolResult(
        ok=True,
        output=f"edited {shown} at line {line} (-{old.count(chr(10)) + 1} +{new.count(chr(10)) + 1} lines)",
        summary=f"edited {shown}:{line}",
        data={"line": line},
    )


def _command_summary(outcome: sandbox_runtime.CommandOutcome, timeout_s: int) -> str:
    seconds = outcome.duration_ms / 1000
    head = f"timed out after {timeout_s}s" if outcome.timed_out else f"exit {outcome.exit_code} in {seconds:.1f}s"
    detail = ""
    lines = [line for line in outcome.output.splitlines() if line.strip()]
    for line in reversed(lines[-40:]):
        match = _PYTEST_TOTALS.match(line)
        if match:
            detail = match.group(1).rstrip(", ")
            break
    if not detail and lines and not outcome.timed_out:
        detail = _one_line(lines[-1], 100)
    return f"{head}: {detail}" if detail else head


def _run_command(
    worktree: Path,
    args: dict,
    *,
    allow_network: bool,
    timeout_s: int,
    output_cap: int,
    mode: str,
    author: tuple[str, str] | None,
    hide_paths: Sequence[Path],
    deny: Sequence[str] | None = None,
    lift: Sequence[str] = (),
) -> ToolResult:
    requested = args.get("timeout_s")
    effective = min(requested, timeout_s) if requested else timeout_s
    root = os.path.realpath(worktree)
    env = agent_env(author)
    masks = None if deny is None else compute_masks(deny, root, path=env["PATH"], lift=lift)
    outcome = sandbox_runtime.run_command(
        args["command"],
        cwd=Path(root),
        timeout_s=effective,
        output_cap=output_cap,
        allow_network=allow_network,
        env=env,
        mode=mode,
        hide_paths=hide_paths,
        masks=masks,
    )
    summary = _command_summary(outcome, effective)
    body = outcome.output if outcome.output.strip() else "(no output)"
    if outcome.timed_out:
        footer = f"[timed out after {effective}s: the command and everything it started were killed]"
    else:
        footer = f"[exit {outcome.exit_code} in {outcome.duration_ms / 1000:.1f}s]"
    if outcome.denied:
        refused = ", ".join(f"{program} ({rule})" for program, rule in outcome.denied)
        footer += f"\n[the grant denies running {refused}: the sandbox refused it]"
    output = body.rstrip("\n") + "\n" + footer
    return ToolResult(
        ok=outcome.exit_code == 0 and not outcome.timed_out,
        output=output,
        exit_code=outcome.exit_code,
        summary=summary,
        data={
            "timed_out": outcome.timed_out,
            "sandboxed": outcome.sandboxed,
            "truncated": outcome.truncated,
            "timeout_s": effective,
            "denied_by_sandbox": [{"program": program, "rule": rule} for program, rule in outcome.denied],
        },
    )


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _git_commit(
    worktree: Path,
    args: dict,
    *,
    trailers: dict[str, str],
    author: tuple[str, str] | None,
    timeout_s: int,
    branch: str | None,
) -> ToolResult:
    """Stage everything and commit with plumbing (write-tree, commit-tree, update-ref): no hooks
    (agents.gitcli), no editor, no merge state left in the admin directory can shape the commit, and
    the branch moves only from the commit we built on (compare-and-swap). A failed git step's
    message is for the model."""
    message = commit_message(args["message"], trailers)
    root = Path(os.path.realpath(worktree))
    identity = {key: value for key, value in agent_env(author).items() if key.startswith("GIT_")}
    timeout = max(timeout_s, 10)

    def ok(*argv: str, what: str, env: dict[str, str] | None = None) -> str:
        return gitcli.run(root, *argv, what=what, timeout_s=timeout, env=env).out.strip()

    try:
        # The worktree is agent-writable: make sure its .git still leads to the real repository and
        # not to a configuration the agent made up (which git would obey outside the sandbox).
        git_dir = Path(ok("rev-parse", "--absolute-git-dir", what="not a git worktree"))
        common = Path(ok("rev-parse", "--path-format=absolute", "--git-common-dir", what="not a git worktree"))
        for found in (git_dir, common):
            if _inside(Path(os.path.realpath(found)), root) and Path(os.path.realpath(found)) != root / ".git":
                return ToolResult(
                    ok=False,
                    output="git_commit: refused: the worktree's .git points inside the worktree "
                    "(it was tampered with); ask a human to repair the worktree",
                )
        head_ref = ok("symbolic-ref", "-q", "HEAD", what="HEAD is detached; commits must go on the session's branch")
        if not head_ref.startswith("refs/heads/"):
            return ToolResult(ok=False, output=f"git_commit: refused: HEAD points at {head_ref}, not a branch")
        if branch is not None and head_ref != f"refs/heads/{branch}":
            return ToolResult(
                ok=False,
                output=f"git_commit: refused: the worktree is on {head_ref[len('refs/heads/') :]!r}, "
                f"not the session's branch {branch!r}",
            )
        ok("add", "-A", what="staging failed")
        tree = ok("write-tree", what="could not write the tree")
        parent = gitcli.resolve_commit(root, "HEAD", timeout_s=timeout) or ""
        if parent and ok("rev-parse", f"{parent}^{{tree}}", what="could not read the last commit") == tree:
            return ToolResult(
                ok=False,
                output="git_commit: nothing to commit (no changes since the last commit)",
                summary="nothing to commit",
            )
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", prefix="controlroom-commit-", suffix=".txt") as handle:
            handle.write(message)
            handle.flush()
            parents = ["-p", parent] if parent else []
            sha = ok("commit-tree", tree, *parents, "-F", handle.name, what="commit failed", env=identity)
        subject = message.split("\n", 1)[0]
        ok(
            "update-ref",
            "-m",
            f"commit (agent): {_one_line(subject, 200)}",
            head_ref,
            sha,
            parent,
            what="the branch moved meanwhile; nothing was committed, try again",
        )
        stats = (
            _one_line(ok("show", "--shortstat", "--format=", sha, what="could not describe the commit"))
            or "no file changes"
        )
    except gitcli.GitError as exc:
        return ToolResult(ok=False, output=f"git_commit: {exc}")
    short_branch = head_ref[len("refs/heads/") :]
    return ToolResult(
        ok=True,
        output=f"committed {sha[:12]} on {short_branch}: {subject}\n{stats}",
        summary=f"commit {sha[:12]}: {_one_line(subject, 80)}",
        data={"sha": sha, "branch": short_branch},
    )


def _write_handoff(worktree: Path, args: dict) -> ToolResult:
    handoff = {
        "status": args["status"],
        "next_action": args["next_action"].strip(),
        "do_not": [item.strip() for item in args["do_not"] if item.strip()],
    }
    goal = (args.get("goal") or "").strip()
    if goal:
        handoff["goal"] = goal
    do_not = "\n".join(f"- {' '.join(item.split())}" for item in handoff["do_not"]) or "- (nothing)"
    goal_section = f"## Goal\n\n{goal}\n\n" if goal else ""
    content = (
        f"# Handoff\n\nStatus: {handoff['status']}\n\n{goal_section}## Next action\n\n"
        f"{handoff['next_action'] or '(none)'}\n\n## Do not\n\n{do_not}\n"
    )
    # never through a symlink: HANDOFF.md itself, in the worktree's root, a regular file or nothing yet
    target = Path(os.path.realpath(worktree)) / HANDOFF_FILE
    if target.is_symlink() or (target.exists() and not target.is_file()):
        return ToolResult(ok=False, output=f"write_handoff: {HANDOFF_FILE} is a symlink or not a regular file; refused")
    _write_bytes(target, content.encode("utf-8"))
    return ToolResult(
        ok=True,
        output=f"wrote {HANDOFF_FILE} (status: {handoff['status']})",
        summary=f"handoff: {handoff['status']}: {_one_line(handoff['next_action'], 80)}",
        data={"handoff": handoff},
    )


def _finish(args: dict) -> ToolResult:
    summary = args["summary"].strip()
    return ToolResult(ok=True, output=f"finished: {summary}", summary=_one_line(summary), data={"finish": summary})


# -- entry point --------------------------------------------------------------------------------


def execute(
    name: str,
    args: dict,
    *,
    worktree: Path,
    trailers: dict[str, str],
    allow_network: bool = False,
    timeout_s: int = 120,
    output_cap: int = 64_000,
    sandbox: str = "auto",
    author: tuple[str, str] | None = None,
    hide_paths: Sequence[Path] = (),
    branch: str | None = None,
    deny_read: Sequence[str] = (),
    deny: Sequence[str] | None = None,
    lift: Sequence[str] = (),
) -> ToolResult:
    """Carry out tool ``name`` with (already parsed, re-validated here) ``args`` in ``worktree``.

    ``timeout_s`` is the default and the ceiling of a command's timeout (a model's smaller
    ``timeout_s`` wins); ``trailers`` end every commit message, in order; ``author`` (name, email)
    signs commits and is exported to commands; ``hide_paths`` are hidden from sandboxed commands;
    ``branch``, when given, is the only branch ``git_commit`` will commit on; ``search`` leaves out the
    lines of files matched by the ``deny_read`` rules (the grant's deny list). ``deny`` (the grant's
    deny list; None: no grant, no masks) makes ``run_command``'s sandbox enforce it and the guards
    (:mod:`agents.permissions.masks`); ``lift`` names guard patterns a human approved for this call.
    """
    format_trailers(trailers)  # a caller mistake should fail loudly, before anything changes
    if sandbox not in sandbox_runtime.MODES:
        raise ValueError(f"sandbox: expected one of {', '.join(sandbox_runtime.MODES)}, got {sandbox!r}")
    started = time.monotonic()
    result = _dispatch(
        name,
        args,
        worktree=Path(worktree),
        trailers=trailers,
        allow_network=allow_network,
        timeout_s=timeout_s,
        output_cap=output_cap,
        mode=sandbox,
        author=author,
        hide_paths=hide_paths,
        branch=branch,
        deny_read=deny_read,
        deny=deny,
        lift=lift,
    )
    if not result.duration_ms:
        result.duration_ms = int((time.monotonic() - started) * 1000)
    if not result.summary:
        result.summary = _one_line(result.output)
    return result


def _dispatch(
    name: str,
    args: dict,
    *,
    worktree: Path,
    trailers: dict[str, str],
    allow_network: bool,
    timeout_s: int,
    output_cap: int,
    mode: str,
    author: tuple[str, str] | None,
    hide_paths: Sequence[Path],
    branch: str | None,
    deny_read: Sequence[str] = (),
    deny: Sequence[str] | None = None,
    lift: Sequence[str] = (),
) -> ToolResult:
    try:
        args = parse_arguments(name, args)
        if not worktree.is_dir():
            return ToolResult(ok=False, output=f"{name}: the worktree {worktree} does not exist")
        if name == "list_files":
            return _list_files(worktree, args)
        if name == "read_file":
            return _read_file(worktree, args)
        if name == "search":
            return _search(worktree, args, deny_read)
        if name == "write_file":
            return _write_file(worktree, args)
        if name == "edit_file":
            return _edit_file(worktree, args)
        if name == "run_command":
            return _run_command(
                worktree,
                args,
                allow_network=allow_network,
                timeout_s=timeout_s,
                output_cap=output_cap,
                mode=mode,
                author=author,
                hide_paths=hide_paths,
                deny=deny,
                lift=lift,
            )
        if name == "git_commit":
            return _git_commit(
                worktree, args, trailers=trailers, author=author, timeout_s=min(timeout_s, GIT_TIMEOUT_S), branch=branch
            )
        if name == "write_handoff":
            return _write_handoff(worktree, args)
        if name == "finish":
            return _finish(args)
        return ToolResult(ok=False, output=f"unknown tool {name!r}")
    except ToolArgumentError as exc:
        return ToolResult(ok=False, output=str(exc))
    except PathEscapeError as exc:
        return ToolResult(ok=False, output=f"{name}: refused: {exc}")
    except sandbox_runtime.SandboxError as exc:
        return ToolResult(ok=False, output=f"{name}: {exc}")
    except gitcli.GitError as exc:
        return ToolResult(ok=False, output=f"{name}: git failed: {_one_line(str(exc), 400)}")
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return ToolResult(ok=False, output=f"{name}: {exc.strerror or exc}{where}")
