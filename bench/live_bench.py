"""Live-status latency: from the moment a state change is committed to the moment a real browser's
DOM shows the tile (Daphne + Redis channel layer + Chromium via Playwright).

The publisher commits a version bump (the same UPDATE a worker makes) and calls the project's own
broadcast path (``agents.events.broadcast_session``: render once, publish to the pod group), noting
the wall-clock time after commit. Each page records, with a MutationObserver, when each tile version
lands in its DOM (same machine, same clock). "20 open canvases" is measured twice: 20 Chromium pages
(on a 2-core machine the renderers, not the server, are then the bottleneck: one page applying 100
updates/s takes over half a core), and 1 page + 19 websocket viewers in another process (the
server's fan-out to 20 viewers; the page gives the DOM latency, the viewers the delivery latency). Reported: p50/p99 latency of the versions that reached
the page, tiles whose final version never arrived (lost final state), and updates later than 250 ms.
Intermediate versions a page never shows are coalesced by design (a few swaps per tile per second).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import Row, log, migrate, setup_django, summarize

ROOT = Path(__file__).resolve().parent.parent

OBSERVER = """
() => {
  window.__seen = [];
  const note = (el) => {
    if (el.nodeType === 1 && el.dataset && el.dataset.sessionId && el.dataset.version)
      window.__seen.push([+el.dataset.sessionId, +el.dataset.version, Date.now()]);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      for (const n of r.addedNodes) { note(n); if (n.querySelectorAll) n.querySelectorAll('[data-session-id][data-version]').forEach(note); }
      if (r.type === 'attributes') note(r.target);
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-version']});
}
"""


def _start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "controlroom.asgi:application"],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(150):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=1)
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("daphne did not start")


def _start_viewers(*, port: int, cookie: str, count: int, stop: Path) -> subprocess.Popen:
    from agents.models import Pod

    pods = ",".join(str(pk) for pk in Pod.objects.values_list("pk", flat=True))
    viewers = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.ws_viewers",
            "--url",
            f"ws://127.0.0.1:{port}/ws/canvas/",
            "--cookie",
            cookie,
            "--origin",
            f"http://127.0.0.1:{port}",
            "--pods",
            pods,
            "--count",
            str(count),
            "--stop",
            str(stop),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert viewers.stdout is not None  # stdout=PIPE
    line = viewers.stdout.readline()
    if line.strip() != "READY":
        viewers.kill()
        raise RuntimeError(f"websocket viewers did not start: {line!r}")
    return viewers


def run_case(
    *, sessions: list[int], updates: int, rate: float, pages: int, port: int, server_pid: int, viewers: int = 0
) -> None:
    """``pages`` Chromium pages; ``viewers`` more canvases as plain websocket clients in another process."""
    from django.db import transaction
    from django.db.models import F
    from playwright.sync_api import sync_playwright

    from agents.events import broadcast_session
    from agents.models import AgentSession

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
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/login/")
        page.fill("input[name=username]", "manager")
        page.fill("input[name=password]", "bench")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        open_pages = [page] + [context.new_page() for _ in range(pages - 1)]
        for each in open_pages:
            each.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            each.evaluate(OBSERVER)
        ws_viewers = stop = None
        if viewers:
            import tempfile

            stop = Path(tempfile.mkdtemp(prefix="bench-viewers-")) / "stop"
            cookie = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies())
            ws_viewers = _start_viewers(port=port, cookie=cookie, count=viewers, stop=stop)
        time.sleep(2.0)  # let every page's websocket connect and subscribe
        import psutil

        server_rss = psutil.Process(server_pid).memory_info().rss / 2**20
        published: dict[tuple[int, int], float] = {}
        final: dict[int, int] = {}

        def publish() -> None:
            # in its own thread: Playwright's sync API keeps an event loop in this one
            from django.db import close_old_connections

            rng = random.Random(3)
            interval = 1.0 / rate
            started = time.perf_counter()
            for index in range(updates):
                session_id = rng.choice(sessions)
                with transaction.atomic():
                    AgentSession.objects.filter(pk=session_id).update(
                        version=F("version") + 1, current_activity=f"bench update {index}"
                    )
                version = AgentSession.objects.filter(pk=session_id).values_list("version", flat=True).get()
                published[(session_id, version)] = time.time() * 1000
                final[session_id] = version
                broadcast_session(session_id)
                delay = started + (index + 1) * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            close_old_connections()

        import threading

        publisher = threading.Thread(target=publish)
        publisher.start()
        publisher.join()
        time.sleep(3.0)  # let coalesced tails arrive
        delivered: list[float] = []
        viewers_lost = 0
        if ws_viewers is not None:
            import json

            assert stop is not None  # set with ws_viewers
            stop.touch()
            out, _ = ws_viewers.communicate(timeout=120)
            for arrivals in json.loads(out)["arrivals"]:
                newest: dict[int, int] = {}
                for session_id, version, at in arrivals:
                    if (session_id, version) in published:
                        delivered.append(at - published[(session_id, version)])
                    newest[session_id] = max(newest.get(session_id, 0), version)
                viewers_lost += sum(1 for session_id, version in final.items() if newest.get(session_id, 0) < version)
        latencies, lost, late = [], 0, 0
        for each in open_pages:
            seen = each.evaluate("() => window.__seen")
            first_seen: dict[tuple[int, int], float] = {}
            for session_id, version, at in seen:
                first_seen.setdefault((session_id, version), at)
            for key, at in first_seen.items():
                if key in published:
                    latency = at - published[key]
                    latencies.append(latency)
                    late += latency > 250
            shown = each.evaluate(
                "() => Object.fromEntries([...document.querySelectorAll('[data-session-id][data-version]')]"
                ".map(e => [e.dataset.sessionId, +e.dataset.version]))"
            )
            lost += sum(1 for session_id, version in final.items() if shown.get(str(session_id), 0) < version)
        browser.close()
    median, p99 = summarize(latencies)
    case = f"{len(sessions)} sessions, {rate:g} updates/s, {pages} page(s)" + (
        f" + {viewers} websocket viewers" if viewers else ""
    )
    if viewers:
        d_median, d_p99 = summarize(delivered)
        Row(
            "live status→socket",
            f"{case}: frame arrival at the {viewers} viewers; lost final {viewers_lost}",
            len(delivered),
            d_median,
            d_p99,
            "ms",
        ).emit()
    target = (
        "p50 ≤ 50 ms, p99 ≤ 250 ms"
        if pages + viewers >= 20 and rate <= 100 and len(sessions) <= 100
        else ("no lost final state" if rate >= 1000 else "")
    )
    verdict = ""
    if target.startswith("p50"):
        verdict = "met" if median <= 50 and p99 <= 250 and lost == 0 else "MISSED"
    elif target:
        verdict = "met" if lost == 0 else "MISSED"
    Row(
        "live status→DOM",
        f"{case}; lost final {lost}, late {late}",
        len(latencies),
        median,
        p99,
        "ms",
        target=target,
        verdict=verdict,
    ).emit()
    Row("memory", f"ASGI server RSS with {pages} open canvas(es)", 1, server_rss, server_rss, "MiB").emit()


def main() -> None:
    # Playwright's sync API runs an event loop in this thread; the publisher's ORM calls are plain
    # synchronous code between its calls, which Django would otherwise refuse (benchmark harness only).
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument(
        "--viewers", type=int, default=19, help="also run 1 page + this many websocket viewers (0: skip that case)"
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help="the rest of the matrix: 100 sessions at 1,000 updates/s, 1,000 sessions at 100 and "
        "1,000 updates/s (each with 1 page, and 1 page + the viewers)",
    )
    args = parser.parse_args()
    setup_django()
    migrate()
    from django.core.management import call_command

    from agents.models import AgentSession
    from controlroom.localredis import free_port

    log(f"live: seeding {args.sessions} sessions")
    call_command("seed_demo", agents=args.sessions, password="bench", no_start=True, verbosity=0)
    port = free_port()
    server = _start_server(port)
    try:
        ids = list(AgentSession.objects.values_list("pk", flat=True))
        run_case(sessions=ids, updates=args.updates, rate=args.rate, pages=1, port=port, server_pid=server.pid)
        if args.viewers:
            run_case(
                sessions=ids,
                updates=args.updates,
                rate=args.rate,
                pages=1,
                port=port,
                server_pid=server.pid,
                viewers=args.viewers,
            )
        if args.pages > 1:
            run_case(
                sessions=ids, updates=args.updates, rate=args.rate, pages=args.pages, port=port, server_pid=server.pid
            )
        if args.big:

            def both(ids: list[int], rate: float, updates: int) -> None:
                run_case(sessions=ids, updates=updates, rate=rate, pages=1, port=port, server_pid=server.pid)
                if args.viewers:
                    run_case(
                        sessions=ids,
                        updates=updates,
                        rate=rate,
                        pages=1,
                        port=port,
                        server_pid=server.pid,
                        viewers=args.viewers,
                    )

            both(ids, 1000, 5000)
            call_command("seed_demo", agents=1000, password="bench", no_start=True, verbosity=0)
            ids = list(AgentSession.objects.values_list("pk", flat=True))
            both(ids, args.rate, args.updates)
            both(ids, 1000, 5000)
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
