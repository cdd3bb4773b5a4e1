from django.core.management.base import BaseCommand

from agents import services
from agents.management.commands._common import get_session, get_user, run_service


class Command(BaseCommand):
    help = "Reassign a session's Single Task Owner (pod lead or manager only)."

    def add_arguments(self, parser):
        parser.add_argument("session_id")
        parser.add_argument("username", help="the new Single Task Owner (a member of the session's pod)")
        parser.add_argument("--as", dest="actor", required=True, help="who is doing this")

    def handle(self, *args, session_id, username, actor, **options):
        session = get_session(session_id)
        by = get_user(actor)
        new_sto = get_user(username)
        previous = session.sto.username
        run_service(services.sto_assign, session=session, new_sto=new_sto, by=by)
        self.stdout.write(
            f"session {session.pk}: Single Task Owner {previous} -> {new_sto.username} (by {by.username})"
        )
