"""A plausible past month for the demo: ``seed_history(...)`` writes N nights of agent sessions
before tonight's fleet, so that on first start the leaders' dashboard, the night timeline and the
digest show figures, lanes and decisions instead of n = 0.

Written the way the product writes: every row and every audit event comes from the services the
product itself uses — ``session_launch``, ``set_status``, the runtime's ``agent_event_record``,
``escalation_open`` / ``session_park``, ``escalation_decide`` (by the STO, the pod lead or the
manager, after minutes or hours), ``session_block_expired``, ``session_cancel`` and audit
checkpoints — on a simulated clock (``django.utils.timezone.now``
and the models' ``default=timezone.now`` replaced while it runs), in time order, oldest first:
every chain grows in time, the log's ids follow its times, and ``audit_verify`` passes.

What is simulated, and says so:

- the agents' work: model calls (tokens drawn from plausible ranges, cost = tokens × the list
  price of the model in ``PRICES``), tool calls and test runs are audit events whose payload
  carries ``"simulated": true``; the sessions are tagged ``demo-history``.
- git: the past sessions have no branch. No ``git.commit`` event is written (there is no commit
  to name); reviews go through ``review_approve_without_git``, ``review_reject_without_git`` and
  ``review_revert_without_git`` (the review services' own checks, rows and events, without the
  git work), whose details and events say that nothing was merged, archived or reverted.

Nothing leaves the process while it runs (``agents.events.offline``: no live update, no step
enqueued), and no past session is left running or queued: each ends closed (approved, rejected,
cancelled) or, for the last night when the morning has not come yet, awaiting its review.

Only into a database without agent sessions: the past can only be written before the present.
A second run finds sessions and does nothing.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.db import transaction
from django.utils import timezone

from agents import services
from agents.events import offline
from agents.management.commands.seed_demo import demo_people, demo_repository
from agents.models import AgentSession, AgentStep, Escalation, Grant, Pod, Status, TaskType, ToolCall, User
from agents.selectors import active_grant
from audit.chain import checkpoint_if_changed
from audit.models import AuditEvent
from reviews import services as review_services

HISTORY_TAG = "demo-history"
DUSK_HOUR = 20  # the night's sessions are launched around 20:00 ...
DAWN_HOUR = 7  # ... and their grants end at 07:00
NIGHT = timedelta(hours=24 - DUSK_HOUR + DAWN_HOUR)
MORNING = timedelta(hours=4)  # reviews happen in the four hours after dawn
MARGIN = timedelta(minutes=15)  # the last night's dawn is at least this long before now
TICK = timedelta(microseconds=1000)  # the simulated clock moves at each reading: times strictly grow

# List prices in USD per million tokens (input, output), as published by the providers.
PRICES: dict[str, tuple[Decimal, Decimal]] = {
    "anthropic/claude-sonnet-4-5": (Decimal("3.00"), Decimal("15.00")),
    "openai/gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
    "openai/gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
}
MODELS = list(PRICES)

# Task names: (task type, template); {area} is the pod's subject.
TEMPLATES = [
    (TaskType.FIX, "Fix rounding of {area} totals"),
    (TaskType.FIX, "Fix the flaky {area} integration test"),
    (TaskType.FIX, "Fix the N+1 query on the {area} list page"),
    (TaskType.FIX, "Fix time zones in {area} reports"),
    (TaskType.FEATURE, "Add CSV export to {area}"),
    (TaskType.FEATURE, "Add pagination to the {area} API"),
    (TaskType.FEATURE, "Add retries with backoff to the {area} client"),
    (TaskType.FEATURE, "Add audit fields to {area} records"),
    (TaskType.TESTS, "Cover {area} edge cases with tests"),
    (TaskType.TESTS, "Add property tests for {area} parsing"),
    (TaskType.DOCS, "Document the {area} API"),
    (TaskType.DOCS, "Write the {area} on-call runbook"),
    (TaskType.REFACTOR, "Extract {area} validation into one module"),
    (TaskType.REFACTOR, "Replace the hand-rolled {area} cache"),
    (TaskType.CHORE, "Bump {area} dependencies"),
    (TaskType.CHORE, "Remove dead {area} feature flags"),
]
# What an agent asks a human for: (tool, action, why, reason type, rule "allow always" would add).
ASKS = [
    ("run_command", "curl -sS https://pypi.org/simple/ -o /dev/null", "network access", "rule", "Net(pypi.org)"),
    ("run_command", "pip install -e .[dev]", "a command the grant does not allow", "mode", "Bash(pip install *)"),
    ("edit_file", "Edit(.github/workflows/ci.yml)", "protected path: CI configuration", "guard", ""),
    ("run_command", "rm -rf build dist", "a command the grant does not allow", "mode", "Bash(rm -rf build *)"),
    ("run_command", "make migrations", "a command the grant does not allow", "mode", "Bash(make migrations)"),
]
# Tools an agent uses on a step: (tool, action); pytest runs also record a test run.
WORK = [
    ("read_file", "Read(src/shop/{module}.py)"),
    ("edit_file", "Edit(src/shop/{module}.py)"),
    ("edit_file", "Edit(tests/test_{module}.py)"),
    ("run_command", "python -m pytest -q"),
    ("run_command", "git diff --stat"),
]
DENIED = [("run_command", "git push origin HEAD", "Bash(git push *)"), ("read_file", "Read(.env)", "Read(**/.env*)")]
MODULES = ["pricing", "cart", "orders", "inventory", "catalog", "users"]
ALLOW = (
    "Bash(python -m pytest *)",
    "Bash(pytest *)",
    "Bash(git status *)",
    "Bash(git diff *)",
    "Bash(ls *)",
    "Git(commit)",
)
DENY = ("Bash(git push *)", "Read(**/.env*)", "Edit(**/.env*)")


@dataclass
class HistoryResult:
    nights: int = 0
    sessions: int = 0
    events: int = 0
    escalations: int = 0
    reviews: int = 0
    checkpoints: int = 0
    seconds: float = 0.0
    first_night: date | None = None
    last_night: date | None = None
    skipped: str = ""
    new_logins: list[tuple[str, str, str]] = field(default_factory=list)  # demo users created now

    def summary(self) -> str:
        if self.skipped:
            return f"history: not seeded ({self.skipped})"
        return (
            f"history: {self.nights} nights ({self.first_night} to {self.last_night}), {self.sessions} sessions, "
            f"{self.escalations} escalations, {self.reviews} reviews, {self.events} audit events, "
            f"{self.checkpoints} checkpoints in {self.seconds:.1f} s"
        )


# --- the clock ----------------------------------------------------------------------------------


class SimulatedClock:
    """A stand-in for ``timezone.now``: set to each action's time, moving by ``TICK`` at each
    reading so that times strictly grow; it never goes back."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    def __call__(self) -> datetime:
        self.t += TICK
        return self.t

    def set(self, when: datetime) -> None:
        if when > self.t:
            self.t = when


