"""Sandbox masks: what a grant's deny list (and the guards) make impossible inside the sandbox.

The evaluator (:mod:`~agents.permissions.evaluation`) reads a command and gives the first,
explaining verdict; it can never know every spelling of a read, a write or a program. The sandbox
is the guarantee, and this module says what it must enforce for one command, from the grant's deny
rules and the worktree as it is when the command starts:

* **hidden**: paths a ``Read(...)`` deny rule or the secret guard (:data:`PROTECTED_READ_PATTERNS`)
  covers. Inside the sandbox a file is replaced by an empty read-only file (``/dev/null``), a
  directory by an empty read-only directory: every program reads nothing.
* **read_only**: paths an ``Edit(...)`` deny rule or the protected-path list
  (:data:`PROTECTED_PATTERNS`) covers, bound read-only over themselves: every write fails with
  EROFS. A protected or denied directory (``.github/**``) is bound as a whole; one that does not
  exist yet is made an empty read-only directory for the command (``missing``: the sandbox removes
  it again afterwards), so it cannot be created either.
* **programs**: ``Bash(prog)`` / ``Bash(prog *)`` deny rules (no argument pattern): every file
  ``prog`` resolves to on the sandbox's PATH is replaced by a stub that refuses (exit 126) and
  records the refusal; so are multi-call binaries (busybox) that would run it as an applet.

Pure apart from reading the worktree and PATH (``os.walk``, ``os.path.realpath``); it changes
nothing. ``lift`` names guard patterns a human approved for exactly this action: their masks are
not applied (deny rules always are).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.permissions.rules import (
    MAX_WALK_ENTRIES,
    PROTECTED_PATTERNS,
    PROTECTED_READ_PATTERNS,
    Resource,
    _glob_regex,
    _literal_prefix,
    _matches_below,
    _parse_rule_list,
    _protected,
)

#: Programs the sandbox itself needs (it runs ``/bin/bash -c``; stubs are ``/bin/sh`` scripts).
UNMASKABLE_PROGRAMS = frozenset({"bash", "sh", "dash"})
#: Extra directories searched for a denied program besides the command's PATH.
EXTRA_PROGRAM_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
#: Multi-call binaries: ``busybox touch`` runs touch without the touch file.
MULTI_CALL = ("busybox", "toybox", "coreutils")

_PROGRAM_RE = re.compile(r"\A[A-Za-z0-9_.+-][A-Za-z0-9_.+/-]*\Z")


@dataclass(frozen=True)
class ProgramMask:
    path: str  # the resolved file replaced by the stub
    program: str  # the name the rule denies
    rule: str  # the deny rule, as written


@dataclass(frozen=True)
class Masks:
    hidden: tuple[str, ...] = ()  # absolute paths: files -> empty file, directories -> empty directory
    read_only: tuple[str, ...] = ()  # absolute paths bound read-only over themselves
    missing: tuple[str, ...] = ()  # absolute directories that do not exist: made empty and read-only
    programs: tuple[ProgramMask, ...] = ()
    incomplete: bool = False  # the worktree had more entries than were walked

    def __bool__(self) -> bool:
        return bool(self.hidden or self.read_only or self.missing or self.programs)


def program_rules(deny: Iterable[str]) -> list[tuple[str, str]]:
    """(program, rule text) for each Bash deny rule that names a program without an argument pattern."""
    found = []
    for rule in _parse_rule_list("deny", list(deny)):
        if rule.kind != "Bash":
            continue
        spec = rule.specifier.strip()
        if spec.endswith(" *"):
            spec = spec[:-2].strip()
        if " " in spec or "*" in spec or "?" in spec or not _PROGRAM_RE.match(spec):
            continue
        found.append((os.path.basename(spec), rule.text))
    return found


def path_patterns(deny: Iterable[str], *, lift: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(read patterns to hide, edit patterns to make read-only): the deny rules plus the guards."""
    rules = _parse_rule_list("deny", list(deny))
    read = [r.specifier for r in rules if r.kind == "Read"]
    edit = [r.specifier for r in rules if r.kind == "Edit"]
    read += [p for p in PROTECTED_READ_PATTERNS if p not in lift]
    edit += [p for p in PROTECTED_PATTERNS if p not in lift]
    return list(dict.fromkeys(read)), list(dict.fromkeys(edit))


def compute_masks(deny: Iterable[str], worktree: str, *, path: str = "", lift: Sequence[str] = ()) -> Masks:
    """The masks for one command in ``worktree`` (see the module docstring)."""
    root = os.path.realpath(worktree)
    read, edit = path_patterns(deny, lift=lift)
    hidden, read_only, incomplete = _walk(root, read, edit)
    missing = _missing_directories(root, edit, read_only + hidden)
    programs = _program_masks(program_rules(deny), path)
    return Masks(
        hidden=tuple(hidden),
        read_only=tuple(read_only),
        missing=tuple(missing),
        programs=tuple(programs),
        incomplete=incomplete,
    )


