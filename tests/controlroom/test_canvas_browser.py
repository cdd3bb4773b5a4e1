"""The live canvas in a real browser (Chromium via Playwright) against a real ASGI server (daphne),
the real Redis channel layer and real Celery workers running simulated agents."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from agents import services
from agents.dispatch import enqueue_step_now
from agents.events import broadcast_session
from agents.management.commands.seed_demo import demo_password
from agents.models import AgentSession, Escalation, Pod, Status, User
from agents.selectors import active_grant
from controlroom.localredis import free_port
from tests.conftest import _db_env, wait_until
from tests.personas import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


class Daphne:
    """``daphne controlroom.asgi:application`` on a loopback port, against the test database."""

    def __init__(self, *, worktrees: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _db_env()
        self.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.env["WORKTREES_DIR"] = str(worktrees)
        self.log = worktrees.parent / "daphne.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daphne:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "controlroom.asgi:application"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daphne exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"daphne did not listen within 60 s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


@pytest.fixture
def daphne(worktrees_dir, transactional_db):
    server = Daphne(worktrees=worktrees_dir).start()
    yield server
    server.stop()


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop on this thread; the ORM calls of the test are still plain
    # sync code (children get an environment without this flag, see Daphne).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def off_loop(fn, *args, **kwargs):
    """Run ``fn`` on a thread of its own: Playwright's event loop owns this one, and the services
    broadcast with async_to_sync, which refuses to run beside a running loop."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=120)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _login(page, server: Daphne, username: str, password: str) -> None:
    """Log in through the login form. The test process hashes passwords with MD5 (fast) which the
    server does not accept, so the user's password is stored with the server's hasher first."""
    from django.contrib.auth.hashers import make_password
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.PBKDF2PasswordHasher"]):
        User.objects.filter(username=username).update(password=make_password(password))
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.goto(f"{server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    try:
        page.wait_for_selector('#live-status[data-state="open"]', timeout=15000)
    except PlaywrightTimeout as exc:
        raise AssertionError(
            f"the canvas socket did not open: {exc}\nconsole: {console}\n{server.log_tail()}"
        ) from None


def _tile(page, session_id: int) -> dict:
    return page.evaluate(
        """id => { const t = document.getElementById('tile-' + id);
                  return t ? {status: t.dataset.status, version: +t.dataset.version, text: t.innerText} : null; }""",
        session_id,
    )


def _wait_for(page, selector: str, *, timeout: float, session_id: int, logs=()) -> None:
    """Wait for ``selector`` on the page; on timeout say what the database and the page hold."""
    try:
        page.wait_for_selector(selector, timeout=timeout * 1000)
    except PlaywrightTimeout as exc:
        db = AgentSession.objects.filter(pk=session_id).values("status", "version", "steps", "status_reason").first()
        tail = "\n".join(log() for log in logs)
        raise AssertionError(
            f"{selector} not on the page after {timeout}s ({exc.__class__.__name__})\n"
            f"database: {db}\npage: {_tile(page, session_id)}\n{tail}"
        ) from None


def _db(session_id: int) -> AgentSession:
    return AgentSession.objects.get(pk=session_id)


def _shows_db_state(page, session_id: int) -> bool:
    tile, session = _tile(page, session_id), _db(session_id)
    return bool(tile) and tile["version"] == session.version and tile["status"] == session.status


WATCH_FIRST_CHANGE = """id => {
  window.__firstChange = null;
  new MutationObserver(() => {
    const t = document.getElementById('tile-' + id);
    if (!window.__firstChange && t && t.dataset.status !== 'queued')
      window.__firstChange = {at: Date.now() / 1000, status: t.dataset.status, version: +t.dataset.version};
  }).observe(document.getElementById('canvas'), {subtree: true, childList: true, attributes: true});
}"""

MEASURE_LAG = """() => {  // the longest the page's event loop was busy: what a user feels as a frozen page
  window.__lag = 0;
  let last = performance.now();
  setInterval(() => { const now = performance.now(); window.__lag = Math.max(window.__lag, now - last - 50); last = now; }, 50);
}"""

COUNT_SWAPS = """id => {
  window.__swaps = 0;
  window.__versions = [];
  document.addEventListener('cr:tileSwap', e => {  // after canvas.js's version check
    if (e.detail.id === 'tile-' + id) {
      window.__swaps++;
      window.__versions.push(e.detail.version);
    }
  });
}"""


def test_the_live_canvas_of_a_hundred_agents(daphne, browser, celery_workers, worktrees_dir):
    call_command("seed_demo", agents=100, no_start=True, stdout=io.StringIO())
    sessions = list(AgentSession.objects.order_by("pk"))
    assert len(sessions) == 100
    pool = celery_workers(processes=1, concurrency=2, SIM_PACING_S="0.4")
    # a few agents at work before the page opens
    for session in sessions[:12]:
        if session.grants.get().not_before <= timezone.now():
            enqueue_step_now(session_id=session.pk, step=1, priority=session.priority)

    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, daphne, "manager", demo_password())

    # 100 tiles, grouped by pod
    assert page.locator("#canvas .tile").count() == 100
    groups = page.eval_on_selector_all(
        "#canvas .pod-group",
        "gs => gs.map(g => ({pod: g.dataset.podId, tiles: [...g.querySelectorAll('.tile')].map(t => t.dataset.podId)}))",
    )
    assert len(groups) == Pod.objects.count() == 20
    assert all(tile == group["pod"] for group in groups for tile in group["tiles"])
    assert sum(len(group["tiles"]) for group in groups) == 100

    # let the first agents get somewhere, then take the picture for the README
    wait_until(
        lambda: AgentSession.objects.exclude(status=Status.QUEUED).count() >= 8,
        timeout=120,
        message=f"agents to start\n{pool.log_tail()}",
    )
    time.sleep(3)
    page.screenshot(path=str(ARTIFACTS / "canvas.png"))
    # docs/canvas.png (the README's screenshot) is made by tools/docs_screenshots.py: a test run
    # must not change tracked files

    # a status change made by a Celery worker shows within a second, without reload
    page.evaluate("window.__marker = 'same page'")
    fresh = next(
        s for s in sessions[20:] if _db(s.pk).status == Status.QUEUED and s.grants.get().not_before <= timezone.now()
    )
    page.evaluate(WATCH_FIRST_CHANGE, fresh.pk)
    enqueue_step_now(session_id=fresh.pk, step=1, priority=fresh.priority)
    wait_until(
        lambda: page.evaluate("window.__firstChange"),
        timeout=60,
        interval=0.05,
        message=f"the worker's change on the page\n{pool.log_tail()}\n{daphne.log_tail()}",
    )
    seen = page.evaluate("window.__firstChange")
    started = _db(fresh.pk).started_at.timestamp()
    assert seen["at"] - started < 1.0, (
        f"the page showed the change {seen['at'] - started:.2f}s after the worker made it"
    )

    # the server goes away; changes made meanwhile appear after the page reconnects, without reload
    daphne.stop(signal.SIGKILL)
    page.wait_for_selector('#live-status[data-state="closed"]', timeout=10000)
    manager = User.objects.get(username="manager")
    away = [s for s in sessions[40:] if _db(s.pk).status == Status.QUEUED][:5]
    for session in away:
        off_loop(services.session_pause, session=session, by=manager, reason="changed while the page was away")
    daphne.start()
    page.wait_for_selector('#live-status[data-state="open"]', timeout=30000)
    wait_until(
        lambda: all(_shows_db_state(page, s.pk) for s in away),
        timeout=10,
        message=f"the changes made while away\n{daphne.log_tail()}",
    )
    assert all(_tile(page, s.pk)["status"] == "paused" for s in away)
    assert page.evaluate("window.__marker") == "same page"

    # a burst of 1,000 updates of one tile: the page stays responsive and ends on the final state
    chatty = next(s for s in sessions[60:] if _db(s.pk).status == Status.QUEUED)
    page.evaluate(COUNT_SWAPS, chatty.pk)
    done = threading.Event()

    def burst() -> None:
        try:
            for i in range(1000):
                AgentSession.objects.filter(pk=chatty.pk).update(
                    version=F("version") + 1, current_activity=f"burst update {i + 1}", updated_at=timezone.now()
                )
                broadcast_session(chatty.pk)
        finally:
            connection.close()
            done.set()

    page.evaluate(MEASURE_LAG)
    started = time.monotonic()
    threading.Thread(target=burst, daemon=True).start()
    while not done.is_set():
        page.evaluate("() => document.querySelectorAll('#canvas .tile').length")
        time.sleep(0.1)
    burst_s = time.monotonic() - started
    final = _db(chatty.pk)
    wait_until(
        lambda: _tile(page, chatty.pk)["version"] == final.version,
        timeout=5,
        message="the tile to end on the final version",
    )
    assert "burst update 1000" in _tile(page, chatty.pk)["text"]
    swaps, versions = page.evaluate("window.__swaps"), page.evaluate("window.__versions")
    assert versions == sorted(versions) and versions[-1] == final.version
    window = settings.CONTROLROOM["LIVE_COALESCE_MS"] / 1000
    assert swaps <= 4 + burst_s / window, f"{swaps} swaps for a {burst_s:.1f}s burst of 1,000 updates"
    lag = page.evaluate("window.__lag")
    assert lag < 400, f"the page's event loop stalled for {lag:.0f} ms during the burst"
    assert page.locator("#canvas .tile").count() == 100
    assert not errors, errors


