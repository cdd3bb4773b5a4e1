"""The morning digest: exactly the viewer's sessions over the window, with counts that follow from
a known night, sessions needing a decision first, and a page that renders it.

The "demo night" is built with the real services (launch, status changes, escalation decisions)
and ``audit.log.record`` for what the runtime writes (model calls, tool calls, commits, tests),
so every number below is the arithmetic of the fixture. Other test files import its builders.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from agents import services
from agents.models import AgentSession, Escalation, Status
from agents.selectors import active_grant
from audit.log import record
from audit.models import AuditEvent
from reviews import digest as overnight
from tests.personas import PASSWORD

# -- builders of a known night --------------------------------------------------------------------


def launch(fleet, *, name: str, sto=None, by=None, pod=None, delegator=None, mode: str = "edits") -> AgentSession:
    spec = services.GrantSpec(mode=mode, allow=("Bash(pytest *)", "Git(commit)"), deny=("Bash(git push *)",))
    return services.session_launch(
        pod=pod or fleet.alpha,
        sto=sto or fleet.sto,
        goal=name,
        name=name,
        by=by or fleet.lead,
        repository=fleet.repo,
        grant=spec,
        delegator=delegator,
        start=False,
    )


def _agent_event(session: AgentSession, kind: str, *, provenance: str = "", payload: dict) -> AuditEvent:
    grant = active_grant(session=session)
    with transaction.atomic():
        return record(
            kind,
            session=session,
            agent=True,
            on_behalf_of=grant.delegator,
            grant=grant,
            provenance=provenance,
            payload=payload,
        )


def model_call(session, *, tokens_in: int = 100, tokens_out: int = 20, cost: str | None = None) -> AuditEvent:
    return _agent_event(
        session,
        "model.call",
        payload={
            "step": 1,
            "model": session.model,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost_usd": Decimal(cost) if cost is not None else None,
            "cost_known": cost is not None,
            "latency_ms": 12,
        },
    )


def model_error(session, *, final: bool = False) -> AuditEvent:
    return _agent_event(
        session,
        "model.error",
        payload={"step": 1, "error": "upstream 503", "attempt": 1, "transient": not final, "final": final},
    )


def tool_call(
    session,
    *,
    tool: str = "run_command",
    action: str = "pytest -q",
    decision: str = "allow",
    provenance: str = "rule",
    rule: str = "Bash(pytest *)",
    action_hash: str = "",
    exit_code=0,
) -> AuditEvent:
    state = "done" if decision == "allow" else "denied"
    return _agent_event(
        session,
        "tool.call",
        provenance=provenance,
        payload={
            "step": 1,
            "index": 0,
            "tool": tool,
            "action": action,
            "action_hash": action_hash or f"h-{action}",
            "decision": decision,
            "reason_type": provenance,
            "reason": f"{decision} by {provenance}",
            "rule": rule,
            "state": state,
            "result": "ok" if decision == "allow" else f"denied: {provenance}",
            "exit_code": exit_code if decision == "allow" else None,
            "duration_ms": 5,
        },
    )


def commit(session, *, sha: str, message: str = "Fix the cart") -> AuditEvent:
    return _agent_event(session, "git.commit", payload={"sha": sha, "message": message, "branch": session.branch})


def record_tests_run(session, *, passed: bool) -> AuditEvent:
    return _agent_event(
        session,
        "tests.run",
        payload={
            "command": "pytest -q",
            "exit_code": 0 if passed else 1,
            "passed": passed,
            "summary": "3 passed" if passed else "1 failed, 2 passed",
        },
    )


def status(session, to: str, *, reason: str = "") -> None:
    with transaction.atomic():
        locked = AgentSession.objects.select_for_update().get(pk=session.pk)
        services.set_status(locked, to, reason=reason, agent=True)
    session.refresh_from_db()


def escalate(session, *, action: str = "run_command: git push origin", action_hash: str = "h-push") -> Escalation:
    grant = active_grant(session=session)
    with transaction.atomic():
        escalation = Escalation.objects.create(
            session=session,
            grant=grant,
            tool="run_command",
            action=action,
            action_hash=action_hash,
            reason="asks: a push",
            rule="Bash(git push origin)",
        )
        record(
            "escalation.opened",
            session=session,
            agent=True,
            on_behalf_of=grant.delegator,
            grant=grant,
            provenance="rule",
            payload={
                "escalation": escalation.pk,
                "tool": "run_command",
                "action": action,
                "action_hash": action_hash,
                "reason": "asks",
                "rule": "Bash(git push origin)",
            },
        )
    return escalation


def agent_event(session, kind: str, **payload) -> AuditEvent:
    return _agent_event(session, kind, payload=payload)


@dataclass
class Night:
    """A known night. ``since`` is after the ``old`` session's events and before everything else."""

    fleet: object
    since: object
    until: object = None
    s: dict = field(default_factory=dict)  # name -> session
    events: dict = field(default_factory=dict)  # label -> event

    @property
    def window(self) -> overnight.Window:
        return overnight.Window(self.since, self.until or timezone.now() + timedelta(minutes=1))