@contextmanager
def simulated_time(clock: SimulatedClock) -> Iterator[None]:
    """``timezone.now`` (what the services and ``audit.record`` read) and every model field whose
    default is ``timezone.now`` read ``clock`` inside; restored on the way out."""
    real = timezone.now
    fields = [f for model in apps.get_models() for f in model._meta.concrete_fields if f.default is real]

    def use(now) -> None:
        timezone.now = now
        for f in fields:
            f.default = now
            f.__dict__.pop("_get_default", None)  # Field caches its default callable

    use(clock)
    try:
        yield
    finally:
        use(real)


# --- the plan -----------------------------------------------------------------------------------


def history_nights(*, now: datetime, nights: int) -> list[date]:
    """The ``nights`` local dates whose evening starts a night, oldest first; the last is the
    latest night whose dawn is at least ``MARGIN`` before ``now``."""
    day = timezone.localtime(now).date()
    while _dusk(day) + NIGHT + MARGIN > now:
        day -= timedelta(days=1)
    return [day - timedelta(days=i) for i in range(nights - 1, -1, -1)]


def _dusk(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, dtime(DUSK_HOUR, 0)))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _Ctx:
    """One past session while it is being written."""

    pod: Pod
    members: list[User]
    sto: User
    name: str
    task_type: str
    model: str
    mode: str
    on_unanswered: str
    max_steps: int
    launched_by: User
    delegator: User
    night: int
    session: AgentSession | None = None
    step: int = 0
    tool_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal(0))
    escalation: Escalation | None = None
    grant: Grant | None = None  # the active grant, read again whenever a service may have changed it


