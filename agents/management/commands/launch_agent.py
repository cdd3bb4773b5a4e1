from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from agents import services
from agents.endpoints import api_base_problem
from agents.management.commands._common import get_pod, get_user, run_service
from agents.models import AgentKind, Grant, Repository, TaskType


def _repository(path: str | None) -> Repository:
    if not path:
        repo = Repository.objects.order_by("pk").first()
        if repo is None:
            raise CommandError("no repository registered: pass --repo PATH (or run seed_demo)")
        return repo
    existing = Repository.objects.filter(path=path).first() or Repository.objects.filter(name=path).first()
    if existing:
        return existing
    import git

    try:
        git_repo = git.Repo(path)
    except (git.NoSuchPathError, git.InvalidGitRepositoryError):
        raise CommandError(f"--repo: {path} is not a git repository") from None
    default = git_repo.active_branch.name if not git_repo.head.is_detached else "main"
    return Repository.objects.create(name=path, path=str(git_repo.working_tree_dir), default_branch=default)


class Command(BaseCommand):
    help = "Launch an agent session; prints the new session id as the last line."

    def add_arguments(self, parser):
        parser.add_argument("--pod", required=True, help="pod slug")
        parser.add_argument("--sto", required=True, help="Single Task Owner (username, member of the pod)")
        parser.add_argument("--goal", required=True)
        parser.add_argument("--as", dest="actor", default=None, help="who launches (default: the STO)")
        parser.add_argument("--name", default="")
        parser.add_argument("--criteria", default="", help="success criteria")
        parser.add_argument("--type", dest="task_type", default=TaskType.FEATURE, choices=TaskType.values)
        parser.add_argument("--priority", type=int, default=2, choices=[0, 1, 2, 3])
        parser.add_argument(
            "--model", default=None, help=f"any LiteLLM model string (default {settings.CONTROLROOM['DEFAULT_MODEL']})"
        )
        parser.add_argument(
            "--agent",
            default=AgentKind.BUILTIN,
            choices=AgentKind.values,
            help="who works the session: the built-in loop or a supervised CLI (claude-code needs the [agents] extra, codex bin/codex-install)",
        )
        parser.add_argument("--api-base", default="", help="OpenAI-compatible endpoint (Ollama, vLLM, …)")
        parser.add_argument("--api-key-env", default="", help="name of the env var holding the API key")
        parser.add_argument("--fallback", action="append", default=[], help="fallback model (repeatable)")
        parser.add_argument(
            "--repo", default=None, help="path of a local git repository (default: the first registered)"
        )
        parser.add_argument("--base", default="", help="base branch (default: the repository's default branch)")
        parser.add_argument("--mode", default=Grant.Mode.EDITS, choices=Grant.Mode.values)
        parser.add_argument("--allow", action="append", default=[], metavar="RULE")
        parser.add_argument("--ask", action="append", default=[], metavar="RULE")
        parser.add_argument("--deny", action="append", default=[], metavar="RULE")
        parser.add_argument("--max-steps", type=int, default=200)
        parser.add_argument("--max-tokens", type=int, default=None)
        parser.add_argument("--max-cost", default=None, help="USD")
        parser.add_argument("--max-tool-calls", type=int, default=None)
        parser.add_argument("--max-wall", type=int, default=None, help="seconds")
        parser.add_argument(
            "--from", dest="not_before", default=None, help="ISO 8601 start of the grant window (default now)"
        )
        parser.add_argument("--until", default=None, help="ISO 8601 end of the grant window (default +8h)")
        parser.add_argument("--on-unanswered", default="wait", choices=["wait", "deny"])
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--tag", action="append", default=[])
        parser.add_argument("--delegator", default=None, help="whose authority (default: the STO)")
        parser.add_argument("--no-start", action="store_true", help="create it queued without enqueuing the first step")

    @staticmethod
    def _time(value: str | None, option: str) -> datetime | None:
        if not value:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise CommandError(f"{option}: not an ISO 8601 time: {value!r}") from None
        return parsed if parsed.tzinfo else timezone.make_aware(parsed)

    def handle(self, *args, **o):
        problem = api_base_problem(o["api_base"].strip())
        if problem:  # before --repo can register a repository: a refused launch creates nothing
            raise CommandError(f"--api-base: {problem}")
        pod = get_pod(o["pod"])
        sto = get_user(o["sto"], what="Single Task Owner")
        by = get_user(o["actor"]) if o["actor"] else sto
        try:
            max_cost = Decimal(o["max_cost"]) if o["max_cost"] else None
        except InvalidOperation:
            raise CommandError(f"--max-cost: not a number: {o['max_cost']!r}") from None
        spec = services.GrantSpec(
            mode=o["mode"],
            allow=tuple(o["allow"]),
            ask=tuple(o["ask"]),
            deny=tuple(o["deny"]),
            max_steps=o["max_steps"],
            max_tokens=o["max_tokens"],
            max_cost_usd=max_cost,
            max_tool_calls=o["max_tool_calls"],
            max_wall_seconds=o["max_wall"],
            not_before=self._time(o["not_before"], "--from"),
            expires_at=self._time(o["until"], "--until"),
            on_unanswered=o["on_unanswered"],
        )
        session = run_service(
            services.session_launch,
            pod=pod,
            sto=sto,
            goal=o["goal"],
            by=by,
            repository=_repository(o["repo"]),
            base_branch=o["base"],
            name=o["name"],
            success_criteria=o["criteria"],
            task_type=o["task_type"],
            priority=o["priority"],
            model=o["model"] or "",
            api_base=o["api_base"],
            api_key_env=o["api_key_env"],
            fallback_models=o["fallback"],
            seed=o["seed"],
            tags=o["tag"],
            grant=spec,
            delegator=get_user(o["delegator"]) if o["delegator"] else None,
            start=not o["no_start"],
            agent_kind=o["agent"],
        )
        self.stdout.write(
            f"launched {session.name!r} on {session.branch} (model {session.model}, agent {session.agent_kind})"
        )
        self.stdout.write(str(session.pk))
