"""Demo data: ~20 pods of 3–5 people, a manager and a leader, a real demo repository, and N
agent sessions (default 100) with Single Task Owners and grants. Idempotent."""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher, get_hasher, make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from agents import services
from agents.demo_repo import DEMO_TASKS, create_demo_repo
from agents.models import AgentKind, AgentSession, Pod, PodMembership, Repository, User

POD_NAMES = [
    "Payments",
    "Search",
    "Checkout",
    "Identity",
    "Mobile",
    "Growth",
    "Billing",
    "Catalog",
    "Platform",
    "Data",
    "Notifications",
    "Onboarding",
    "Reliability",
    "Security",
    "Support Tools",
    "Pricing",
    "Inventory",
    "Shipping",
    "Analytics",
    "Developer Experience",
]
FIRST_NAMES = [
    "ada",
    "alan",
    "barbara",
    "brian",
    "carol",
    "dennis",
    "edsger",
    "frances",
    "grace",
    "guido",
    "hedy",
    "ivan",
    "jean",
    "ken",
    "linus",
    "margaret",
    "niklaus",
    "ole",
    "radia",
    "rob",
    "sophie",
    "tim",
    "ursula",
    "vint",
    "whitfield",
    "xiao",
    "yukihiro",
    "zhang",
    "anita",
    "bjarne",
    "charles",
    "donald",
    "ellen",
    "fran",
    "gerald",
    "hal",
    "irene",
    "james",
    "katherine",
    "leslie",
    "mary",
    "nancy",
    "peter",
    "rasmus",
    "shafi",
    "tony",
    "valerie",
    "william",
    "yoshua",
    "zoe",
    "adele",
    "bob",
    "cynthia",
    "dana",
    "erik",
    "fei",
    "gwen",
    "herb",
    "ines",
    "joan",
    "kurt",
    "lynn",
    "mike",
    "nadia",
    "omar",
    "pat",
    "quinn",
    "ravi",
    "sara",
    "tom",
    "uma",
    "victor",
    "wendy",
    "yara",
    "zach",
    "alice",
    "bruno",
    "chen",
    "diego",
    "emma",
]
# Which simulated engineers try something their grant refuses or escalates (and what).
PERSONA_CYCLE = [
    "engineer",
    "engineer",
    "pusher",
    "engineer",
    "networker",
    "engineer",
    "reader",
    "engineer",
    "ci-editor",
    "engineer",
    "engineer",
    "deleter",
]
DEMO_TAG = "demo"
CLAUDE_CODE_SESSIONS = 3  # bin/start's demo: Claude Code sessions when the [agents] extra is installed
CLAUDE_CODE_TASKS = ("fix-discount", "fix-format-money", "report-total")


DEFAULT_DEMO_PASSWORD = "controlroom"


def demo_password() -> str:
    """The `manager` login's password in the demo (documented: $DEMO_PASSWORD or 'controlroom')."""
    return os.environ.get("DEMO_PASSWORD") or DEFAULT_DEMO_PASSWORD


def generated_password() -> str:
    """A distinct password for one demo user (printed once, when the user is created)."""
    return secrets.token_urlsafe(12)


def demo_repository() -> Repository:
    """The demo git repository (created on disk when missing) and its row."""
    repo_path = create_demo_repo(settings.CONTROLROOM["REPOS_DIR"] / "demo-shop")
    repository, _ = Repository.objects.get_or_create(
        name="demo-shop", defaults={"path": str(repo_path), "default_branch": "main"}
    )
    return repository


