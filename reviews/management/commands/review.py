"""Decide on an agent session's work from the command line.

    python manage.py review SESSION_ID approve|request-changes|reject|revert --as USERNAME [--comment TEXT]

Exits non-zero with a readable message when refused (recorded in the audit log), on a merge or
revert conflict (with the files), or on a bad argument. Refused when run by an agent (from
inside an agent's worktree, or with an agent's git identity).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from agents.management.commands._common import get_session, get_user, run_service
from reviews import services


class Command(BaseCommand):
    help = "Approve and merge, request changes, reject or revert an agent session's work."

    def add_arguments(self, parser):
        parser.add_argument("session_id", help="the agent session's id")
        parser.add_argument("decision", choices=sorted(services.DECISIONS), help="what to do with its work")
        parser.add_argument("--as", dest="actor", required=True, help="the username of the person deciding")
        parser.add_argument("--comment", default="", help="why; required for request-changes (the agent receives it)")

    def handle(self, *args, session_id, decision, actor, comment, **options):
        session = get_session(session_id)
        reviewer = get_user(actor)
        acting = services.acting_agent_session(environ=os.environ, cwd=Path.cwd())
        try:
            review = run_service(
                services.DECISIONS[decision],
                session=session,
                reviewer=reviewer,
                comment=comment,
                acting_session_id=acting,
            )
        except services.ReviewConflict as exc:
            files = "\n".join(f"  {path}" for path in exc.files)
            raise CommandError(f"{exc}\nconflicting files:\n{files}") from None
        except services.ReviewError as exc:
            raise CommandError(str(exc)) from None
        d = review.details
        if review.decision == "approve":
            text = (
                f"approved: {session.branch} merged into {session.base_branch} ({d['method']}); "
                f"{session.base_branch} now at {d['base_after'][:12]}"
            )
        elif review.decision == "request_changes":
            text = f"changes requested: session {session.pk} is running again (iteration {d['iteration']})"
            if d.get("warning"):
                text += f"\nwarning: {d['warning']}"
        elif review.decision == "reject":
            text = f"rejected: session {session.pk} closed; commits kept under {d['archive_ref'] or '(no commits)'}"
        else:
            text = f"reverted: revert commit {d['revert_commit'][:12]} on {d['base_branch']}"
        self.stdout.write(text)
