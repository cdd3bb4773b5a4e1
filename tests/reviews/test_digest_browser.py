"""After a demo night of 100 sessions, the morning digest and the night's timeline in a real
browser (Chromium via Playwright): the digest lists the viewer's sessions with those needing a
decision first, an STO accepts a session's work with one click (htmx, CSRF), and the timeline
draws 100 swimlanes. Screenshots: test-artifacts/digest.png, test-artifacts/timeline.png.

The night is simulated on a clock that starts 13 hours ago (``django.utils.timezone.now`` is
replaced while the night is built, so every row and audit event carries its night-time): seed_demo
launches 100 sessions at dusk, a handful run to completion in-process with the real runtime and
the offline model (real git, real tools), and the rest get a cheap but plausible night of audit
events through the services and ``audit.log.record``.
"""

from __future__ import annotations

import random
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from agents import services
from agents.models import AgentSession, Escalation, Grant, Status, User
from agents.selectors import active_grant
from audit.log import record

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
DRIVEN = 4  # sessions run to completion by the real runtime

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]


class NightClock:
    """A stand-in for ``timezone.now``: a settable time that moves ``tick`` forward at each call."""

    def __init__(self, start, tick=timedelta(seconds=2)) -> None:
        self.t, self.tick, self.lock = start, tick, threading.Lock()

    def __call__(self):
        with self.lock:
            self.t += self.tick
            return self.t

    def set(self, when) -> None:
        with self.lock:
            self.t = when


def _agent(session, kind: str, *, provenance: str = "", **payload):
    grant = active_grant(session=session)
    with transaction.atomic():
        return record(
            kind,
            session=session,
            agent=True,
            on_behalf_of=grant.delegator if grant else None,
            grant=grant,
            provenance=provenance,
            payload=payload,
        )


def _status(session, to: str, reason: str = "") -> None:
    with transaction.atomic():
        locked = AgentSession.objects.select_for_update().get(pk=session.pk)
        services.set_status(locked, to, reason=reason, agent=True)


def _cheap_night(session: AgentSession, clock: NightClock, rng: random.Random, dusk) -> None:
    """A plausible night of one session, in audit events, at night-time."""
    t = dusk + timedelta(minutes=rng.randrange(5, 240))
    clock.set(t)

    def later(low: int, high: int) -> None:
        clock.set(clock.t + timedelta(minutes=rng.randrange(low, high)))

    _status(session, Status.RUNNING)
    fate = rng.random()
    for step in range(rng.randrange(3, 9)):
        later(4, 25)
        _agent(
            session,
            "model.call",
            step=step + 1,
            model=session.model,
            tokens_in=rng.randrange(800, 6000),
            tokens_out=rng.randrange(50, 600),
            cost_usd=None,
            cost_known=False,
            latency_ms=rng.randrange(20, 900),
        )
        denied = rng.random() < 0.08
        _agent(
            session,
            "tool.call",
            provenance="guard" if denied else "rule",
            step=step + 1,
            index=0,
            tool="run_command",
            action="git push origin" if denied else "pytest -q",
            action_hash="h",
            decision="deny" if denied else "allow",
            reason_type="guard" if denied else "rule",
            reason="",
            rule="" if denied else "Bash(pytest *)",
            state="denied" if denied else "done",
            result="ok",
            exit_code=None if denied else 0,
            duration_ms=300,
        )
    if rng.random() < 0.6:
        later(2, 10)
        passed = rng.random() < 0.75
        _agent(
            session,
            "tests.run",
            command="python -m pytest -q",
            exit_code=0 if passed else 1,
            passed=passed,
            summary="12 passed" if passed else "1 failed, 11 passed",
        )
        later(1, 5)
        _agent(
            session, "git.commit", sha=f"{rng.getrandbits(160):040x}", message=f"{session.name}", branch=session.branch
        )
    later(3, 20)
    if fate < 0.15:  # asks a human; some answered after a while, some still open
        grant = active_grant(session=session)
        with transaction.atomic():
            esc = Escalation.objects.create(
                session=session,
                grant=grant,
                tool="run_command",
                action="git push origin HEAD",
                action_hash="h-push",
                reason="pushing needs approval",
                rule="Bash(git push origin HEAD)",
                created_at=clock.t,
            )
            record(
                "escalation.opened",
                session=session,
                agent=True,
                on_behalf_of=grant.delegator,
                grant=grant,
                provenance="rule",
                payload={
                    "escalation": esc.pk,
                    "tool": "run_command",
                    "action": esc.action,
                    "action_hash": esc.action_hash,
                    "reason": esc.reason,
                    "rule": esc.rule,
                },
            )
        _status(session, Status.NEEDS_APPROVAL, reason=f"asks: {esc.action}")
        if fate < 0.08:
            later(30, 150)
            services.escalation_decide(escalation=esc, by=session.sto, decision="deny", reason="not tonight")
            later(2, 10)
            _status(session, Status.SUCCEEDED, reason="finished")
    elif fate < 0.22:
        _agent(session, "model.error", step=9, error="upstream 503", attempt=4, transient=True, final=True)
        _status(session, Status.FAILED, reason="model error after 4 attempt(s): upstream 503")
    elif fate < 0.3:
        _agent(session, "budget.exhausted", reason="budget: max steps (4) reached")
        _status(session, Status.BLOCKED, reason="budget: max steps (4) reached")
    elif fate < 0.85:
        _status(session, Status.SUCCEEDED, reason="finished")
        AgentSession.objects.filter(pk=session.pk).update(summary=f"Done: {session.name.lower()}; tests pass.")
    # else: still running in the morning


