"""Page render times: server time (Django's full request path, in-process) and, in a real browser,
time to first paint (Chromium's paint timing) against a Daphne server.

Fixtures: a fleet of N demo sessions (seed_demo), then the audit log filled to E events spread over
the sessions, so the digest and the dashboard have a night's worth of records to read.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Row, log, migrate, setup_django, summarize

ROOT = Path(__file__).resolve().parent.parent
KINDS = [
    "model.call",
    "tool.call",
    "tool.call",
    "tool.call",
    "session.status",
    "git.commit",
    "tests.run",
    "escalation.opened",
]


def _fill_events(total: int) -> None:
    from django.db import transaction

    from agents.models import AgentSession
    from audit.log import record
    from audit.models import AuditEvent

    sessions = list(AgentSession.objects.select_related("sto").all())
    rng = random.Random(7)
    need = total - AuditEvent.objects.count()
    batch = 5000
    while need > 0:
        with transaction.atomic():
            for _ in range(min(batch, need)):
                session = rng.choice(sessions)
                kind = rng.choice(KINDS)
                payload = {
                    "tool": "run_command",
                    "decision": rng.choice(["allow", "allow", "deny"]),
                    "action": "run_command: pytest -q",
                    "state": "done",
                    "exit_code": 0,
                    "tokens_in": 900,
                    "tokens_out": 80,
                    "cost_usd": "0.0012",
                    "from": "running",
                    "to": "running",
                    "sha": "0" * 40,
                    "passed": True,
                }
                record(
                    kind,
                    session=session,
                    agent=True,
                    on_behalf_of=session.sto,
                    grant=None,
                    provenance="rule",
                    payload=payload,
                )
        need -= batch


def _server_times(client, path: str, repeats: int) -> list[float]:
    timings = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}")
    return timings[1:]  # the first request warms caches and templates


# The first contentful paint, waiting for it if the page has not painted yet when "load" fires
# (a busy machine paints after load; reading the entries at once then finds none).
FIRST_PAINT = """() => new Promise(resolve => {
  const seen = performance.getEntriesByName('first-contentful-paint')[0];
  if (seen) return resolve(seen.startTime);
  new PerformanceObserver(list => {
    const entry = list.getEntriesByName('first-contentful-paint')[0];
    if (entry) resolve(entry.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => resolve(null), 10000);
})"""


def _browser_first_paint(paths: list[str], *, env: dict, repeats: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    from controlroom.localredis import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "controlroom.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    results: dict[str, list[float]] = {path: [] for path in paths}
    try:
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/login/")
            page.fill("input[name=username]", "manager")
            page.fill("input[name=password]", "bench")
            page.click("button[type=submit]")
            page.wait_for_load_state()
            for path in paths:
                for _ in range(repeats):
                    page.goto(f"http://127.0.0.1:{port}{path}", wait_until="load")
                    paint = page.evaluate(FIRST_PAINT)
                    if paint is not None:
                        results[path].append(float(paint))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--big", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    setup_django()
    migrate()
    from django.core.management import call_command
    from django.test import Client

    from agents.models import AgentSession
    from controlroom.views import VIEW_COOKIE

    log(f"pages: seeding {args.sessions} sessions")
    call_command("seed_demo", agents=args.sessions, password="bench", no_start=True, verbosity=0)
    client = Client()
    client.login(username="manager", password="bench")
    first = AgentSession.objects.order_by("pk").first()
    assert first is not None  # seeded above
    pages = [
        ("canvas", "/", f"{args.sessions} sessions", "≤ 100 ms", 100),
        ("canvas compact", "/?view=compact", f"{args.sessions} sessions", "≤ 100 ms", 100),
        ("drawer", f"/sessions/{first.pk}/", "one session", "", None),
    ]
    for name, path, case, target, limit in pages:
        client.cookies.pop(VIEW_COOKIE, None)  # a view chosen in the query string is remembered
        median, p99 = summarize(_server_times(client, path, args.repeats))
        Row(
            f"page {name}",
            f"server, {case}",
            args.repeats,
            median,
            p99,
            "ms",
            target=target,
            verdict=("met" if median <= limit else "MISSED") if limit else "",
        ).emit()
    digest_events = min(args.events, 50_000) if args.events >= 50_000 else args.events
    log(f"pages: filling the audit log to {digest_events:,} events")
    _fill_events(digest_events)
    for name, path, target, limit in [("digest", "/digest?since=2000-01-01T00:00", "≤ 300 ms", 300)]:
        try:
            median, p99 = summarize(_server_times(client, path, args.repeats))
            Row(
                f"page {name}",
                f"server, {digest_events:,} events",
                args.repeats,
                median,
                p99,
                "ms",
                target=target,
                verdict="met" if median <= limit else "MISSED",
            ).emit()
        except RuntimeError as exc:
            Row(f"page {name}", f"FAILED: {exc}", 0, float("nan"), float("nan"), "ms", verdict="MISSED").emit()
    log(f"pages: filling the audit log to {args.events:,} events")
    _fill_events(args.events)
    try:
        median, p99 = summarize(_server_times(client, "/dashboard", args.repeats))
        Row(
            "page dashboard",
            f"server, {args.events:,} events",
            args.repeats,
            median,
            p99,
            "ms",
            target="≤ 300 ms",
            verdict="met" if median <= 300 else "MISSED",
        ).emit()
    except RuntimeError as exc:
        Row("page dashboard", f"FAILED: {exc}", 0, float("nan"), float("nan"), "ms", verdict="MISSED").emit()
    env = dict(os.environ)
    paints = _browser_first_paint(
        ["/", f"/sessions/{first.pk}/", "/digest", "/dashboard"], env=env, repeats=max(1, args.repeats // 2)
    )
    for path, values in paints.items():
        median, p99 = summarize(values)
        Row("first paint", f"browser {path}", len(values), median, p99, "ms").emit()
    log(f"pages: growing the fleet to {args.big} sessions")
    call_command("seed_demo", agents=args.big, password="bench", no_start=True, verbosity=0)
    total = AgentSession.objects.count()
    # "/" with no view chosen: above MAP_ABOVE sessions the canvas opens as the fleet map
    big_pages = [
        ("canvas", "/", "≤ 100 ms", 100),
        ("canvas map", "/?view=map", "≤ 100 ms", 100),
        ("canvas compact", "/?view=compact", "", None),
        ("canvas tiles", "/?view=tiles", "", None),
    ]
    for name, path, target, limit in big_pages:
        client.cookies.pop(VIEW_COOKIE, None)
        median, p99 = summarize(_server_times(client, path, args.repeats))
        Row(
            f"page {name}",
            f"server, {total} sessions",
            args.repeats,
            median,
            p99,
            "ms",
            target=target,
            verdict=("met" if median <= limit else "MISSED") if limit else "",
        ).emit()
    paints = _browser_first_paint(["/", "/?view=map", "/?view=tiles"], env=env, repeats=max(1, args.repeats // 2))
    for path, values in paints.items():
        median, p99 = summarize(values)
        limit = None if path == "/?view=tiles" else 1000
        Row(
            "first paint",
            f"browser {path}, {total} sessions",
            len(values),
            median,
            p99,
            "ms",
            target="≤ 1 s" if limit else "",
            verdict=("met" if median <= limit else "MISSED") if limit else "",
        ).emit()


if __name__ == "__main__":
    main()
