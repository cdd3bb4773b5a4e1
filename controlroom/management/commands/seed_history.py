"""``manage.py seed_history``: a plausible past month of the demo fleet (controlroom/demo_history.py),
written before tonight's sessions (``seed_demo``) into a database that has none yet. A second run,
or a run on a database with sessions, does nothing and says why. ``bin/start`` runs it before
``seed_demo`` on an empty database, so the demo's people are created here: the manager gets the
password, everyone else a generated one, printed once (as ``seed_demo`` does)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from agents.management.commands.seed_demo import demo_password, login_lines
from controlroom.demo_history import seed_history


class Command(BaseCommand):
    help = "Write a past month of demo sessions (reviews, escalations, costs) into an empty database."

    def add_arguments(self, parser):
        parser.add_argument("--nights", type=int, default=30, help="how many past nights (default: %(default)s)")
        parser.add_argument("--seed", type=int, default=2026, help="random seed of the simulation")
        parser.add_argument(
            "--password", default=None, help="the manager's password (default $DEMO_PASSWORD or 'controlroom')"
        )
        parser.add_argument(
            "--same-password", action="store_true", help="give every demo user the --password (tests, benchmarks)"
        )

    def handle(self, *args, nights, seed, password, same_password=False, **options):
        if not 1 <= nights <= 365:
            raise CommandError("--nights must be between 1 and 365")
        password = password or demo_password()
        result = seed_history(nights=nights, seed=seed, password=password, same_password=same_password)
        self.stdout.write(result.summary())
        if result.new_logins or same_password:
            for line in login_lines(password, same_password=same_password, new_logins=result.new_logins):
                self.stdout.write(line)
