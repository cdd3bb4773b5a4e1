from django.core.management.base import BaseCommand

from agents import services
from agents.management.commands._common import get_user, run_service


class Command(BaseCommand):
    help = "Stop every agent before its next tool call (managers only)."

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="actor", default="manager")
        parser.add_argument("--reason", default="")

    def handle(self, *args, actor, reason, **options):
        count = run_service(services.fleet_stop, by=get_user(actor), reason=reason)
        self.stdout.write(f"fleet stopped: {count} session(s) paused")
