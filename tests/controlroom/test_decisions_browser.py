"""Triage in a real browser (Chromium via Playwright): a night left several sessions asking the
same things; with grouping the manager makes one decision per distinct action, and every session's
audit trail shows its own decision."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents.models import AgentSession, Escalation
from audit.models import AuditEvent
from tests.decision_seed import seed_waiting_night
from tests.personas import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def test_the_manager_triages_the_night_with_one_decision_per_distinct_action(live_server, fleet, worktrees_dir):
    from playwright.sync_api import sync_playwright

    asked = seed_waiting_night(fleet)
    everything = [e for group in asked.values() for e in group]
    distinct = len({e.action_hash for e in everything})
    assert len(everything) == 8 and distinct == 3
    ARTIFACTS.mkdir(exist_ok=True)
    decisions = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            login(page, live_server.url, "max")
            page.click("#needs-you .shared-asks a")
            page.wait_for_url(re.compile(r".*/decisions$"))
            assert page.locator("article.group").count() == distinct
            assert page.locator("article.group .preview li").count() == len(everything)
            page.screenshot(path=str(ARTIFACTS / "grouped-decision.png"), full_page=True)
            page.screenshot(path=str(ROOT / "docs" / "grouped-decision.png"), full_page=True)
            answer = {"allow-always": "Allow always for each", "allow-once": "Allow once for each", "deny": "Deny each"}
            plan = [
                (asked["curl"][0].action_hash, "allow-always"),
                (asked["ci"][0].action_hash, "allow-once"),
                (asked["own"][0].action_hash, "deny"),
            ]
            for action_hash, decision in plan:
                group = page.locator(f'article.group[data-action-hash="{action_hash}"]')
                group.get_by_role("button", name=re.compile(answer[decision])).click()
                decisions += 1
                page.wait_for_selector(".messages li.success")
                assert page.locator(f'article.group[data-action-hash="{action_hash}"]').count() == 0
            assert "No session is waiting for a decision" in page.content()
            # one session's own trail, as its drawer shows it
            session_id = asked["curl"][2].session_id
            page.goto(f"{live_server.url}/sessions/{session_id}/")
            event = page.locator('.audit li[data-kind="escalation.decided"]')
            assert event.count() == 1 and "max" in event.inner_text()
        finally:
            browser.close()
    assert decisions == distinct
    for escalation in everything:
        escalation.refresh_from_db()
        assert escalation.state != Escalation.State.OPEN and escalation.decided_by_id == fleet.manager.pk
        (event,) = AuditEvent.objects.filter(session_id=escalation.session_id, kind="escalation.decided")
        assert event.payload["escalation"] == escalation.pk and event.actor_label == "max"
        assert event.grant_id == escalation.grant_id
    assert not AgentSession.objects.filter(status="needs_approval").exists()
