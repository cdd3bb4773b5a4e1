"""The pages under the Content-Security-Policy in a real browser (Chromium via Playwright, daphne,
the Redis channel layer): every main page, the admin included, opens without one policy violation
and without a console error; the canvas still updates live in each view; what the inline code did
still works (error answers swapped into the drawer, budget meters sized, diffs coloured)."""

from __future__ import annotations

import pytest

from agents import services
from agents.models import AgentSession, Status
from tests.controlroom.test_canvas_browser import CHROMIUM_ARGS, Daphne, _login, _wait_for, off_loop
from tests.decision_seed import seed_waiting_night
from tests.personas import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REPORT_VIOLATIONS = """
document.addEventListener('securitypolicyviolation', e => window.__cspViolation({
  page: location.pathname + location.search, directive: e.violatedDirective, blocked: e.blockedURI,
  sample: e.sample, at: e.sourceFile + ':' + e.lineNumber}));
"""


@pytest.fixture
def daphne(worktrees_dir, transactional_db):
    server = Daphne(worktrees=worktrees_dir).start()
    yield server
    server.stop()


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # see test_canvas_browser.browser
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page whose policy violations, console errors and warnings and uncaught errors are collected."""

    def __init__(self, browser, server: Daphne):
        self.server = server
        self.violations: list[dict] = []
        self.console: list[str] = []
        self.context = browser.new_context(viewport={"width": 1440, "height": 1000})
        self.context.expose_function("__cspViolation", lambda violation: self.violations.append(violation))
        self.context.add_init_script(REPORT_VIOLATIONS)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))

    def _console(self, message) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type} on {self.page.url}: {message.text}")

    def open(self, path: str, *, live: bool = False) -> None:
        response = self.page.goto(self.server.url + path)
        assert response.status == 200, (path, response.status)
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        self.page.wait_for_load_state("networkidle")
        if live:
            self.page.wait_for_selector('#live-status[data-state="open"]', timeout=15000)

    def assert_clean(self, *, expected: tuple[str, ...] = ()) -> None:
        """No violation so far, and no console message but the ``expected`` ones (then forgotten)."""
        self.page.wait_for_timeout(300)  # violations are reported asynchronously
        assert self.violations == [], self.violations
        unexpected = [m for m in self.console if not any(text in m for text in expected)]
        assert unexpected == [], unexpected
        for text in expected:
            assert any(text in m for m in self.console), f"expected on the console: {text}"
        self.console.clear()


def _paused_live(page, session: AgentSession, by, *, cell: bool = False) -> None:
    off_loop(services.session_pause, session=session, by=by)
    selector = f"#cell-{session.pk}.status-paused" if cell else f'#tile-{session.pk}[data-status="paused"]'
    _wait_for(page, selector, timeout=10, session_id=session.pk)


def test_every_main_page_works_under_the_policy_and_the_canvas_stays_live(daphne, browser, fleet, worktrees_dir):
    from tests.reviews.test_review_decisions import make_session

    fleet.manager.is_staff = fleet.manager.is_superuser = True
    fleet.manager.save()
    asked = seed_waiting_night(fleet)
    # a diff with more files than are inlined: the others wait in placeholders sized by the server
    files = {f"shopcart/part_{n}.py": "".join(f"def f{i}():\n    return {i}\n" for i in range(12)) for n in range(5)}
    reviewed = off_loop(make_session, fleet, files=files, name="Split the cart module")
    queued = [
        services.session_launch(
            pod=fleet.alpha, sto=fleet.sto, by=fleet.lead, goal=f"Task {n}", repository=fleet.repo, start=False
        )
        for n in range(4)
    ]
    AgentSession.objects.filter(pk=queued[0].pk).update(steps=50)  # its budget meter shows 25 %

    watched = Watched(browser, daphne)
    page = watched.page
    watched.open("/login/")
    _login(page, daphne, fleet.manager.username, PASSWORD)
    watched.assert_clean()

    # the canvas in each view, live
    watched.open("/?view=tiles", live=True)
    _paused_live(page, queued[1], fleet.manager)
    watched.open("/?view=compact", live=True)
    assert page.locator("#canvas.view-compact").count() == 1
    _paused_live(page, queued[2], fleet.manager)
    watched.open("/?view=map", live=True)
    assert page.locator("#canvas.view-map").count() == 1
    _paused_live(page, queued[3], fleet.manager, cell=True)
    page.click(f"#cell-{queued[3].pk}")
    page.wait_for_selector(f'#drawer [data-session-id="{queued[3].pk}"]')
    watched.assert_clean()

    # a session drawer opened from a tile; an error answer (409) is swapped in where it was asked
    watched.open("/?view=tiles", live=True)
    page.click(f"#tile-{queued[0].pk} .tile-link")
    drawer = f'#drawer [data-session-id="{queued[0].pk}"]'
    page.wait_for_selector(drawer)
    meters = page.eval_on_selector_all(f"{drawer} [data-width]", "ms => ms.map(m => [m.dataset.width, m.style.width])")
    assert ["25", "25%"] in meters, meters
    off_loop(services.session_cancel, session=queued[0], by=fleet.manager)
    page.click(f'{drawer} [data-control="pause"]')
    page.wait_for_selector(f"{drawer} .flash li.error")
    assert "has already ended" in page.inner_text(f"{drawer} .flash li.error")
    watched.assert_clean(expected=("the server responded with a status of 409",))  # Chromium logs every 4xx

    # the other pages
    for path in [
        f"/sessions/{asked['curl'][0].session_id}/",
        "/decisions",
        "/launch",
        "/reviews/",
        "/digest",
        "/timeline",
        "/audit/",
        "/dashboard",
        "/pods/",
        "/pods/alpha/",
    ]:
        watched.open(path)
    watched.assert_clean()

    # a review diff: coloured by the pygments stylesheet, placeholders sized, lazy files load
    watched.open(f"/reviews/{reviewed.pk}/")
    keyword = page.locator(".code .k").first
    assert keyword.evaluate("k => getComputedStyle(k).color") != page.evaluate("getComputedStyle(document.body).color")
    heights = page.eval_on_selector_all(
        "[data-height-px]", "ps => ps.map(p => [p.dataset.heightPx + 'px', p.style.height])"
    )
    assert heights and all(want == got for want, got in heights), heights
    page.locator("[data-height-px]").last.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelectorAll('[data-height-px]').length === 0", timeout=10000)
    watched.assert_clean()

    # the admin
    for path in [
        "/admin/",
        "/admin/agents/agentsession/",
        f"/admin/agents/agentsession/{reviewed.pk}/change/",
        "/admin/agents/pod/",
        "/admin/audit/auditevent/",
        "/admin/agents/user/",
    ]:
        watched.open(path)
    watched.assert_clean()
    assert AgentSession.objects.get(pk=queued[3].pk).status == Status.PAUSED
