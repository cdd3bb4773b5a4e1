"""Forms: turn what a human typed into typed values and readable errors. No business logic here:
rules are checked by ``agents.permissions`` and authority by the services."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.utils import timezone

from agents import params, permissions
from agents.models import Grant
from agents.services import GrantSpec

#: One line per mode, shown beside the preset (what the agent may do without asking).
MODE_HELP: dict[str, str] = {
    Grant.Mode.PLAN: "Read only: the agent reads and plans; every edit, command and commit is denied.",
    Grant.Mode.ASK: "Reads are allowed; every edit, command, commit and network call asks a human first.",
    Grant.Mode.EDITS: "Reads and edits in the worktree are allowed; commands, commits and network ask unless a rule allows them.",
    Grant.Mode.AUTONOMOUS: "Everything is allowed unless a deny or ask rule says otherwise (network still needs a Net rule).",
}

RULE_LISTS = ("allow", "ask", "deny")
DATETIME_LOCAL = "%Y-%m-%dT%H:%M"


def rule_lines(text: str) -> list[str]:
    """One rule per line; blank lines are ignored, surrounding spaces dropped, duplicates kept once."""
    return list(dict.fromkeys(line.strip() for line in (text or "").splitlines() if line.strip()))


def rule_errors(rules: list[str]) -> list[str]:
    """Every unusable rule of one list, each message naming the rule (from ``permissions.RuleError``)."""
    errors = []
    for rule in rules:
        try:
            permissions.parse_rule(rule)
        except permissions.RuleError as exc:
            errors.append(str(exc))
    return errors


def rule_list_errors(rules: list[str]) -> list[str]:
    """``rule_errors``, after the limits of one list: at most ``params.MAX_RULES`` rules of at most
    ``params.MAX_RULE_CHARS`` characters each (so nothing huge is parsed or stored)."""
    if len(rules) > params.MAX_RULES:
        return [f"At most {params.MAX_RULES} rules in one list ({len(rules)} given)."]
    long = next((rule for rule in rules if len(rule) > params.MAX_RULE_CHARS), None)
    if long is not None:
        return [f"A rule is at most {params.MAX_RULE_CHARS} characters: {long[:60]}… has {len(long)}."]
    return rule_errors(rules)


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, **kwargs) -> None:
        super().__init__(format=DATETIME_LOCAL, **kwargs)


def _rules_field(label: str, help_text: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        help_text=help_text,
        strip=False,
        # a generous cap on the raw text (every rule at its longest); the list itself is checked in clean
        max_length=params.MAX_RULES * (params.MAX_RULE_CHARS + 2),
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "autocapitalize": "off", "autocomplete": "off"}),
    )


def _positive(label: str, maximum: int, help_text: str = "") -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        required=False,
        min_value=1,
        max_value=maximum,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"inputmode": "numeric", "placeholder": "no limit"}),
    )


class GrantForm(forms.Form):
    """A new version of a session's grant. Empty budget fields mean "no limit"."""

    mode = forms.ChoiceField(choices=Grant.Mode.choices, widget=forms.RadioSelect)
    allow = _rules_field("Allow", "One rule per line, e.g. Bash(pytest *), Git(commit), Read(src/**)")
    ask = _rules_field("Ask", "These always ask a human, even where the mode would allow.")
    deny = _rules_field("Deny", "Nothing overrides a deny rule, not even a human's allow-once.")
    max_steps = _positive("Max steps", params.MAX_STEPS)
    max_tokens = _positive("Max tokens", params.MAX_TOKENS)
    max_cost_usd = forms.DecimalField(
        label="Max cost (USD)",
        required=False,
        min_value=Decimal("0.0001"),
        max_digits=12,
        decimal_places=4,
        widget=forms.NumberInput(attrs={"inputmode": "decimal", "step": "0.01", "placeholder": "no limit"}),
    )
    max_wall_minutes = forms.DecimalField(
        label="Max wall time (minutes)",
        required=False,
        min_value=Decimal("0.02"),
        max_digits=9,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"inputmode": "decimal", "step": "1", "placeholder": "no limit"}),
    )
    max_tool_calls = _positive("Max tool calls", params.MAX_TOOL_CALLS)
    not_before = forms.DateTimeField(
        label="Not before",
        required=False,
        input_formats=[DATETIME_LOCAL, "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
        validators=params.DATETIME_BOUNDS,
        widget=DateTimeLocalInput(),
        help_text="Empty: now.",
    )
    expires_at = forms.DateTimeField(
        label="Expires at",
        required=False,
        input_formats=[DATETIME_LOCAL, "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
        validators=params.DATETIME_BOUNDS,
        widget=DateTimeLocalInput(),
        help_text="Empty: 8 hours after it starts.",
    )
    on_unanswered = forms.ChoiceField(
        label="When nobody answers",
        choices=Grant.OnUnanswered.choices,
        initial=Grant.OnUnanswered.WAIT,
        widget=forms.RadioSelect,
    )
    justification = forms.CharField(
        label="Justification",
        required=False,
        max_length=500,
        widget=forms.TextInput(attrs={"placeholder": "why this change (kept in the audit log)"}),
    )

    def __init__(self, *args, session_id: int | None = None, **kwargs) -> None:
        if session_id is not None:
            kwargs.setdefault("auto_id", f"grant-{session_id}-%s")
        super().__init__(*args, **kwargs)

    @property
    def rule_fields(self) -> list:
        return [(name, self[name]) for name in RULE_LISTS]

    @property
    def budget_fields(self) -> list:
        return [
            self[name] for name in ("max_steps", "max_tokens", "max_cost_usd", "max_wall_minutes", "max_tool_calls")
        ]

    @property
    def window_fields(self) -> list:
        return [self["not_before"], self["expires_at"]]

    @classmethod
    def initial_from(cls, grant: Grant | None) -> dict:
        """Values of the editor when it opens: the current grant, so a change starts from what holds now."""
        if grant is None:
            return {"mode": Grant.Mode.EDITS, "on_unanswered": Grant.OnUnanswered.WAIT, "max_steps": 200}
        minutes = None
        if grant.max_wall_seconds is not None:
            minutes = (Decimal(grant.max_wall_seconds) / 60).quantize(Decimal("0.01")).normalize()
        now = timezone.now()
        return {
            "mode": grant.mode,
            "allow": "\n".join(grant.allow),
            "ask": "\n".join(grant.ask),
            "deny": "\n".join(grant.deny),
            "max_steps": grant.max_steps,
            "max_tokens": grant.max_tokens,
            "max_cost_usd": grant.max_cost_usd,
            "max_wall_minutes": minutes,
            "max_tool_calls": grant.max_tool_calls,
            # a window that already opened starts "now" again; a future one is kept
            "not_before": timezone.localtime(grant.not_before) if grant.not_before > now else None,
            "expires_at": timezone.localtime(grant.expires_at) if grant.expires_at > now else None,
            "on_unanswered": grant.on_unanswered,
            "justification": "",
        }

    def _clean_rules(self, name: str) -> list[str]:
        rules = rule_lines(self.cleaned_data.get(name, ""))
        errors = rule_list_errors(rules)
        if errors:
            raise forms.ValidationError(errors)
        return rules

    def clean_allow(self) -> list[str]:
        return self._clean_rules("allow")

    def clean_ask(self) -> list[str]:
        return self._clean_rules("ask")

    def clean_deny(self) -> list[str]:
        return self._clean_rules("deny")

    def clean(self) -> dict:
        data = super().clean()
        assert data is not None  # Form.clean returns cleaned_data
        not_before, expires_at = data.get("not_before"), data.get("expires_at")
        if expires_at is not None:
            start = not_before or timezone.now()
            if expires_at <= start:
                self.add_error("expires_at", "The grant must end after it starts.")
            elif expires_at <= timezone.now():
                self.add_error("expires_at", "The window has already closed: choose an end in the future.")
        return data

    def to_spec(self) -> GrantSpec:
        data = self.cleaned_data
        minutes = data.get("max_wall_minutes")
        return GrantSpec(
            mode=data["mode"],
            allow=tuple(data["allow"]),
            ask=tuple(data["ask"]),
            deny=tuple(data["deny"]),
            max_steps=data.get("max_steps"),
            max_tokens=data.get("max_tokens"),
            max_cost_usd=data.get("max_cost_usd"),
            max_wall_seconds=round(minutes * 60) if minutes is not None else None,
            max_tool_calls=data.get("max_tool_calls"),
            not_before=data.get("not_before"),
            expires_at=data.get("expires_at"),
            on_unanswered=data["on_unanswered"],
            justification=data.get("justification", "").strip(),
        )


class RevokeForm(forms.Form):
    reason = forms.CharField(
        label="Reason", max_length=480, strip=True, error_messages={"required": "Say why the grant is revoked."}
    )


class EscalationDecisionForm(forms.Form):
    decision = forms.ChoiceField(
        choices=[(d, d) for d in ("allow-once", "allow-always", "deny")],
        error_messages={
            "required": "Choose allow once, allow always or deny.",
            "invalid_choice": "Choose allow once, allow always or deny.",
        },
    )
    reason = forms.CharField(required=False, max_length=480, strip=True)