def _walk(root: str, read: list[str], edit: list[str]) -> tuple[list[str], list[str], bool]:
    read_res = [_glob_regex(p, True) for p in read]
    edit_res = [_glob_regex(p, True) for p in edit]
    prefixes = [_literal_prefix(p).lower() for p in read + edit]
    hidden: list[str] = []
    read_only: list[str] = []
    seen = 0
    incomplete = False

    def reachable(rel_dir: str) -> bool:
        a = rel_dir.lower() + "/"
        return any(a.startswith(b) or b.startswith(a) for b in prefixes)

    def inside(absolute: str) -> str | None:
        real = os.path.realpath(absolute)
        return real if real.startswith(root + os.sep) else None

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        keep = []
        for name in sorted(dirnames) + sorted(filenames):
            if rel_dir == "." and name == ".git":
                continue  # the sandbox pins the worktree's git files itself
            seen += 1
            if seen > MAX_WALK_ENTRIES:
                incomplete = True
                break
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            absolute = os.path.join(dirpath, name)
            is_dir = name in dirnames
            if any(r.fullmatch(rel) for r in read_res):
                real = inside(absolute)
                if real:
                    hidden.append(real)
                continue  # nothing below a hidden directory is visible anyway
            if any(r.fullmatch(rel) for r in edit_res):
                real = inside(absolute)
                if real:
                    read_only.append(real)
            if is_dir and not os.path.islink(absolute) and reachable(rel):
                keep.append(name)
        dirnames[:] = keep
        if incomplete:
            break
    read_only = list(dict.fromkeys(read_only))
    # a file inside a read-only directory is read-only already
    tops = set(read_only)
    read_only = [p for p in read_only if not any(parent in tops for parent in _parents(p, root))]
    return list(dict.fromkeys(hidden)), read_only, incomplete


def _parents(path: str, root: str) -> list[str]:
    out = []
    parent = os.path.dirname(path)
    while parent.startswith(root + os.sep):
        out.append(parent)
        parent = os.path.dirname(parent)
    return out


def _missing_directories(root: str, edit: list[str], covered: list[str]) -> list[str]:
    """Literal directory patterns (``.github/**``) whose directory does not exist but whose parent does."""
    found = []
    for pattern in edit:
        if not pattern.endswith("/**"):
            continue
        directory = pattern[:-3]
        if not directory or any(c in directory for c in "*?[") or directory == ".git":
            continue
        absolute = os.path.join(root, directory)
        if os.path.lexists(absolute) or not os.path.isdir(os.path.dirname(absolute)):
            continue
        parent = os.path.realpath(os.path.dirname(absolute))
        if parent != root and not parent.startswith(root + os.sep):
            continue
        if any(parent == c or parent.startswith(c + os.sep) for c in covered):
            continue
        found.append(os.path.join(parent, os.path.basename(absolute)))
    return list(dict.fromkeys(found))


def _program_masks(rules: list[tuple[str, str]], path: str) -> list[ProgramMask]:
    if not rules:
        return []
    directories = [d for d in path.split(":") if d.startswith("/")] + list(EXTRA_PROGRAM_DIRS)
    directories = list(dict.fromkeys(directories))
    keep_files = {os.path.realpath(p) for p in ("/bin/sh", "/bin/bash")}
    masks: dict[str, ProgramMask] = {}

    def add(real: str, program: str, rule: str) -> None:
        if real not in keep_files and real not in masks:
            masks[real] = ProgramMask(real, program, rule)

    for program, rule in rules:
        if program in UNMASKABLE_PROGRAMS:
            continue
        for directory in directories:
            candidate = os.path.join(directory, program)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                add(os.path.realpath(candidate), program, rule)
        for multi in MULTI_CALL:
            for directory in directories:
                candidate = os.path.join(directory, multi)
                if os.path.isfile(candidate) and program in _applets(os.path.realpath(candidate)):
                    add(os.path.realpath(candidate), program, rule)
    return list(masks.values())


@functools.lru_cache(maxsize=16)
def _applets(binary: str) -> frozenset[str]:
    """The applets a multi-call binary provides (every name, when it cannot say: fail closed)."""
    for argv in ([binary, "--list"], [binary]):
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=5, check=False, env={"PATH": "/usr/bin:/bin"}
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        names = frozenset(done.stdout.split())
        if done.returncode == 0 and names:
            return names
    return _EVERYTHING


class _Everything(frozenset):
    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()


def lifted_guards(resources: Iterable[Resource], recursive: Iterable[Resource] = (), *, root: str) -> tuple[str, ...]:
    """The guard patterns an action's resources touch: a human who approved exactly this action
    approved those, so their masks are lifted for it (deny rules' masks never are)."""
    found = [p for p in (_protected(r) for r in resources) if p]
    for resource in recursive:
        patterns = PROTECTED_PATTERNS if resource.kind == "Edit" else PROTECTED_READ_PATTERNS
        found += [p for p in patterns if _matches_below(p, resource.value, root, fold_case=True)]
    return tuple(dict.fromkeys(found))
