"""Remove the worktrees of closed sessions and report the disk worktrees use.

    python manage.py cleanup_worktrees [--dry-run] [--older-than-hours N]

Closed: reviewed (approved, rejected, reverted), or failed/cancelled more than N hours ago
(default: CONTROLROOM["WORKTREE_RETENTION_HOURS"], else 24). Branches are kept; a rejected
session's branch moves under refs/archive/. A session inside a step is never touched.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import filesizeformat

from reviews import services


class Command(BaseCommand):
    help = "Remove worktrees of closed agent sessions and report the disk used by worktrees."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="only list what would be removed")
        parser.add_argument(
            "--older-than-hours",
            type=float,
            default=None,
            help="failed/cancelled sessions older than this lose their worktree (default 24)",
        )

    def handle(self, *args, dry_run, older_than_hours, **options):
        hours = (
            older_than_hours
            if older_than_hours is not None
            else settings.CONTROLROOM.get("WORKTREE_RETENTION_HOURS", 24)
        )
        if hours < 0:
            raise CommandError("--older-than-hours must be zero or more")
        report = services.worktrees_cleanup(older_than_hours=hours, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        for item in report.items:
            state = verb if (dry_run or item.removed) else "kept (busy or git refused)"
            self.stdout.write(
                f"session {item.session_id}: {state} {item.path} ({filesizeformat(item.bytes)}; {item.reason})"
            )
        for path in report.scratch_removed:
            self.stdout.write(f"{verb} leftover temporary worktree {path}")
        if not report.items and not report.scratch_removed:
            self.stdout.write("nothing to remove")
        freed = sum(i.bytes for i in report.items) if dry_run else report.freed
        self.stdout.write(
            f"worktrees use {filesizeformat(report.bytes_after)} ({report.bytes_after} bytes); "
            f"{'would free' if dry_run else 'freed'} {filesizeformat(freed)} ({freed} bytes)"
        )