class _Simulation:
    def __init__(self, *, now: datetime, nights: list[date], seed: int, manager: User, pods, repository) -> None:
        self.now = now
        self.nights = nights
        self.rng = random.Random(seed)
        self.manager = manager
        self.pods = pods
        self.repository = repository
        self.queue: list[tuple[datetime, int, Callable[[], None]]] = []
        self.order = 0
        self.result = HistoryResult(nights=len(nights), first_night=nights[0], last_night=nights[-1])

    # scheduling

    def at(self, when: datetime, action: Callable[[], None]) -> None:
        self.order += 1
        heapq.heappush(self.queue, (when, self.order, action))

    def run(self, clock: SimulatedClock) -> None:
        while self.queue:
            when, _order, action = heapq.heappop(self.queue)
            clock.set(when)
            action()

    def minutes(self, low: float, high: float) -> timedelta:
        return timedelta(minutes=self.rng.uniform(low, high))

    def morning(self, night: int, fraction: float) -> datetime:
        """A time in the morning after night ``night`` (0..1 of it), before now."""
        dawn = _dusk(self.nights[night]) + NIGHT
        end = min(dawn + MORNING, self.now - timedelta(minutes=2))
        start = dawn + min(timedelta(minutes=10), (end - dawn) / 3)
        return start + (end - start) * fraction

    def someone(self, ctx: _Ctx, weights=(0.65, 0.22, 0.13)) -> User:
        """Who acts for a session: its STO, its pod lead or the manager."""
        return self.rng.choices([ctx.sto, ctx.members[0], self.manager], weights=weights)[0]

    # planning

    def plan(self) -> None:
        for index, day in enumerate(self.nights):
            ramp = 0.6 + 0.4 * index / max(1, len(self.nights) - 1)  # the fleet grew over the month
            weekend = day.weekday() in (4, 5)  # Friday and Saturday nights are quiet
            count = round(self.rng.randint(10, 18) * ramp * (0.4 if weekend else 1.0))
            for _ in range(max(3, count)):
                self.plan_session(index)
            morning_checkpoint = self.morning(index, 1.0) + timedelta(seconds=30)
            if morning_checkpoint < self.now:
                self.at(morning_checkpoint, self.checkpoint)

    def plan_session(self, night: int) -> None:
        rng = self.rng
        pod, members = rng.choice(self.pods)
        sto = rng.choice(members)
        task_type, template = rng.choice(TEMPLATES)
        mode = "autonomous" if rng.random() < 0.25 else "edits"
        fate = rng.choices(["success", "fail", "budget", "cancel"], weights=[0.78, 0.07, 0.09, 0.06])[0]
        steps = rng.randint(4, 10)
        ctx = _Ctx(
            pod=pod,
            members=members,
            sto=sto,
            name=template.format(area=pod.name.lower()),
            task_type=task_type,
            model=rng.choices(MODELS, weights=[0.5, 0.3, 0.2])[0],
            mode=mode,
            on_unanswered="deny" if rng.random() < 0.12 else "wait",
            max_steps=steps if fate == "budget" else 60,
            launched_by=sto if mode == "edits" and rng.random() < 0.7 else self.manager,
            delegator=self.manager if mode == "autonomous" else sto,
            night=night,
        )
        dusk = _dusk(self.nights[night])
        dawn = dusk + NIGHT
        t = dusk + self.minutes(-90, 150)
        self.at(t, lambda: self.launch(ctx, dawn))
        t += self.minutes(1, 15)
        self.at(t, lambda: self.status(ctx, Status.RUNNING, ""))
        ask_at = rng.randint(2, steps - 1) if rng.random() < 0.32 else None
        cancel_at = rng.randint(2, steps - 1) if fate == "cancel" else None
        for number in range(1, steps + 1):
            t += self.minutes(2, 9)
            if number == cancel_at:
                self.at(t, lambda: self.cancel(ctx, ctx.sto, "wrong approach: starting over with a smaller task"))
                return
            if number == ask_at:
                resumed = self.plan_ask(ctx, number, t, dawn)
                if resumed is None:  # expired unanswered: blocked at dawn, cancelled in the morning
                    self.at(self.morning(night, rng.random()), lambda: self.cancel(ctx, ctx.sto, "expired overnight"))
                    return
                t = resumed
                continue
            self.at(t, lambda number=number: self.work(ctx, number))  # type: ignore[misc]  # a default binds this number
        t += self.minutes(1, 4)
        if fate == "fail":
            self.at(t, lambda: self.fail(ctx))
            self.plan_review(ctx, choices=("reject",))
        elif fate == "budget":
            self.at(t, lambda: self.out_of_budget(ctx))
            if rng.random() < 0.5:
                self.at(self.morning(night, rng.random()), lambda: self.cancel(ctx, ctx.sto, "out of budget"))
            else:
                self.plan_review(ctx, choices=("reject",))
        else:
            self.at(t, lambda: self.succeed(ctx))
            self.plan_review(ctx, choices=("approve", "reject"))

    def plan_ask(self, ctx: _Ctx, number: int, t: datetime, dawn: datetime) -> datetime | None:
        """Step ``number`` asks; when (and whether) someone answers. The time work resumes, or None
        when the question expired with the grant at dawn. A slow answer still leaves the rest of
        the night's work (at most 10 steps of 9 minutes) before dawn."""
        rng = self.rng
        tool, action, why, reason_type, rule = rng.choice(ASKS)
        deny_now = ctx.on_unanswered == "deny"
        self.at(t, lambda: self.ask(ctx, number, tool, action, why, reason_type, rule, deny_now))
        if deny_now:
            return t + self.minutes(0.5, 2)
        wait = rng.random()
        if wait < 0.55:
            answer = t + self.minutes(3, 50)
        elif wait < 0.85:
            answer = min(t + self.minutes(60, 360), dawn - self.minutes(150, 200))
        else:
            self.at(dawn, lambda: self.expire(ctx))
            return None
        answer = max(answer, t + timedelta(minutes=2))
        decision = rng.choices(["allow-once", "allow-always", "deny"], weights=[0.55, 0.15, 0.3])[0]
        if decision == "allow-always" and not rule:
            decision = "allow-once"
        decider = self.someone(ctx, weights=(0.6, 0.25, 0.15))
        if decision == "allow-always" and decider == ctx.sto and ctx.delegator != ctx.sto:
            decider = ctx.members[0]  # widening a grant delegated by someone else: the pod lead's call
        self.at(answer, lambda: self.decide(ctx, decider, decision))
        return answer + self.minutes(0.5, 2)

    def plan_review(self, ctx: _Ctx, *, choices: tuple[str, ...]) -> None:
        rng = self.rng
        decision = "approve" if "approve" in choices and rng.random() < 0.8 else "reject"
        when = self.morning(ctx.night, rng.random())
        reviewer = self.someone(ctx, weights=(0.7, 0.2, 0.1))
        self.at(when, lambda: self.review(ctx, reviewer, decision))
        if decision == "approve" and rng.random() < 0.08:
            later = when + timedelta(days=rng.uniform(1, 9))
            if later < self.now - timedelta(minutes=1):
                self.at(later, lambda: self.revert(ctx, self.someone(ctx, weights=(0.4, 0.4, 0.2))))

    # the actions: each one the product's own services

    def launch(self, ctx: _Ctx, dawn: datetime) -> None:
        now = timezone.now()
        spec = services.GrantSpec(
            mode=ctx.mode,
            allow=ALLOW,
            deny=DENY,
            ask=("Net(*)",) if ctx.mode == "autonomous" else (),
            max_steps=ctx.max_steps,
            max_cost_usd=Decimal("5.00"),
            max_tokens=600_000,
            not_before=now,
            expires_at=dawn,
            on_unanswered=ctx.on_unanswered,
            justification="overnight fleet",
        )
        ctx.session = services.session_launch(
            pod=ctx.pod,
            sto=ctx.sto,
            goal=ctx.name,
            by=ctx.launched_by,
            repository=self.repository,
            name=ctx.name,
            success_criteria="the tests pass",
            task_type=ctx.task_type,
            priority=self.rng.choice([1, 2, 2, 2, 3]),
            model=ctx.model,
            tags=[HISTORY_TAG],
            grant=spec,
            delegator=ctx.delegator,
            start=False,
        )
        ctx.grant = active_grant(session=ctx.session)
        self.result.sessions += 1

    def locked(self, ctx: _Ctx) -> AgentSession:
        assert ctx.session is not None  # the launch (scheduled first) set it
        return AgentSession.objects.select_for_update().get(pk=ctx.session.pk)

    def status(self, ctx: _Ctx, to: str, reason: str, **changes) -> None:
        with transaction.atomic():
            services.set_status(self.locked(ctx), to, reason=reason, agent=True, locked=True, **changes)

    def agent(self, ctx: _Ctx, kind: str, provenance: str = "", **payload) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        services.agent_event_record(
            kind=kind,
            session=ctx.session,
            grant=ctx.grant,
            provenance=provenance,
            payload={**payload, "simulated": True},
        )

    def model_call(self, ctx: _Ctx, number: int) -> tuple[int, int, Decimal]:
        rng = self.rng
        tokens_in = 4000 + number * rng.randint(1500, 4000)
        tokens_out = rng.randint(200, 1800)
        price_in, price_out = PRICES[ctx.model]
        cost = ((tokens_in * price_in + tokens_out * price_out) / 1_000_000).quantize(Decimal("0.000001"))
        self.agent(
            ctx,
            "model.call",
            step=number,
            model=ctx.model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=cost,
            cost_known=True,
            latency_ms=rng.randint(1500, 25000),
        )
        ctx.step, ctx.tokens_in, ctx.tokens_out, ctx.cost = (
            number,
            ctx.tokens_in + tokens_in,
            ctx.tokens_out + tokens_out,
            ctx.cost + cost,
        )
        return tokens_in, tokens_out, cost

    def tool(self, ctx: _Ctx, number: int, index: int, tool: str, action: str, **fields) -> None:
        payload: dict[str, Any] = dict(
            step=number,
            index=index,
            tool=tool,
            action=action,
            action_hash=_sha(action),
            decision="allow",
            reason_type="rule",
            reason="",
            rule="",
            state="done",
            result="",
            exit_code=0 if tool == "run_command" else None,
            duration_ms=self.rng.randint(20, 4000),
        )
        payload.update(fields)
        self.agent(ctx, "tool.call", provenance=payload["reason_type"], **payload)
        ctx.tool_calls += 1

    def counters(self, ctx: _Ctx) -> None:
        """The session's counters as the runtime keeps them (nobody reads them while the past is
        written, so they are stored when the session next changes status)."""
        assert ctx.session is not None  # the launch (scheduled first) set it
        AgentSession.objects.filter(pk=ctx.session.pk).update(
            steps=ctx.step,
            tool_calls=ctx.tool_calls,
            tokens_in=ctx.tokens_in,
            tokens_out=ctx.tokens_out,
            cost_usd=ctx.cost,
            heartbeat_at=timezone.now(),
        )

    def work(self, ctx: _Ctx, number: int) -> None:
        """One step: a model call, a tool call (sometimes one the grant denies), sometimes tests."""
        rng = self.rng
        with transaction.atomic():
            self.model_call(ctx, number)
            if rng.random() < 0.07:
                tool, action, rule = rng.choice(DENIED)
                self.tool(
                    ctx,
                    number,
                    0,
                    tool,
                    action,
                    decision="deny",
                    reason_type="rule",
                    reason=f"denied by {rule}",
                    rule=rule,
                    state="denied",
                    exit_code=None,
                )
            else:
                tool, action = rng.choice(WORK)
                action = action.format(module=rng.choice(MODULES))
                self.tool(ctx, number, 0, tool, action, rule="Bash(python -m pytest *)" if "pytest" in action else "")
                if "pytest" in action:
                    passed = rng.random() < 0.7
                    self.agent(
                        ctx,
                        "tests.run",
                        command=action,
                        exit_code=0 if passed else 1,
                        passed=passed,
                        summary=f"{rng.randint(20, 80)} passed" if passed else "1 failed, 31 passed",
                    )

    def ask(
        self, ctx: _Ctx, number: int, tool: str, action: str, why: str, reason_type: str, rule: str, deny_now: bool
    ) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        assert ctx.grant is not None  # the launch (scheduled first) issued it
        with transaction.atomic():
            self.model_call(ctx, number)
            grant = ctx.grant
            step = AgentStep.objects.create(
                session=ctx.session,
                number=number,
                state=AgentStep.State.DONE,
                model=ctx.model,
                finished_at=timezone.now(),
            )
            call = ToolCall.objects.create(
                session=ctx.session,
                step=step,
                index=0,
                call_id=f"history-{ctx.session.pk}-{number}",
                name=tool,
                action=action,
                action_hash=_sha(action),
                decision="ask",
                reason_type=reason_type,
                reason=why,
                rule=rule,
                grant=grant,
                state=ToolCall.State.DENIED if deny_now else ToolCall.State.ESCALATED,
            )
            ctx.escalation = services.escalation_open(
                session=ctx.session,
                grant=grant,
                tool_call=call,
                action=action,
                action_hash=call.action_hash,
                reason=why,
                reason_type=reason_type,
                matched_rule="Net(*)" if reason_type == "rule" else "",
                suggested_rules=[rule] if rule else [],
                deny_now=deny_now,
            )
            ctx.tool_calls += 1
            self.counters(ctx)
            self.result.escalations += 1
            if not deny_now:
                services.set_status(
                    self.locked(ctx),
                    Status.NEEDS_APPROVAL,
                    reason=f"asks: {action}",
                    agent=True,
                    locked=True,
                    current_activity=f"waiting for approval: {action}"[:200],
                )

    def decide(self, ctx: _Ctx, decider: User, decision: str) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        assert ctx.escalation is not None  # the ask (scheduled before) opened it
        reasons = {
            "allow-once": "fine for this run",
            "allow-always": "expected for this task",
            "deny": "not from an agent: leave it for the morning",
        }
        services.escalation_decide(escalation=ctx.escalation, by=decider, decision=decision, reason=reasons[decision])
        ctx.grant = active_grant(session=ctx.session)  # "allow always" issued the next version

    def expire(self, ctx: _Ctx) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        self.counters(ctx)
        services.session_block_expired(session=ctx.session)

    def cancel(self, ctx: _Ctx, by: User, reason: str) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        self.counters(ctx)
        services.session_cancel(session=ctx.session, by=by, reason=reason)

    def fail(self, ctx: _Ctx) -> None:
        with transaction.atomic():
            self.agent(
                ctx, "model.error", step=ctx.step + 1, error="upstream 503", attempt=4, transient=True, final=True
            )
            self.counters(ctx)
            self.status(ctx, Status.FAILED, "model error after 4 attempt(s): upstream 503")

    def out_of_budget(self, ctx: _Ctx) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        self.counters(ctx)
        reason = f"budget: max steps ({ctx.max_steps}) reached"
        services.session_park(
            session_id=ctx.session.pk,
            status=Status.BLOCKED,
            reason=reason,
            grant=ctx.grant,
            event="budget.exhausted",
            payload={"reason": reason, "simulated": True},
        )

    def succeed(self, ctx: _Ctx) -> None:
        with transaction.atomic():
            self.tool(ctx, ctx.step, 1, "finish", "finish", reason_type="rule")
            self.counters(ctx)
            self.status(
                ctx,
                Status.SUCCEEDED,
                "finished",
                summary=f"Done: {ctx.name.lower()}; the tests pass.",
                current_activity=f"done: {ctx.name.lower()}"[:200],
            )

    def review(self, ctx: _Ctx, reviewer: User, decision: str) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        if decision == "approve":
            review_services.review_approve_without_git(session=ctx.session, reviewer=reviewer)
        else:
            comment = self.rng.choice(
                ["not what the task asked", "too broad: split it", "the tests do not cover the change", ""]
            )
            review_services.review_reject_without_git(session=ctx.session, reviewer=reviewer, comment=comment)
        self.result.reviews += 1

    def revert(self, ctx: _Ctx, reviewer: User) -> None:
        assert ctx.session is not None  # the launch (scheduled first) set it
        review_services.review_revert_without_git(
            session=ctx.session, reviewer=reviewer, comment="broke the nightly build"
        )
        self.result.reviews += 1

    def checkpoint(self) -> None:
        if checkpoint_if_changed(reason="periodic") is not None:
            self.result.checkpoints += 1


