"""Steering from the drawer in a real browser (Chromium via Playwright): the STO types a message
while the agent works; the next model call (a real HTTP request to the scripted model) carries it
as a user message, and the transcript shows it."""

from __future__ import annotations

import threading

import pytest

from agents.models import SteeringMessage
from agents.runtime.loop import run_step
from audit.models import AuditEvent
from tests.agents.test_runtime import scripted
from tests.controlroom.test_decisions_browser import ARTIFACTS, CHROMIUM_ARGS, login
from tests.scripted_model import ScriptedModel, calls

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def off_loop(fn, *args, **kwargs):
    """Run database work in a plain thread: Playwright's sync API keeps an event loop in this one."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn(*args, **kwargs)))
    thread.start()
    thread.join(120)
    return result.get("value")


NOTE = "Stop refactoring: only fix the failing test, then finish."


def test_a_message_sent_from_the_drawer_is_in_the_next_model_calls_context(live_server, fleet, worktrees_dir):
    from playwright.sync_api import sync_playwright

    script = [calls([("list_files", {"path": "."})]), calls([("list_files", {"path": "."})])]
    ARTIFACTS.mkdir(exist_ok=True)
    with ScriptedModel(script) as model:
        session = scripted(fleet, model)
        run_step(session.pk, 1, owner="test")
        with sync_playwright() as p:
            drive_the_drawer(p, live_server, session, model)
    message = SteeringMessage.objects.get()
    assert message.author == fleet.sto and message.delivered_step == 2
    kinds = list(AuditEvent.objects.filter(session_id=session.pk).values_list("kind", flat=True))
    assert kinds.index("session.steered") < kinds.index("steering.delivered")


def drive_the_drawer(p, live_server, session, model) -> None:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        login(page, live_server.url, "sam")
        page.goto(f"{live_server.url}/sessions/{session.pk}/")
        page.fill(f"#steer-text-{session.pk}", NOTE)
        page.click('button[data-control="steer"]')
        page.wait_for_selector('li.steering[data-delivered="false"]')
        assert "Message sent" in page.content()
        assert len(model.requests) == 1
        off_loop(run_step, session.pk, 2, owner="test")
        last = model.requests[1]["messages"][-1]
        assert last["role"] == "user" and NOTE in last["content"]
        page.reload()
        page.wait_for_selector('li.steering[data-delivered="true"]')
        entry = page.locator("li.t-entry.role-user", has_text=NOTE)
        assert entry.count() == 1 and "steering" in entry.inner_text()
        page.screenshot(path=str(ARTIFACTS / "steering.png"), full_page=True)
    finally:
        browser.close()
