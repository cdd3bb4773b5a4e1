from django.core.management.base import BaseCommand, CommandError

from agents import services
from agents.management.commands._common import get_user, run_service
from agents.models import Escalation


class Command(BaseCommand):
    help = "Decide an escalation: allow-once, allow-always or deny (STO, pod lead or manager)."

    def add_arguments(self, parser):
        parser.add_argument("escalation_id")
        parser.add_argument("decision", choices=list(services.DECISIONS))
        parser.add_argument("--as", dest="actor", required=True)
        parser.add_argument("--reason", default="")

    def handle(self, *args, escalation_id, decision, actor, reason, **options):
        try:
            escalation = Escalation.objects.select_related("session", "session__sto").get(pk=int(escalation_id))
        except (ValueError, Escalation.DoesNotExist):
            raise CommandError(f"no escalation with id {escalation_id!r}") from None
        escalation = run_service(
            services.escalation_decide, escalation=escalation, by=get_user(actor), decision=decision, reason=reason
        )
        self.stdout.write(f"escalation {escalation.pk}: {escalation.state} by {actor}")