def seed_history(
    *, nights: int = 30, seed: int = 2026, password: str, same_password: bool = False, now: datetime | None = None
) -> HistoryResult:
    """Write ``nights`` past nights of the demo fleet (see the module's docstring), in one
    transaction. Does nothing (``skipped`` says why) when the database already has sessions."""
    if nights < 1:
        raise ValueError("nights must be at least 1")
    started = time.perf_counter()
    now = now or timezone.now()
    if AgentSession.objects.exists():
        return HistoryResult(skipped="the database already has agent sessions: the past is written before them")
    night_days = history_nights(now=now, nights=nights)
    first = _dusk(night_days[0]) - timedelta(hours=3)
    if AuditEvent.objects.filter(created_at__gte=first).exists():
        return HistoryResult(skipped="the audit log already has events in that month: the past is written first")
    clock = SimulatedClock(first)
    events_before = AuditEvent.objects.count()
    with simulated_time(clock), offline(), transaction.atomic():
        repository = demo_repository()
        new_logins: list[tuple[str, str, str]] = []
        manager, pods = demo_people(password, same_password=same_password, new_logins=new_logins)
        simulation = _Simulation(
            now=now, nights=night_days, seed=seed, manager=manager, pods=pods, repository=repository
        )
        simulation.plan()
        simulation.run(clock)
    result = simulation.result
    result.new_logins = new_logins
    result.events = AuditEvent.objects.count() - events_before
    result.seconds = time.perf_counter() - started
    return result
