"""Triage in a real browser (Chromium via Playwright): a night left several sessions asking the
same things; with grouping the manager makes one decision per distinct action, and every session's
audit trail shows its own decision."""

from __future__ import annotations

import io
import os
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
            if os.environ.get("CR_UPDATE_DOCS_SCREENSHOTS") == "1":  # a test run leaves tracked files alone
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


def test_the_manager_triages_the_demos_waiting_escalations_one_decision_per_distinct_action(
    live_server, celery_workers, worktrees_dir, monkeypatch
):
    """The demo as ``bin/start`` seeds it (``seed_history`` then ``seed_demo``, its agents started
    and run by real Celery workers; fewer agents than the default hundred, to keep the test short):
    once the night's agents have got as far as they go, the manager decides the waiting asks on
    /decisions, one decision per distinct action, and every session's trail has its own decision."""
    from django.core.management import call_command
    from django.utils import timezone
    from playwright.sync_api import sync_playwright

    from agents.models import Grant, Status, User
    from tests.conftest import wait_until

    call_command("seed_history", "--password", PASSWORD, stdout=io.StringIO())
    history = set(AgentSession.objects.values_list("pk", flat=True))
    assert len(history) >= 200
    pool = celery_workers(processes=1, concurrency=2)
    call_command("seed_demo", "--password", PASSWORD, "--agents", "24", stdout=io.StringIO())
    tonight = AgentSession.objects.exclude(pk__in=history)
    assert tonight.count() == 24
    later = set(
        Grant.objects.filter(session__in=tonight, not_before__gt=timezone.now()).values_list("session", flat=True)
    )

    def settled() -> bool:  # every agent that may run tonight has stopped or waits for a human
        moving = tonight.exclude(pk__in=later).filter(status__in=[Status.QUEUED, Status.RUNNING, Status.PAUSED])
        return not moving.exists() and Escalation.objects.filter(state=Escalation.State.OPEN).exists()

    wait_until(settled, timeout=420, interval=1.0, message=lambda: f"the demo's agents to settle\n{pool.log_tail()}")
    waiting = list(Escalation.objects.filter(state=Escalation.State.OPEN).order_by("pk"))
    distinct = {e.action_hash for e in waiting}
    assert len(waiting) > len(distinct) >= 2, "the demo leaves several sessions asking the same things"
    assert all(e.session_id not in history for e in waiting), "the past month left no question open"
    manager = User.objects.get(username="manager")

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM reads beside Playwright's loop
    ARTIFACTS.mkdir(exist_ok=True)
    decisions = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{live_server.url}/login/")
            page.fill("input[name=username]", "manager")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r".*/$"))
            # the canvas shows tonight's fleet, not the past month: that is one click away
            older = page.locator("#older-toggle")
            assert re.fullmatch(r"show older \(\d+\)", older.inner_text())
            assert int(re.search(r"\d+", older.inner_text())[0]) >= 200
            assert page.locator("#canvas .tile").count() < 24 + 40
            page.goto(f"{live_server.url}/decisions")
            assert page.locator("article.group .preview li").count() == len(waiting)
            for number, action_hash in enumerate(sorted(distinct)):
                group = page.locator(f'article.group[data-action-hash="{action_hash}"]')
                answer = "Allow once for each" if number == 0 else "Deny each"
                group.get_by_role("button", name=re.compile(answer)).click()
                decisions += 1
                page.wait_for_selector(".messages li.success")
                assert page.locator(f'article.group[data-action-hash="{action_hash}"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / "demo-triaged.png"), full_page=True)
            # one session's own trail, as its page shows it
            page.goto(f"{live_server.url}/sessions/{waiting[-1].session_id}/")
            event = page.locator('.audit li[data-kind="escalation.decided"]')
            assert event.count() >= 1 and "manager" in event.first.inner_text()
        finally:
            browser.close()
    assert decisions == len(distinct)
    for escalation in waiting:
        escalation.refresh_from_db()
        assert escalation.state != Escalation.State.OPEN and escalation.decided_by_id == manager.pk
        events = AuditEvent.objects.filter(session_id=escalation.session_id, kind="escalation.decided")
        (own,) = [e for e in events if e.payload.get("escalation") == escalation.pk]
        assert own.actor_label == "manager" and own.grant_id == escalation.grant_id
