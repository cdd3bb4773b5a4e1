"""The permission evaluator: may this one agent tool call run under this delegated grant?

This module is pure. It reads no database, opens no socket and changes nothing: the caller
hands in the tool call and an :class:`EvalContext` (the grant, kill switches, budget state,
the human approvals that apply) and gets a :class:`Decision` back. The only outside world it
looks at is the file system of the worktree, read-only, to resolve symlinks
(``os.path.realpath``), to expand shell globs the way the shell would and to know which
arguments name existing files.

It fails closed: :func:`evaluate` never raises. Anything unexpected inside becomes a ``deny``
with ``reason_type="error"``; anything it cannot see through (a shell construct it does not
model, inline interpreter code) becomes at best an ``ask``.

Evaluation order (:func:`evaluate`); the first step that decides wins:

1. **Canonicalise** the call (:func:`canonicalize`) into resources such as ``Read(src/a.py)``,
   ``Edit(src/a.py)``, ``Bash(git push)``, ``Git(commit)``, ``Net(pypi.org)``, ``Meta``.
   Paths are resolved against the worktree following symlinks; shell commands are parsed into
   simple commands, wrappers (``nice``, ``env``, ``sh -c`` ...) are unwrapped, and the files and
   hosts the known commands touch become resources of their own. Errors -> deny ``error``.
2. **Global stops**: no grant -> deny ``revoked``; fleet stopped, pod paused or session stopped
   -> deny ``guard``; grant revoked -> deny ``revoked``; outside the grant window -> deny
   ``expired``; delegator no longer active -> deny ``revoked``. These also stop ``finish``.
3. **Outside the worktree** (absolute paths, ``..``, symlinks leading out) -> deny ``guard``.
   **Deny rules**: if any resource matches any deny rule -> deny ``rule``. Nothing overrides
   this, not even a human's allow-once.
4. **Budget** exhausted -> deny ``budget`` for everything but ``finish`` and ``write_handoff``.
5. **Human approval**: the action's hash is among ``approved_action_hashes`` -> allow ``human``.
6. **Ask rules** matching any resource -> ask ``rule``.
7. **Mode and allow rules**, per resource: an allow rule covers it, else the mode's default.
   A resource the mode denies -> deny ``mode`` (``plan`` is read only). Then the guards, which
   ask even where rules or the mode would allow: a command that cannot be analysed, an edit of a
   protected path (:data:`PROTECTED_PATTERNS`) or a read of ``.env*``, and network access that
   no ``Net(...)`` allow rule covers -> ask ``guard``. Then any resource the mode asks about ->
   ask ``mode``. Otherwise allow: ``rule`` when an allow rule was needed, else ``mode``.
   ``finish`` and ``write_handoff`` (``Meta``) are allowed.

Mode defaults: ``plan`` allows reads and denies everything else; ``ask`` allows reads and asks
for everything else; ``edits`` allows reads and edits and asks for commands, commits and
network; ``autonomous`` allows everything (network still needs a ``Net`` allow rule). Without a
sandbox (``sandbox_available=False``) commands are at most ``ask`` by default, in every mode.

Rule syntax (``Tool(specifier)``): ``Read(glob)``, ``Edit(glob)``, ``Bash(command pattern)``,
``Git(commit)`` or ``Git(*)``, ``Net(host)`` / ``Net(*.example.com)`` / ``Net(*)``. Globs match
worktree-relative POSIX paths: ``*`` and ``?`` stay within one directory, ``**`` crosses
directories, ``**/`` matches zero or more directories and a trailing ``/**`` also matches the
directory itself. Bash patterns match the command line (argv joined by single spaces): ``*``
matches anything and a trailing `` *`` also matches no arguments at all.

Where this is stricter than a plain reading of the rules, deliberately (fail closed):

* In ``plan`` mode a resource the mode denies is denied even if a guard would have asked: a human
  is not woken up for something plan mode forbids anyway. Explicit ask rules still ask.
* ``edit_file`` is also a ``Read`` (whether ``old`` matched tells the agent what the file holds);
  ``mv``, ``cp`` and ``ln`` sources are reads; ``git commit`` typed in a shell is ``Git(commit)``.
* UNKNOWN also covers parameter expansion anywhere (``git $X``), brace expansion, background
  jobs (``&``), ``xargs``/``find -exec`` feeding files to a command that reads, writes or talks to
  the network, ``git -c``, ``sed`` scripts with ``e``/``w``/``r``, ``awk`` programs calling
  ``system``/``getline``/pipes/redirections, ``tar -x``, ``patch``, ``git apply`` and the like.
* Commands that act on whole trees (``rm -r``, ``cp -r``, ``mv``, ``chmod -R``, ``grep -r``, ``rg``,
  ``find -delete``, ``tar c``, ``rsync``, ``git clean``...) are listed in
  :attr:`CanonicalAction.recursive`; deny and ask rules and protected paths are also checked
  against what exists below them (``grep -r KEY .`` reads ``.env``).
* Unquoted globs are expanded against the worktree as the shell would (``cat .e*`` reads ``.env``).

Known limits (the sandbox, not this module, is the containment boundary):

* The ``search`` and ``list_files`` tools are checked against their directory, not every file
  below it; the tools themselves should skip paths a deny rule covers (see :func:`path_denied`).
* Bash rules match command names: a different program doing the same thing (``gh``, ``hub``,
  ``git send-pack`` instead of ``git push``) needs its own rule. Git commands that restore tracked
  content (``reset --hard``, ``stash``, switching branches) are not checked against Edit rules.
* ``git push origin`` names no host: the remote's URL lives in git's configuration.
* Files are resolved at evaluation time; a symlink swapped afterwards is the executor's problem
  (open with ``O_NOFOLLOW`` or re-check).
* Arguments of commands this module does not model are only inspected for existing files inside
  the worktree (so ``python dump.py .env`` is seen as reading ``.env``); what a program does with
  them, or which other files it opens, is not visible.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from urllib.parse import urlsplit

import bashlex

__all__ = [
    "MODES",
    "PROTECTED_PATTERNS",
    "RULE_KINDS",
    "TOOLS",
    "CanonicalAction",
    "Decision",
    "EvalContext",
    "GrantView",
    "Resource",
    "Rule",
    "RuleError",
    "canonicalize",
    "evaluate",
    "exact_rule",
    "parse_rule",
    "path_denied",
    "split_command",
    "validate_rules",
]

MODES = ("plan", "ask", "edits", "autonomous")
RULE_KINDS = ("Read", "Edit", "Bash", "Git", "Net")
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

#: Edits of these paths always need a human, whatever the mode and the allow rules say.
PROTECTED_PATTERNS: tuple[str, ...] = (
    ".git/**",
    ".github/**",
    ".ci/**",
    ".husky/**",
    ".githooks/**",
    ".pre-commit-config.yaml",
    "**/.env*",
)
#: Reads of these paths always need a human (secrets).
PROTECTED_READ_PATTERNS: tuple[str, ...] = ("**/.env*",)

MAX_COMMAND_CHARS = 20_000  # longer commands are not analysed (UNKNOWN)
MAX_NESTING = 4  # sh -c "sh -c '...'" depth
MAX_GLOB_MATCHES = 500  # a glob expanding to more files is UNKNOWN
MAX_DIRECTORIES = 8  # distinct working directories tracked across `cd`
MAX_GENERIC_ARGS = 256  # arguments of unmodelled commands inspected for file names
MAX_WALK_ENTRIES = 50_000  # a recursive operation over more entries counts as touching everything


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantView:
    """The parts of a Grant the evaluator needs (built by the caller from the model)."""

    id: int
    version: int
    mode: str
    allow: tuple[str, ...]
    ask: tuple[str, ...]
    deny: tuple[str, ...]
    not_before: datetime
    expires_at: datetime
    revoked: bool = False


@dataclass(frozen=True)
class EvalContext:
    worktree: str
    now: datetime
    grant: GrantView | None
    fleet_stopped: bool = False
    pod_paused: bool = False
    session_stopped: bool = False
    delegator_active: bool = True
    budget_exhausted: str | None = None
    sandbox_available: bool = True
    approved_action_hashes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Resource:
    kind: str  # Read, Edit, Bash, Git, Net, Meta
    value: str

    def __str__(self) -> str:
        return self.kind if self.kind == "Meta" else f"{self.kind}({self.value})"


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


@dataclass(frozen=True)
class Decision:
    decision: str  # allow | deny | ask
    reason_type: str  # rule | mode | guard | budget | expired | revoked | error | human
    reason: str
    rule: str = ""
    action: CanonicalAction | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


class RuleError(ValueError):
    """A rule that cannot be used. The message names the rule (and, from validate_rules, its list)."""

    def __init__(self, message: str, *, rule: str = "", list_name: str = "") -> None:
        super().__init__(message)
        self.rule = rule
        self.list_name = list_name


@dataclass(frozen=True)
class Rule:
    kind: str  # Read, Edit, Bash, Git or Net
    specifier: str  # normalised: "./src/" becomes "src/**", hosts are lower case
    text: str  # the rule as written (stripped)

    def matches(self, resource: Resource, *, fold_case: bool = False) -> bool:
        """Whether this rule covers the resource. ``fold_case`` ignores case in paths."""
        if resource.kind != self.kind:
            return False
        if self.kind in ("Read", "Edit"):
            return _glob_regex(self.specifier, fold_case).fullmatch(resource.value) is not None
        if self.kind == "Bash":
            return _bash_regex(self.specifier).fullmatch(resource.value) is not None
        if self.kind == "Git":
            return self.specifier in ("*", resource.value)
        if self.kind == "Net":
            return _host_matches(self.specifier, resource.value)
        return False


_RULE_RE = re.compile(r"\A([A-Za-z_][A-Za-z0-9_]*)\((.*)\)\Z", re.DOTALL)
_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST_RE = re.compile(rf"\A(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|[0-9a-f:.]*:[0-9a-f:.]*)\Z")
_NET_RULE_RE = re.compile(rf"\A(?:\*|(?:\*\.)?{_HOST_LABEL}(?:\.{_HOST_LABEL})*|[0-9a-f:.]*:[0-9a-f:.]*)\Z")


def parse_rule(text: str) -> Rule:
    """Parse ``Tool(specifier)``; raise :class:`RuleError` naming the rule when it is unusable."""
    if not isinstance(text, str):
        raise RuleError(f'{text!r}: a rule must be a string such as "Read(src/**)", not {type(text).__name__}')
    stripped = text.strip()
    quoted = f'"{stripped}"'
    if not stripped:
        raise RuleError('"": empty rule; write Tool(specifier), e.g. "Bash(pytest *)"', rule=stripped)
    if "\x00" in stripped or "\n" in stripped or "\r" in stripped:
        raise RuleError(f"{quoted}: a rule must be one line without control characters", rule=stripped)
    match = _RULE_RE.match(stripped)
    if match is None:
        if stripped in RULE_KINDS:
            raise RuleError(f"{quoted}: missing specifier; write {stripped}(*) to cover everything", rule=stripped)
        raise RuleError(f'{quoted}: expected Tool(specifier), e.g. "Bash(pytest *)" or "Read(src/**)"', rule=stripped)
    kind, spec = match.group(1), match.group(2).strip()
    if kind not in RULE_KINDS:
        raise RuleError(f'{quoted}: unknown tool "{kind}" (use Read, Edit, Bash, Git or Net)', rule=stripped)
    if not spec:
        raise RuleError(f"{quoted}: empty specifier; write {kind}(*) to cover everything", rule=stripped)
    return Rule(kind=kind, specifier=_normalise_specifier(kind, spec, quoted, stripped), text=stripped)


def _normalise_specifier(kind: str, spec: str, quoted: str, text: str) -> str:
    if kind in ("Read", "Edit"):
        if spec.startswith(("/", "~")):
            raise RuleError(f'{quoted}: paths are relative to the worktree; drop the leading "{spec[0]}"', rule=text)
        while spec.startswith("./"):
            spec = spec[2:]
        if ".." in spec.split("/"):
            raise RuleError(f'{quoted}: ".." cannot appear in a path rule', rule=text)
        if spec.endswith("/"):
            spec += "**"
        if not spec:
            raise RuleError(f"{quoted}: empty path; write {kind}(**) to cover the whole worktree", rule=text)
        return spec
    if kind == "Bash":
        if spec.endswith(":*"):
            raise RuleError(f'{quoted}: write "{spec[:-2]} *" (a space, not ":*") to match any arguments', rule=text)
        return spec
    if kind == "Git":
        if spec not in ("commit", "*"):
            raise RuleError(f'{quoted}: Git rules take "commit" or "*"', rule=text)
        return spec
    # Net
    spec = spec.lower().rstrip(".")
    if "/" in spec or "@" in spec:
        raise RuleError(f"{quoted}: give a host name such as example.com or *.example.com, not a URL", rule=text)
    if not _NET_RULE_RE.match(spec) or (":" in spec and spec.count(":") < 2):
        raise RuleError(
            f"{quoted}: not a host name; use example.com, *.example.com or * (ports are not part of Net rules)",
            rule=text,
        )
    return spec


def validate_rules(*, allow: Iterable[str], ask: Iterable[str], deny: Iterable[str]) -> None:
    """Raise :class:`RuleError` for the first unusable rule, naming its list and the rule."""
    for list_name, rules in (("deny", deny), ("ask", ask), ("allow", allow)):
        _parse_rule_list(list_name, rules)


def _parse_rule_list(list_name: str, rules: object) -> tuple[Rule, ...]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, (list, tuple)):
        raise RuleError(f"{list_name}: expected a list of rules, got {type(rules).__name__}", list_name=list_name)
    parsed = []
    for text in rules:
        try:
            parsed.append(_parse_rule_cached(text) if isinstance(text, str) else parse_rule(text))
        except RuleError as exc:
            raise RuleError(f"{list_name}: {exc}", rule=exc.rule, list_name=list_name) from None
    return tuple(parsed)


@lru_cache(maxsize=4096)
def _parse_rule_cached(text: str) -> Rule:
    return parse_rule(text)


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str, fold_case: bool) -> re.Pattern[str]:
    """Translate a path glob into a regex over worktree-relative POSIX paths."""
    tail = ""
    if pattern.endswith("/**"):
        pattern, tail = pattern[:-3], "(?:/.*)?"
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := _bracket_end(pattern, i)) > 0:
            out.append(_bracket_regex(pattern[i + 1 : end]))
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + tail, re.DOTALL | (re.IGNORECASE if fold_case else 0))


def _bracket_end(pattern: str, start: int) -> int:
    j = start + 1
    if j < len(pattern) and pattern[j] in "!^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    end = pattern.find("]", j)
    return end


def _bracket_regex(body: str) -> str:
    negate = body[:1] in ("!", "^")
    if negate:
        body = body[1:]
    escaped = "".join("\\" + c if c in "\\^[]" else c for c in body)
    return "(?!/)[" + ("^" if negate else "") + escaped + "]"


@lru_cache(maxsize=4096)
def _bash_regex(pattern: str) -> re.Pattern[str]:
    core, tail = (pattern[:-2], "(?: .*)?") if pattern.endswith(" *") else (pattern, "")
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in core) + tail, re.DOTALL)


def _host_matches(pattern: str, host: str) -> bool:
    host = host.lower().rstrip(".")
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _first_match(
    rules: Iterable[Rule], resources: Iterable[Resource], *, fold_case: bool
) -> tuple[Resource, Rule] | None:
    for resource in resources:
        for rule in rules:
            if rule.matches(resource, fold_case=fold_case):
                return resource, rule
    return None


def _protected(resource: Resource) -> str | None:
    """The protected pattern a resource touches, if any (case-insensitive: fail closed)."""
    patterns = (
        PROTECTED_PATTERNS if resource.kind == "Edit" else PROTECTED_READ_PATTERNS if resource.kind == "Read" else ()
    )
    for pattern in patterns:
        if _glob_regex(pattern, True).fullmatch(resource.value):
            return pattern
    return None


def _literal_prefix(pattern: str) -> str:
    """The directory part of a glob before its first wildcard ("src/" for "src/**/*.py")."""
    cut = min([k for k in (pattern.find("*"), pattern.find("?"), pattern.find("[")) if k >= 0], default=len(pattern))
    literal = pattern[:cut]
    return literal[: literal.rfind("/") + 1]


def _matches_below(pattern: str, directory: str, root: str, *, fold_case: bool) -> bool:
    """Whether a path glob matches something that exists below a worktree directory.

    Used for recursive operations (rm -r, grep -r, cp -r ...). Walks without following symlinks,
    pruning directories the glob cannot reach; more than MAX_WALK_ENTRIES entries count as a match
    (fail closed).
    """
    regex = _glob_regex(pattern, fold_case)
    prefix = _literal_prefix(pattern)

    def reachable(rel_dir: str) -> bool:
        a, b = rel_dir + "/", prefix
        if fold_case:
            a, b = a.lower(), b.lower()
        return a.startswith(b) or b.startswith(a)

    if prefix and directory != "." and not reachable(directory):
        return False
    start = root if directory == "." else os.path.join(root, directory)
    if os.path.islink(start) or not os.path.isdir(start):
        return False
    seen = 0
    for dirpath, dirnames, filenames in os.walk(start):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for name in dirnames + filenames:
            seen += 1
            if seen > MAX_WALK_ENTRIES:
                return True
            if regex.fullmatch(name if rel_dir == "." else f"{rel_dir}/{name}"):
                return True
        if prefix:
            dirnames[:] = [d for d in dirnames if reachable(d if rel_dir == "." else f"{rel_dir}/{d}")]
    return False


def exact_rule(resource: Resource) -> str | None:
    """A rule matching exactly this resource (for "allow always"), or None when none can be written.

    Glob characters in paths are escaped as ``[*]``, ``[?]`` and ``[[]``; a Bash command containing
    ``*`` cannot be matched exactly (``*`` is always a wildcard), nor can anything multi-line.
    """
    value = resource.value
    if resource.kind in ("Read", "Edit"):
        text = f"{resource.kind}({''.join('[' + c + ']' if c in '*?[' else c for c in value)})"
    elif resource.kind == "Bash":
        if "*" in value:
            return None
        text = f"Bash({value})"
    elif resource.kind in ("Git", "Net"):
        text = f"{resource.kind}({value})"
    else:
        return None
    try:
        rule = parse_rule(text)
    except RuleError:
        return None
    return text if rule.matches(resource) else None


def path_denied(path: str, deny: Iterable[str], *, kind: str = "Read") -> str | None:
    """For tools that walk directories: the deny rule covering this worktree-relative path, if any."""
    rules = _parse_rule_list("deny", list(deny))
    found = _first_match(rules, [Resource(kind, path)], fold_case=True)
    return found[1].text if found else None


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


class _HomePath(str):
    """A shell word that started with an unquoted ``~``: the shell puts it in a home directory."""


_SPECIAL_READ = frozenset({"/dev/null", "/dev/stdin", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/tty"})
_SPECIAL_WRITE = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"})
_STDIO = "-"


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


# ---------------------------------------------------------------------------------------------
# Shell: parsing and unwrapping (independent of the worktree)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    text: str  # after quote removal
    pattern: str | None = None  # glob pattern (quoted parts escaped) when the word has unquoted * ? [...]
    home: bool = False  # starts with an unquoted ~


@dataclass
class _Cmd:
    """One simple command after unwrapping, with what the wrappers and redirections added."""

    words: list[_Word]
    redirects: list[tuple[str, _Word]] = field(default_factory=list)
    chdirs: list[_Word] = field(default_factory=list)  # env -C DIR
    extra_reads: list[_Word] = field(default_factory=list)  # xargs -a FILE
    extra_edits: list[_Word] = field(default_factory=list)  # time -o FILE
    xargs: bool = False  # arguments also come from stdin
    isolated: bool = False  # runs in a subshell (its cd does not last)


class _Unparsable(Exception):
    pass


_BRACE_RE = re.compile(r"\{[^{}]*?(?:,|\.\.)[^{}]*?\}")
_ASSIGN_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*=")


def _scan_word(source: str) -> tuple[str, str | None, bool]:
    """Quote-remove a word's source text like bash does.

    Returns the text, a glob pattern when unquoted ``*``, ``?`` or ``[...]`` occur (with the
    quoted parts escaped), and whether an unquoted brace expansion (``{a,b}``, ``{1..3}``) occurs.
    """
    text: list[str] = []
    pattern: list[str] = []
    shape: list[str] = []  # unquoted characters as they are, quoted ones as NUL

    def quoted(chars: str) -> None:
        text.append(chars)
        pattern.append(_glob.escape(chars))
        shape.append("\0" * len(chars))

    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 < n:
                if source[i + 1] != "\n":
                    quoted(source[i + 1])
                i += 2
            else:
                quoted("\\")
                i += 1
        elif c == "'":
            end = source.find("'", i + 1)
            if end < 0:
                raise _Unparsable("unterminated single quote")
            quoted(source[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _Unparsable("unterminated double quote")
                d = source[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and source[i + 1] in '$`"\\\n':
                    if source[i + 1] != "\n":
                        quoted(source[i + 1])
                    i += 2
                    continue
                quoted(d)
                i += 1
        else:
            text.append(c)
            pattern.append(c)
            shape.append(c)
            i += 1
    flat = "".join(shape)
    has_glob = "*" in flat or "?" in flat or re.search(r"\[.*\]", flat) is not None
    return "".join(text), ("".join(pattern) if has_glob else None), _BRACE_RE.search(flat) is not None


_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"})
_OPAQUE_COMMANDS = {
    "exec": "exec replaces the shell",
    "eval": "eval runs a string as shell code",
    "source": "source runs a file as shell code",
    ".": ". runs a file as shell code",
    "sudo": "sudo runs a command as another user",
    "doas": "doas runs a command as another user",
    "su": "su runs a command as another user",
    "trap": "trap runs shell code later",
    "builtin": "builtin bypasses command lookup",
    "alias": "alias redefines commands",
    "enable": "enable redefines builtins",
    "shopt": "shopt changes how the shell expands words",
    "coproc": "coproc runs a background command",
    "watch": "watch runs a string as shell code",
    "script": "script runs a shell",
    "parallel": "parallel builds commands from its input",
    "chroot": "chroot changes the root directory",
    "nsenter": "nsenter enters other namespaces",
    "unshare": "unshare runs a command in new namespaces",
    "pushd": "pushd changes the directory stack",
    "popd": "popd changes the directory stack",
    "patch": "patch edits files named inside the patch",
    "unzip": "unzip writes files named inside the archive",
    "vi": "an interactive editor",
    "vim": "an interactive editor",
    "nvim": "an interactive editor",
    "view": "an interactive editor",
    "nano": "an interactive editor",
    "emacs": "an interactive editor",
    "pico": "an interactive editor",
    "ed": "a line editor reading commands",
    "ex": "a line editor reading commands",
    "tmux": "a terminal multiplexer",
    "screen": "a terminal multiplexer",
    "sftp": "sftp reads transfer commands from its input",
    "ftp": "ftp reads transfer commands from its input",
}


class _ShellParser:
    """Turns a command string into simple commands; records why it may be UNKNOWN."""

    def __init__(self) -> None:
        self.commands: list[_Cmd] = []
        self.unknown: list[str] = []
        self._isolated = 0  # > 0 inside subshells, pipelines, substitutions, nested shells

    def _isolated_node(self, node, source: str, depth: int) -> None:
        self._isolated += 1
        try:
            self._node(node, source, depth)
        finally:
            self._isolated -= 1

    def unk(self, reason: str) -> None:
        if reason not in self.unknown:
            self.unknown.append(reason)

    def parse(self, command: str, depth: int = 0) -> None:
        if depth > MAX_NESTING:
            self.unk("shell commands are nested too deeply")
            return
        if len(command) > MAX_COMMAND_CHARS:
            self.unk(f"the command is longer than {MAX_COMMAND_CHARS} characters")
            return
        if not command.strip():
            return
        try:
            trees = bashlex.parse(command)
        except Exception as exc:  # bashlex raises many types; all mean "cannot see through"
            self.unk(f"the shell syntax could not be analysed ({_short_error(exc)})")
            return
        for tree in trees:
            self._node(tree, command, depth)

    # -- tree walking -------------------------------------------------------------------------

    def _node(self, node, source: str, depth: int) -> None:
        kind = getattr(node, "kind", None)
        if kind == "list":
            for part in node.parts:
                if part.kind == "operator":
                    if part.op == "&":
                        self.unk("a background job (&) outlives the tool call")
                    continue
                self._node(part, source, depth)
        elif kind == "pipeline":
            parts = [part for part in node.parts if part.kind not in ("pipe", "reservedword")]
            for part in parts:
                if len(parts) > 1:
                    self._isolated_node(part, source, depth)  # each element runs in a subshell
                else:
                    self._node(part, source, depth)
        elif kind == "command":
            self._command(node, source, depth)
        elif kind == "compound":
            first = node.list[0] if node.list else None
            opener = getattr(first, "word", "")
            self.unk({"{": "a brace group { ...; }", "(": "a subshell ( ... )"}.get(opener, "a compound command"))
            for part in node.list:
                self._isolated_node(part, source, depth)
            redirects: list[tuple[str, _Word]] = []
            self._redirects(getattr(node, "redirects", []) or [], source, depth, redirects)
            if redirects:
                self.commands.append(_Cmd(words=[], redirects=redirects))
        elif kind in ("if", "for", "while", "until", "function"):
            self.unk({"function": "a function definition"}.get(kind, f"a shell {kind} statement"))
            for part in node.parts:
                self._isolated_node(part, source, depth)
        elif kind == "word":
            self._word(node, source, depth)
        elif kind in ("reservedword", "operator", "pipe"):
            return
        else:
            self.unk(f"an unsupported shell construct ({kind})")
            for part in getattr(node, "parts", []) or []:
                self._node(part, source, depth)

    def _word(self, node, source: str, depth: int, *, in_assignment: bool = False) -> _Word:
        for part in getattr(node, "parts", []) or []:
            if part.kind == "parameter" and not in_assignment:
                self.unk(f"parameter expansion in {node.word!r}")
            elif part.kind == "commandsubstitution":
                self.unk("command substitution")
                self._isolated_node(part.command, source, depth)
            elif part.kind == "processsubstitution":
                self.unk("process substitution")
                self._isolated_node(part.command, source, depth)
        start, end = node.pos
        try:
            text, pattern, brace = _scan_word(source[start:end])
        except _Unparsable as exc:
            self.unk(f"unusual quoting ({exc})")
            return _Word(node.word)
        if text != node.word:
            self.unk(f"unusual quoting in {node.word!r}")
            text, pattern = node.word, None
        if brace:
            self.unk(f"brace expansion in {text!r}")
        return _Word(text, pattern, source[start:end].startswith("~"))

    def _redirects(self, nodes, source: str, depth: int, out: list[tuple[str, _Word]]) -> None:
        for node in nodes:
            op = node.type
            if op in ("<<", "<<-"):
                self.unk("a here-document")
                continue
            target = node.output
            if not hasattr(target, "kind"):
                continue  # 2>&1: a file descriptor, not a file
            word = self._word(target, source, depth)
            if op in (">&", "<&") and (word.text.isdigit() or word.text == "-"):
                continue
            out.append((op, word))

    def _command(self, node, source: str, depth: int) -> None:
        words: list[_Word] = []
        redirects: list[tuple[str, _Word]] = []
        for part in node.parts:
            if part.kind == "assignment":
                word = self._word(part, source, depth, in_assignment=not words)
                if words:
                    words.append(word)
            elif part.kind == "word":
                words.append(self._word(part, source, depth))
            elif part.kind == "redirect":
                self._redirects([part], source, depth, redirects)
            else:
                self.unk(f"an unsupported shell construct ({part.kind})")
        self._unwrap(_Cmd(words=words, redirects=redirects, isolated=self._isolated > 0), depth)

    # -- unwrapping ---------------------------------------------------------------------------

    def _unwrap(self, cmd: _Cmd, depth: int) -> None:
        """Strip wrappers (env, nice, timeout, nohup, stdbuf, command, time, xargs, sh -c)."""
        while cmd.words:
            first = cmd.words[0]
            if first.pattern is not None:
                self.unk(f"a glob in the command name {first.text!r}")
                break
            if not first.text:
                self.unk("an empty command name")
                break
            name = posixpath.basename(first.text)
            args = cmd.words[1:]
            if name in _OPAQUE_COMMANDS:
                self.unk(_OPAQUE_COMMANDS[name])
                break
            if name == "env":
                rest = self._unwrap_env(args, cmd)
            elif name == "nice":
                rest = _skip_options(args, values={"-n", "--adjustment"}, numeric=True)
            elif name == "timeout":
                rest = _skip_options(args, values={"-s", "--signal", "-k", "--kill-after"})
                rest = (rest[1:] or None) if rest else None  # drop the duration
            elif name in ("nohup", "setsid"):
                rest = _skip_options(args, values=set())
            elif name == "stdbuf":
                rest = _skip_options(args, values={"-i", "-o", "-e", "--input", "--output", "--error"})
            elif name == "command":
                if any(w.text in ("-v", "-V") for w in args[:2]):
                    break
                rest = _skip_options(args, values=set())
            elif name == "time":
                rest = self._unwrap_time(args, cmd)
            elif name == "xargs":
                rest = self._unwrap_xargs(args, cmd)
            elif name in _SHELLS:
                if self._unwrap_shell(name, args, cmd, depth):
                    return
                break
            else:
                break
            if rest is None:  # the wrapper itself is the command (e.g. `env` alone prints the environment)
                break
            cmd.words = rest
        self.commands.append(cmd)

    def _unwrap_env(self, args: list[_Word], cmd: _Cmd) -> list[_Word] | None:
        i = 0
        while i < len(args):
            a = args[i].text
            if a == "--":
                i += 1
                break
            if a in ("-", "-i", "--ignore-environment", "-0", "--null", "-v", "--debug"):
                i += 1
            elif a in ("-u", "--unset"):
                i += 2
            elif a.startswith("--unset=") or (a.startswith("-u") and len(a) > 2):
                i += 1
            elif a in ("-C", "--chdir"):
                if i + 1 < len(args):
                    cmd.chdirs.append(args[i + 1])
                i += 2
            elif a.startswith("--chdir="):
                cmd.chdirs.append(_Word(a.split("=", 1)[1]))
                i += 1
            elif a.startswith("-C") and len(a) > 2:
                cmd.chdirs.append(_Word(a[2:]))
                i += 1
            elif a.startswith(("-S", "--split-string")):
                self.unk("env -S splits a string into a command")
                return None
            elif a.startswith("-") and len(a) > 1 and set(a[1:]) <= set("i0v"):
                i += 1
            elif a.startswith("-") and len(a) > 1:
                self.unk(f"an unknown env option {a!r}")
                return None
            else:
                break
        while i < len(args) and _ASSIGN_RE.match(args[i].text):
            i += 1
        return args[i:] or None

    def _unwrap_time(self, args: list[_Word], cmd: _Cmd) -> list[_Word] | None:
        i = 0
        while i < len(args):
            a = args[i].text
            if a == "--":
                i += 1
                break
            if a in ("-o", "--output", "-f", "--format"):
                if a in ("-o", "--output") and i + 1 < len(args):
                    cmd.extra_edits.append(args[i + 1])
                i += 2
            elif a.startswith("--output="):
                cmd.extra_edits.append(_Word(a.split("=", 1)[1]))
                i += 1
            elif a.startswith("-") and len(a) > 1:
                i += 1
            else:
                break
        return args[i:] or None

    def _unwrap_xargs(self, args: list[_Word], cmd: _Cmd) -> list[_Word]:
        short_values, optional = "nLIdEsPa", "ile"
        long_values = {
            "--max-args",
            "--max-lines",
            "--delimiter",
            "--max-chars",
            "--max-procs",
            "--arg-file",
            "--process-slot-var",
        }
        i = 0
        while i < len(args):
            a = args[i].text
            if a == "--":
                i += 1
                break
            if a.startswith("--"):
                name, eq, value = a.partition("=")
                if name == "--arg-file":
                    file_word = _Word(value) if eq else (args[i + 1] if i + 1 < len(args) else None)
                    if file_word is not None:
                        cmd.extra_reads.append(file_word)
                i += 2 if (name in long_values and not eq) else 1
                continue
            if a.startswith("-") and len(a) > 1:
                j, consumed_next = 1, False
                while j < len(a):
                    c = a[j]
                    if c in short_values:
                        value = a[j + 1 :]
                        if not value and i + 1 < len(args):
                            value, consumed_next = args[i + 1].text, True
                        if c == "a" and value:
                            cmd.extra_reads.append(_Word(value))
                        break
                    if c in optional:
                        break
                    j += 1
                i += 2 if consumed_next else 1
                continue
            break
        cmd.xargs = True
        return args[i:] or [_Word("echo")]

    def _unwrap_shell(self, name: str, args: list[_Word], cmd: _Cmd, depth: int) -> bool:
        """`sh -c STRING` is parsed recursively (returns True); `sh script` stays a command."""
        inline, i = False, 0
        while i < len(args):
            a = args[i].text
            if a in ("--", "-"):
                i += 1
                break
            if a in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
                i += 2
            elif a.startswith("--"):
                i += 1
            elif a[:1] in ("-", "+") and len(a) > 1:
                letters = a[1:]
                if "c" in letters:
                    inline = True
                if "s" in letters or "i" in letters:
                    self.unk(f"{name} {a} reads commands from standard input")
                i += 1
            else:
                break
        positional = args[i:]
        if inline:
            if not positional:
                self.unk(f"{name} -c without a command")
                return True
            if cmd.xargs:
                self.unk(f"xargs passes arguments that are not visible to {name} -c")
            if cmd.redirects or cmd.extra_reads or cmd.extra_edits:
                # the wrapper's own redirections apply to everything inside
                self.commands.append(
                    _Cmd(
                        words=[],
                        redirects=cmd.redirects,
                        chdirs=list(cmd.chdirs),
                        extra_reads=cmd.extra_reads,
                        extra_edits=cmd.extra_edits,
                    )
                )
            before = len(self.commands)
            self._isolated += 1  # a new shell: its `cd` does not move this one
            try:
                self.parse(positional[0].text, depth + 1)
            finally:
                self._isolated -= 1
            for sub in self.commands[before:]:
                sub.chdirs = cmd.chdirs + sub.chdirs
            return True
        if not positional:
            self.unk(f"{name} reads commands from standard input")
        return False


def _skip_options(args: list[_Word], *, values: set[str], numeric: bool = False) -> list[_Word] | None:
    """Skip a wrapper's options (those in ``values`` take a separate argument unless attached)."""
    i = 0
    while i < len(args):
        a = args[i].text
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        takes_next = a in values and not (numeric and re.fullmatch(r"--?\d+", a))
        i += 2 if takes_next else 1
    return args[i:] or None


def _short_error(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = message[:120]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def split_command(command: str) -> list[list[str]] | None:
    """The individual simple commands (argv lists, wrappers removed), or None when UNKNOWN.

    ``nice git push && sh -c "ls -l"`` gives ``[["git", "push"], ["ls", "-l"]]``. Unknown means
    the command cannot be analysed: unparsable, command or process substitution, parameter
    expansion, brace groups, subshells, loops, functions, here-documents, background jobs,
    ``eval``/``source``/``sudo``..., or inline interpreter code such as ``python -c``.
    """
    if not isinstance(command, str):
        return None
    try:
        parser = _ShellParser()
        parser.parse(command)
        if parser.unknown:
            return None
        for cmd in parser.commands:
            if cmd.words and _semantic_unknown([w.text for w in cmd.words], xargs=cmd.xargs):
                return None
    except Exception:  # fail closed: anything surprising means "cannot be analysed"
        return None
    return [[w.text for w in cmd.words] for cmd in parser.commands if cmd.words]


def _semantic_unknown(argv: list[str], *, xargs: bool) -> list[str]:
    """Reasons a parsed command is still opaque, judged from its words alone."""
    effects = _Effects()
    _classify(argv, _NullFs(), effects, xargs=xargs)
    return effects.unknown


# ---------------------------------------------------------------------------------------------
# Shell: what each command touches
# ---------------------------------------------------------------------------------------------


@dataclass
class _Effects:
    reads: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    rreads: list[str] = field(default_factory=list)  # read with everything below
    redits: list[str] = field(default_factory=list)  # edited with everything below
    hosts: list[str] = field(default_factory=list)
    git: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    aliases: list[list[str]] = field(default_factory=list)  # other spellings matched against Bash rules

    def unk(self, reason: str) -> None:
        if reason not in self.unknown:
            self.unknown.append(reason)

    def host(self, token: str, *, bare: bool = False) -> bool:
        """Record the host a network location names; False when the token is a local path."""
        host, problem = _remote_host(token, bare=bare)
        if problem:
            self.unk(problem)
            return True
        if host:
            self.hosts.append(host)
            return True
        return False


class _Fs:
    """File-system questions for one working directory (relative to the worktree)."""

    def __init__(self, paths: _Paths, cwd: str) -> None:
        self.paths, self.cwd = paths, cwd

    def exists(self, path: str) -> bool:
        return self.paths.exists_inside(path, self.cwd)

    def isdir(self, path: str) -> bool:
        return self.paths.isdir(path, self.cwd)


class _NullFs:
    """Used when only the words matter (split_command)."""

    def exists(self, path: str) -> bool:
        return False

    def isdir(self, path: str) -> bool:
        return False


def _getopt(
    args: list[str],
    *,
    short: str = "",
    long: Iterable[str] = (),
    optional: str = "",
    permute: bool = True,
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """A small GNU-style option parser.

    ``short`` lists the short options taking a value (attached or next word), ``optional`` the
    short options whose value can only be attached, ``long`` the long options taking a value
    (``--name=value`` or ``--name value``; unambiguous prefixes count). Returns (options,
    positionals); an option without value has value None.
    """
    long_values = frozenset(long)
    options: list[tuple[str, str | None]] = []
    positionals: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positionals.extend(args[i + 1 :])
            break
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            if eq:
                options.append((_long_name(name, long_values), value))
            elif _takes_value(name, long_values):
                options.append((_long_name(name, long_values), args[i + 1] if i + 1 < len(args) else None))
                i += 1
            else:
                options.append((name, None))
        elif a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                c = a[j]
                if c in short:
                    value: str | None = a[j + 1 :]
                    if not value:
                        value = args[i + 1] if i + 1 < len(args) else None
                        i += 1
                    options.append(("-" + c, value))
                    break
                if c in optional:
                    options.append(("-" + c, a[j + 1 :]))
                    break
                options.append(("-" + c, None))
                j += 1
        else:
            if not permute:
                positionals.extend(args[i:])
                break
            positionals.append(a)
        i += 1
    return options, positionals


def _takes_value(name: str, long_values: frozenset[str]) -> bool:
    if name in long_values:
        return True
    matches = [option for option in long_values if option.startswith(name)]
    return len(name) > 3 and len(matches) == 1


def _long_name(name: str, long_values: frozenset[str]) -> str:
    if name in long_values:
        return name
    matches = [option for option in long_values if option.startswith(name)]
    return matches[0] if len(name) > 3 and len(matches) == 1 else name


def _values(options: list[tuple[str, str | None]], *names: str) -> list[str]:
    return [value for name, value in options if name in names and value is not None]


def _has(options: list[tuple[str, str | None]], *names: str) -> bool:
    return any(name in names for name, _ in options)


_SCHEME_RE = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_RE = re.compile(r"\A(?:[^@/:\s]+@)?(\[[0-9A-Fa-f:.]+\]|[^@/:\s\[\]]+):")


def _remote_host(token: str, *, bare: bool = False) -> tuple[str | None, str | None]:
    """(host, None) for a network location, (None, None) for a local path, (None, problem) when unclear."""
    t = token.strip()
    if not t:
        return None, None
    if _TRANSPORT_RE.match(t) and not _SCHEME_RE.match(t):
        return None, f"the remote {token!r} goes through a git remote helper"
    scheme = _SCHEME_RE.match(t)
    if scheme:
        if scheme.group(1).lower() == "file":
            return None, None
        return _checked_host(_hostname("" + t), token)
    if bare:
        return _checked_host(_hostname("//" + t), token)
    if t.startswith(("/", ".", "~")):
        return None, None
    scp = _SCP_RE.match(t)
    if scp:
        return _checked_host(scp.group(1).strip("[]"), token)
    return None, None


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _checked_host(host: str | None, token: str) -> tuple[str | None, str | None]:
    host = (host or "").lower().rstrip(".")
    if not host or not _HOST_RE.match(host):
        return None, f"cannot tell which host {token!r} contacts"
    return host, None


# -- readers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileTool:
    short: str = ""  # short options taking a value
    long: frozenset[str] = frozenset()  # long options taking a value
    optional: str = ""  # short options with an optional attached value
    reads: frozenset[str] = frozenset()  # options whose value is a file read
    edits: frozenset[str] = frozenset()  # options whose value is a file written
    opaque: frozenset[str] = frozenset()  # options that make the command UNKNOWN
    default_dot: bool = False  # no file argument means the current directory
    recursive: frozenset[str] = frozenset()  # options that make the file arguments recursive


def _fs(*names: str) -> frozenset[str]:
    return frozenset(names)


_READERS: dict[str, _FileTool] = {
    "cat": _FileTool(),
    "head": _FileTool(short="nc", long=_fs("--lines", "--bytes")),
    "tail": _FileTool(
        short="ncs", long=_fs("--lines", "--bytes", "--pid", "--sleep-interval", "--max-unchanged-stats")
    ),
    "less": _FileTool(
        short="bhjkoOpPtTxyz#",
        long=_fs("--log-file", "--LOG-FILE", "--pattern", "--tag", "--lesskey-file"),
        edits=_fs("-o", "-O", "--log-file", "--LOG-FILE"),
        reads=_fs("-k", "--lesskey-file"),
    ),
    "more": _FileTool(short="n"),
    "wc": _FileTool(long=_fs("--files0-from"), opaque=_fs("--files0-from")),
    "stat": _FileTool(short="c", long=_fs("--format", "--printf")),
    "file": _FileTool(
        short="eFfmP",
        long=_fs("--exclude", "--separator", "--files-from", "--magic-file", "--parameter"),
        opaque=_fs("-f", "--files-from"),
        reads=_fs("-m", "--magic-file"),
    ),
    "ls": _FileTool(
        short="IwT",
        long=_fs(
            "--block-size",
            "--format",
            "--hide",
            "--ignore",
            "--quoting-style",
            "--sort",
            "--tabsize",
            "--time",
            "--time-style",
            "--width",
            "--indicator-style",
        ),
        default_dot=True,
    ),
    "tac": _FileTool(short="s", long=_fs("--separator")),
    "nl": _FileTool(
        short="bdfhilnsvw",
        long=_fs(
            "--body-numbering",
            "--section-delimiter",
            "--footer-numbering",
            "--header-numbering",
            "--line-increment",
            "--join-blank-lines",
            "--number-format",
            "--number-separator",
            "--starting-line-number",
            "--number-width",
        ),
    ),
    "od": _FileTool(
        short="AjNSt",
        optional="w",
        long=_fs("--address-radix", "--skip-bytes", "--read-bytes", "--strings", "--format", "--width", "--endian"),
    ),
    "hexdump": _FileTool(short="efns", reads=_fs("-f")),
    "strings": _FileTool(short="nteT", long=_fs("--bytes", "--radix", "--encoding", "--target", "--output-separator")),
    "base64": _FileTool(short="w", long=_fs("--wrap")),
    "md5sum": _FileTool(),
    "sha1sum": _FileTool(),
    "sha224sum": _FileTool(),
    "sha256sum": _FileTool(),
    "sha384sum": _FileTool(),
    "sha512sum": _FileTool(),
    "b2sum": _FileTool(short="l", long=_fs("--length")),
    "cksum": _FileTool(short="al", long=_fs("--algorithm", "--length")),
    "cmp": _FileTool(short="in", long=_fs("--ignore-initial", "--bytes")),
    "du": _FileTool(
        short="dBXt",
        long=_fs(
            "--max-depth", "--block-size", "--exclude", "--exclude-from", "--threshold", "--time-style", "--files0-from"
        ),
        reads=_fs("-X", "--exclude-from"),
        opaque=_fs("--files0-from"),
        default_dot=True,
    ),
    "tree": _FileTool(
        short="LIPoH",
        long=_fs("--filelimit", "--charset", "--sort", "--timefmt", "--fromfile"),
        edits=_fs("-o"),
        opaque=_fs("--fromfile"),
        default_dot=True,
    ),
    "diff": _FileTool(
        short="CUWFDIxXSL",
        long=_fs(
            "--ifdef",
            "--show-function-line",
            "--ignore-matching-lines",
            "--label",
            "--starting-file",
            "--width",
            "--exclude",
            "--exclude-from",
            "--from-file",
            "--to-file",
            "--tabsize",
            "--horizon-lines",
            "--line-format",
            "--old-line-format",
            "--new-line-format",
            "--unchanged-line-format",
            "--old-group-format",
            "--new-group-format",
            "--changed-group-format",
            "--unchanged-group-format",
            "--palette",
            "--context",
            "--unified",
        ),
        reads=_fs("-X", "--exclude-from", "--from-file", "--to-file"),
    ),
    "sort": _FileTool(
        short="kotST",
        long=_fs(
            "--batch-size",
            "--compress-program",
            "--files0-from",
            "--key",
            "--output",
            "--random-source",
            "--buffer-size",
            "--field-separator",
            "--temporary-directory",
            "--parallel",
            "--sort",
        ),
        edits=_fs("-o", "--output"),
        reads=_fs("--random-source"),
        opaque=_fs("--compress-program", "--files0-from"),
    ),
}

_WRITERS: dict[str, _FileTool] = {
    "rm": _FileTool(recursive=_fs("-r", "-R", "--recursive")),
    "rmdir": _FileTool(),
    "unlink": _FileTool(),
    "shred": _FileTool(short="ns", long=_fs("--iterations", "--size", "--random-source"), reads=_fs("--random-source")),
    "touch": _FileTool(short="dtr", long=_fs("--date", "--reference", "--time"), reads=_fs("-r", "--reference")),
    "mkdir": _FileTool(short="m", long=_fs("--mode")),
    "tee": _FileTool(),
    "truncate": _FileTool(short="sr", long=_fs("--size", "--reference"), reads=_fs("-r", "--reference")),
}

_GREP = _FileTool(
    short="efmABCdD",
    long=_fs(
        "--regexp",
        "--file",
        "--max-count",
        "--after-context",
        "--before-context",
        "--context",
        "--directories",
        "--devices",
        "--include",
        "--exclude",
        "--exclude-dir",
        "--exclude-from",
        "--label",
        "--group-separator",
        "--binary-files",
    ),
    reads=_fs("-f", "--file", "--exclude-from"),
)
_RG = _FileTool(
    short="eftTgmABCjMrEd",
    long=_fs(
        "--regexp",
        "--file",
        "--type",
        "--type-not",
        "--glob",
        "--iglob",
        "--max-count",
        "--after-context",
        "--before-context",
        "--context",
        "--threads",
        "--max-columns",
        "--replace",
        "--encoding",
        "--max-depth",
        "--pre",
        "--pre-glob",
        "--type-add",
        "--type-clear",
        "--ignore-file",
        "--max-filesize",
        "--path-separator",
        "--sort",
        "--sortr",
        "--engine",
        "--colors",
        "--color",
        "--context-separator",
        "--field-match-separator",
        "--field-context-separator",
        "--dfa-size-limit",
        "--regex-size-limit",
        "--hostname-bin",
    ),
    reads=_fs("-f", "--file", "--ignore-file"),
    opaque=_fs("--pre", "--hostname-bin"),
)


def _file_tool(spec: _FileTool, args: list[str], effects: _Effects, *, role: str) -> tuple[list, list[str]]:
    options, positionals = _getopt(args, short=spec.short, long=spec.long, optional=spec.optional)
    for name, value in options:
        if name in spec.opaque:
            effects.unk(f"the option {name} names files or programs that are not visible")
        if value is None:
            continue
        if name in spec.reads:
            effects.reads.append(value)
        if name in spec.edits:
            effects.edits.append(value)
    files = positionals
    if not files and spec.default_dot:
        files = ["."]
    recursive = _has(options, *spec.recursive)
    if role == "read":
        (effects.rreads if recursive else effects.reads).extend(files)
    else:
        (effects.redits if recursive else effects.edits).extend(files)
    return options, positionals


def _grep(name: str, args: list[str], fs, effects: _Effects) -> None:
    spec = _RG if name == "rg" else _GREP
    options, positionals = _getopt(args, short=spec.short, long=spec.long)
    for option, value in options:
        if option in spec.opaque:
            effects.unk(f"{name} {option} runs another program")
        if option in spec.reads and value is not None and value != _STDIO:
            effects.reads.append(value)
    explicit = _has(options, "-e", "--regexp", "-f", "--file")
    files = positionals if explicit else positionals[1:]
    recursive = name == "rg" or _has(options, "-r", "-R", "--recursive", "--dereference-recursive")
    if not files and recursive:
        files = ["."]
    (effects.rreads if recursive else effects.reads).extend(files)


def _reader(name: str, args: list[str], fs, effects: _Effects) -> None:
    _file_tool(_READERS[name], args, effects, role="read")


def _writer(name: str, args: list[str], fs, effects: _Effects) -> None:
    _file_tool(_WRITERS[name], args, effects, role="edit")


_SED_SIMPLE = set("=dDgGhHnNpPxzF")


def _sed_script_is_safe(script: str) -> bool:
    """False when a sed script may run commands or touch other files (e, w, W, r, R, s///w, s///e)."""
    i, n = 0, len(script)

    def skip_delimited(i: int, delimiter: str) -> int:
        while i < n:
            if script[i] == "\\":
                i += 2
                continue
            if script[i] == delimiter:
                return i + 1
            if script[i] == "\n":
                return -1
            i += 1
        return -1

    while i < n:
        c = script[i]
        if c in " \t\n;{}!":
            i += 1
            continue
        if c == "#":
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        # addresses: numbers, $, /regex/, \cREGEXc, first~step, addr,+N
        if c.isdigit() or c in "$,~+":
            i += 1
            continue
        if c == "/" or c == "\\":
            if c == "\\":
                if i + 1 >= n:
                    return False
                delimiter, i = script[i + 1], i + 2
            else:
                delimiter, i = "/", i + 1
            i = skip_delimited(i, delimiter)
            if i < 0:
                return False
            while i < n and script[i] in "IM":
                i += 1
            continue
        if c in "wWrRe":
            return False
        if c in ":btT":
            i += 1
            while i < n and script[i] not in ";\n":
                i += 1
            continue
        if c in "aic":
            end = script.find("\n", i)
            while end > 0 and script[end - 1] == "\\":
                end = script.find("\n", end + 1)
            i = n if end < 0 else end
            continue
        if c in "sy":
            if i + 1 >= n or script[i + 1] in "\n\\":
                return False
            delimiter = script[i + 1]
            i = skip_delimited(i + 2, delimiter)
            if i < 0:
                return False
            i = skip_delimited(i, delimiter)
            if i < 0:
                return False
            if c == "s":
                while i < n and script[i] not in ";\n}":
                    if script[i] in "we":
                        return False
                    if not (script[i].isalnum() or script[i] in " \t"):
                        return False
                    i += 1
            continue
        if c in "qQlL":
            i += 1
            while i < n and (script[i].isdigit() or script[i] in " \t"):
                i += 1
            continue
        if c == "v":
            i += 1
            while i < n and script[i] not in ";\n}":
                i += 1
            continue
        if c in _SED_SIMPLE:
            i += 1
            continue
        return False
    return True


def _sed(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short="efl", optional="i", long=("--expression", "--file", "--line-length"))
    scripts = _values(options, "-e", "--expression")
    script_files = _values(options, "-f", "--file")
    for path in script_files:
        effects.reads.append(path)
        effects.unk("a sed script file is not visible")
    if not scripts and not script_files:
        if not positionals:
            return
        scripts, positionals = [positionals[0]], positionals[1:]
    if not _has(options, "--sandbox"):
        for script in scripts:
            if not _sed_script_is_safe(script):
                effects.unk("the sed script can run commands or write files (e, w or r)")
    effects.reads.extend(positionals)
    if _has(options, "-i", "--in-place"):
        effects.edits.extend(positionals)


_AWK_UNSAFE = re.compile(r"\bsystem\s*\(|\bgetline\b|\||\bprintf?\b[^;{}\n]*>|@load|@include")


def _awk(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(
        args,
        short="FvfeEilb",
        long=("--field-separator", "--assign", "--file", "--source", "--exec", "--include", "--load"),
    )
    if _has(options, "-f", "--file", "-E", "--exec", "-i", "--include", "-l", "--load"):
        effects.reads.extend(_values(options, "-f", "--file", "-E", "--exec"))
        effects.unk("an awk program file is not visible")
    programs = _values(options, "-e", "--source")
    if not programs and not _has(options, "-f", "--file", "-E", "--exec"):
        if not positionals:
            return
        programs, positionals = [positionals[0]], positionals[1:]
    if any(_AWK_UNSAFE.search(program) for program in programs):
        effects.unk("the awk program can run commands or write files")
    effects.reads.extend(p for p in positionals if not _ASSIGN_RE.match(p))


def _find(name: str, args: list[str], fs, effects: _Effects) -> None:
    i = 0
    while (i < len(args) and args[i] in ("-H", "-L", "-P")) or (i < len(args) and args[i].startswith(("-D", "-O"))):
        i += 2 if args[i] == "-D" else 1
    starts: list[str] = []
    while i < len(args) and not args[i].startswith(("-", "(", "!", ")", ",")):
        starts.append(args[i])
        i += 1
    starts = starts or ["."]
    effects.reads.extend(starts)
    expression = args[i:]
    j = 0
    while j < len(expression):
        token = expression[j]
        if token in ("-exec", "-execdir", "-ok", "-okdir"):
            inner: list[str] = []
            j += 1
            while j < len(expression) and expression[j] not in (";", "+"):
                inner.append(expression[j])
                j += 1
            if inner:
                effects.aliases.append(inner)
            effects.unk(f"find {token} runs a command on files that are not visible")
        elif token == "-delete":
            effects.redits.extend(starts)
        elif token in ("-fprint", "-fprint0", "-fls", "-fprintf") and j + 1 < len(expression):
            effects.edits.append(expression[j + 1])
            j += 1
        elif token == "-files0-from":
            effects.unk("find -files0-from names files that are not visible")
        j += 1


def _chmod(name: str, args: list[str], fs, effects: _Effects) -> None:
    flags = {
        "-R",
        "-v",
        "-c",
        "-f",
        "-h",
        "-H",
        "-L",
        "-P",
        "--recursive",
        "--verbose",
        "--changes",
        "--silent",
        "--quiet",
        "--no-preserve-root",
        "--preserve-root",
        "--dereference",
        "--no-dereference",
    }
    positionals: list[str] = []
    reference = recursive = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positionals.extend(args[i + 1 :])
            break
        if a.startswith("--reference") or a.startswith("--from"):
            if "=" not in a:
                if a.startswith("--reference") and i + 1 < len(args):
                    effects.reads.append(args[i + 1])
                i += 1
            elif a.startswith("--reference"):
                effects.reads.append(a.split("=", 1)[1])
            reference = reference or a.startswith("--reference")
        elif a in flags or (re.fullmatch(r"-[RvcfhHLP]+", a) is not None):
            recursive = recursive or a == "--recursive" or (not a.startswith("--") and "R" in a)
        else:
            positionals.append(a)
        i += 1
    (effects.redits if recursive else effects.edits).extend(positionals if reference else positionals[1:])


def _copy_like(name: str, args: list[str], fs, effects: _Effects) -> None:
    """cp, mv, ln and install: sources are read, the destination (and name inside it) edited."""
    short, long = "tS", ["--target-directory", "--suffix"]
    if name == "install":
        short, long = "gmoSt", long + ["--group", "--mode", "--owner", "--strip-program"]
    if name == "cp":
        long += ["--sparse", "--no-preserve"]
    options, positionals = _getopt(args, short=short, long=long)
    if _has(options, "--strip-program"):
        effects.unk("install --strip-program runs another program")
    if name == "install" and _has(options, "-d", "--directory"):
        effects.edits.extend(positionals)
        return
    targets = _values(options, "-t", "--target-directory")
    no_target_dir = _has(options, "-T", "--no-target-directory")
    dest: str | None = None
    dest_dir: str | None = None
    if targets:
        sources, dest_dir = positionals, targets[-1]
    elif no_target_dir and len(positionals) >= 2:
        sources, dest = positionals[:-1], positionals[-1]
    elif len(positionals) >= 2:
        sources, last = positionals[:-1], positionals[-1]
        if len(sources) > 1 or last.endswith("/") or fs.isdir(last):
            dest_dir = last
        else:
            dest = last
    elif name == "ln" and positionals:
        sources, dest_dir = positionals, "."
    else:
        sources = positionals
    symbolic = name == "ln" and _has(options, "-s", "--symbolic")
    # mv moves whole trees; cp -r/-a copies them
    recursive = name == "mv" or (name == "cp" and _has(options, "-r", "-R", "--recursive", "-a", "--archive"))
    reads, edits = (effects.rreads, effects.redits) if recursive else (effects.reads, effects.edits)
    for source in sources:
        if dest_dir is not None:
            edits.append(posixpath.join(dest_dir, posixpath.basename(source.rstrip("/")) or "."))
        if symbolic and not source.startswith("/") and not isinstance(source, _HomePath):
            # a symlink's target is relative to the link's directory
            link = dest if dest is not None else posixpath.join(dest_dir or ".", "x")
            effects.reads.append(posixpath.join(posixpath.dirname(link) or ".", source))
        else:
            reads.append(source)
        if name == "mv":
            edits.append(source)
    if dest is not None:
        edits.append(dest)
    if dest_dir is not None:
        effects.edits.append(dest_dir)


def _dd(name: str, args: list[str], fs, effects: _Effects) -> None:
    for a in args:
        if a.startswith("if="):
            effects.reads.append(a[3:])
        elif a.startswith("of="):
            effects.edits.append(a[3:])


_TAR_PROGRAM_OPTIONS = (
    "--to-command",
    "--checkpoint-action",
    "--use-compress-program",
    "--info-script",
    "--new-volume-script",
    "--rsh-command",
    "--index-file",
)


def _tar(name: str, args: list[str], fs, effects: _Effects) -> None:
    """tar: creating reads the inputs and writes the archive; extracting writes unseen names (UNKNOWN)."""
    bundled = args[0] if args and not args[0].startswith("-") else ""  # old style: tar czf out.tgz src
    clusters = [a[1:] for a in args if a.startswith("-") and not a.startswith("--")]
    letters = bundled + "".join(clusters)
    if "x" in letters or any(a.split("=", 1)[0] in ("--extract", "--get") for a in args):
        effects.unk("tar extraction writes files named inside the archive")
    if "I" in letters or any(a.split("=", 1)[0] in _TAR_PROGRAM_OPTIONS for a in args):
        effects.unk("tar runs another program")
    archive: str | None = None
    rest = args[1:] if bundled else list(args)
    if "f" in bundled and rest:
        archive, rest = rest[0], rest[1:]
    for k, a in enumerate(rest):
        if a.startswith("--file="):
            archive = a.split("=", 1)[1]
        elif a == "--file" and k + 1 < len(rest):
            archive = rest[k + 1]
        elif a.startswith("-") and not a.startswith("--") and "f" in a:
            attached = a[a.index("f") + 1 :]
            archive = attached or (rest[k + 1] if k + 1 < len(rest) else None)
    creating = any(c in letters for c in "cruA") or any(a in ("--create", "--append", "--update") for a in args)
    if archive and archive != _STDIO:
        (effects.edits if creating else effects.reads).append(archive)
    inputs = [a for a in rest if a != archive and not a.startswith("-")]
    if creating:
        if any(a in ("-C", "--directory") or a.startswith(("--directory=", "-C")) for a in rest):
            effects.unk("tar -C changes the directory its inputs are read from")
        effects.rreads.extend(inputs)
    else:
        _generic(name, inputs, fs, effects)


# -- network ----------------------------------------------------------------------------------

_CURL_SHORT = "dHouXAebcFTxKwmrCEyYztUQDP"
_CURL_LONG = _fs(
    "--data",
    "--data-raw",
    "--data-binary",
    "--data-urlencode",
    "--data-ascii",
    "--json",
    "--header",
    "--output",
    "--user",
    "--request",
    "--user-agent",
    "--referer",
    "--cookie",
    "--cookie-jar",
    "--form",
    "--form-string",
    "--upload-file",
    "--proxy",
    "--preproxy",
    "--config",
    "--write-out",
    "--max-time",
    "--range",
    "--continue-at",
    "--cert",
    "--key",
    "--cacert",
    "--capath",
    "--connect-timeout",
    "--retry",
    "--retry-delay",
    "--retry-max-time",
    "--resolve",
    "--connect-to",
    "--dump-header",
    "--interface",
    "--limit-rate",
    "--max-filesize",
    "--output-dir",
    "--proxy-user",
    "--url",
    "--oauth2-bearer",
    "--time-cond",
    "--trace",
    "--trace-ascii",
    "--stderr",
    "--unix-socket",
    "--abstract-unix-socket",
    "--local-port",
    "--noproxy",
    "--quote",
    "--pass",
    "--ciphers",
    "--dns-servers",
    "--doh-url",
    "--max-redirs",
    "--speed-limit",
    "--speed-time",
    "--variable",
    "--netrc-file",
    "--socks4",
    "--socks4a",
    "--socks5",
    "--socks5-hostname",
    "--proxy-header",
    "--proto",
    "--proto-redir",
    "--telnet-option",
    "--ftp-port",
    "--cert-type",
    "--key-type",
    "--etag-save",
    "--etag-compare",
    "--alt-svc",
    "--hsts",
    "--expect100-timeout",
    "--happy-eyeballs-timeout-ms",
    "--keepalive-time",
    "--mail-from",
    "--mail-rcpt",
    "--mail-auth",
    "--sasl-authzid",
    "--aws-sigv4",
    "--tls-max",
    "--create-file-mode",
    "--request-target",
    "--login-options",
    "--service-name",
    "--proxy-cacert",
    "--proxy-cert",
    "--proxy-key",
    "--proxy-pass",
    "--proxy-service-name",
    "--socks5-gssapi-service",
    "--delegation",
    "--ftp-account",
    "--ftp-alternative-to-user",
    "--ftp-method",
    "--ftp-ssl-ccc-mode",
    "--hostpubmd5",
    "--hostpubsha256",
    "--krb",
    "--pinnedpubkey",
    "--pubkey",
    "--random-file",
    "--egd-file",
    "--engine",
    "--tlsuser",
    "--tlspassword",
    "--tls13-ciphers",
    "--curves",
    "--ipfs-gateway",
    "--ech",
)


def _url_basename(url: str) -> str:
    try:
        path = urlsplit(url if _SCHEME_RE.match(url) else "//" + url).path
    except ValueError:
        return ""
    return posixpath.basename(path)


def _curl(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short=_CURL_SHORT, long=_CURL_LONG)
    urls = positionals + _values(options, "--url")
    for url in urls:
        effects.host(url, bare=True)
    for proxy in _values(
        options, "-x", "--proxy", "--preproxy", "--socks4", "--socks4a", "--socks5", "--socks5-hostname"
    ):
        effects.host(proxy, bare=True)
    if _has(options, "--resolve", "--connect-to"):
        effects.unk("curl --resolve/--connect-to sends the request to another host")
    if _has(options, "-K", "--config"):
        effects.unk("a curl config file is not visible")
    if _has(options, "-J", "--remote-header-name"):
        effects.unk("curl -J lets the server choose the file name")
    output_dir = (_values(options, "--output-dir") or ["."])[-1]
    effects.edits.extend(_values(options, "--output-dir"))
    for out in _values(options, "-o", "--output"):
        if out != _STDIO:
            effects.edits.append(posixpath.join(output_dir, out))
    for out in _values(
        options, "-c", "--cookie-jar", "-D", "--dump-header", "--trace", "--trace-ascii", "--stderr", "--etag-save"
    ):
        if out != _STDIO:
            effects.edits.append(out)
    if _has(options, "-O", "--remote-name", "--remote-name-all"):
        for url in urls:
            base = _url_basename(url)
            if base:
                effects.edits.append(posixpath.join(output_dir, base))
            else:
                effects.unk("curl -O without a file name in the URL")
    for upload in _values(options, "-T", "--upload-file"):
        if upload not in (_STDIO, "."):
            effects.reads.append(upload)
    for data in _values(options, "-d", "--data", "--data-binary", "--data-ascii", "--json"):
        if data.startswith("@") and data[1:] not in ("", _STDIO):
            effects.reads.append(data[1:])
    for data in _values(options, "--data-urlencode"):
        match = re.fullmatch(r"([^=@]*)@(.+)", data, re.DOTALL)
        if match and match.group(2) != _STDIO:
            effects.reads.append(match.group(2))
    for form in _values(options, "-F", "--form"):
        match = re.search(r"=[@<]([^;]+)", form)
        if match and match.group(1) != _STDIO:
            effects.reads.append(match.group(1))
    for cookie in _values(options, "-b", "--cookie"):
        if "=" not in cookie and cookie != _STDIO:
            effects.reads.append(cookie)


_WGET_SHORT = "OoaPieUtTwQlARDIXB"
_WGET_LONG = _fs(
    "--output-document",
    "--output-file",
    "--append-output",
    "--directory-prefix",
    "--input-file",
    "--execute",
    "--user-agent",
    "--tries",
    "--timeout",
    "--wait",
    "--quota",
    "--level",
    "--accept",
    "--reject",
    "--domains",
    "--include-directories",
    "--exclude-directories",
    "--base",
    "--header",
    "--user",
    "--password",
    "--http-user",
    "--http-password",
    "--ftp-user",
    "--ftp-password",
    "--post-data",
    "--post-file",
    "--body-data",
    "--body-file",
    "--method",
    "--referer",
    "--load-cookies",
    "--save-cookies",
    "--ca-certificate",
    "--certificate",
    "--private-key",
    "--bind-address",
    "--limit-rate",
    "--waitretry",
    "--dns-timeout",
    "--connect-timeout",
    "--read-timeout",
    "--config",
    "--proxy-user",
    "--proxy-password",
    "--default-page",
    "--local-encoding",
    "--remote-encoding",
    "--restrict-file-names",
    "--cut-dirs",
    "--progress",
    "--secure-protocol",
    "--ca-directory",
    "--certificate-type",
    "--private-key-type",
    "--random-file",
    "--egd-file",
    "--max-redirect",
    "--rejected-log",
    "--accept-regex",
    "--reject-regex",
    "--regex-type",
    "--exclude-domains",
    "--follow-tags",
    "--ignore-tags",
    "--warc-file",
    "--warc-header",
    "--warc-max-size",
    "--warc-cdx",
    "--warc-dedup",
    "--warc-tempdir",
    "--use-askpass",
    "--retry-on-http-error",
    "--report-speed",
    "--hsts-file",
)


def _wget(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short=_WGET_SHORT, long=_WGET_LONG)
    for url in positionals:
        effects.host(url, bare=True)
    if _has(options, "-i", "--input-file"):
        effects.reads.extend(v for v in _values(options, "-i", "--input-file") if v != _STDIO)
        effects.unk("wget -i reads URLs that are not visible")
    if _has(options, "-e", "--execute", "--config", "--use-askpass"):
        effects.unk("wget -e/--config/--use-askpass runs settings or programs that are not visible")
    effects.reads.extend(_values(options, "--post-file", "--body-file", "--load-cookies"))
    effects.edits.extend(
        v
        for v in _values(options, "-o", "-a", "--output-file", "--append-output", "--save-cookies", "--rejected-log")
        if v != _STDIO
    )
    prefix = (_values(options, "-P", "--directory-prefix") or ["."])[-1]
    documents = _values(options, "-O", "--output-document")
    if documents:
        effects.edits.extend(d for d in documents if d != _STDIO)
    elif _has(options, "-r", "--recursive", "-m", "--mirror", "-p", "--page-requisites"):
        effects.edits.append(prefix)
    else:
        for url in positionals:
            effects.edits.append(posixpath.join(prefix, _url_basename(url) or "index.html"))


def _netcat(name: str, args: list[str], fs, effects: _Effects) -> None:
    if any(
        a in ("--exec", "--sh-exec", "--lua-exec") or a.startswith(("--exec=", "--sh-exec=", "--lua-exec="))
        for a in args
    ):
        effects.unk(f"{name} can run a program")
    options, positionals = _getopt(
        args,
        short="IiMmOPpsTVWwXxec",
        long=("--source", "--source-port", "--wait", "--proxy", "--proxy-type", "--output"),
    )
    if _has(options, "-e", "-c"):
        effects.unk(f"{name} can run a program")
    if _has(options, "-l", "--listen"):
        effects.unk(f"{name} -l listens for connections")
    if positionals:
        effects.host(positionals[0], bare=True)
    for proxy in _values(options, "-x", "--proxy"):
        effects.host(proxy, bare=True)


def _telnet(name: str, args: list[str], fs, effects: _Effects) -> None:
    _, positionals = _getopt(args, short="lneb")
    if positionals:
        effects.host(positionals[0], bare=True)


_SSH_SHORT = "BbcDEeFIiJLlmOoPpQRSWw"
_SSH_OPAQUE_OPTIONS = ("proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand", "match")


def _ssh_options(options: list[tuple[str, str | None]], name: str, effects: _Effects) -> None:
    for option, value in options:
        if option == "-o" and value is not None:
            key = re.split(r"[\s=]", value.strip(), maxsplit=1)[0].lower()
            if key in _SSH_OPAQUE_OPTIONS:
                effects.unk(f"{name} -o {key} runs a local command")
            if key == "proxyjump":
                for hop in re.split(r"[\s=]", value.strip(), maxsplit=1)[1:2]:
                    for jump in hop.split(","):
                        effects.host(jump.split("@")[-1].split(":")[0], bare=True)
        elif option == "-F":
            effects.unk(f"an {name} config file is not visible")
        elif option == "-S" and name in ("scp", "rsync"):
            effects.unk(f"{name} -S runs another program")
        elif option == "-J" and value:
            for jump in value.split(","):
                effects.host(jump, bare=True)


def _ssh(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short=_SSH_SHORT, permute=False)
    _ssh_options(options, name, effects)
    effects.edits.extend(_values(options, "-E"))
    for forward in _values(options, "-W"):
        effects.host(forward.rsplit(":", 1)[0], bare=True)
    if positionals:
        effects.host(positionals[0], bare=True)


def _local_or_remote(token: str, effects: _Effects, *, role: str, recursive: bool = True) -> None:
    if effects.host(token):
        return
    if role == "read":
        (effects.rreads if recursive else effects.reads).append(token)
    else:
        (effects.redits if recursive else effects.edits).append(token)


def _scp(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short="cDFiJloPSX")
    _ssh_options(options, name, effects)
    if len(positionals) < 2:
        for token in positionals:
            _local_or_remote(token, effects, role="read")
        return
    for token in positionals[:-1]:
        _local_or_remote(token, effects, role="read")
    target = positionals[-1]
    if not effects.host(target):
        effects.redits.append(target)
        if fs.isdir(target) or target.endswith("/"):
            for token in positionals[:-1]:
                base = posixpath.basename(token.split(":", 1)[-1].rstrip("/"))
                if base:
                    effects.edits.append(posixpath.join(target, base))


_RSYNC_LONG = _fs(
    "--rsh",
    "--rsync-path",
    "--block-size",
    "--filter",
    "--exclude",
    "--include",
    "--exclude-from",
    "--include-from",
    "--files-from",
    "--temp-dir",
    "--log-file",
    "--log-file-format",
    "--password-file",
    "--port",
    "--partial-dir",
    "--backup-dir",
    "--suffix",
    "--chmod",
    "--chown",
    "--bwlimit",
    "--timeout",
    "--contimeout",
    "--compare-dest",
    "--copy-dest",
    "--link-dest",
    "--max-size",
    "--min-size",
    "--max-delete",
    "--out-format",
    "--remote-option",
    "--info",
    "--debug",
    "--iconv",
    "--checksum-choice",
    "--compress-choice",
    "--compress-level",
    "--skip-compress",
    "--usermap",
    "--groupmap",
    "--address",
    "--sockopts",
    "--outbuf",
    "--write-batch",
    "--only-write-batch",
    "--read-batch",
    "--protocol",
    "--stop-after",
    "--stop-at",
    "--max-alloc",
    "--modify-window",
    "--early-input",
    "--checksum-seed",
)


def _rsync(name: str, args: list[str], fs, effects: _Effects) -> None:
    options, positionals = _getopt(args, short="eBfTM@", long=_RSYNC_LONG)
    for shell in _values(options, "-e", "--rsh"):
        words = shell.split()
        if not words or posixpath.basename(words[0]) != "ssh" or any("proxycommand" in w.lower() for w in words):
            effects.unk("rsync -e runs another program")
    if _has(options, "--files-from"):
        effects.unk("rsync --files-from names files that are not visible")
    effects.reads.extend(
        v
        for v in _values(options, "--exclude-from", "--include-from", "--files-from", "--password-file", "--read-batch")
        if v != _STDIO
    )
    effects.edits.extend(_values(options, "--log-file", "--write-batch", "--only-write-batch"))
    if len(positionals) < 2:
        for token in positionals:
            _local_or_remote(token, effects, role="read")
        return
    for token in positionals[:-1]:
        _local_or_remote(token, effects, role="read")
    _local_or_remote(positionals[-1], effects, role="edit")


def _pip(args: list[str], fs, effects: _Effects) -> None:
    global_values = {
        "--proxy",
        "--log",
        "--cache-dir",
        "--timeout",
        "--retries",
        "--exists-action",
        "--trusted-host",
        "--cert",
        "--client-cert",
        "--python",
        "--use-feature",
        "--use-deprecated",
        "--keyring-provider",
        "--log-file",
        "--local-log",
    }
    i = 0
    while i < len(args) and args[i].startswith("-"):
        name = args[i].split("=", 1)[0]
        if name == "--proxy":
            value = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
            effects.host(value, bare=True)
        i += 2 if (name in global_values and "=" not in args[i]) else 1
    if i >= len(args) or args[i] not in ("install", "download", "wheel", "index", "search", "lock"):
        _generic("pip", args[i:], fs, effects)
        return
    options, positionals = _getopt(
        args[i + 1 :],
        short="rceitfCdw",
        long=(
            "--requirement",
            "--constraint",
            "--editable",
            "--target",
            "--index-url",
            "--extra-index-url",
            "--find-links",
            "--config-settings",
            "--dest",
            "--wheel-dir",
            "--prefix",
            "--root",
            "--src",
            "--upgrade-strategy",
            "--platform",
            "--python-version",
            "--implementation",
            "--abi",
            "--no-binary",
            "--only-binary",
            "--progress-bar",
            "--cache-dir",
            "--log",
            "--proxy",
            "--retries",
            "--timeout",
            "--trusted-host",
            "--cert",
            "--client-cert",
            "--exists-action",
            "--global-option",
            "--build-option",
            "--report",
            "--python",
            "--use-feature",
            "--use-deprecated",
            "--keyring-provider",
            "--group",
            "--output",
            "--index",
        ),
    )
    indexes = _values(options, "-i", "--index-url", "--index")
    if not indexes and not _has(options, "--no-index"):
        effects.hosts.append("pypi.org")
    for url in indexes + _values(options, "--extra-index-url", "--proxy"):
        effects.host(url, bare=True)
    for link in _values(options, "-f", "--find-links"):
        if not effects.host(link):
            effects.reads.append(link)
    effects.reads.extend(_values(options, "-r", "--requirement", "-c", "--constraint"))
    effects.edits.extend(
        _values(
            options,
            "-t",
            "--target",
            "--prefix",
            "--root",
            "--src",
            "-d",
            "--dest",
            "-w",
            "--wheel-dir",
            "--report",
            "--output",
        )
    )
    for spec in positionals + _values(options, "-e", "--editable"):
        if "://" in spec:
            effects.host(re.sub(r"\A[a-z]+\+", "", spec))
        elif spec.startswith((".", "/", "~")) or fs.exists(spec):
            effects.reads.append(spec)


_NPM_NETWORK = frozenset(
    {
        "install",
        "i",
        "in",
        "ins",
        "inst",
        "insta",
        "instal",
        "isnt",
        "isnta",
        "isntal",
        "add",
        "ci",
        "clean-install",
        "ic",
        "install-clean",
        "isntall-clean",
        "update",
        "up",
        "upgrade",
        "udpate",
        "exec",
        "x",
        "publish",
        "view",
        "info",
        "show",
        "v",
        "search",
        "outdated",
        "audit",
        "init",
        "create",
        "dlx",
        "install-test",
        "it",
        "cit",
        "install-ci-test",
        "dist-tag",
        "access",
        "login",
        "whoami",
        "unpublish",
        "deprecate",
        "owner",
        "team",
        "token",
        "ping",
    }
)


def _npm(name: str, args: list[str], fs, effects: _Effects) -> None:
    registries = [a.split("=", 1)[1] for a in args if a.startswith("--registry=")]
    registries += [args[k + 1] for k, a in enumerate(args[:-1]) if a == "--registry"]
    positionals = [a for a in args if not a.startswith("-")]
    sub = positionals[0] if positionals else ("install" if name == "yarn" else "")
    if name in ("npx", "pnpx", "bunx") or sub in _NPM_NETWORK:
        if registries:
            for registry in registries:
                effects.host(registry, bare=True)
        else:
            effects.hosts.append("registry.yarnpkg.com" if name == "yarn" else "registry.npmjs.org")
    _generic(name, args, fs, effects)


def _uv(name: str, args: list[str], fs, effects: _Effects) -> None:
    positionals = [a for a in args if not a.startswith("-")]
    sub = positionals[0] if positionals else ""
    if name == "uvx" or sub in ("add", "sync", "lock", "remove", "tool", "export"):
        effects.hosts.append("pypi.org")
    if sub == "pip":
        _pip(args[args.index("pip") + 1 :], fs, effects)
        return
    _generic(name, args, fs, effects)


# -- git --------------------------------------------------------------------------------------

_GIT_OPAQUE_SUBCOMMANDS = {
    "filter-branch": "git filter-branch runs commands",
    "send-email": "git send-email sends mail",
    "daemon": "git daemon serves repositories",
    "instaweb": "git instaweb starts a web server",
    "am": "git am applies patches whose files are not visible",
    "credential": "git credential handles secrets",
    "difftool": "git difftool runs another program",
    "mergetool": "git mergetool runs another program",
    "p4": "git p4 talks to another server",
    "svn": "git svn talks to another server",
}
_GIT_GLOBAL_VALUES = frozenset(
    {
        "-C",
        "-c",
        "--config-env",
        "--git-dir",
        "--work-tree",
        "--namespace",
        "--super-prefix",
        "--attr-source",
        "--list-cmds",
    }
)
# short options taking a value, per subcommand (git push -u is --set-upstream, git clone -u is --upload-pack)
_GIT_REMOTE_SHORT = {"push": "o", "fetch": "oj", "pull": "ojXs", "ls-remote": "o", "clone": "objcu", "archive": "o"}
_GIT_REMOTE_VALUES = (
    "--repo",
    "-o",
    "--push-option",
    "--server-option",
    "--depth",
    "--deepen",
    "--shallow-since",
    "--shallow-exclude",
    "-j",
    "--jobs",
    "--negotiation-tip",
    "--refmap",
    "-X",
    "--strategy-option",
    "-s",
    "--strategy",
    "--recurse-submodules-default",
    "--filter",
    "--upload-pack",
    "--receive-pack",
    "--exec",
    "--origin",
    "-b",
    "--branch",
    "--reference",
    "--reference-if-able",
    "--separate-git-dir",
    "--template",
    "--config",
    "--bundle-uri",
    "--sort",
    "--remote",
    "--output",
    "--prefix",
    "--format",
    "--add-file",
    "--add-virtual-file",
)


def _git(name: str, args: list[str], fs, effects: _Effects) -> None:
    base = ""  # accumulated -C directories
    i = 0
    while i < len(args) and args[i].startswith("-"):
        option, eq, attached = args[i].partition("=")
        takes_value = option in _GIT_GLOBAL_VALUES
        value = attached if eq else (args[i + 1] if takes_value and i + 1 < len(args) else "")
        if option == "-C" and value:
            absolute = value.startswith("/") or isinstance(value, _HomePath)
            base = value if absolute else posixpath.join(base, value)
            effects.reads.append(base)
        elif option in ("-c", "--config-env"):
            effects.unk("git -c can change configuration (aliases, hooks, programs) for one command")
        elif option in ("--git-dir", "--work-tree", "--namespace", "--super-prefix", "--attr-source"):
            effects.unk(f"git {option} points git at another repository or tree")
        elif option == "--exec-path" and eq:
            effects.unk("git --exec-path replaces git's programs")
        i += 2 if takes_value and not eq else 1
    if i >= len(args):
        return
    sub, rest = args[i], args[i + 1 :]
    if i > 0:
        effects.aliases.append(["git", sub, *rest])

    def at(path: str) -> str:
        if not base or path.startswith("/") or isinstance(path, _HomePath):
            return path
        return posixpath.join(base, path)

    if sub in _GIT_OPAQUE_SUBCOMMANDS:
        effects.unk(_GIT_OPAQUE_SUBCOMMANDS[sub])
        return
    if sub == "commit":
        effects.git.append("commit")
        options, _ = _getopt(
            rest,
            short="FmCcSt",
            long=(
                "--file",
                "--message",
                "--reuse-message",
                "--reedit-message",
                "--fixup",
                "--squash",
                "--author",
                "--date",
                "--template",
                "--trailer",
                "--cleanup",
                "--pathspec-from-file",
            ),
        )
        effects.reads.extend(at(v) for v in _values(options, "-F", "--file", "-t", "--template") if v != _STDIO)
        return
    if sub in ("push", "fetch", "pull", "ls-remote", "clone", "archive"):
        options, positionals = _getopt(rest, short=_GIT_REMOTE_SHORT[sub], long=_GIT_REMOTE_VALUES)
        if _has(options, "--upload-pack", "--receive-pack", "--exec") or (sub == "clone" and _has(options, "-u")):
            effects.unk(f"git {sub} --upload-pack/--receive-pack/--exec runs another program")
        if sub == "clone" and _has(options, "-c", "--config", "--template", "--separate-git-dir"):
            effects.unk("git clone -c/--template changes configuration or hooks")
        if sub == "archive":
            remotes = _values(options, "--remote")
            effects.edits.extend(at(v) for v in _values(options, "-o", "--output"))
            for remote in remotes:
                effects.host(remote)
            return
        repositories = _values(options, "--repo") + positionals[:1]
        for repository in repositories:
            if effects.host(repository):
                continue
            if repository.startswith(("/", ".", "~")) or isinstance(repository, _HomePath):
                (effects.edits if sub == "push" else effects.reads).append(at(repository))
        if sub == "clone" and positionals:
            target = positionals[1] if len(positionals) > 1 else _clone_directory(positionals[0])
            effects.edits.append(at(target))
        return
    if sub in ("remote", "submodule"):
        action = next((a for a in rest if not a.startswith("-")), "")
        if sub == "submodule" and action not in ("", "status", "summary"):
            effects.unk(f"git submodule {action} fetches or runs what .gitmodules names")
            return
        if sub == "remote" and action in (
            "add",
            "set-url",
            "rename",
            "remove",
            "rm",
            "set-head",
            "set-branches",
            "prune",
            "update",
        ):
            effects.edits.append(at(".git/config"))
        return
    if sub == "config":
        _git_config(rest, effects, at)
        return
    if sub in ("rm", "mv"):
        options, positionals = _getopt(rest, long=("--pathspec-from-file",))
        effects.redits.extend(at(p) for p in positionals)
        if sub == "mv":
            effects.rreads.extend(at(p) for p in positionals[:-1])
        return
    if sub in ("checkout", "restore"):
        if "--" in rest:
            effects.redits.extend(at(p) for p in rest[rest.index("--") + 1 :])
        elif sub == "restore":
            _, positionals = _getopt(rest, short="s", long=("--source", "--pathspec-from-file"))
            effects.redits.extend(at(p) for p in positionals)
        return
    if sub == "clean":
        _, positionals = _getopt(rest, short="e", long=("--exclude",))
        effects.redits.extend(at(p) for p in positionals or ["."])
        return
    if sub == "apply":
        if _has(_getopt(rest)[0], "--check", "--stat", "--numstat", "--summary") and "--apply" not in rest:
            effects.reads.extend(at(p) for p in _getopt(rest)[1])
            return
        effects.unk("git apply edits files named inside the patch")
        return
    if sub == "bisect" and rest[:1] == ["run"]:
        effects.unk("git bisect run runs a command")
        return
    if sub == "rebase" and any(a in ("-x", "--exec") or a.startswith("--exec=") for a in rest):
        effects.unk("git rebase --exec runs a command")
        return
    # everything else (status, log, diff, show, add, ...): existing paths among the arguments are read
    for a in rest:  # REV:PATH shows a file's committed content
        if ":" in a and not a.startswith("-") and "://" not in a:
            path = at(a.split(":", 1)[1])
            if path and fs.exists(path):
                effects.reads.append(path)
    _generic("git", [at(a) if not a.startswith("-") else a for a in rest], fs, effects)


def _git_config(rest: list[str], effects: _Effects, at: Callable[[str], str]) -> None:
    options, positionals = _getopt(
        rest, short="f", long=("--file", "--blob", "--type", "--default", "--comment", "--value", "--url")
    )
    mutators = (
        "--unset",
        "--unset-all",
        "--add",
        "--replace-all",
        "--rename-section",
        "--remove-section",
        "-e",
        "--edit",
    )
    readers = ("--get", "--get-all", "--get-regexp", "--get-urlmatch", "--list", "-l", "--get-color", "--get-colorbool")
    writes = (
        _has(options, *mutators)
        or (positionals[:1] and positionals[0] in ("set", "unset", "edit", "rename-section", "remove-section"))
        or (len(positionals) >= 2 and not _has(options, *readers) and positionals[0] not in ("get", "list"))
    )
    if not writes:
        return
    if _has(options, "--global", "--system"):
        effects.edits.append(_HomePath("~/.gitconfig"))
        return
    files = _values(options, "-f", "--file") or [".git/config"]
    effects.edits.extend(at(f) for f in files)


def _clone_directory(repository: str) -> str:
    path = repository.rstrip("/")
    if _SCP_RE.match(path) and not _SCHEME_RE.match(path):
        path = path.split(":", 1)[1]
    elif _SCHEME_RE.match(path):
        try:
            path = urlsplit(path).path
        except ValueError:
            path = ""
    name = posixpath.basename(path.rstrip("/"))
    if name.endswith(".git"):
        name = name[:-4]
    return name or "."


# -- interpreters -----------------------------------------------------------------------------

_INFO_FLAGS = frozenset({"-V", "--version", "-h", "--help", "-v", "-VV"})


@dataclass(frozen=True)
class _Interpreter:
    inline: str  # short option letters introducing inline code
    inline_long: tuple[str, ...] = ()  # long options introducing inline code
    values: str = ""  # short options taking a value
    stdin_unknown: bool = True  # no script means code from stdin


_INTERPRETERS: dict[str, _Interpreter] = {
    "python": _Interpreter(inline="c", values="WXm"),
    "node": _Interpreter(inline="ep", inline_long=("--eval", "--print"), values="rC"),
    "perl": _Interpreter(inline="eE"),
    "ruby": _Interpreter(inline="e"),
    "php": _Interpreter(inline="raBRFE", values="cdftz"),
    "lua": _Interpreter(inline="e", values="l"),
    "Rscript": _Interpreter(inline="e", inline_long=("--expr",)),
    "bun": _Interpreter(inline="ep", inline_long=("--eval", "--print"), stdin_unknown=False),
    "deno": _Interpreter(inline="", stdin_unknown=False),
    "osascript": _Interpreter(inline="e"),
}


def _interpreter_family(name: str) -> str | None:
    if re.fullmatch(r"(?:python|pypy)[0-9.]*", name):
        return "python"
    if name in ("node", "nodejs"):
        return "node"
    for family in ("perl", "ruby", "php", "lua"):
        if re.fullmatch(rf"{family}[0-9.]*", name):
            return family
    return name if name in _INTERPRETERS else None


def _interpreter(name: str, args: list[str], fs, effects: _Effects) -> None:
    family = _interpreter_family(name) or name
    spec = _INTERPRETERS[family]
    if family == "deno":
        if args[:1] == ["eval"]:
            effects.unk("deno eval runs inline code")
        _generic(name, args, fs, effects)
        return
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "-" or not a.startswith("-"):
            break
        if a.startswith("--"):
            if a.split("=", 1)[0] in spec.inline_long:
                effects.unk(f"{name} {a.split('=', 1)[0]} runs inline code")
                return
            i += 1
            continue
        for j, letter in enumerate(a[1:], start=1):
            if letter in spec.inline:
                effects.unk(f"{name} -{letter} runs inline code")
                return
            if letter in spec.values:
                value = a[j + 1 :] or (args[i + 1] if i + 1 < len(args) else "")
                if not a[j + 1 :]:
                    i += 1
                if family == "python" and letter == "m":
                    if value == "pip":
                        _pip(args[i + 1 :], fs, effects)
                        return
                    _generic(name, args[i + 1 :], fs, effects)
                    return
                break
        i += 1
    script = args[i] if i < len(args) else None
    if script is None or script == "-":
        if spec.stdin_unknown and not any(a in _INFO_FLAGS for a in args):
            effects.unk(f"{name} reads its program from standard input")
        return
    effects.reads.append(script)
    _generic(name, args[i + 1 :], fs, effects)


# -- everything else --------------------------------------------------------------------------


def _generic(name: str, args: list[str], fs, effects: _Effects) -> None:
    """Arguments of commands we do not model: existing files inside the worktree count as read."""
    for a in args[:MAX_GENERIC_ARGS]:
        candidate = a
        if a.startswith("-"):
            if not a.startswith("--") or "=" not in a:
                continue
            candidate = a.split("=", 1)[1]
        if not candidate or "://" in candidate or "\x00" in candidate or isinstance(candidate, _HomePath):
            continue
        if fs.exists(candidate):
            effects.reads.append(candidate)


_Handler = Callable[[str, list[str], object, _Effects], None]
_HANDLERS: dict[str, _Handler] = {
    **dict.fromkeys(_READERS, _reader),
    **dict.fromkeys(_WRITERS, _writer),
    "grep": _grep,
    "egrep": _grep,
    "fgrep": _grep,
    "rg": _grep,
    "sed": _sed,
    "awk": _awk,
    "gawk": _awk,
    "mawk": _awk,
    "nawk": _awk,
    "find": _find,
    "chmod": _chmod,
    "chown": _chmod,
    "chgrp": _chmod,
    "cp": _copy_like,
    "mv": _copy_like,
    "ln": _copy_like,
    "install": _copy_like,
    "dd": _dd,
    "tar": _tar,
    "curl": _curl,
    "wget": _wget,
    "nc": _netcat,
    "ncat": _netcat,
    "netcat": _netcat,
    "telnet": _telnet,
    "ssh": _ssh,
    "scp": _scp,
    "rsync": _rsync,
    "git": _git,
    "npm": _npm,
    "npx": _npm,
    "pnpm": _npm,
    "pnpx": _npm,
    "yarn": _npm,
    "bunx": _npm,
    "uv": _uv,
    "uvx": _uv,
}


def _classify(argv: list[str], fs, effects: _Effects, *, xargs: bool) -> None:
    name = posixpath.basename(argv[0])
    args = argv[1:]
    if "/" in argv[0]:
        effects.aliases.append([name, *args])
        if fs.exists(argv[0]):
            effects.reads.append(argv[0])  # running a script reads it
    handler: _Handler | None = _HANDLERS.get(name)
    if handler is None and re.fullmatch(r"pip[0-9.]*", name):
        handler = lambda _n, a, f, e: _pip(a, f, e)  # noqa: E731
    if handler is None and _interpreter_family(name):
        handler = _interpreter
    if handler is None:
        _generic(name, args, fs, effects)
        if name in _SHELLS:
            effects.reads.extend(a for a in args[:1] if not a.startswith("-"))
        return
    handler(name, args, fs, effects)
    if xargs:
        effects.unk(f"xargs passes arguments that are not visible to {name}")


# ---------------------------------------------------------------------------------------------
# Canonicalisation
# ---------------------------------------------------------------------------------------------


class _Collector:
    def __init__(self, paths: _Paths) -> None:
        self.paths = paths
        self.resources: dict[Resource, None] = {}
        self.recursive: dict[Resource, None] = {}
        self.unknown: list[str] = []
        self.outside: list[str] = []

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
                target = _HomePath(chdir.text) if chdir.home else chdir.text
                moved.extend(collector.path("Read", target, cwd)[:1])
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
    )


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

_DEFAULTS: dict[str, dict[str, str]] = {
    "plan": {"Read": "allow", "Edit": "deny", "Bash": "deny", "Git": "deny", "Net": "deny"},
    "ask": {"Read": "allow", "Edit": "ask", "Bash": "ask", "Git": "ask", "Net": "ask"},
    "edits": {"Read": "allow", "Edit": "allow", "Bash": "ask", "Git": "ask", "Net": "ask"},
    "autonomous": {"Read": "allow", "Edit": "allow", "Bash": "allow", "Git": "allow", "Net": "allow"},
}


def _describe(resource: Resource) -> str:
    if resource.kind == "Bash":
        return f"running `{resource.value}`"
    if resource.kind == "Read":
        return f"reading {resource.value}"
    if resource.kind == "Edit":
        return f"editing {resource.value}"
    if resource.kind == "Git":
        return f"git {resource.value}"
    if resource.kind == "Net":
        return f"network access to {resource.value}"
    return resource.value


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _when(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="minutes")


def evaluate(tool: str, args: dict, ctx: EvalContext) -> Decision:
    """Decide one tool call (see the module docstring for the order). Never raises."""
    action: CanonicalAction | None = None
    try:
        action = canonicalize(tool, args, ctx.worktree)
        return _decide(action, ctx)
    except Exception as exc:  # fail closed: whatever went wrong, the action does not run
        return Decision(
            "deny",
            "error",
            f"The permission check could not evaluate this call ({_short_error(exc)}), so it is denied.",
            action=action,
        )


def _decide(action: CanonicalAction, ctx: EvalContext) -> Decision:
    def decision(verdict: str, reason_type: str, reason: str, rule: str = "") -> Decision:
        return Decision(verdict, reason_type, reason, rule, action)

    # 2. global stops
    grant = ctx.grant
    if grant is None:
        return decision("deny", "revoked", "There is no active grant for this session, so nothing may run.")
    if ctx.fleet_stopped:
        return decision("deny", "guard", "The fleet is stopped; no agent may act until it is restarted.")
    if ctx.pod_paused:
        return decision("deny", "guard", "This session's pod is paused; no agent of the pod may act.")
    if ctx.session_stopped:
        return decision("deny", "guard", "This session has been stopped.")
    if grant.revoked:
        return decision("deny", "revoked", f"Grant {grant.id} (version {grant.version}) has been revoked.")
    if ctx.now < grant.not_before:
        return decision(
            "deny", "expired", f"The grant window opens at {_when(grant.not_before)}; nothing may run before."
        )
    if ctx.now >= grant.expires_at:
        return decision("deny", "expired", f"The grant expired at {_when(grant.expires_at)}.")
    if ctx.delegator_active is not True:
        return decision("deny", "revoked", "The delegator is no longer active, so their authority cannot be used.")
    if grant.mode not in MODES:
        raise ValueError(f"unknown grant mode {grant.mode!r}")
    deny_rules = _parse_rule_list("deny", grant.deny)
    ask_rules = _parse_rule_list("ask", grant.ask)
    allow_rules = _parse_rule_list("allow", grant.allow)
    resources = action.resources
    root = os.path.realpath(ctx.worktree)

    def rule_hit(rules: tuple[Rule, ...]) -> tuple[str, Rule] | None:
        """The first rule matching a resource, or something below a recursively touched directory."""
        found = _first_match(rules, resources, fold_case=True)
        if found:
            return _upper_first(_describe(found[0])), found[1]
        for resource in action.recursive:
            for rule in rules:
                if rule.kind == resource.kind and _matches_below(rule.specifier, resource.value, root, fold_case=True):
                    return f"{_upper_first(_describe(resource))} (with everything below it)", rule
        return None

    # 3. outside the worktree, then deny rules (nothing overrides these)
    if action.outside:
        return decision("deny", "guard", f"Agents work inside their worktree only: {action.outside}.")
    hit = rule_hit(deny_rules)
    if hit:
        what, rule = hit
        return decision("deny", "rule", f"{what} is denied by the rule {rule.text}.", rule.text)

    # 4. budget
    meta = action.tool in META_TOOLS
    if ctx.budget_exhausted and not meta:
        return decision(
            "deny", "budget", f"The budget is used up ({ctx.budget_exhausted}); only finish and write_handoff may run."
        )

    # 5. a human allowed exactly this action once
    if action.hash in ctx.approved_action_hashes:
        return decision("allow", "human", "A human approved exactly this action.")
    if meta:
        return decision("allow", "mode", f"{action.tool} is always allowed while the grant is active.")

    # 6. ask rules
    hit = rule_hit(ask_rules)
    if hit:
        what, rule = hit
        return decision("ask", "rule", f"{what} needs a human: it matches the ask rule {rule.text}.", rule.text)

    # 7. allow rules and the mode's defaults, resource by resource; guards ask on top
    defaults = dict(_DEFAULTS[grant.mode])
    if ctx.sandbox_available is not True and defaults["Bash"] == "allow":
        defaults["Bash"] = "ask"
    needed: list[Rule] = []
    mode_denied: list[Resource] = []
    mode_asks: list[Resource] = []
    guard_asks: list[str] = []
    for resource in resources:
        covering = _first_match(allow_rules, [resource], fold_case=False)
        default = defaults.get(resource.kind, "deny")
        if resource.kind == "Bash" and ctx.sandbox_available is not True and default != "deny":
            # no OS sandbox: an allow rule cannot contain what a command does, so a human decides
            mode_asks.append(resource)
            continue
        if covering:
            if default != "allow" or resource.kind == "Net":
                needed.append(covering[1])
        elif default == "deny":
            mode_denied.append(resource)
        elif resource.kind == "Net":
            guard_asks.append(f"network access to {resource.value} needs a human: no Net(...) allow rule covers it")
        elif default == "ask":
            mode_asks.append(resource)
        pattern = _protected(resource)
        if pattern:
            verb = "editing" if resource.kind == "Edit" else "reading"
            guard_asks.append(f"{verb} {resource.value} needs a human: it is a protected path ({pattern})")
    for resource in action.recursive:
        patterns = PROTECTED_PATTERNS if resource.kind == "Edit" else PROTECTED_READ_PATTERNS
        for pattern in patterns:
            if _matches_below(pattern, resource.value, root, fold_case=True):
                verb = "editing" if resource.kind == "Edit" else "reading"
                guard_asks.append(
                    f"{verb} everything below {resource.value} needs a human: it contains a protected path ({pattern})"
                )
                break
    if mode_denied:
        first = mode_denied[0]
        why = "plan mode is read only" if grant.mode == "plan" else f"{grant.mode} mode does not allow it"
        return decision("deny", "mode", f"{_upper_first(_describe(first))} is not allowed: {why}.")
    if action.unknown:
        return decision(
            "ask", "guard", f"This command needs a human because it cannot be analysed safely: {action.unknown}."
        )
    if guard_asks:
        return decision("ask", "guard", _upper_first(guard_asks[0]) + ".")
    if mode_asks:
        first = mode_asks[0]
        return decision("ask", "mode", f"In {grant.mode} mode, {_describe(first)} needs a human's approval.")
    if needed:
        rule = needed[0]
        return decision("allow", "rule", f"Allowed by the rule {rule.text}.", rule.text)
    return decision("allow", "mode", f"Allowed by {grant.mode} mode.")
