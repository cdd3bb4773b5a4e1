"""Bases for pause_agent / resume_agent / cancel_agent and pause_pod / resume_pod."""

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand

from agents.management.commands._common import get_pod, get_session, get_user, run_service


class ControlCommand(BaseCommand):
    service: Callable[..., Any] | None = None
    verb = ""

    def add_arguments(self, parser):
        parser.add_argument("session_id")
        parser.add_argument("--as", dest="actor", default="manager", help="who is doing this (default: manager)")

    def handle(self, *args, session_id, actor, **options):
        session = get_session(session_id)
        by = get_user(actor)
        session = run_service(type(self).service, session=session, by=by)
        self.stdout.write(f"session {session.pk} {self.verb}: {session.status}")


class PodControlCommand(BaseCommand):
    """``<command> SLUG --as USER``: a pod control (its lead or a manager); ``reason`` adds ``--reason``."""

    service: Callable[..., Any] | None = None
    verb = ""
    counted = ""  # what the service's count counts
    reason = False

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--as", dest="actor", default="manager", help="who is doing this (default: manager)")
        if self.reason:
            parser.add_argument("--reason", default="")

    def handle(self, *args, slug, actor, **options):
        pod = get_pod(slug)
        extra = {"reason": options["reason"]} if self.reason else {}
        count = run_service(type(self).service, pod=pod, by=get_user(actor), **extra)
        self.stdout.write(f"pod {pod.slug} {self.verb}: {count} session(s) {self.counted}")
