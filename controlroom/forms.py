"""Forms of the fleet-level pages: canvas filters, launching one session, launching a night's batch.

Forms only validate and translate input into the arguments of ``agents.services`` calls; they
create nothing themselves (the views call the services).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from django import forms
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from agents import params, selectors
from agents.endpoints import MAX_API_BASE_CHARS, validate_api_base
from agents.models import (
    AgentKind,
    Grant,
    Pod,
    PodMembership,
    Priority,
    Repository,
    Status,
    TaskType,
    User,
)
from agents.services import GrantSpec

# --- canvas filters -------------------------------------------------------------------------------


class CanvasFilterForm(forms.Form):
    """The canvas filters, read from the query string. Invalid values are reported and ignored."""

    pod = forms.ModelChoiceField(
        queryset=Pod.objects.none(), to_field_name="slug", required=False, empty_label="All pods"
    )
    sto = forms.CharField(
        required=False, max_length=150, help_text='"mine" or a username: sessions this person is Single Task Owner of.'
    )
    status = forms.MultipleChoiceField(choices=Status.choices, required=False)
    view = forms.ChoiceField(
        choices=[("tiles", "Tiles"), ("compact", "Compact"), ("map", "Fleet map")],
        required=False,
        help_text="How the sessions are drawn: tiles, compact tiles (100 on one screen) or the fleet map.",
    )
    older = forms.ChoiceField(
        choices=[("1", "also sessions closed before tonight")],
        required=False,
        help_text="1: also the sessions closed before tonight (agents.selectors.current_q).",
    )

    def __init__(self, data, *, user: User):
        super().__init__(data)
        self.user = user
        self.fields["pod"].queryset = selectors.pods_visible_to(user=user)  # type: ignore[attr-defined]  # a ModelChoiceField

    def clean_sto(self) -> User | None:
        value = (self.cleaned_data.get("sto") or "").strip()
        if not value:
            return None
        if value == "mine":
            return self.user
        found = User.objects.filter(username=value).first()
        if found is None:
            raise forms.ValidationError(f'No user named "{value}".')
        return found

    def value_of(self, name: str):
        """The cleaned value of a field, or its empty value when it was invalid (ignored)."""
        if not self.is_bound:
            return None
        self.is_valid()
        return self.cleaned_data.get(name) if name not in self.errors else None

    @property
    def active(self) -> bool:
        return bool(self.value_of("pod") or self.value_of("sto") or self.value_of("status"))

    def problems(self) -> list[str]:
        self.is_valid()
        return [f"Filter {name}: {' '.join(messages)} (ignored)" for name, messages in self.errors.items()]  # type: ignore[arg-type]  # messages: str


# --- launching -----------------------------------------------------------------------------------

TEST_AND_COMMIT = (
    "Bash(python -m pytest *)",
    "Bash(pytest *)",
    "Bash(git status *)",
    "Bash(git diff *)",
    "Git(commit)",
)


@dataclass(frozen=True)
class Preset:
    label: str
    mode: str
    allow: tuple[str, ...] = ()
    ask: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "plan": Preset("Plan: read only", Grant.Mode.PLAN),
    "ask": Preset("Ask: reads allowed, everything else asks a human", Grant.Mode.ASK),
    "edits": Preset("Edits: reads and edits, tests and commits allowed", Grant.Mode.EDITS, allow=TEST_AND_COMMIT),
    "autonomous": Preset(
        "Autonomous: everything but push and network", Grant.Mode.AUTONOMOUS, deny=("Bash(git push *)", "Net(*)")
    ),
}

DATETIME_LOCAL = "%Y-%m-%dT%H:%M"


def _datetime_field(label: str, help_text: str) -> forms.DateTimeField:
    return forms.DateTimeField(
        label=label,
        required=False,
        help_text=help_text,
        input_formats=[DATETIME_LOCAL, "%Y-%m-%d %H:%M"],
        validators=params.DATETIME_BOUNDS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_LOCAL),
    )


class _SharedLaunchFields(forms.Form):
    """What one session and a batch have in common: where, who, which model, how much authority."""

    pod = forms.ModelChoiceField(queryset=Pod.objects.none(), empty_label=None)
    repository = forms.ModelChoiceField(queryset=Repository.objects.all(), empty_label=None)
    base_branch = forms.CharField(required=False, max_length=200, help_text="Empty: the repository's default branch.")
    agent_kind = forms.ChoiceField(
        label="Agent",
        choices=AgentKind.choices,
        initial=AgentKind.BUILTIN,
        required=False,  # empty: the built-in loop
        help_text="Who does the work: the built-in loop, or Claude Code or Codex under the same grant, sandbox and audit.",
    )
    model = forms.CharField(max_length=200, help_text="Any LiteLLM model string; sim/… runs offline.")
    api_base = forms.URLField(
        required=False,
        assume_scheme="https",
        label="API base",
        max_length=MAX_API_BASE_CHARS,
        validators=[validate_api_base],
        help_text="Optional http(s) endpoint for local or hosted OpenAI-compatible servers.",
    )
    task_type = forms.ChoiceField(choices=TaskType.choices, initial=TaskType.FEATURE)
    priority = forms.TypedChoiceField(choices=Priority.choices, coerce=int, initial=Priority.P2)
    preset = forms.ChoiceField(label="Authority", choices=[(k, p.label) for k, p in PRESETS.items()], initial="edits")
    not_before = _datetime_field("Window from", "Empty: now.")
    expires_at = _datetime_field("Window until", "Empty: 8 hours after the start.")
    max_steps = forms.IntegerField(
        label="Budget: steps", required=False, min_value=1, max_value=params.MAX_STEPS, initial=200
    )
    max_cost_usd = forms.DecimalField(
        label="Budget: cost (USD)",
        required=False,
        min_value=Decimal("0.01"),
        max_digits=12,
        decimal_places=4,
        initial=Decimal("5.00"),
    )

    def __init__(self, *args, user: User, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["pod"].queryset = launchable_pods(user=user)  # type: ignore[attr-defined]  # a ModelChoiceField
        self.fields["model"].initial = settings.CONTROLROOM["DEFAULT_MODEL"]

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("not_before"), cleaned.get("expires_at")
        if start and end and end <= start:
            self.add_error("expires_at", "The window must end after it starts.")
        elif end and end <= timezone.now():
            self.add_error("expires_at", "The window has already closed: choose an end in the future.")
        return cleaned

    def grant_spec(self) -> GrantSpec:
        data = self.cleaned_data
        preset = PRESETS[data["preset"]]
        return GrantSpec(
            mode=preset.mode,
            allow=preset.allow,
            ask=preset.ask,
            deny=preset.deny,
            max_steps=data.get("max_steps"),
            max_cost_usd=data.get("max_cost_usd"),
            not_before=data.get("not_before"),
            expires_at=data.get("expires_at"),
            justification=f"launched from the browser ({data['preset']} preset)",
        )

    def delegator_for(self, *, sto: User) -> User:
        """Whose authority the agent uses: the STO, except autonomous mode, which only a pod lead or
        manager may delegate, so the launcher delegates it (and is refused if they may not)."""
        return self.user if self.cleaned_data["preset"] == "autonomous" else sto

    def launch_kwargs(self) -> dict:
        data = self.cleaned_data
        return {
            "pod": data["pod"],
            "repository": data["repository"],
            "base_branch": data.get("base_branch", "").strip(),
            "model": data["model"].strip(),
            "agent_kind": data.get("agent_kind") or AgentKind.BUILTIN,
            "api_base": data.get("api_base") or "",
            "task_type": data["task_type"],
            "by": self.user,
        }


def launchable_pods(*, user: User) -> QuerySet[Pod]:
    """Pods the user can choose in the launch form (the service decides, this only narrows the list)."""
    if user.role == User.Role.MANAGER or user.is_superuser:
        return Pod.objects.all()
    return Pod.objects.filter(memberships__user=user).distinct()


def _owner_choices(user: User) -> QuerySet[User]:
    pods = launchable_pods(user=user)
    return User.objects.filter(memberships__pod__in=pods).distinct().order_by("username")


def _membership_error(*, sto: User, pod: Pod) -> str | None:
    if not PodMembership.objects.filter(pod=pod, user=sto).exists():
        return f"{sto.username} is not a member of pod {pod.name}: the Single Task Owner must belong to the pod."
    return None


class LaunchForm(_SharedLaunchFields):
    """Launch one session."""

    field_order = (
        "pod",
        "sto",
        "name",
        "goal",
        "success_criteria",
        "repository",
        "base_branch",
        "agent_kind",
        "model",
        "api_base",
        "task_type",
        "priority",
        "preset",
        "not_before",
        "expires_at",
        "max_steps",
        "max_cost_usd",
    )

    sto = forms.ModelChoiceField(
        queryset=User.objects.none(), to_field_name="username", label="Single Task Owner", empty_label=None
    )
    name = forms.CharField(required=False, max_length=110, help_text="Empty: the first line of the goal.")
    goal = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), max_length=4000, error_messages={"required": "Give the agent a goal."}
    )
    success_criteria = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000)

    def __init__(self, *args, user: User, **kwargs):
        super().__init__(*args, user=user, **kwargs)
        self.fields["sto"].queryset = _owner_choices(user)  # type: ignore[attr-defined]  # a ModelChoiceField
        self.fields["sto"].initial = user.username

    def clean_goal(self) -> str:
        goal = self.cleaned_data["goal"].strip()
        if not goal:
            raise forms.ValidationError("Give the agent a goal.")
        return goal

    def clean(self):
        cleaned = super().clean()
        sto, pod = cleaned.get("sto"), cleaned.get("pod")
        if sto and pod:
            error = _membership_error(sto=sto, pod=pod)
            if error:
                self.add_error("sto", error)
        return cleaned

    def launch_kwargs(self) -> dict:
        data = self.cleaned_data
        sto = data["sto"]
        return dict(
            super().launch_kwargs(),
            sto=sto,
            goal=data["goal"],
            name=data.get("name", ""),
            success_criteria=data.get("success_criteria", ""),
            priority=data["priority"],
            grant=self.grant_spec(),
            delegator=self.delegator_for(sto=sto),
        )


# One task per line:  [@owner] [P0-P3] goal [| success criteria]
_LINE = re.compile(r"^(?:@(?P<owner>[\w.@+-]+)\s+)?(?:\[?(?P<prio>[Pp][0-3])\]?\s+)?(?P<rest>.*)$")
MAX_BATCH_LINES = 200
MAX_LINE_CHARS = 2000


@dataclass(frozen=True)
class BatchLine:
    number: int  # 1-based line number in the text area
    goal: str
    success_criteria: str
    sto: User
    priority: int


class BatchLaunchForm(_SharedLaunchFields):
    """Plan the night: one task per line, shared settings. The view launches them in ONE transaction."""

    field_order = (
        "pod",
        "sto",
        "tasks",
        "repository",
        "base_branch",
        "agent_kind",
        "model",
        "api_base",
        "task_type",
        "priority",
        "preset",
        "not_before",
        "expires_at",
        "max_steps",
        "max_cost_usd",
    )

    sto = forms.ModelChoiceField(
        queryset=User.objects.none(),
        to_field_name="username",
        required=False,
        label="Single Task Owner",
        empty_label="(per line: @username)",
    )
    tasks = forms.CharField(
        widget=forms.Textarea(
            attrs={
                "rows": 8,
                "placeholder": "@sam P1 Fix the rounding bug in totals | tests pass\nAdd docstrings to shopcart/cart.py",
            }
        ),
        help_text="One task per line: [@owner] [P0–P3] goal [| success criteria]. Blank lines and lines starting with # are skipped.",
        error_messages={"required": "Write at least one task."},
    )

    def __init__(self, *args, user: User, **kwargs):
        super().__init__(*args, user=user, **kwargs)
        self.fields["sto"].queryset = _owner_choices(user)  # type: ignore[attr-defined]  # a ModelChoiceField
        self.lines: list[BatchLine] = []

    def clean(self):
        cleaned = super().clean()
        pod, shared_sto, text = cleaned.get("pod"), cleaned.get("sto"), cleaned.get("tasks")
        if shared_sto and pod:
            error = _membership_error(sto=shared_sto, pod=pod)
            if error:
                self.add_error("sto", error)
                return cleaned
        if pod is None or not text:
            return cleaned
        raw_lines = text.splitlines()
        if len(raw_lines) > MAX_BATCH_LINES * 2:
            self.add_error("tasks", f"At most {MAX_BATCH_LINES} tasks per batch.")
            return cleaned
        owners = {u.username: u for u in User.objects.filter(memberships__pod=pod)}
        lines, errors = [], []
        for number, raw in enumerate(raw_lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) > MAX_LINE_CHARS:
                errors.append(f"Line {number}: longer than {MAX_LINE_CHARS} characters.")
                continue
            match = _LINE.match(line)
            owner_name, prio, rest = match.group("owner"), match.group("prio"), match.group("rest")
            goal, _, criteria = rest.partition("|")
            goal, criteria = goal.strip(), criteria.strip()
            if not goal:
                errors.append(f"Line {number}: no goal.")
                continue
            if owner_name:
                sto = owners.get(owner_name)
                if sto is None:
                    errors.append(f"Line {number}: @{owner_name} is not a member of pod {pod.name}.")
                    continue
            elif shared_sto is not None:
                sto = shared_sto
            else:
                errors.append(
                    f"Line {number}: no Single Task Owner: choose one above or start the line with @username."
                )
                continue
            priority = int(prio[1]) if prio else cleaned.get("priority", Priority.P2)
            lines.append(BatchLine(number=number, goal=goal, success_criteria=criteria, sto=sto, priority=priority))
        if errors:
            self.add_error("tasks", errors)
        elif not lines:
            self.add_error("tasks", "Write at least one task.")
        elif len(lines) > MAX_BATCH_LINES:
            self.add_error("tasks", f"At most {MAX_BATCH_LINES} tasks per batch ({len(lines)} given).")
        self.lines = lines
        return cleaned

    def launch_kwargs_for(self, line: BatchLine) -> dict:
        return dict(
            super().launch_kwargs(),
            sto=line.sto,
            goal=line.goal,
            success_criteria=line.success_criteria,
            priority=line.priority,
            grant=self.grant_spec(),
            delegator=self.delegator_for(sto=line.sto),
        )
