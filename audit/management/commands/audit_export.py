"""``manage.py audit_export``: the audit log as JSON Lines, verifiable without the project by
``tools/verify_audit_export.py`` (docs/AUDIT.md, "Verifying an export")."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.chain import export_log


def _parse_since(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"--since: expected an ISO 8601 date or time (e.g. 2026-11-23T22:00Z), got {value!r}"
        ) from None


class Command(BaseCommand):
    help = "Export the audit log (events and the checkpoints signing them) as JSON Lines."
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--since",
            type=_parse_since,
            metavar="ISO",
            help="each chain from its first event at or after this time (naive = UTC)",
        )
        parser.add_argument("--session", type=int, metavar="ID", help="only this agent session's chain")
        parser.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")

    def handle(self, *args, **options) -> None:
        if not options["output"]:
            try:
                export_log(out=self.stdout, since=options["since"], session_id=options["session"])
            except BrokenPipeError:  # piped into head & co: they have what they wanted
                raise SystemExit(0) from None
            return
        target = Path(options["output"])
        # Written beside the target and renamed: a failed export never leaves half a file.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                stats = export_log(out=out, since=options["since"], session_id=options["session"])
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stderr.write(
            f"exported {stats.events} events of {len(stats.chains)} chain(s) and "
            f"{stats.checkpoints} checkpoint(s) to {target}"
        )
