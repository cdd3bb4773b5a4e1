from django.core.management.base import BaseCommand

from agents import services
from agents.management.commands._common import get_pod, get_user, run_service


class Command(BaseCommand):
    help = "Pause a pod: every queued or running session of it parks before its next tool call (its lead or a manager)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--as", dest="actor", default="manager", help="who is doing this (default: manager)")
        parser.add_argument("--reason", default="")

    def handle(self, *args, slug, actor, reason, **options):
        pod = get_pod(slug)
        count = run_service(services.pod_pause, pod=pod, by=get_user(actor), reason=reason)
        self.stdout.write(f"pod {pod.slug} paused: {count} session(s) parked")
