import json

from django.core.management.base import BaseCommand

from agents.management.commands._common import get_session


class Command(BaseCommand):
    help = "Show an agent session's state."

    def add_arguments(self, parser):
        parser.add_argument("session_id")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, session_id, **options):
        s = get_session(session_id)
        data = {
            "id": s.pk,
            "name": s.name,
            "pod": s.pod.slug,
            "sto": s.sto.username,
            "status": s.status,
            "status_reason": s.status_reason,
            "current_activity": s.current_activity,
            "branch": s.branch,
            "worktree": s.worktree_path,
            "model": s.model,
            "steps": s.steps,
            "iteration": s.iteration,
            "tool_calls": s.tool_calls,
            "tokens": s.tokens,
            "tokens_in": s.tokens_in,
            "tokens_out": s.tokens_out,
            "cost_usd": str(s.cost_usd),
            "cost_unknown_calls": s.cost_unknown_calls,
            "heartbeat_at": s.heartbeat_at.isoformat() if s.heartbeat_at else None,
            "version": s.version,
            "review_state": s.review_state,
            "summary": s.summary,
        }
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        for key, value in data.items():
            self.stdout.write(f"{key:>18}: {value}")
