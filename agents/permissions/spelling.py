"""Option spellings: ``rm -fr``, ``rm -r -f`` and ``rm --recursive --force`` are one command.

A Bash rule is matched against the command line as text (:meth:`Rule.matches`); for deny and ask
rules that is not enough, because one command has many spellings: clustered, split, long and
abbreviated options, options after the operands, ``git push origin +main`` for ``--force``. Here
both the rule's pattern and the command are reduced to a :class:`Spelling` (program, subcommand,
a set of canonical options, the operands) and the rule covers the command when its options are a
subset of the command's and its operand pattern matches the command's operands.

Used only to make deny and ask rules wider (fail closed), never allow rules. Programs in
:data:`_SPECS` have their option tables; any other program gets a GNU-style reading (``-abc`` is
``-a -b -c``; long options as written).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from functools import lru_cache

from agents.permissions.rules import Resource, Rule, _bash_regex


@dataclass(frozen=True)
class _Spec:
    short: dict[str, str] = field(default_factory=dict)  # short letter -> canonical option
    long: dict[str, str] = field(default_factory=dict)  # long option -> canonical option
    short_values: str = ""  # short options taking a value
    long_values: frozenset[str] = frozenset()  # long options taking a value
    force_refspecs: bool = False  # git push: an operand "+ref" forces


def _spec(short: dict | None = None, long: dict | None = None, **kwargs) -> _Spec:
    return _Spec(short=short or {}, long=long or {}, **kwargs)


_RM = _spec(
    short={"R": "-r"},
    long={
        "--recursive": "-r",
        "--force": "-f",
        "--dir": "-d",
        "--verbose": "-v",
        "--interactive": "-i",
        "--one-file-system": "--one-file-system",
        "--no-preserve-root": "--no-preserve-root",
        "--preserve-root": "--preserve-root",
    },
)
_CP = _spec(
    short={"R": "-r"},
    long={
        "--recursive": "-r",
        "--force": "-f",
        "--archive": "-a",
        "--verbose": "-v",
        "--interactive": "-i",
        "--no-clobber": "-n",
        "--update": "-u",
        "--link": "-l",
        "--symbolic-link": "-s",
        "--target-directory": "-t",
        "--no-target-directory": "-T",
        "--dereference": "-L",
        "--no-dereference": "-P",
        "--preserve": "--preserve",
        "--parents": "--parents",
    },
    short_values="tS",
    long_values=frozenset({"--target-directory", "--suffix", "--sparse", "--reflink", "--backup"}),
)
_MV = _spec(
    long={
        "--force": "-f",
        "--interactive": "-i",
        "--no-clobber": "-n",
        "--update": "-u",
        "--verbose": "-v",
        "--target-directory": "-t",
        "--no-target-directory": "-T",
    },
    short_values="tS",
    long_values=frozenset({"--target-directory", "--suffix", "--backup"}),
)
_CHMOD = _spec(
    long={"--recursive": "-R", "--verbose": "-v", "--changes": "-c", "--silent": "-f", "--quiet": "-f"},
    long_values=frozenset({"--reference", "--from"}),
)
_GIT_PUSH = _spec(
    long={
        "--force": "-f",
        "--force-with-lease": "-f",
        "--force-if-includes": "-f",
        "--delete": "-d",
        "--dry-run": "-n",
        "--verbose": "-v",
        "--quiet": "-q",
        "--set-upstream": "-u",
        "--tags": "--tags",
        "--all": "--all",
        "--branches": "--all",
        "--mirror": "--mirror",
        "--prune": "--prune",
        "--no-verify": "--no-verify",
        "--atomic": "--atomic",
        "--follow-tags": "--follow-tags",
        "--ipv4": "-4",
        "--ipv6": "-6",
        "--push-option": "-o",
        "--repo": "--repo",
        "--receive-pack": "--receive-pack",
        "--exec": "--receive-pack",
        "--signed": "--signed",
        "--recurse-submodules": "--recurse-submodules",
        "--porcelain": "--porcelain",
        "--progress": "--progress",
        "--thin": "--thin",
        "--no-thin": "--no-thin",
    },
    short_values="o",
    long_values=frozenset({"--push-option", "--repo", "--receive-pack", "--exec", "--recurse-submodules"}),
    force_refspecs=True,
)
_GIT_CLEAN = _spec(
    long={"--force": "-f", "--dry-run": "-n", "--quiet": "-q", "--interactive": "-i", "--exclude": "-e"},
    short_values="e",
    long_values=frozenset({"--exclude"}),
)
_GIT_BRANCH = _spec(
    short={"D": "-d -f", "M": "-m -f", "C": "-c -f"},
    long={
        "--delete": "-d",
        "--force": "-f",
        "--move": "-m",
        "--copy": "-c",
        "--remotes": "-r",
        "--all": "-a",
        "--list": "-l",
        "--verbose": "-v",
        "--quiet": "-q",
        "--track": "-t",
        "--set-upstream-to": "-u",
    },
    short_values="u",
    long_values=frozenset({"--set-upstream-to", "--contains", "--no-contains", "--merged", "--no-merged", "--sort"}),
)
_GIT_RESET = _spec(
    long={
        "--hard": "--hard",
        "--soft": "--soft",
        "--mixed": "--mixed",
        "--keep": "--keep",
        "--merge": "--merge",
        "--quiet": "-q",
    }
)
_GIT_CHECKOUT = _spec(
    long={"--force": "-f", "--quiet": "-q", "--track": "-t", "--detach": "--detach", "--orphan": "--orphan"},
    short_values="bB",
    long_values=frozenset({"--orphan", "--conflict"}),
)

_SPECS: dict[tuple[str, str], _Spec] = {
    ("rm", ""): _RM,
    ("cp", ""): _CP,
    ("mv", ""): _MV,
    ("chmod", ""): _CHMOD,
    ("chown", ""): _CHMOD,
    ("chgrp", ""): _CHMOD,
    ("git", "push"): _GIT_PUSH,
    ("git", "clean"): _GIT_CLEAN,
    ("git", "branch"): _GIT_BRANCH,
    ("git", "reset"): _GIT_RESET,
    ("git", "checkout"): _GIT_CHECKOUT,
    ("git", "switch"): _GIT_CHECKOUT,
}
_GENERIC = _Spec()

_GIT_GLOBAL_VALUES = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace", "--config-env", "--exec-path"})


@dataclass(frozen=True)
class Spelling:
    program: str
    sub: str  # git's subcommand, else ""
    options: frozenset[str]
    operands: tuple[str, ...]


def _split_program(tokens: list[str]) -> tuple[str, str, list[str]]:
    program = posixpath.basename(tokens[0])
    rest = tokens[1:]
    if program != "git":
        return program, "", rest
    i = 0
    while i < len(rest) and rest[i].startswith("-"):
        option = rest[i].partition("=")[0]
        i += 2 if option in _GIT_GLOBAL_VALUES and "=" not in rest[i] else 1
    if i >= len(rest):
        return program, "", []
    return program, rest[i], rest[i + 1 :]


def _long(spec: _Spec, name: str) -> list[str]:
    """Canonical options for a long option as typed (exact, else every option it abbreviates)."""
    if name in spec.long:
        return [spec.long[name]]
    prefixed = [canonical for option, canonical in spec.long.items() if option.startswith(name)]
    if prefixed and len(name) > 2:
        return list(dict.fromkeys(prefixed))  # ambiguous abbreviations count as all of them (fail closed)
    return [name]


def _takes_value(spec: _Spec, name: str) -> bool:
    if name in spec.long_values:
        return True
    return len(name) > 3 and any(option.startswith(name) for option in spec.long_values) and name not in spec.long


def spell(tokens: list[str], *, pattern: bool = False) -> Spelling | None:
    """A command (or, ``pattern=True``, a rule's pattern: words with ``*`` stay operands) as a Spelling."""
    if not tokens or not tokens[0] or "*" in tokens[0]:
        return None
    program, sub, rest = _split_program(tokens)
    spec = _SPECS.get((program, sub), _GENERIC)
    options: list[str] = []
    operands: list[str] = []
    i = 0
    while i < len(rest):
        a = rest[i]
        if pattern and "*" in a:
            operands.append(a)
        elif a == "--":
            operands.extend(rest[i + 1 :])
            break
        elif a.startswith("--") and len(a) > 2:
            name, eq, value = a.partition("=")
            canon = _long(spec, name)
            if not eq and _takes_value(spec, name) and i + 1 < len(rest):
                value, eq = rest[i + 1], "="
                i += 1
            options.extend(f"{c}={value}" if eq and c not in ("-f",) else c for c in canon)
        elif a.startswith("-") and len(a) > 1 and not a[1:].isdigit():
            j = 1
            while j < len(a):
                letter = a[j]
                canonical = spec.short.get(letter, "-" + letter)
                if letter in spec.short_values:
                    value = a[j + 1 :]
                    if not value and i + 1 < len(rest):
                        value = rest[i + 1]
                        i += 1
                    options.append(f"{canonical}={value}")
                    break
                options.extend(canonical.split())
                j += 1
        else:
            if spec.force_refspecs and a.startswith("+") and len(a) > 1:
                options.append("-f")
                a = a[1:]
            operands.append(a)
        i += 1
    return Spelling(program, sub, frozenset(options), tuple(operands))


@lru_cache(maxsize=4096)
def _rule_spelling(specifier: str) -> tuple[Spelling, str] | None:
    tokens = specifier.split()
    if len(tokens) < 1:
        return None
    trailing = specifier.endswith(" *")
    if trailing:
        tokens = tokens[:-1]
    spelled = spell(tokens, pattern=True)
    if spelled is None:
        return None
    operands = " ".join(spelled.operands)
    operand_pattern = (operands + " *").strip() if trailing else operands
    return spelled, operand_pattern


def covers(rule: Rule, resource: Resource) -> bool:
    """Whether a Bash rule covers a command in any spelling of its options (see the module docstring)."""
    if rule.kind != "Bash" or resource.kind != "Bash":
        return False
    if rule.matches(resource):
        return True
    parsed = _rule_spelling(rule.specifier)
    if parsed is None:
        return False
    wanted, operand_pattern = parsed
    command = spell(resource.value.split())
    if command is None or command.program != wanted.program or command.sub != wanted.sub:
        return False
    if not wanted.options <= command.options:
        return False
    operands = " ".join(command.operands)
    if operand_pattern in ("*", ""):
        return operand_pattern == "*" or not operands or bool(wanted.options)
    return _bash_regex(operand_pattern).fullmatch(operands) is not None
