import json

from django.core.management.base import BaseCommand

from agents.models import Escalation


class Command(BaseCommand):
    help = "List escalations waiting for a human (or all with --all)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--all", action="store_true", help="include decided ones")

    def handle(self, *args, **options):
        rows = Escalation.objects.select_related("session", "session__sto", "session__pod", "decided_by").order_by(
            "created_at"
        )
        if not options["all"]:
            rows = rows.filter(state=Escalation.State.OPEN)
        data = [
            {
                "id": e.pk,
                "session": e.session_id,
                "pod": e.session.pod.slug,
                "sto": e.session.sto.username,
                "tool": e.tool,
                "action": e.action,
                "reason": e.reason,
                "state": e.state,
                "created_at": e.created_at.isoformat(),
                "decided_by": e.decided_by.username if e.decided_by else None,
                "can_allow_always": bool(e.rule),
            }
            for e in rows
        ]
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        if not data:
            self.stdout.write("no escalations waiting")
        for row in data:
            self.stdout.write(
                f"#{row['id']:<5} session {row['session']:<5} {row['state']:<14} {row['pod']}/{row['sto']}: {row['action']}  ({row['reason']})"
            )
