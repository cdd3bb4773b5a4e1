"""Base for pause_agent / resume_agent / cancel_agent."""

from django.core.management.base import BaseCommand

from agents.management.commands._common import get_session, get_user, run_service


class ControlCommand(BaseCommand):
    service = None
    verb = ""

    def add_arguments(self, parser):
        parser.add_argument("session_id")
        parser.add_argument("--as", dest="actor", default="manager", help="who is doing this (default: manager)")

    def handle(self, *args, session_id, actor, **options):
        session = get_session(session_id)
        by = get_user(actor)
        session = run_service(type(self).service, session=session, by=by)
        self.stdout.write(f"session {session.pk} {self.verb}: {session.status}")