def demo_people(
    password: str, *, same_password: bool = False, new_logins: list[tuple[str, str, str]] | None = None
) -> tuple[User, list[tuple[Pod, list[User]]]]:
    """The manager, the leader and the ~20 pods of 3–5 people (a lead each); created when missing.

    The manager gets ``password``. Every other user created now gets a distinct generated password,
    appended to ``new_logins`` as (pod or role, username, password) to be printed once; with
    ``same_password`` they all get ``password`` instead (tests and benchmarks that log in as several
    people). The shared password is hashed once (a hash costs ~0.3–0.8 s by design); a generated
    one, 96 random bits, needs no key stretching and is hashed with few iterations (Django raises
    them to the default at its first login, see ``PBKDF2PasswordHasher.must_update``)."""
    shared = _Hashed(password)

    def password_for(group: str, username: str) -> _Hashed | _Generated:
        return shared if same_password else _Generated(group, username, new_logins)

    manager = _user("manager", "Morgan", "Manager", User.Role.MANAGER, shared, is_staff=True, is_superuser=True)
    _user("leader", "Lee", "Leader", User.Role.LEADER, password_for("leader", "leader"))
    pods = []
    name_index = 0
    for pod_index, pod_name in enumerate(POD_NAMES):
        pod, _ = Pod.objects.get_or_create(slug=pod_name.lower().replace(" ", "-"), defaults={"name": pod_name})
        size = 3 + (pod_index % 3)  # 3–5 people
        members = []
        for member_index in range(size):
            first = FIRST_NAMES[name_index % len(FIRST_NAMES)]
            username = f"{first}" if name_index < len(FIRST_NAMES) else f"{first}{name_index}"
            name_index += 1
            user = _user(username, first.capitalize(), pod_name, User.Role.MEMBER, password_for(pod_name, username))
            role = PodMembership.Role.LEAD if member_index == 0 else PodMembership.Role.MEMBER
            PodMembership.objects.get_or_create(user=user, pod=pod, defaults={"role": role})
            members.append(user)
        pods.append((pod, members))
    return manager, pods


def login_lines(password: str, *, same_password: bool, new_logins: list[tuple[str, str, str]]) -> list[str]:
    """What seeding prints about logins: the manager's, and the generated ones created now (once)."""
    lines = [f"login: manager / {password}"]
    if same_password:
        lines.append(f"every other demo user: the same password ({password})")
    elif new_logins:
        lines.append("other demo users (distinct passwords, shown only now):")
        by_group: dict[str, list[str]] = {}
        for group, username, secret in new_logins:
            by_group.setdefault(group, []).append(f"{username} / {secret}")
        lines += [f"  {group}: {', '.join(logins)}" for group, logins in by_group.items()]
    else:
        lines.append("other demo users: passwords as printed when they were created")
    return lines


class _Hashed:
    """A password hashed on first use, once."""

    def __init__(self, raw: str) -> None:
        self.raw, self._encoded = raw, ""

    @property
    def encoded(self) -> str:
        if not self._encoded:
            self._encoded = make_password(self.raw)
        return self._encoded


GENERATED_PASSWORD_ITERATIONS = 1_000


class _Generated:
    """A fresh generated password for one user, drawn (and recorded to be printed) only when used."""

    def __init__(self, group: str, username: str, new_logins: list[tuple[str, str, str]] | None) -> None:
        self.group, self.username, self.new_logins = group, username, new_logins

    @property
    def encoded(self) -> str:
        secret = generated_password()
        if self.new_logins is not None:
            self.new_logins.append((self.group, self.username, secret))
        hasher = get_hasher()  # the site's preferred one (tests configure a fast one)
        if isinstance(hasher, PBKDF2PasswordHasher):
            return hasher.encode(secret, hasher.salt(), iterations=GENERATED_PASSWORD_ITERATIONS)
        return make_password(secret)


def _user(username, first, last, role, password: _Hashed | _Generated, **flags) -> User:
    user, created = User.objects.get_or_create(
        username=username, defaults={"first_name": first, "last_name": last, "role": role, **flags}
    )
    if created or not user.has_usable_password():
        user.password = password.encoded
        user.save(update_fields=["password"])
    return user


