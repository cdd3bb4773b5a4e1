"""The project's Celery app (controlroom/celery.py) is the one every thread sends through: the apps
never import it, they use ``celery.current_app`` and ``@shared_task``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import threading
import celery

fallback = celery.current_app._get_current_object()  # Celery's unconfigured default app, made now
import django
django.setup()
from controlroom.celery import app

seen = []
thread = threading.Thread(target=lambda: seen.append(celery.current_app._get_current_object()))
thread.start()
thread.join()
assert fallback is not app
print("project" if seen[0] is app else f"other: {seen[0]!r} with broker {seen[0].conf.broker_url!r}")
"""


def test_another_thread_sends_through_the_project_app_even_if_a_fallback_app_was_made_first():
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "controlroom.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "project"


def test_every_beat_entry_names_a_task_that_workers_register():
    """Beat sends tasks by name: a renamed or moved task must still be found by the workers, which
    import CELERY_IMPORTS and every installed app's ``tasks`` module."""
    from django.conf import settings

    from controlroom.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {"agents.tasks.tick", "audit.tasks.audit_checkpoint", "reviews.tasks.cleanup_worktrees"}
    assert scheduled <= set(app.tasks)
