"""The dense canvas in a real browser at 1920×1080 (Chromium via Playwright, daphne, the Redis
channel layer, real Celery workers): compact mode fits 100 tiles on one screen and stays live; the
fleet map shows 1,000 sessions, details on hover and keyboard focus, and a cell follows a status
change within a second; a SIGKILLed worker's session turns "stranded" and recovers with one click;
overlapping edits are shown on both tiles and on the review page."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone

from agents import services
from agents.events import broadcast_session
from agents.management.commands.seed_demo import demo_password
from agents.models import AgentSession, AgentStep, Status, ToolCall, User
from tests.conftest import wait_until
from tests.controlroom.test_canvas_browser import ARTIFACTS, CHROMIUM_ARGS, Daphne, _login, _wait_for, off_loop
from tests.personas import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FULL_HD = {"width": 1920, "height": 1080}


@pytest.fixture
def daphne(worktrees_dir, transactional_db):
    server = Daphne(worktrees=worktrees_dir).start()
    yield server
    server.stop()


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # see test_canvas_browser.browser
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


OUTSIDE_VIEWPORT = """() => {
  const w = window.innerWidth, h = window.innerHeight;
  return [...document.querySelectorAll('#canvas .tile')].filter(t => {
    const r = t.getBoundingClientRect();
    return r.width === 0 || r.left < 0 || r.top < 0 || r.right > w || r.bottom > h;
  }).map(t => t.id);
}"""

DEEPEST = """() => [document.scrollingElement.scrollHeight, ...[...document.querySelectorAll('body *')]
  .map(e => [e.tagName + '.' + e.className + '#' + e.id, Math.round(e.getBoundingClientRect().bottom)])
  .sort((a, b) => b[1] - a[1]).slice(0, 6)]"""

WATCH_CELL = """id => {
  window.__cell = null;
  document.addEventListener('cr:cellSwap', e => {
    if (e.detail.id === 'cell-' + id && e.detail.status === 'paused' && !window.__cell) window.__cell = Date.now() / 1000;
  });
}"""


def _page(browser, daphne, username: str, password: str, path: str = "/"):
    context = browser.new_context(viewport=FULL_HD)
    # the server's #live-ts as the page was served (the subscription's catch-up replaces it)
    context.add_init_script(
        "document.addEventListener('DOMContentLoaded', () => {"
        " const el = document.getElementById('live-ts'); window.__servedTs = el && el.dataset.ts; });"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, daphne, username, password)
    if path != "/":
        page.goto(daphne.url + path)
        page.wait_for_selector('#live-status[data-state="open"]', timeout=15000)
    return page, errors


def test_compact_mode_shows_a_hundred_tiles_on_one_full_hd_screen_and_stays_live(daphne, browser):
    call_command("seed_demo", agents=100, no_start=True, stdout=io.StringIO())
    # a morning's mix: a long "needs you" column and stranded tiles (their Recover/Cancel) must not
    # push the canvas past the screen
    ids = list(AgentSession.objects.order_by("pk").values_list("pk", flat=True))
    AgentSession.objects.filter(pk__in=ids[40:80]).update(status=Status.NEEDS_APPROVAL, status_reason="asks: pytest")
    AgentSession.objects.filter(pk__in=ids[80:92]).update(
        status=Status.RUNNING, heartbeat_at=timezone.now() - timedelta(hours=1), updated_at=timezone.now()
    )
    page, errors = _page(browser, daphne, "manager", demo_password(), "/?view=compact")
    assert page.locator("#canvas .tile.stranded").count() == 12
    assert page.locator("#needs-you li").count() == 40
    assert page.locator("#canvas .tile").count() == 100
    assert page.evaluate(OUTSIDE_VIEWPORT) == [], "every tile inside the 1920×1080 viewport"
    assert page.evaluate("document.scrollingElement.scrollHeight <= window.innerHeight"), page.evaluate(DEEPEST)
    # readable: status, name, STO and age on every tile
    texts = page.eval_on_selector_all("#canvas .tile", "ts => ts.map(t => t.innerText)")
    session = AgentSession.objects.order_by("pk").first()
    first = page.locator(f"#tile-{session.pk}").inner_text()
    assert "QUEUED" in first.upper() and session.name[:10] in first and session.sto.username in first
    assert all("ago" in text or "no heartbeat" in text for text in texts)
    # remembered: the canvas opens compact again
    page.goto(daphne.url + "/")
    assert page.locator("#canvas.view-compact .tile").count() == 100
    page.wait_for_selector('#live-status[data-state="open"]', timeout=15000)
    # live: a change made elsewhere shows on its compact tile
    off_loop(services.session_pause, session=session, by=User.objects.get(username="manager"))
    _wait_for(page, f'#tile-{session.pk}[data-status="paused"]', timeout=5, session_id=session.pk)
    assert page.evaluate(OUTSIDE_VIEWPORT) == []
    page.screenshot(path=str(ARTIFACTS / "canvas-compact.png"))
    assert not errors, errors


def test_the_fleet_map_shows_a_thousand_sessions_and_follows_a_change_within_a_second(daphne, browser):
    call_command("seed_demo", agents=1000, no_start=True, stdout=io.StringIO())
    page, errors = _page(browser, daphne, "manager", demo_password())
    assert page.locator("#canvas.view-map").count() == 1, "a fleet of 1,000 opens as the map"
    assert page.locator("#canvas .cells .cell").count() == 1000
    assert page.evaluate("document.scrollingElement.scrollHeight <= window.innerHeight"), page.evaluate(DEEPEST)
    assert page.locator("#canvas .map-group").count() == 20
    target = AgentSession.objects.order_by("pk")[500]
    # hover shows the details; keyboard focus too, and arrows move between cells
    page.hover(f"#cell-{target.pk}")
    details = page.locator("#cell-details")
    assert target.name in details.inner_text() and target.sto.username in details.inner_text()
    page.focus(f"#cell-{target.pk}")
    page.keyboard.press("ArrowRight")
    focused = page.evaluate("document.activeElement.id")
    assert focused.startswith("cell-") and focused != f"cell-{target.pk}"
    neighbour = AgentSession.objects.get(pk=int(focused.split("-")[1]))
    assert neighbour.name in details.inner_text()
    # a status change reaches its cell within a second (the tile frame updates the cell)
    page.evaluate(WATCH_CELL, target.pk)

    def change() -> float:
        AgentSession.objects.filter(pk=target.pk).update(
            status=Status.PAUSED, version=F("version") + 1, updated_at=timezone.now()
        )
        committed = time.time()
        broadcast_session(target.pk)
        return committed

    # the subscription's catch-up (every session updated shortly before the page loaded: here the
    # 1,000 just seeded) ends with a new #live-ts; live updates queue behind it, so wait for it
    page.wait_for_function("() => document.getElementById('live-ts').dataset.ts !== window.__servedTs", timeout=30000)
    # warm this process's publishing path first (template compile, the publisher's loop and Redis
    # connection): the figure is the fleet's, not the test process's cold start
    off_loop(broadcast_session, neighbour.pk)
    committed = off_loop(change)
    wait_until(lambda: page.evaluate("window.__cell"), timeout=5, interval=0.05, message="the cell to turn paused")
    lag = page.evaluate("window.__cell") - committed
    assert lag < 1.0, f"the cell changed {lag:.2f}s after the commit"
    assert page.get_attribute(f"#cell-{target.pk}", "class") == "cell status-paused"
    page.focus(f"#cell-{target.pk}")
    assert "Paused" in details.inner_text() and target.name in details.inner_text()
    # a click opens the drawer
    page.click(f"#cell-{target.pk}")
    page.wait_for_selector(f'#drawer [data-session-id="{target.pk}"]')
    page.keyboard.press("Escape")
    page.hover(f"#cell-{target.pk}")
    page.screenshot(path=str(ARTIFACTS / "fleet-map.png"))
    assert not errors, errors


def test_a_sigkilled_workers_session_shows_stranded_and_recovers_with_one_click(daphne, browser, celery_workers, fleet):
    daphne.stop()
    daphne.env["STALE_AFTER_S"] = "5"
    daphne.start()
    session = off_loop(
        services.session_launch,
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Fix the failing test in shopcart",
        name="Fix the failing test in shopcart",
        by=fleet.lead,
        repository=fleet.repo,
        start=False,
    )
    page, errors = _page(browser, daphne, "sam", PASSWORD, "/?view=tiles")
    # a worker takes it, its steps slow; it is SIGKILLed while the session runs
    pool = celery_workers(processes=1, concurrency=1, SIM_PACING_S="3", STEP_LEASE_S="3")
    off_loop(_start, session)
    wait_until(
        lambda: AgentSession.objects.get(pk=session.pk).heartbeat_at is not None,
        timeout=60,
        message=f"the worker to take the session\n{pool.log_tail()}",
    )
    _wait_for(page, f'#tile-{session.pk}[data-status="running"]', timeout=10, session_id=session.pk)
    pool.kill(pool.procs[0])
    killed = time.monotonic()
    at_kill = AgentSession.objects.get(pk=session.pk)
    assert at_kill.status == Status.RUNNING
    # the open page turns it stranded on its own (no message comes from a dead worker)
    _wait_for(page, f"#tile-{session.pk}.stranded", timeout=20, session_id=session.pk, logs=(pool.log_tail,))
    seen = time.monotonic() - killed
    assert seen < 5 + 3 + 6, f"stranded {seen:.1f}s after the kill (STALE_AFTER_S=5, lease 3 s, refresh 5 s)"
    tile = page.locator(f"#tile-{session.pk}")
    assert "STRANDED" in tile.inner_text().upper() and "RUNNING" not in tile.inner_text().upper()
    assert tile.locator("button[data-control=recover]").is_visible()
    # a fresh page and the drawer say so too
    page.reload()
    page.wait_for_selector(f"#tile-{session.pk}.stranded")
    page.click(f"#tile-{session.pk} .tile-link")
    page.wait_for_selector('#drawer [data-stranded="true"]')
    page.keyboard.press("Escape")
    # one click: a new worker takes the step again, the tile runs
    pool2 = celery_workers(processes=1, concurrency=1, SIM_PACING_S="0.3")
    page.click(f"#tile-{session.pk} button[data-control=recover]")
    page.wait_for_selector(f'#drawer [data-session-id="{session.pk}"]')
    assert "Recovery sent" in page.locator("#drawer").inner_text()
    wait_until(
        lambda: AgentSession.objects.get(pk=session.pk).steps > at_kill.steps,
        timeout=60,
        message=f"the recovered session to take a step\n{pool2.log_tail()}",
    )
    _wait_for(
        page,
        f"#tile-{session.pk}:not(.stranded)",
        timeout=10,
        session_id=session.pk,
        logs=(pool2.log_tail, daphne.log_tail),
    )
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(session_id=session.pk, kind="session.recovered", actor_label="sam").exists()
    assert not errors, errors


def _start(session) -> None:
    from agents.dispatch import enqueue_step_now

    enqueue_step_now(session_id=session.pk, step=1, priority=session.priority)


def test_overlapping_edits_show_on_both_tiles_and_on_the_review_page(daphne, browser, fleet, worktrees_dir):
    from tests.reviews.test_review_decisions import make_session

    one = off_loop(make_session, fleet, files={"shopcart/helper.py": "def helper():\n    return 1\n"}, name="one")
    two = off_loop(make_session, fleet, status=Status.RUNNING, name="two")
    for session in (one, two):
        step, _ = AgentStep.objects.get_or_create(session=session, number=1)
        ToolCall.objects.create(
            session=session,
            step=step,
            index=step.tool_calls.count(),
            call_id=f"w{session.pk}",
            name="write_file",
            arguments={"path": "shopcart/helper.py", "content": "x"},
            state=ToolCall.State.DONE,
        )
    page, errors = _page(browser, daphne, "max", PASSWORD, "/?view=tiles")
    for me, other in ((one, two), (two, one)):
        note = page.locator(f"#tile-{me.pk} .overlap-note")
        assert note.is_visible() and f"#{other.pk}" in note.inner_text() and "helper.py" in note.inner_text()
    # a third session edits the file while the page is open: its tile says so over the websocket,
    # and the first one's tile is marked at once too (it is not re-rendered until its own next change)
    three = off_loop(make_session, fleet, status=Status.RUNNING, name="three")
    step, _ = AgentStep.objects.get_or_create(session=three, number=1)
    ToolCall.objects.create(
        session=three,
        step=step,
        index=0,
        call_id="w3",
        name="edit_file",
        arguments={"path": "shopcart/helper.py", "old": "a", "new": "b"},
        state=ToolCall.State.DONE,
    )

    def bump() -> None:
        AgentSession.objects.filter(pk=three.pk).update(version=F("version") + 1, updated_at=timezone.now())
        broadcast_session(three.pk)

    off_loop(bump)
    page.wait_for_selector(f"#tile-{three.pk} .overlap-note", timeout=5000)
    page.wait_for_function(
        f"() => document.querySelector('#tile-{one.pk} .overlap-note').textContent.includes('#{three.pk}')",
        timeout=5000,
    )
    page.goto(f"{daphne.url}/reviews/{one.pk}/")
    warning = page.locator(".overlap-warning")
    assert warning.is_visible()
    assert f"#{two.pk} two" in warning.inner_text() and "shopcart/helper.py" in warning.inner_text()
    assert not errors, errors
