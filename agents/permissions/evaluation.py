"""Evaluation: the decision for one tool call under a grant, in the order the package docstring
gives (global stops, outside the worktree, deny rules, budget, a human's approval, ask rules,
then the mode's defaults and allow rules with the guards on top).

:func:`evaluate` never raises: whatever goes wrong inside becomes a ``deny`` with
``reason_type="error"``. The caller builds the :class:`EvalContext` (agents.runtime.authorize);
nothing here reads the database.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from datetime import datetime

from agents.permissions.canonical import META_TOOLS, CanonicalAction, canonicalize
from agents.permissions.rules import (
    PROTECTED_PATTERNS,
    PROTECTED_READ_PATTERNS,
    Resource,
    Rule,
    _first_match,
    _matches_below,
    _parse_rule_list,
    _protected,
)
from agents.permissions.shell import _short_error
from agents.permissions.spelling import covers

MODES = ("plan", "ask", "edits", "autonomous")


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
class Decision:
    decision: str  # allow | deny | ask
    reason_type: str  # rule | mode | guard | budget | expired | revoked | error | human
    reason: str
    rule: str = ""
    action: CanonicalAction | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


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

    # Inside the sandbox, what Read deny rules and the secret guard cover is masked (agents.permissions
    # .masks): a command reading a whole tree (grep -r, rg, tar c) reads nothing of it, so the tree is
    # not denied for what lies below it. Paths the command names itself still are.
    masked_reads = action.tool == "run_command" and ctx.sandbox_available is True

    def rule_hit(rules: tuple[Rule, ...]) -> tuple[str, Rule] | None:
        """The first rule matching a resource in any spelling of its options, or something below a
        recursively touched directory."""
        found = _first_match(rules, resources, fold_case=True)
        if found:
            return _upper_first(_describe(found[0])), found[1]
        for resource in resources:
            for rule in rules:
                if covers(rule, resource):
                    return _upper_first(_describe(resource)), rule
        for resource in action.recursive:
            if masked_reads and resource.kind == "Read":
                continue
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
        if masked_reads and resource.kind == "Read":
            continue
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
    wrapped = _denied_word_in_unmodelled(action, deny_rules)
    if wrapped:
        return decision("ask", "guard", wrapped)
    if guard_asks:
        return decision("ask", "guard", _upper_first(guard_asks[0]) + ".")
    if mode_asks:
        first = mode_asks[0]
        return decision("ask", "mode", f"In {grant.mode} mode, {_describe(first)} needs a human's approval.")
    if needed:
        rule = needed[0]
        return decision("allow", "rule", f"Allowed by the rule {rule.text}.", rule.text)
    return decision("allow", "mode", f"Allowed by {grant.mode} mode.")


_WORD_SPLIT = re.compile(r"[\s;|&()<>`'\"{}=]+")


def _denied_programs(deny_rules: tuple[Rule, ...]) -> dict[str, Rule]:
    """The command words Bash deny rules name (``git`` for ``Bash(git push *)``)."""
    named: dict[str, Rule] = {}
    for rule in deny_rules:
        if rule.kind != "Bash":
            continue
        first = rule.specifier.split()[0] if rule.specifier.split() else ""
        if first and not any(c in first for c in "*?["):
            named.setdefault(posixpath.basename(first), rule)
    return named


def _denied_word_in_unmodelled(action: CanonicalAction, deny_rules: tuple[Rule, ...]) -> str | None:
    """Unknown wrappers fail closed: a program the evaluator does not model, whose arguments contain
    a command word a deny rule names, may run that command in a way no rule can see."""
    named = _denied_programs(deny_rules)
    if not named:
        return None
    for argv in action.unmodelled:
        for argument in argv[1:]:
            for word in _WORD_SPLIT.split(argument):
                rule = named.get(posixpath.basename(word)) if word else None
                if rule is not None:
                    return (
                        f"This command needs a human: `{posixpath.basename(argv[0])}` is a program the permission "
                        f"check does not model, and its arguments name `{posixpath.basename(word)}`, which the "
                        f"rule {rule.text} denies."
                    )
    return None
