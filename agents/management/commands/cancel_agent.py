from agents import services
from agents.management.commands._control import ControlCommand


class Command(ControlCommand):
    help = "Cancelled an agent session (its STO, the pod lead or a manager)."
    service = staticmethod(services.session_cancel)
    verb = "cancelled"
