from agents import services
from agents.management.commands._control import PodControlCommand


class Command(PodControlCommand):
    help = "Pause a pod: every queued or running session of it parks before its next tool call (its lead or a manager)."
    service = staticmethod(services.pod_pause)
    verb = "paused"
    counted = "parked"
    reason = True
