"""``manage.py audit_verify``: recompute every audit chain and check every signed checkpoint.

Exit status: 0 the log is intact, 1 it is broken (the kind and first bad event are printed),
2 it could not be verified (database unreachable, no signing key, unreadable checkpoint file,
bad arguments).

``--workers N`` verifies a big log (all chains) in N forked processes; the result is the same.
"""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from audit.chain import verify_log
from audit.log import session_chain


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class Command(BaseCommand):
    help = "Verify the tamper-evident audit log. Exit 0 intact, 1 broken, 2 could not verify."
    # Verification must not depend on unrelated parts of the project importing cleanly.
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument(
            "--chain",
            action="append",
            dest="chains",
            metavar="CHAIN",
            help="verify only this chain (repeatable), e.g. s:42 or system",
        )
        parser.add_argument(
            "--session",
            action="append",
            type=int,
            dest="sessions",
            metavar="ID",
            help="verify only this session's chain (repeatable)",
        )
        parser.add_argument(
            "--checkpoints",
            metavar="FILE",
            help="also check the checkpoints kept in FILE (written by audit_checkpoint)",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=default_workers(),
            metavar="N",
            help="verify a big log in N processes, each a range of chains (default: %(default)s; 1: in this process)",
        )

    def handle(self, *args, **options) -> None:
        workers = options["workers"]
        if workers is None or workers < 1:
            raise CommandError(f"--workers must be at least 1 (got {workers})", returncode=2)
        chains = list(options["chains"] or []) + [session_chain(s) for s in options["sessions"] or []]
        try:
            result = verify_log(chains=chains or None, checkpoint_file=options["checkpoints"], workers=workers)
        except ImproperlyConfigured as exc:
            self._cannot(options, f"no signing key: {exc}")
        except DatabaseError as exc:
            self._cannot(options, f"cannot read the audit log from the database: {exc}")
        except (OSError, ValueError) as exc:
            self._cannot(options, f"cannot read the checkpoint file: {exc}")
        if options["json"]:
            self.stdout.write(json.dumps(result.to_dict(), indent=2))
        else:
            self.stdout.write(result.summary() + f" ({result.seconds:.2f}s)")
            for brk in result.breaks:
                self.stdout.write(f"  {brk.describe()}")
        if not result.ok:
            raise SystemExit(1)

    def _cannot(self, options: dict, message: str) -> None:
        if options["json"]:
            self.stdout.write(json.dumps({"ok": None, "error": message}))
        self.stderr.write(f"could not verify the audit log: {message}")
        raise SystemExit(2)