class Command(BaseCommand):
    help = "Create demo pods, people, a demo git repository and N agent sessions (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--agents", type=int, default=100)
        parser.add_argument(
            "--password",
            default=None,
            help="the manager's password (default $DEMO_PASSWORD or 'controlroom'); every other demo user"
            " gets a distinct generated password, printed once when the user is created",
        )
        parser.add_argument(
            "--same-password",
            action="store_true",
            help="give every demo user the --password (tests and benchmarks that log in as several people)",
        )
        parser.add_argument("--reset", action="store_true", help="delete the demo sessions and their worktrees first")
        parser.add_argument(
            "--no-start", action="store_true", help="create the sessions without enqueuing their first step"
        )
        parser.add_argument(
            "--claude-code",
            type=int,
            default=0,
            help=f"also this many Claude Code sessions, the real CLI driven by the offline model (bin/start:"
            f" {CLAUDE_CODE_SESSIONS}); none, with a line saying why, when the CLI is not installed"
            " (pip install -e '.[agents]')",
        )

    def handle(self, *args, agents, password, reset, no_start, same_password=False, claude_code=0, **options):
        if agents < 0:
            raise CommandError("--agents must be zero or more")
        if claude_code < 0:
            raise CommandError("--claude-code must be zero or more")
        password = password or demo_password()
        if settings.PRODUCTION and password == DEFAULT_DEMO_PASSWORD:
            raise CommandError(
                f"PRODUCTION=true: the demo's manager password {DEFAULT_DEMO_PASSWORD!r} is refused;"
                " set DEMO_PASSWORD (or --password) to a strong one"
            )
        self.same_password = same_password
        self.manager_password = password
        self.new_logins: list[tuple[str, str, str]] = []  # (pod or role, username, password) created now
        repository = demo_repository()
        if reset:
            self._reset()
        manager, pods = demo_people(password, same_password=same_password, new_logins=self.new_logins)
        existing = self._demo_count(AgentKind.BUILTIN)
        created = 0
        now = timezone.now()
        tonight = timezone.make_aware(datetime.combine(timezone.localdate(), dtime(22, 0)))
        if tonight < now:
            tonight += timedelta(days=1)
        for index in range(existing, agents):
            pod, members = pods[index % len(pods)]
            sto = members[(index // len(pods)) % len(members)]
            task = DEMO_TASKS[index % len(DEMO_TASKS)]
            persona = PERSONA_CYCLE[index % len(PERSONA_CYCLE)]
            scheduled = index % 17 == 16  # a few sessions wait for tonight's window
            spec = self._grant(index, persona, now, tonight if scheduled else None)
            with transaction.atomic():
                services.session_launch(
                    pod=pod,
                    sto=sto,
                    goal=task["title"],
                    by=manager,
                    repository=repository,
                    name=task["title"],
                    success_criteria=task.get("criteria", "the tests pass"),
                    task_type=task.get("task_type", "feature"),
                    priority=index % 4,
                    model=f"sim/{persona}",
                    seed=index,
                    tags=[DEMO_TAG, f"persona:{persona}"],
                    grant=spec,
                    delegator=sto if spec.mode != "autonomous" else manager,
                    start=not no_start,
                )
            created += 1
        created += self._claude_code_sessions(claude_code, pods, manager, repository, now, no_start)
        total = self._demo_count()
        self.stdout.write(
            f"demo: {len(pods)} pods, {User.objects.count()} users, {total} demo sessions ({created} new)"
        )
        for line in login_lines(password, same_password=same_password, new_logins=self.new_logins):
            self.stdout.write(line)

    @staticmethod
    def _demo_count(agent_kind: str | None = None) -> int:
        # JSON containment lookups are not portable to SQLite; the fleet is small enough to count here.
        sessions = (
            AgentSession.objects.all() if agent_kind is None else AgentSession.objects.filter(agent_kind=agent_kind)
        )
        return sum(1 for tags in sessions.values_list("tags", flat=True) if DEMO_TAG in (tags or []))

    def _claude_code_sessions(self, count, pods, manager, repository, now, no_start) -> int:
        """A few sessions of the real Claude Code CLI, driven by the offline model through the broker
        (agents/runtime/sim_anthropic.py): each fixes a bug, runs its tests and commits. None, with a
        line saying why, when the CLI is not installed."""
        from agents.runtime.claude_code import claude_binary

        existing = self._demo_count(AgentKind.CLAUDE_CODE)
        if count <= existing:
            return 0
        if claude_binary() is None:
            self.stdout.write(
                "demo: no Claude Code sessions (the Claude Code CLI is not installed: pip install -e '.[agents]')"
            )
            return 0
        tasks = [task for task in DEMO_TASKS if task["id"] in CLAUDE_CODE_TASKS] or DEMO_TASKS
        for index in range(existing, count):
            pod, members = pods[index % len(pods)]
            sto = members[-1]
            task = tasks[index % len(tasks)]
            spec = services.GrantSpec(
                mode="edits",
                allow=(
                    "Bash(python -m pytest *)",
                    "Bash(pytest *)",
                    "Bash(git status *)",
                    "Bash(git diff *)",
                    "Bash(git add *)",
                    "Bash(git commit *)",
                    "Bash(ls *)",
                    "Bash(grep *)",
                    "Git(commit)",
                ),
                deny=("Bash(git push *)", "Read(**/.env*)", "Edit(**/.env*)"),
                max_steps=60,
                max_cost_usd=Decimal("5.00"),
                max_tokens=400_000,
                justification="overnight demo fleet: Claude Code under the same grant",
                not_before=now,
                hours=8.0,
            )
            with transaction.atomic():
                services.session_launch(
                    pod=pod,
                    sto=sto,
                    goal=task["title"],
                    by=manager,
                    repository=repository,
                    name=f"{task['title']} (Claude Code)",
                    success_criteria=task.get("criteria", "the tests pass"),
                    task_type=task.get("task_type", "feature"),
                    priority=1,
                    model="sim/engineer",
                    agent_kind=AgentKind.CLAUDE_CODE,
                    tags=[DEMO_TAG, "agent:claude-code"],
                    grant=spec,
                    delegator=sto,
                    start=not no_start,
                )
        self.stdout.write(f"demo: {count - existing} Claude Code sessions (offline model, real CLI)")
        return count - existing

    def _grant(self, index: int, persona: str, now, tonight) -> services.GrantSpec:
        allow = (
            "Bash(python -m pytest *)",
            "Bash(pytest *)",
            "Bash(git status *)",
            "Bash(git diff *)",
            "Bash(ls *)",
            "Git(commit)",
        )
        deny = ("Bash(git push *)", "Read(**/.env*)", "Edit(**/.env*)")
        mode = "autonomous" if index % 5 == 4 else "edits"
        budget_steps = 4 if index % 23 == 22 else 60
        window = (
            dict(not_before=tonight, expires_at=tonight + timedelta(hours=8))
            if tonight
            else dict(not_before=now, hours=8.0)
        )
        return services.GrantSpec(
            mode=mode,
            allow=allow,
            deny=deny,
            ask=("Net(*)",) if mode == "autonomous" else (),
            max_steps=budget_steps,
            max_cost_usd=Decimal("5.00"),
            max_tokens=400_000,
            on_unanswered="deny" if index % 13 == 12 else "wait",
            justification="overnight demo fleet",
            **window,
        )

    def _reset(self) -> None:
        from agents.runtime.worktrees import remove_worktree

        demo = [s for s in AgentSession.objects.select_related("repository") if DEMO_TAG in (s.tags or [])]
        for session in demo:
            if session.worktree_path and os.path.exists(session.worktree_path):
                remove_worktree(repo_path=Path(session.repository.path), worktree_path=Path(session.worktree_path))
        AgentSession.objects.filter(pk__in=[s.pk for s in demo]).delete()
        self.stdout.write(f"reset: removed {len(demo)} demo sessions (their audit events stay: the log is append-only)")
