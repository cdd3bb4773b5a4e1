"""``manage.py metrics --window 7d [--pod SLUG] [--task-type T] [--tag T] [--from D --to D] [--json]``:
the leaders' outcome figures, from the same function as the dashboard (``controlroom.metrics.fleet_metrics``).

Text output: the overall figures, then one line per pod. ``--json``: the whole report (overall, by
pod, by STO, by task type, weekly trend), durations in seconds, datetimes in ISO 8601.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from controlroom.figures import format_figure, format_value
from controlroom.metrics import Metrics, Report, Scope, fleet_metrics, parse_date, window_between, window_last


class Command(BaseCommand):
    help = "Print the leaders' outcome metrics (the dashboard's figures) for a window."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--window", default="7d", help="last N days: 7d, 30d, 90d ... (default 7d)")
        parser.add_argument(
            "--from", dest="first_day", metavar="YYYY-MM-DD", help="first day (with --to; replaces --window)"
        )
        parser.add_argument("--to", dest="last_day", metavar="YYYY-MM-DD", help="last day, included")
        parser.add_argument("--pod", default="", metavar="SLUG", help="only this pod")
        parser.add_argument(
            "--task-type", default="", help="only this task type (feature, fix, docs, tests, refactor, chore)"
        )
        parser.add_argument("--tag", default="", help="only sessions with this tag")
        parser.add_argument("--json", action="store_true", help="print the whole report as JSON")

    def handle(self, *args, **options) -> None:
        try:
            if options["first_day"] or options["last_day"]:
                if not (options["first_day"] and options["last_day"]):
                    raise ValueError("Give both --from and --to (or neither, and --window).")
                window = window_between(
                    first_day=parse_date(options["first_day"], what="--from"),
                    last_day=parse_date(options["last_day"], what="--to"),
                )
            else:
                window = window_last(text=options["window"], now=timezone.now())
            scope = Scope(
                pod=options["pod"].strip(), task_type=options["task_type"].strip(), tag=options["tag"].strip()
            )
            report = fleet_metrics(window=window, scope=scope, now=timezone.now())
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.to_dict(), indent=2))
            return
        self.stdout.write(self._text(report))

    def _text(self, report: Report) -> str:
        w, s = report.window, report.scope
        scope = ", ".join(f"{k} {v}" for k, v in (("pod", s.pod), ("task type", s.task_type), ("tag", s.tag)) if v)
        title = (
            f"Outcome metrics, {w.label} ({timezone.localtime(w.start):%Y-%m-%d %H:%M} to "
            f"{timezone.localtime(w.end):%Y-%m-%d %H:%M}){', ' + scope if scope else ''}"
        )
        lines = [title, ""]
        lines += self._block(report.overall)
        lead = report.overall.lead_time
        lines.append(f"  {'  of which running':<36}{format_figure(lead.running)}")
        lines.append(f"  {'  waiting on humans':<36}{format_figure(lead.waiting)}")
        lines.append(f"  {'  queued':<36}{format_figure(lead.queued)}")
        lines += ["", "By pod:"]
        for m in report.by_pod:
            y, t = m.acceptance_yield, m.accepted_throughput
            lines.append(f"  {m.label:<20} accepted/week {format_value(t):>6}  yield {format_figure(y)}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _block(m: Metrics) -> list[str]:
        return [f"  {f.label:<36}{format_figure(f)}" for f in m.figures()]
