"""``manage.py audit_checkpoint``: sign the audit chains' heads now and keep a copy outside the
database (appended to DATA_DIR/audit/checkpoints.jsonl unless --no-export)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from audit.chain import checkpoint_create, checkpoint_export, default_checkpoint_file


class Command(BaseCommand):
    help = "Create a signed audit checkpoint now and append it to the checkpoint file."
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--reason", default="manual", help="recorded with the checkpoint (default: manual)")
        parser.add_argument("--file", metavar="FILE", help=f"checkpoint file (default: {default_checkpoint_file()})")
        parser.add_argument("--no-export", action="store_true", help="do not append to the checkpoint file")

    def handle(self, *args, **options) -> None:
        checkpoint = checkpoint_create(reason=options["reason"])
        self.stdout.write(
            f"checkpoint #{checkpoint.pk}: signed the heads of {len(checkpoint.heads)} chain(s) "
            f"that moved since the last checkpoint"
        )
        if not options["no_export"]:
            path = options["file"] or default_checkpoint_file()
            added = checkpoint_export(path)
            self.stdout.write(f"appended {added} checkpoint(s) to {path}")
