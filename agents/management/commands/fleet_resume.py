from django.core.management.base import BaseCommand

from agents import services
from agents.management.commands._common import get_user, run_service


class Command(BaseCommand):
    help = "Resume the fleet after a fleet stop (managers only)."

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="actor", default="manager")

    def handle(self, *args, actor, **options):
        count = run_service(services.fleet_resume, by=get_user(actor))
        self.stdout.write(f"fleet resumed: {count} session(s) running again")