def build_night(fleet) -> Night:
    f = fleet
    old = launch(f, name="Old queued work")  # its only events are before the window
    time.sleep(0.01)
    night = Night(fleet=f, since=timezone.now())
    time.sleep(0.01)
    # A: sam's, on sam's authority; succeeded, not attested
    a = launch(f, name="Fix the cart total")
    status(a, Status.RUNNING)
    for _ in range(3):
        model_call(a)
    model_error(a)  # one retry
    for _ in range(4):
        tool_call(a)
    tool_call(a, tool="read_file", action="read .env", decision="deny", provenance="guard", rule="")
    status(a, Status.NEEDS_APPROVAL, reason="asks: git push")
    esc = escalate(a)
    services.escalation_decide(escalation=esc, by=f.lead, decision="allow-once", reason="just this once")
    night.events["a_human"] = tool_call(a, action="git push origin", provenance="human", rule="", action_hash="h-push")
    record_tests_run(a, passed=False)
    night.events["a_commit1"] = commit(a, sha="a1" * 20, message="Fix rounding in cart total")
    record_tests_run(a, passed=True)
    night.events["a_commit2"] = commit(a, sha="a2" * 20, message="Add a regression test")
    status(a, Status.SUCCEEDED, reason="finished")
    # B: sam's, autonomous on the lead's authority; waiting for approval now
    b = launch(f, name="Add search filters", delegator=f.lead, mode="autonomous")
    status(b, Status.RUNNING)
    model_call(b, tokens_in=50, tokens_out=10, cost="0.0125")
    tool_call(b, action="curl example.com", decision="deny", provenance="rule", rule="Net(*)")
    tool_call(b, action="rm -rf build", decision="deny", provenance="mode", rule="")
    escalate(b, action="run_command: git push origin search", action_hash="h-push-b")
    status(b, Status.NEEDS_APPROVAL, reason="asks: git push origin search")
    # C: sam's; blocked by its budget, its grant expired, one tool call interrupted
    c = launch(f, name="Write the docs")
    status(c, Status.RUNNING)
    model_call(c, tokens_in=10, tokens_out=5)
    agent_event(c, "tool.interrupted", step=2, index=0, tool="run_command", action="pytest -q")
    agent_event(c, "budget.exhausted", reason="budget: max steps (4) reached")
    status(c, Status.BLOCKED, reason="budget: max steps (4) reached")
    grant = active_grant(session=c)
    with transaction.atomic():
        record(
            "grant.expired",
            session=c,
            on_behalf_of=grant.delegator,
            grant=grant,
            provenance="expired",
            payload={"grant": grant.pk, "expires_at": grant.expires_at},
        )
    # D: sam's; failed after a final model error
    d = launch(f, name="Refactor the checkout")
    status(d, Status.RUNNING)
    model_error(d, final=True)
    status(d, Status.FAILED, reason="model error after 4 attempt(s): upstream 503")
    # F: sam's; succeeded and already accepted by sam
    f_ = launch(f, name="Tidy imports")
    status(f_, Status.RUNNING)
    model_call(f_)
    status(f_, Status.SUCCEEDED, reason="finished")
    AgentSession.objects.filter(pk=f_.pk).update(attestation="accepted")
    # M: mia's session, on the lead's authority
    m = launch(f, name="Mia's migration", sto=f.member, delegator=f.lead)
    status(m, Status.RUNNING)
    model_call(m)
    tool_call(m)
    # O: otto's session in pod bravo
    o = launch(f, name="Bravo billing", sto=f.outsider, by=f.outsider, pod=f.bravo)
    status(o, Status.RUNNING)
    model_call(o)
    commit(o, sha="0b" * 20, message="Bravo commit")
    night.s.update(old=old, a=a, b=b, c=c, d=d, f=f_, m=m, o=o)
    night.until = timezone.now() + timedelta(seconds=1)
    return night


@pytest.fixture
def night(fleet) -> Night:
    return build_night(fleet)