def _ask_a_human(session: AgentSession) -> None:
    """What the runtime does when a tool call needs approval (without running a step)."""
    with transaction.atomic():
        locked = AgentSession.objects.select_for_update().get(pk=session.pk)
        Escalation.objects.create(
            session=locked,
            grant=active_grant(session=locked),
            tool="run_command",
            action="run_command: git push origin HEAD",
            action_hash="b" * 64,
            reason="commands ask in edits mode",
            rule="Bash(git push origin HEAD)",
        )
        services.set_status(locked, Status.NEEDS_APPROVAL, reason="asks: git push origin HEAD", agent=True)


def _launch(fleet, name: str) -> AgentSession:
    return off_loop(
        services.session_launch,
        pod=fleet.alpha,
        sto=fleet.sto,
        goal=name,
        name=name,
        by=fleet.lead,
        repository=fleet.repo,
        start=False,
    )


def test_drawer_controls_keyboard_launch_and_a_phone_sized_screen(daphne, browser, celery_workers, fleet):
    first, second, third = (
        _launch(fleet, n) for n in ("Fix the failing test in shopcart", "Tidy the README", "Add type hints")
    )
    pool = celery_workers(processes=1, concurrency=2, SIM_PACING_S="0.3")
    logs = (pool.log_tail, daphne.log_tail)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, daphne, "max", PASSWORD)

    # keyboard: j/k move between tiles, Enter opens the drawer, Esc closes it
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.closest('.tile').id") == f"tile-{first.pk}"
    page.keyboard.press("j")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.closest('.tile').id") == f"tile-{third.pk}"
    page.keyboard.press("k")
    assert page.evaluate("document.activeElement.closest('.tile').id") == f"tile-{second.pk}"
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#drawer [data-session-id="{second.pk}"]')
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.getElementById('drawer').children.length === 0")

    # an agent asks: its tile turns, "needs you" lists it; Enter opens its drawer and "a" approves
    off_loop(_ask_a_human, third)
    _wait_for(page, f'#tile-{third.pk}[data-status="needs_approval"]', timeout=5, session_id=third.pk, logs=logs)
    page.wait_for_selector(f'#needs-you li[data-session-id="{third.pk}"]', timeout=8000)
    page.screenshot(path=str(ARTIFACTS / "canvas-needs-you.png"))
    page.focus(f"#tile-{third.pk} .tile-link")
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#drawer [data-session-id="{third.pk}"] [data-key="approve"]')
    page.keyboard.press("a")
    wait_until(
        lambda: Escalation.objects.get(session=third).state == Escalation.State.ALLOWED_ONCE,
        timeout=10,
        message="the escalation to be allowed from the keyboard",
    )
    _wait_for(page, f'#tile-{third.pk}:not([data-status="needs_approval"])', timeout=5, session_id=third.pk, logs=logs)
    page.wait_for_function(
        f"() => !document.querySelector('#needs-you li[data-session-id=\"{third.pk}\"]')", timeout=8000
    )
    page.keyboard.press("Escape")

    # open a drawer, pause and resume from it; the tile follows over the websocket
    page.click(f"#tile-{first.pk} .tile-link")
    page.wait_for_selector("#drawer button[data-control=pause]")
    page.click("#drawer button[data-control=pause]")
    _wait_for(page, f'#tile-{first.pk}[data-status="paused"]', timeout=5, session_id=first.pk, logs=logs)
    page.wait_for_selector("#drawer button[data-control=resume]")
    page.click("#drawer button[data-control=resume]")
    _wait_for(page, f'#tile-{first.pk}:not([data-status="paused"])', timeout=5, session_id=first.pk, logs=logs)
    wait_until(lambda: _db(first.pk).steps > 0, timeout=60, message=f"the resumed agent to work\n{pool.log_tail()}")
    page.screenshot(path=str(ARTIFACTS / "canvas-drawer.png"))

    # launch from the form in a second tab: the new tile appears on the canvas and starts running
    form = context.new_page()
    form.goto(f"{daphne.url}/launch")
    form.select_option("#id_pod", str(fleet.alpha.pk))
    form.select_option("#id_sto", "sam")
    form.fill("#id_goal", "Fix the rounding of the cart total")
    form.fill("#id_success_criteria", "the tests pass")
    form.screenshot(path=str(ARTIFACTS / "launch.png"), full_page=True)
    form.click("#launch-form button[type=submit]")
    form.wait_for_url(re.compile(r".*/#tile-\d+$"))
    launched = AgentSession.objects.get(goal="Fix the rounding of the cart total")
    page.wait_for_selector(f"#tile-{launched.pk}", timeout=5000)
    _wait_for(page, f'#tile-{launched.pk}:not([data-status="queued"])', timeout=60, session_id=launched.pk, logs=logs)
    assert page.locator(f"#pod-{fleet.alpha.pk} #tile-{launched.pk}").count() == 1
    assert form.locator(f"#tile-{launched.pk}").count() == 1

    # filters live in the query string; the page swaps in place (htmx) and keeps its socket live
    off_loop(services.session_pause, session=second, by=fleet.manager)
    page.evaluate("window.__marker = 'not reloaded'")
    page.click("details.status-filter > summary")
    page.check('input[name=status][value="paused"]')
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*\?.*status=paused"))
    page.wait_for_selector('#live-status[data-state="open"]')
    shown = page.eval_on_selector_all("#canvas .tile", "ts => ts.map(t => [t.id, t.dataset.status])")
    assert shown == [[f"tile-{second.pk}", "paused"]]
    assert page.evaluate("window.__marker") == "not reloaded"

    # a phone: the drawer takes the whole width
    phone = context.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(daphne.url + "/")
    phone.wait_for_selector('#live-status[data-state="open"]')
    phone.screenshot(path=str(ARTIFACTS / "canvas-phone.png"))
    phone.click(f"#tile-{first.pk} .tile-link")
    phone.wait_for_selector(f'#drawer [data-session-id="{first.pk}"]')
    box = phone.locator(".drawer-slot").bounding_box()
    assert box["x"] == 0 and box["width"] == 390
    phone.screenshot(path=str(ARTIFACTS / "canvas-drawer-phone.png"))
    phone.keyboard.press("Escape")
    phone.wait_for_function("() => document.getElementById('drawer').children.length === 0")
    assert not errors, errors
