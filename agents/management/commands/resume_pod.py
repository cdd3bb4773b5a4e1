from agents import services
from agents.management.commands._control import PodControlCommand


class Command(PodControlCommand):
    help = "Resume a paused pod: the sessions its pause parked carry on (its lead or a manager)."
    service = staticmethod(services.pod_resume)
    verb = "resumed"
    counted = "back at work"
