from django.core.management.base import BaseCommand

from agents import services
from agents.management.commands._common import get_pod, get_user, run_service


class Command(BaseCommand):
    help = "Resume a paused pod: the sessions its pause parked carry on (its lead or a manager)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--as", dest="actor", default="manager", help="who is doing this (default: manager)")

    def handle(self, *args, slug, actor, **options):
        pod = get_pod(slug)
        count = run_service(services.pod_resume, pod=pod, by=get_user(actor))
        self.stdout.write(f"pod {pod.slug} resumed: {count} session(s) back at work")