def login(client, user) -> None:
    assert client.login(username=user.username, password=PASSWORD)


def window_params(night: Night) -> dict:
    fmt = "%Y-%m-%dT%H:%M:%S.%f"
    return {
        "since": timezone.localtime(night.since).strftime(fmt),
        "until": timezone.localtime(night.until).strftime(fmt),
    }


# -- the digest's contents ------------------------------------------------------------------------


def test_the_digest_of_an_sto_lists_exactly_their_sessions_active_in_the_window(night):
    result = overnight.digest(user=night.fleet.sto, window=night.window, with_diffstat=False)
    names = {r.session.name for r in result.rows}
    assert names == {
        "Fix the cart total",
        "Add search filters",
        "Write the docs",
        "Refactor the checkout",
        "Tidy imports",
    }


def test_the_digest_of_a_delegator_lists_the_sessions_on_their_authority(night):
    result = overnight.digest(user=night.fleet.lead, window=night.window, with_diffstat=False)
    assert {r.session.name for r in result.rows} == {"Add search filters", "Mia's migration"}
    assert all(r.roles == ["delegator"] for r in result.rows)


def test_the_counts_follow_from_the_night(night):
    rows = {
        r.session.name: r for r in overnight.digest(user=night.fleet.sto, window=night.window, with_diffstat=False).rows
    }
    a = rows["Fix the cart total"]
    assert [c.code for c in a.commits] == ["a1" * 5, "a2" * 5]
    assert a.model_calls == 3 and a.tokens == 3 * (100 + 20) and a.cost_unknown_calls == 3
    assert len(a.tests) == 2 and a.tests_passed == 1 and a.tests_failed == 1 and a.last_test.tag == "ok"
    assert a.denial_count == 1 and "read .env" in a.denials[0].text
    assert len(a.escalations) == 1 and a.open_escalations == 0
    assert a.escalations[0].decided_by == "lena" and a.escalations[0].state == "allowed_once"
    assert a.retries == 1 and a.anomalies == []
    assert a.counts["tool.call"] == 6 and a.counts["model.call"] == 3
    b = rows["Add search filters"]
    assert b.denial_count == 2 and b.open_escalations == 1 and b.escalations[0].decided_by == ""
    assert b.tokens == 60 and b.cost_usd == Decimal("0.0125") and b.cost_unknown_calls == 0
    assert b.commits == [] and b.tests == []
    c = rows["Write the docs"]
    assert sorted(line.kind for line in c.anomalies) == ["budget.exhausted", "grant.expired", "tool.interrupted"]
    d = rows["Refactor the checkout"]
    assert sorted(line.kind for line in d.anomalies) == ["model.error", "session.status"]
    assert d.retries == 0


def test_sessions_that_need_a_human_decision_come_first(night):
    rows = overnight.digest(user=night.fleet.sto, window=night.window, with_diffstat=False).rows
    assert [r.session.name for r in rows] == [
        "Add search filters",  # needs approval
        "Write the docs",  # blocked
        "Fix the cart total",  # succeeded, not attested
        "Refactor the checkout",  # failed, not attested
        "Tidy imports",  # accepted already: nothing to decide
    ]
    assert [bool(r.needs) for r in rows] == [True, True, True, True, False]


def test_finished_work_asks_its_sto_to_attest_not_the_delegator(night):
    status(night.s["m"], Status.SUCCEEDED, reason="finished")
    lena = {
        r.session.name: r
        for r in overnight.digest(user=night.fleet.lead, window=night.window, with_diffstat=False).rows
    }
    assert lena["Mia's migration"].needs == "" and lena["Add search filters"].needs == "waiting for your approval"
    mia = overnight.digest(user=night.fleet.member, window=night.window, with_diffstat=False).rows
    assert [(r.session.name, r.needs) for r in mia] == [
        ("Mia's migration", "finished: accept it as yours or disown it")
    ]


def test_an_open_escalation_of_a_running_session_ranks_before_finished_work(night):
    a = night.s["a"]
    status(a, Status.RUNNING)
    escalate(a, action="run_command: deploy", action_hash="h-deploy")
    rows = overnight.digest(user=night.fleet.sto, window=night.window, with_diffstat=False).rows
    assert [r.session.name for r in rows][:3] == ["Add search filters", "Write the docs", "Fix the cart total"]
    assert rows[2].needs == "1 open escalation(s)"


