"""Rules: the ``Tool(specifier)`` grammar, how a rule matches a resource, and the protected paths.

A :class:`Resource` is one thing a tool call touches (``Read(src/a.py)``, ``Bash(git push)``,
``Net(pypi.org)``...); a :class:`Rule` is parsed from a grant's allow, ask or deny list and says
whether it covers a resource. Pure string work, except :func:`_matches_below`, which walks a
worktree directory (read-only) for recursive operations. Imports nothing from the rest of the
package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

RULE_KINDS = ("Read", "Edit", "Bash", "Git", "Net")

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

MAX_WALK_ENTRIES = 50_000  # a recursive operation over more entries counts as touching everything


@dataclass(frozen=True)
class Resource:
    kind: str  # Read, Edit, Bash, Git, Net, Meta
    value: str

    def __str__(self) -> str:
        return self.kind if self.kind == "Meta" else f"{self.kind}({self.value})"


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
