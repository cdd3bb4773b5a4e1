"""A decision link on a phone (Chromium via Playwright, 390×844): the page fits the width, its
decision buttons are visible without horizontal scrolling, it decides once, and a reused link or
another person's is refused with a clear page."""

from __future__ import annotations

import re

import pytest

from agents import services
from agents.models import Escalation
from tests.controlroom.test_decisions_browser import ARTIFACTS, CHROMIUM_ARGS
from tests.decision_seed import ask, waiting_session
from tests.personas import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG = (
    "run_command: curl -sS --retry 3 --connect-timeout 10 "
    "https://pypi.org/simple/some-really-long-package-name-that-does-not-wrap-by-itself/ -o /dev/null"
)
PHONE = {"width": 390, "height": 844}


def phone_login(page, base_url: str, next_path: str, username: str) -> None:
    page.goto(f"{base_url}{next_path}")  # not logged in: the login page, then back to the link
    page.wait_for_url(re.compile(r".*/login/.*"))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/d/.*"))


def fits(page) -> None:
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide: it scrolls sideways"


def test_the_link_page_fits_a_phone_decides_once_and_refuses_reuse_and_other_users(live_server, fleet, worktrees_dir):
    from playwright.sync_api import sync_playwright

    escalation = ask(waiting_session(fleet, name="Refresh the package index"), LONG, rule="Net(pypi.org)")
    url = services.escalation_link(escalation=escalation, user=fleet.sto)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            phone = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
            page = phone.new_page()
            phone_login(page, live_server.url, url, "sam")
            assert page.locator("pre.action").inner_text() == LONG
            fits(page)
            for value in ("allow-once", "allow-always", "deny"):
                box = page.locator(f'button[value="{value}"]').bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (value, box)
                assert box["y"] + box["height"] <= PHONE["height"], f"{value} is below the fold: {box}"
            page.screenshot(path=str(ARTIFACTS / "decision-link-390.png"))
            page.click('button[value="allow-once"]')
            page.wait_for_selector(".done")
            fits(page)
            page.goto(f"{live_server.url}{url}")  # the same link again
            assert page.locator("h1").inner_text() == "This link was already used"
            fits(page)
            page.screenshot(path=str(ARTIFACTS / "decision-link-reused-390.png"))
            other = browser.new_context(viewport=PHONE, is_mobile=True)
            page = other.new_page()
            phone_login(page, live_server.url, url, "lena")
            assert page.locator("h1").inner_text() == "This link is not yours"
            fits(page)
        finally:
            browser.close()
    escalation.refresh_from_db()
    assert escalation.state == Escalation.State.ALLOWED_ONCE and escalation.decided_by == fleet.sto