@pytest.fixture
def demo_night(monkeypatch, worktrees_dir):
    from tests.agents.test_runtime import drive

    real_now = timezone.now()
    dusk = real_now - timedelta(hours=13)
    clock = NightClock(dusk)
    monkeypatch.setattr(timezone, "now", clock)
    monkeypatch.setattr(Escalation._meta.get_field("created_at"), "default", clock)
    call_command("seed_demo", agents=100, no_start=True, password="pw-demo", same_password=True)
    sessions = list(AgentSession.objects.select_related("sto", "pod").order_by("pk"))
    assert len(sessions) == 100
    driven = [s for s in sessions if s.model == "sim/engineer" and Grant.objects.get(session=s).not_before <= clock.t][
        :DRIVEN
    ]
    for session in driven:
        clock.set(clock.t + timedelta(minutes=20))
        ended = drive(session)
        assert ended.status not in (Status.QUEUED, Status.RUNNING), (ended.status, ended.status_reason)
    rng = random.Random(7)
    for session in sessions:
        if session not in driven:
            _cheap_night(session, clock, rng, dusk)
    monkeypatch.undo()  # the pages run on the real clock
    return {"dusk": dusk, "dawn": real_now - timedelta(hours=1), "driven": driven, "sessions": sessions}


def _login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-demo")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def test_after_a_demo_night_the_digest_and_the_timeline_render(live_server, demo_night):
    from playwright.sync_api import sync_playwright

    fmt = "%Y-%m-%dT%H:%M"
    window = (
        f"since={timezone.localtime(demo_night['dusk'] - timedelta(minutes=30)).strftime(fmt)}"
        f"&until={timezone.localtime(demo_night['dawn']).strftime(fmt)}"
    )
    manager = User.objects.get(username="manager")
    delegated = set(Grant.objects.filter(delegator=manager).values_list("session_id", flat=True))
    succeeded = [s for s in demo_night["driven"] if AgentSession.objects.get(pk=s.pk).status == Status.SUCCEEDED]
    assert succeeded, "no session driven by the runtime succeeded"
    finished = succeeded[0]
    finished_sto = AgentSession.objects.select_related("sto").get(pk=finished.pk).sto.username
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            _login(page, live_server.url, "manager")
            page.goto(f"{live_server.url}/digest?{window}")
            rows = page.locator("li.drow")
            assert rows.count() == len(delegated) == 20  # the autonomous sessions run on the manager's authority
            shown = {int(i) for i in rows.evaluate_all("els => els.map(e => e.dataset.sessionId)")}
            assert shown == delegated
            ranks = [int(r) for r in rows.evaluate_all("els => els.map(e => e.dataset.rank)")]
            assert ranks == sorted(ranks) and ranks[0] <= 4  # needing a decision first
            page.screenshot(path=str(ARTIFACTS / "digest.png"), full_page=False)

            page.goto(f"{live_server.url}/timeline?{window}")
            assert page.locator("svg.timeline g.lane").count() == 100
            assert page.locator("svg.timeline g.pod").count() == 20
            assert page.locator("svg.timeline circle.mk.commit").count() >= DRIVEN
            title = page.locator("svg.timeline rect.seg title").first.text_content()
            assert re.search(r"\d\d:\d\d–\d\d:\d\d", title)
            page.screenshot(path=str(ARTIFACTS / "timeline.png"), full_page=False)

            # the STO of a finished session accepts its work from the digest, in place
            page.context.clear_cookies()
            _login(page, live_server.url, finished_sto)
            page.goto(f"{live_server.url}/digest?{window}")
            row = page.locator(f"#digest-{finished.pk}")
            assert row.count() == 1
            row.locator("button.accept").click()
            page.wait_for_selector(f'#digest-{finished.pk}[data-attestation="accepted"]')
            assert "accepted by" in page.locator(f"#digest-{finished.pk} .attestation").inner_text()
            page.screenshot(path=str(ARTIFACTS / "digest-sto.png"), full_page=False)
        finally:
            browser.close()
    assert AgentSession.objects.get(pk=finished.pk).attestation == "accepted"