def test_a_session_waiting_for_a_human_is_listed_even_when_it_was_quiet_in_the_window(night):
    status(night.s["old"], Status.BLOCKED, reason="no active grant")
    later = timezone.now() + timedelta(seconds=1)
    quiet = overnight.Window(later, later + timedelta(hours=1))
    rows = overnight.digest(user=night.fleet.sto, window=quiet, with_diffstat=False).rows
    assert {r.session.name for r in rows} == {"Old queued work", "Add search filters", "Write the docs"}


def test_the_whole_scope_lists_every_visible_session_for_a_manager_but_only_the_pod_for_a_member(night):
    manager = overnight.digest(user=night.fleet.manager, window=night.window, scope="all", with_diffstat=False)
    assert len(manager.rows) == 7  # everything active in the window, both pods
    member = overnight.digest(user=night.fleet.member, window=night.window, scope="all", with_diffstat=False)
    assert "Bravo billing" not in {r.session.name for r in member.rows} and len(member.rows) == 6


def test_the_digest_needs_a_handful_of_queries_whatever_the_number_of_sessions(night, django_assert_max_num_queries):
    with django_assert_max_num_queries(9):
        overnight.digest(user=night.fleet.manager, window=night.window, scope="all", with_diffstat=False)


# -- windows ----------------------------------------------------------------------------------------


def test_the_default_window_starts_yesterday_at_18_and_ends_now():
    now = timezone.make_aware(timezone.datetime(2025, 3, 12, 8, 30))
    w = overnight.window_from(now=now)
    assert (w.start, w.end) == (timezone.make_aware(timezone.datetime(2025, 3, 11, 18, 0)), now)


def test_the_night_preset_is_18_to_09_of_the_night_that_began_last():
    morning = timezone.make_aware(timezone.datetime(2025, 3, 12, 10, 0))
    w = overnight.window_from(preset="night", now=morning)
    assert (w.start.day, w.start.hour, w.end.day, w.end.hour) == (11, 18, 12, 9)
    evening = timezone.make_aware(timezone.datetime(2025, 3, 12, 19, 0))
    w = overnight.window_from(preset="night", now=evening)
    assert (w.start.day, w.start.hour, w.end.day, w.end.hour) == (12, 18, 13, 9)


def test_explicit_times_are_local_and_bad_ones_fall_back_with_a_reason():
    w = overnight.window_from(since="2025-03-11T20:00", until="2025-03-12T06:30")
    assert timezone.localtime(w.start).hour == 20 and timezone.localtime(w.end).minute == 30 and not w.error
    bad = overnight.window_from(since="yesterday-ish")
    assert bad.preset == "overnight" and "not a time" in bad.error
    backwards = overnight.window_from(since="2025-03-12T06:00", until="2025-03-11T06:00")
    assert "must end after it starts" in backwards.error
    unknown = overnight.window_from(preset="fortnight")
    assert "unknown window" in unknown.error


# -- the page ---------------------------------------------------------------------------------------


def test_the_digest_page_shows_each_session_with_links_to_its_events_and_diff(client, night):
    login(client, night.fleet.sto)
    response = client.get(reverse("digest"), window_params(night))
    assert response.status_code == 200
    html = response.content.decode()
    ids = [int(i) for i in re.findall(r'<li class="drow[^"]*" id="digest-(\d+)"', html)]
    s = night.s
    assert ids == [s["b"].pk, s["c"].pk, s["a"].pk, s["d"].pk, s["f"].pk]
    a = s["a"].pk
    row = html[html.index(f'id="digest-{a}"') : html.index(f'id="digest-{s["d"].pk}"')]
    assert 'data-commits="2"' in row and 'data-tests="2"' in row and 'data-denials="1"' in row
    assert 'data-tokens="360"' in row and 'data-escalations="1"' in row and 'data-open-escalations="0"' in row
    assert f'href="/reviews/{a}/"' in row
    assert f"/audit/?session={a}&amp;kind=git.commit" in row
    assert f'href="/audit/event/{night.events["a_commit1"].pk}"' in row
    assert "allowed once by lena" in row
    assert "Accept as mine" in row  # sam is the STO
    assert "Bravo billing" not in html


def test_a_delegator_who_is_not_the_sto_gets_no_attestation_buttons(client, night):
    login(client, night.fleet.lead)
    html = client.get(reverse("digest"), window_params(night)).content.decode()
    assert "Add search filters" in html and "Accept as mine" not in html


def test_a_bad_window_is_explained_on_the_page(client, night):
    login(client, night.fleet.sto)
    response = client.get(reverse("digest"), {"since": "soon"})
    assert response.status_code == 200
    assert "Showing the default window" in response.content.decode()
