"""``manage.py audit_explain SHA``: who is behind an agent's commit.

From the commit's trailers (``Agent-Session``, ``Delegated-By``, ``Grant``, read with git from the
session's repository) and the audit log (the ``git.commit`` event recording it): the session, the
agent, the delegator, the grant (version, mode, rules, window) and the approvals behind the commit
(the session's tool calls up to it with their provenance, and the escalations humans decided).
The sha may be abbreviated (4+ hex digits). Unknown or ambiguous sha: CommandError (exit 1).
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from reviews import git_ops
from reviews.digest import CommitNotFound, commit_explain, explanation_text


class Command(BaseCommand):
    help = "Explain an agent's commit: its session, agent, delegator, grant and the approvals behind it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("sha", help="the commit's sha (full or abbreviated, at least 4 hex digits)")
        parser.add_argument("--json", action="store_true", help="print the facts as JSON")

    def handle(self, *args, sha: str, **options) -> None:
        try:
            x = commit_explain(sha=sha)
        except CommitNotFound as exc:
            raise CommandError(str(exc)) from None
        except git_ops.GitOpsError as exc:
            raise CommandError(f"cannot read the commit from git: {exc}") from None
        except DatabaseError as exc:
            raise CommandError(f"cannot read the audit log from the database: {exc}") from None
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "sha": x.sha,
                        "message": x.message,
                        "author": x.author,
                        "repository": x.repository,
                        "trailers": x.trailers,
                        "session": x.session_id,
                        "agent": x.agent,
                        "delegator": x.delegator,
                        "grant": None
                        if x.grant is None
                        else {
                            "id": x.grant.pk,
                            "version": x.grant.version,
                            "mode": x.grant.mode,
                            "allow": x.grant.allow,
                            "ask": x.grant.ask,
                            "deny": x.grant.deny,
                            "delegator": x.grant.delegator.username,
                        },
                        "commit_event": x.commit_event.pk if x.commit_event else None,
                        "approvals": [
                            {
                                "event": a.event.pk,
                                "action": a.text,
                                "provenance": a.event.provenance,
                                "approval": a.approval,
                                "approved_by": a.approved_by,
                                "in_commit": a.in_commit,
                            }
                            for a in x.approvals
                        ],
                        "human_decisions": [
                            {"event": e.pk, "kind": e.kind, "by": e.actor_label, "payload": e.payload}
                            for e in x.human_decisions
                        ],
                        "notes": x.notes,
                    },
                    indent=2,
                    ensure_ascii=False,
                    default=str,
                )
            )
            return
        self.stdout.write(explanation_text(x))
