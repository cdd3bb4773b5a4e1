"""Refresh the README's canvas screenshots (docs/canvas.png, docs/canvas-compact.png, docs/fleet-map.png) from a demo
fleet with mixed statuses, at 1920×1080, through the real stack (a private Redis, Daphne, Chromium).
As ``bin/start`` does, the past month (``seed_history``) is written first: the pictures show the
canvas's default, tonight's work, with the month behind "show older".

    .venv/bin/python tools/docs_screenshots.py

Runs in a temporary DATA_DIR (its own SQLite database): it never touches the project's data. The
statuses are set directly on the demo sessions (a picture, not a run); some running sessions are
given an old heartbeat, so the pictures show stranded ones too.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACTIVITIES = [
    "running pytest -q",
    "editing shopcart/pricing.py",
    "reading README.md",
    "thinking",
    "running ruff check",
    "committing: Fix rounding",
]
WEIGHTS = {
    "running": 45,
    "queued": 15,
    "needs_approval": 8,
    "blocked": 3,
    "paused": 3,
    "succeeded": 20,
    "failed": 3,
    "cancelled": 3,
}


def _mix(count: int) -> None:
    from django.core.management import call_command
    from django.utils import timezone

    from agents.management.commands.seed_demo import DEMO_TAG
    from agents.models import AgentSession

    call_command("seed_demo", agents=count, password="bench", no_start=True, verbosity=0)
    rng, now = random.Random(3), timezone.now()
    population = [status for status, weight in WEIGHTS.items() for _ in range(weight)]
    tonight = [pk for pk, tags in AgentSession.objects.values_list("pk", "tags") if DEMO_TAG in (tags or [])]
    for pk in tonight:  # tonight's fleet only: the past month stays as seed_history wrote it
        status = rng.choice(population)
        beat = now - timedelta(seconds=rng.randint(2, 90))
        if status == "running" and rng.random() < 0.06:
            beat = now - timedelta(minutes=rng.randint(4, 30))  # stranded
        elif status != "running":
            beat -= timedelta(minutes=rng.randint(1, 60))
        AgentSession.objects.filter(pk=pk).update(
            status=status,
            heartbeat_at=beat,
            updated_at=beat,
            steps=rng.randint(1, 40),
            current_activity=rng.choice(ACTIVITIES) if status == "running" else "",
            status_reason="asks: curl -sS https://pypi.org/simple/" if status == "needs_approval" else "",
        )


def _shoot(path: str, out: Path, *, hover: str | None = None) -> None:
    from playwright.sync_api import sync_playwright

    from controlroom.localredis import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "controlroom.asgi:application"],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
            page.goto(f"http://127.0.0.1:{port}/login/")
            page.fill("input[name=username]", "manager")
            page.fill("input[name=password]", "bench")
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(f"http://127.0.0.1:{port}{path}")
            page.wait_for_selector('#live-status[data-state="open"]')
            if hover:
                page.hover(hover)
            time.sleep(0.5)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="docs-shots-"))
    (work / "data").mkdir()
    os.environ["DATA_DIR"] = str(work / "data")
    from controlroom.localredis import start_local_redis

    redis = start_local_redis(workdir=work / "redis")
    os.environ["REDIS_URL"] = redis.url
    try:
        from bench.common import migrate, setup_django

        setup_django()
        migrate()
        from django.core.management import call_command

        call_command("seed_history", password="bench", verbosity=0)
        _mix(100)
        _shoot("/?view=tiles", ROOT / "docs" / "canvas.png")
        _shoot("/?view=compact", ROOT / "docs" / "canvas-compact.png")
        _mix(1000)
        _shoot("/?view=map", ROOT / "docs" / "fleet-map.png", hover="#canvas .cell.stranded")
    finally:
        redis.stop()
    print("docs/canvas.png, docs/canvas-compact.png, docs/fleet-map.png")


if __name__ == "__main__":
    main()
