"""Canonicalisation: one tool call becomes the resources it touches, plus a deterministic text
and its hash (what a human's "allow once" approves).

Paths are resolved against the worktree following symlinks (:class:`_Paths`: a path that leaves
it is recorded as ``outside``); a ``run_command`` is parsed (:mod:`~agents.permissions.shell`),
its unquoted globs expanded against the worktree, its ``cd`` followed, and each simple command's
effects (:mod:`~agents.permissions.effects`) turned into ``Read``/``Edit``/``Bash``/``Git``/``Net``
resources. The only outside world it looks at is the worktree's file system, read-only.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import posixpath
import re
import shlex
from dataclasses import dataclass

from agents.permissions.effects import _classify, _Effects
from agents.permissions.rules import Resource
from agents.permissions.shell import _STDIO, _HomePath, _ShellParser, _Word

TOOLS = (
    "list_files",
    "read_file",
    "search",
    "write_file",
    "edit_file",
    "run_command",
    "git_commit",
    "write_handoff",
    "finish",
)
META_TOOLS = frozenset({"write_handoff", "finish"})

MAX_GLOB_MATCHES = 500  # a glob expanding to more files is UNKNOWN
MAX_DIRECTORIES = 8  # distinct working directories tracked across `cd`


@dataclass(frozen=True)
class CanonicalAction:
    tool: str
    resources: tuple[Resource, ...]
    unknown: str | None  # why the command cannot be analysed, or None
    outside: str | None  # which path leaves the worktree, or None
    text: str  # deterministic description; equal texts mean the same action
    hash: str  # sha256 hex of text
    #: Read/Edit resources that are directories touched with everything below them (rm -r, grep -r,
    #: cp -r ...): deny and ask rules and protected paths are also checked against what lies below.
    recursive: tuple[Resource, ...] = ()
    #: argv of each program the evaluator does not model (wrappers it cannot see through, scripts):
    #: a command word among their arguments that a deny rule names makes the call ask.
    unmodelled: tuple[tuple[str, ...], ...] = ()


_SPECIAL_READ = frozenset({"/dev/null", "/dev/stdin", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/tty"})
_SPECIAL_WRITE = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"})


@dataclass(frozen=True)
class _Resolved:
    values: tuple[str, ...]  # worktree-relative POSIX paths (real path first, then the lexical one)
    outside: str | None


class _Paths:
    """Resolves paths against the worktree (following symlinks) and keeps them inside it."""

    def __init__(self, worktree: str) -> None:
        if not isinstance(worktree, str) or not worktree:
            raise ValueError("the worktree must be a non-empty path")
        if not os.path.isabs(worktree):
            raise ValueError(f"the worktree must be an absolute path, got {worktree!r}")
        self.root = os.path.realpath(worktree)
        self._prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep

    def relative(self, absolute: str) -> str | None:
        if absolute == self.root:
            return "."
        if absolute.startswith(self._prefix):
            return absolute[len(self._prefix) :].replace(os.sep, "/")
        return None

    def absolute(self, path: str, cwd: str = ".") -> str:
        base = self.root if cwd == "." else os.path.join(self.root, cwd)
        return os.path.join(base, path) if path else base

    def resolve(self, path: str, cwd: str = ".") -> _Resolved:
        if not isinstance(path, str):
            raise TypeError(f"a path must be a string, not {type(path).__name__}")
        if "\x00" in path:
            raise ValueError("a path contains a NUL byte")
        if isinstance(path, _HomePath):
            return _Resolved((), f"{path} (in a home directory) is outside the worktree")
        joined = self.absolute(path, cwd)
        real = os.path.realpath(joined)
        real_rel = self.relative(real)
        if real_rel is None:
            return _Resolved((), f"{path} resolves to {real}, outside the worktree")
        lexical_rel = self.relative(os.path.normpath(joined))
        if lexical_rel is not None and lexical_rel != real_rel:
            return _Resolved((real_rel, lexical_rel), None)
        return _Resolved((real_rel,), None)

    def exists_inside(self, path: str, cwd: str) -> bool:
        if isinstance(path, _HomePath) or "\x00" in path:
            return False
        joined = self.absolute(path, cwd)
        return os.path.lexists(joined) and self.relative(os.path.realpath(joined)) is not None

    def isdir(self, path: str, cwd: str) -> bool:
        if isinstance(path, _HomePath) or "\x00" in path:
            return False
        return os.path.isdir(self.absolute(path, cwd))


class _Fs:
    """File-system questions for one working directory (relative to the worktree)."""

    def __init__(self, paths: _Paths, cwd: str) -> None:
        self.paths, self.cwd = paths, cwd

    def exists(self, path: str) -> bool:
        return self.paths.exists_inside(path, self.cwd)

    def isdir(self, path: str) -> bool:
        return self.paths.isdir(path, self.cwd)


class _Collector:
    def __init__(self, paths: _Paths) -> None:
        self.paths = paths
        self.resources: dict[Resource, None] = {}
        self.recursive: dict[Resource, None] = {}
        self.unknown: list[str] = []
        self.outside: list[str] = []
        self.unmodelled: dict[tuple[str, ...], None] = {}

    def add(self, kind: str, value: str) -> None:
        self.resources.setdefault(Resource(kind, value), None)

    def unk(self, reason: str) -> None:
        if reason not in self.unknown:
            self.unknown.append(reason)

    def path(self, kind: str, path: str, cwd: str = ".", *, recursive: bool = False) -> list[str]:
        """Add Read/Edit resources for a path; a path leaving the worktree is recorded as outside."""
        if (
            path == _STDIO
            or path in (_SPECIAL_WRITE if kind == "Edit" else _SPECIAL_READ)
            or re.fullmatch(r"/dev/fd/\d+|/proc/self/fd/\d+", path)
        ):
            return []
        resolved = self.paths.resolve(path, cwd)
        if resolved.outside:
            if resolved.outside not in self.outside:
                self.outside.append(resolved.outside)
            return []
        for value in resolved.values:
            self.add(kind, value)
            if recursive:
                self.recursive.setdefault(Resource(kind, value), None)
        return list(resolved.values)


def _expand(words: list[_Word], paths: _Paths, cwd: str, collector: _Collector) -> list[str]:
    """The argv the shell would run: unquoted globs expanded against the worktree, ~ marked."""
    argv: list[str] = []
    for word in words:
        if word.home:
            argv.append(_HomePath(word.text))
            continue
        if word.pattern is None or word.pattern.startswith("/"):
            argv.append(word.text)
            continue
        matches = sorted(_glob.glob(word.pattern, root_dir=paths.absolute("", cwd)))
        if len(matches) > MAX_GLOB_MATCHES:
            collector.unk(f"the glob {word.text!r} matches more than {MAX_GLOB_MATCHES} files")
        argv.extend(matches or [word.text])
    return argv


def _analyse_command(command: str, paths: _Paths) -> tuple[list[list[str]], _Collector]:
    parser = _ShellParser()
    parser.parse(command)
    collector = _Collector(paths)
    for reason in parser.unknown:
        collector.unk(reason)
    cwds = ["."]
    for cmd in parser.commands:
        command_cwds = cwds
        for chdir in cmd.chdirs:
            moved = []
            for cwd in command_cwds:
                chdir_target = _HomePath(chdir.text) if chdir.home else chdir.text
                moved.extend(collector.path("Read", chdir_target, cwd)[:1])
            command_cwds = moved
        literal = [w.text for w in cmd.words]
        new_cwds: list[str] = []
        is_cd, certain = False, True
        for cwd in command_cwds:
            fs = _Fs(paths, cwd)
            argv = _expand(cmd.words, paths, cwd, collector) if cmd.words else []
            for op, target in cmd.redirects:
                if op == "<<<":
                    continue
                targets = _expand([target], paths, cwd, collector)
                if len(targets) != 1:
                    collector.unk(f"an ambiguous redirection target {target.text!r}")
                kinds = {"<": ("Read",), "<>": ("Read", "Edit")}.get(op, ("Edit",))
                for kind in kinds:
                    for value in targets:
                        collector.path(kind, value, cwd)
            for word in cmd.extra_reads:
                collector.path("Read", _HomePath(word.text) if word.home else word.text, cwd)
            for word in cmd.extra_edits:
                collector.path("Edit", _HomePath(word.text) if word.home else word.text, cwd)
            if not argv:
                continue
            collector.add("Bash", " ".join(literal))
            collector.add("Bash", " ".join(argv))
            effects = _Effects()
            _classify(argv, fs, effects, xargs=cmd.xargs)
            for alias in effects.aliases:
                collector.add("Bash", " ".join(alias))
            for unmodelled in effects.unmodelled:
                collector.unmodelled.setdefault(tuple(unmodelled), None)
            for reason in effects.unknown:
                collector.unk(reason)
            for path in effects.reads:
                collector.path("Read", path, cwd)
            for path in effects.edits:
                collector.path("Edit", path, cwd)
            for path in effects.rreads:
                collector.path("Read", path, cwd, recursive=True)
            for path in effects.redits:
                collector.path("Edit", path, cwd, recursive=True)
            for host in effects.hosts:
                collector.add("Net", host)
            for operation in effects.git:
                collector.add("Git", operation)
            if posixpath.basename(argv[0]) == "cd":
                is_cd = True
                targets = [a for a in argv[1:] if a != "--"]
                if not targets or targets[0] == "-":
                    collector.unk("cd without a visible target")
                    certain = False
                else:
                    new_cwds.extend(collector.path("Read", targets[0], cwd)[:1])
                    certain = certain and paths.isdir(targets[0], cwd)
        if is_cd:
            # a cd into an existing directory in this shell surely moves it; otherwise we cannot
            # tell whether later commands run here or there, so paths are resolved against both
            if certain and not cmd.isolated and new_cwds:
                cwds = list(dict.fromkeys(new_cwds))
            else:
                cwds = list(dict.fromkeys(cwds + new_cwds))
        if len(cwds) > MAX_DIRECTORIES:
            collector.unk("too many directory changes to follow")
            cwds = cwds[:MAX_DIRECTORIES]
    if collector.unknown:
        # keep the raw command as a resource too, so Bash deny patterns see it and modes deny it
        collector.add("Bash", command.strip())
    commands = [[w.text for w in cmd.words] for cmd in parser.commands if cmd.words]
    return commands, collector


_SAFE_TEXT = re.compile(r"\A[A-Za-z0-9._/@+=,:~ -]*\Z")


def _show(value: str) -> str:
    """Plain when unambiguous, JSON-quoted otherwise (JSON strings start with a quote, plain ones never)."""
    return value if value and _SAFE_TEXT.match(value) else json.dumps(value, ensure_ascii=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _require_str(args: dict, key: str, *, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise TypeError(f"argument {key!r} must be a string, got {type(value).__name__}")
    return value


def canonicalize(tool: str, args: dict, worktree: str) -> CanonicalAction:
    """Describe a tool call as resources plus a deterministic text and its sha256 ``hash``.

    Raises on anything malformed (unknown tool, wrong argument types, relative worktree);
    :func:`evaluate` turns that into a deny.
    """
    if not isinstance(tool, str) or tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}")
    if not isinstance(args, dict):
        raise TypeError(f"tool arguments must be a dict, got {type(args).__name__}")
    paths = _Paths(worktree)
    collector = _Collector(paths)
    unknown: str | None = None

    def file_target(kind: str, key: str, default: str | None = None, *, also_read: bool = False) -> str:
        raw = _require_str(args, key, default=default)
        values = collector.path(kind, raw or ".")
        if also_read:
            collector.path("Read", raw or ".")
        if collector.outside:
            return f"{_show(raw)} (outside the worktree: {_show(os.path.realpath(paths.absolute(raw)))})"
        shown = _show(values[0])
        return shown if len(values) == 1 else f"{shown} (via {_show(values[1])})"

    if tool in ("list_files", "read_file"):
        text = f"{tool}: {file_target('Read', 'path', '.' if tool == 'list_files' else None)}"
    elif tool == "search":
        pattern = _require_str(args, "pattern")
        text = f"search: {json.dumps(pattern, ensure_ascii=False)} in {file_target('Read', 'path', '.')}"
    elif tool == "write_file":
        content = _require_str(args, "content")
        data = content.encode("utf-8", "surrogatepass")
        text = (
            f"write_file: {file_target('Edit', 'path')} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})"
        )
    elif tool == "edit_file":
        old, new = _require_str(args, "old"), _require_str(args, "new")
        target = file_target("Edit", "path", also_read=True)
        text = f"edit_file: {target} (replace sha256 {_sha(old)} with sha256 {_sha(new)})"
    elif tool == "run_command":
        command = _require_str(args, "command")
        if not command.strip():
            raise ValueError("run_command needs a non-empty command")
        commands, collector = _analyse_command(command, paths)
        unknown = "; ".join(collector.unknown) or None
        shown = " ; ".join(shlex.join(argv) for argv in commands) or "(no command)"
        marker = f" [cannot be analysed: {unknown}]" if unknown else ""
        text = f"run_command: {shown}{marker}\ncommand: {json.dumps(command, ensure_ascii=False)}"
    elif tool == "git_commit":
        message = _require_str(args, "message")
        collector.add("Git", "commit")
        text = f"git_commit: {json.dumps(message, ensure_ascii=False)}"
    else:  # write_handoff, finish
        collector.add("Meta", tool)
        text = f"{tool}: {json.dumps(args, ensure_ascii=False, sort_keys=True, default=repr)}"
    outside = "; ".join(collector.outside) or None
    return CanonicalAction(
        tool=tool,
        resources=tuple(collector.resources),
        unknown=unknown,
        outside=outside,
        text=text,
        hash=_sha(text),
        recursive=tuple(collector.recursive),
        unmodelled=tuple(collector.unmodelled),
    )
