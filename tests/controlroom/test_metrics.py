"""Outcome metrics for leaders (controlroom/metrics.py), checked against a hand-built fleet.

The fleet: 3 pods (alpha, bravo, charlie), 6 STOs (a1 a2, b1 b2, c1 c2), 38 sessions with
hand-chosen times. Times are hours from T0 = NOW - 30 days, so the 30-day window is [0 h, 720 h).
Every expected value below is the arithmetic from this table, not the code's output.

Accepted (approved in the window, not reverted within 14 days) — 21 sessions; cost $2 and
1000+500 tokens each, except C1 ($3, 2000+1000). Status segments start at "created" (queued);
(q, r, w) = hours queued, running, waiting on humans (needs_approval/blocked/paused/succeeded):

    name pod     sto type      created  segments                                    approved  q    r   w     lead
    A1   alpha   a1  feature   -72      q1 r2 paused3 r1 blocked2 r1 s110           48        1    4   115   120
    A2   alpha   a1  fix        24      q1 r1 na4 r3 s6                             39        1    4   10    15
    A3   alpha   a2  feature    48      q0.5 r2 na1 r4 s5.5                         61        0.5  6   6.5   13
    A4   alpha   a2  docs       72      q2 r3 s9                                    86        2    3   9     14
    A5   alpha   a1  tests      96      q1 r5 s10                                   112       1    5   10    16
    A6   alpha   a2  fix       120      q1 r6 s10                                   137       1    6   10    17
    A7   bravo   b1  feature   144      q1 r7 s10                                   162       1    7   10    18
    A8   bravo   b1  feature   168      q1 r3 s15                                   187       1    3   15    19
    A9   bravo   b1  fix       192      q2 r8 s10                                   212       2    8   10    20
    A10  bravo   b2  refactor  216      q1 r10 s10                                  237       1    10  10    21
    A11  bravo   b2  feature   240      q1 r11 s10                                  262       1    11  10    22
    A12  bravo   b1  chore     264      q1 r12 s10                                  287       1    12  10    23
    A13  charlie c1  feature   288      q1 r13 s10                                  312       1    13  10    24
    A14  charlie c1  fix       312      q1 r14 s10                                  337       1    14  10    25
    A15  charlie c2  docs      336      q1 r15 s10                                  362       1    15  10    26
    A16  charlie c2  feature   360      q1 r16 s10                                  387       1    16  10    27
    A17  charlie c1  tests     600      q1 r4 na2 r3 na0.5 r13 s37.5                661       1    20  40    61
    A18  alpha   a1  feature   400      q1 r5 s4 (changes 410) r3 s15               428       1    8   19    28
    A19  bravo   b2  fix       450      q2 r6 s3 (ch. 461) r4 s2 (ch. 467) r5 s8    480       2    15  13    30
    A20  charlie c2  feature  -240      q2 r10 s220 (changes -8) r5 s38             35        2    15  258   275
    C1   charlie c1  feature    10      q1 r3 na3 r2 s40; reverted at 419 (15 days) 59        1    5   43    49

Not accepted:
    B1 alpha a1 feature, created 100, approved 130, reverted 202 (3 days)          $5   3000+1000
    B2 charlie c2 fix, created 400, approved 480, reverted 672 (8 days)            $4   3000+1000
    D1 alpha a1 feature, rejected 330 (first review)                               $1.5  800+200
    D2 alpha a2 fix, changes requested 320, rejected 350 (cancelled by it)         $1.5  800+200
    D3 bravo b1 docs, rejected 360                                                 $1.5  800+200
    D4 bravo b2 feature, rejected 540 (status cancelled at 540 too)                $1.5  800+200
    D5 charlie c1 refactor, rejected 650                                           $1.5  800+200
    E1 alpha a2 chore, cancelled 502 (no review)                                   $0.5  300+100
    E2 bravo b2 feature, cancelled 110                                             $0.5  300+100
    E3 charlie c2 tests, cancelled 700                                             $0.5  300+100
    F1 alpha a1 feature, changes -200, approved -100, reverted 10 (before window)  $11
    F2 bravo b1 fix, rejected -50 (before the window)                              $11
    F3 charlie c2 docs, cancelled -10 (before the window)                          $11
    G1 alpha a1 feature, needs approval since 672 (open escalation)                $9.99
    G2 bravo b2 fix, succeeded 640, not reviewed                                   $3
    G3 charlie c1 feature, changes requested 560, running again                    $2.5
    H1 bravo b1 chore, failed 230, not reviewed                                    $7

Escalations (requested → decided, hours): A2 26→30 (4), A3 50.5→51.5 (1), A17 605→607 (2) and
610→610.5 (0.5), C1 14→17 (3), D1 303→311 expired unanswered (8), B1 105→111 (6), E1 500→502
denied when cancelled (2), G1 672→open (now = 720: 48). Not counted: A4 74 denied at once by its
grant (no human asked), A20 -235→-234 (before the window; it still makes A20 not autonomous).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

from agents.models import AgentSession, Escalation, Grant, Pod, PodMembership, Repository, Status, User
from audit.log import record
from controlroom import metrics
from controlroom.metrics import Scope, fleet_metrics, percentile, wilson_interval, window_between, window_last
from reviews.models import Review
from tests.personas import make_user

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
T0 = NOW - timedelta(days=30)
H = 3600.0  # seconds per hour
WEEKS = 30 / 7


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# --- building the fleet -------------------------------------------------------------------------------

SEGMENT_STATUS = {
    "q": Status.QUEUED,
    "r": Status.RUNNING,
    "s": Status.SUCCEEDED,
    "na": Status.NEEDS_APPROVAL,
    "paused": Status.PAUSED,
    "blocked": Status.BLOCKED,
}


@dataclass
class FixtureFleet:
    pods: dict[str, Pod]
    stos: dict[str, User]
    reviewer: User
    leader: User
    repo: Repository
    sessions: dict[str, AgentSession]


def _status_event(session: AgentSession, *, hours: float, previous: str, to: str) -> None:
    """A session.status event written by the real audit writer, at a chosen time."""
    with mock.patch("django.utils.timezone.now", return_value=at(hours)), transaction.atomic():
        record("session.status", session=session, agent=True, payload={"from": previous, "to": to, "reason": "fixture"})


class Builder:
    def __init__(self) -> None:
        self.repo = Repository.objects.create(name="metrics-demo", path="/nonexistent/metrics-demo")
        self.pods = {slug: Pod.objects.create(slug=slug, name=slug.title()) for slug in ("alpha", "bravo", "charlie")}
        self.stos: dict[str, User] = {}
        for pod_slug, names in (("alpha", ("a1", "a2")), ("bravo", ("b1", "b2")), ("charlie", ("c1", "c2"))):
            for name in names:
                self.stos[name] = make_user(name)
                PodMembership.objects.create(pod=self.pods[pod_slug], user=self.stos[name])
        self.reviewer = make_user("max", User.Role.MANAGER)
        self.leader = make_user("leo", User.Role.LEADER)
        self.sessions: dict[str, AgentSession] = {}

    def session(
        self,
        name: str,
        pod: str,
        sto: str,
        task_type: str,
        created: float,
        *,
        cost: str,
        tokens: tuple[int, int],
        status: str = Status.SUCCEEDED,
        finished: float | None = None,
        review_state: str = "none",
        tags: list | None = None,
    ) -> AgentSession:
        session = AgentSession.objects.create(
            pod=self.pods[pod],
            sto=self.stos[sto],
            name=name,
            goal=f"fixture session {name}",
            task_type=task_type,
            repository=self.repo,
            base_branch="main",
            model="sim/engineer",
            status=status,
            cost_usd=Decimal(cost),
            tokens_in=tokens[0],
            tokens_out=tokens[1],
            created_at=at(created),
            finished_at=at(finished) if finished is not None else None,
            review_state=review_state,
            tags=tags if tags is not None else [task_type, f"pod-{pod}"],
        )
        self.sessions[name] = session
        return session

    def timeline(self, session: AgentSession, segments: list[tuple[str, float]]) -> float:
        """Status events at every segment boundary; returns the hour the last segment ends."""
        assert segments[0][0] == "q", "a session starts queued"
        hours = (session.created_at - T0).total_seconds() / H
        previous = Status.QUEUED
        for index, (code, length) in enumerate(segments):
            if index:
                _status_event(session, hours=hours, previous=previous, to=SEGMENT_STATUS[code])
                previous = SEGMENT_STATUS[code]
            hours += length
        return hours

    def review(self, session: AgentSession, decision: str, hours: float) -> Review:
        return Review.objects.create(
            session=session,
            reviewer=self.reviewer,
            decision=decision,
            created_at=at(hours),
            comment=f"{decision} at {hours}",
        )

    def escalation(
        self,
        session: AgentSession,
        requested: float,
        decided: float | None,
        *,
        state: str = Escalation.State.ALLOWED_ONCE,
        human: bool = True,
    ) -> Escalation:
        grant = session.grants.first() or Grant.objects.create(
            session=session, delegator=session.sto, issued_by=session.sto, not_before=at(-1000), expires_at=at(2000)
        )
        return Escalation.objects.create(
            session=session,
            grant=grant,
            tool="run_command",
            action=f"run_command: step at {requested}",
            action_hash=f"{session.pk:032d}{int(requested * 10):032d}",
            reason="commands ask",
            state=state,
            decided_by=session.sto if (human and decided is not None) else None,
            decided_at=at(decided) if decided is not None else None,
            created_at=at(requested),
        )

    def accepted(
        self,
        name: str,
        pod: str,
        sto: str,
        task_type: str,
        created: float,
        segments: list[tuple[str, float]],
        *,
        cost: str = "2.00",
        tokens: tuple[int, int] = (1000, 500),
        approved: float,
    ) -> AgentSession:
        session = self.session(name, pod, sto, task_type, created, cost=cost, tokens=tokens, review_state="approved")
        end = self.timeline(session, segments)
        assert end == pytest.approx(approved), f"{name}: segments end at {end}, the table says {approved}"
        self.review(session, Review.Decision.APPROVE, approved)
        return session


def build_fleet() -> FixtureFleet:
    b = Builder()
    A, R = b.accepted, Review.Decision
    A(
        "A1",
        "alpha",
        "a1",
        "feature",
        -72,
        [("q", 1), ("r", 2), ("paused", 3), ("r", 1), ("blocked", 2), ("r", 1), ("s", 110)],
        approved=48,
    )
    a2 = A("A2", "alpha", "a1", "fix", 24, [("q", 1), ("r", 1), ("na", 4), ("r", 3), ("s", 6)], approved=39)
    a3 = A("A3", "alpha", "a2", "feature", 48, [("q", 0.5), ("r", 2), ("na", 1), ("r", 4), ("s", 5.5)], approved=61)
    a4 = A("A4", "alpha", "a2", "docs", 72, [("q", 2), ("r", 3), ("s", 9)], approved=86)
    a5 = A("A5", "alpha", "a1", "tests", 96, [("q", 1), ("r", 5), ("s", 10)], approved=112)
    A("A6", "alpha", "a2", "fix", 120, [("q", 1), ("r", 6), ("s", 10)], approved=137)
    A("A7", "bravo", "b1", "feature", 144, [("q", 1), ("r", 7), ("s", 10)], approved=162)
    A("A8", "bravo", "b1", "feature", 168, [("q", 1), ("r", 3), ("s", 15)], approved=187)
    A("A9", "bravo", "b1", "fix", 192, [("q", 2), ("r", 8), ("s", 10)], approved=212)
    A("A10", "bravo", "b2", "refactor", 216, [("q", 1), ("r", 10), ("s", 10)], approved=237)
    A("A11", "bravo", "b2", "feature", 240, [("q", 1), ("r", 11), ("s", 10)], approved=262)
    A("A12", "bravo", "b1", "chore", 264, [("q", 1), ("r", 12), ("s", 10)], approved=287)
    A("A13", "charlie", "c1", "feature", 288, [("q", 1), ("r", 13), ("s", 10)], approved=312)
    A("A14", "charlie", "c1", "fix", 312, [("q", 1), ("r", 14), ("s", 10)], approved=337)
    A("A15", "charlie", "c2", "docs", 336, [("q", 1), ("r", 15), ("s", 10)], approved=362)
    A("A16", "charlie", "c2", "feature", 360, [("q", 1), ("r", 16), ("s", 10)], approved=387)
    a17 = A(
        "A17",
        "charlie",
        "c1",
        "tests",
        600,
        [("q", 1), ("r", 4), ("na", 2), ("r", 3), ("na", 0.5), ("r", 13), ("s", 37.5)],
        approved=661,
    )
    a18 = A("A18", "alpha", "a1", "feature", 400, [("q", 1), ("r", 5), ("s", 4), ("r", 3), ("s", 15)], approved=428)
    a19 = A(
        "A19",
        "bravo",
        "b2",
        "fix",
        450,
        [("q", 2), ("r", 6), ("s", 3), ("r", 4), ("s", 2), ("r", 5), ("s", 8)],
        approved=480,
    )
    a20 = A(
        "A20", "charlie", "c2", "feature", -240, [("q", 2), ("r", 10), ("s", 220), ("r", 5), ("s", 38)], approved=35
    )
    c1 = A(
        "C1",
        "charlie",
        "c1",
        "feature",
        10,
        [("q", 1), ("r", 3), ("na", 3), ("r", 2), ("s", 40)],
        approved=59,
        cost="3.00",
        tokens=(2000, 1000),
    )
    c1.review_state = "reverted"
    c1.save(update_fields=["review_state"])
    b.review(c1, R.REVERT, 59 + 15 * 24)  # 15 days after the approval: still accepted
    b.review(a18, R.REQUEST_CHANGES, 410)
    b.review(a19, R.REQUEST_CHANGES, 461)
    b.review(a19, R.REQUEST_CHANGES, 467)
    b.review(a20, R.REQUEST_CHANGES, -8)
    # after A5's approval: ignored by its lead time
    _status_event(a5, hours=150, previous=Status.SUCCEEDED, to=Status.PAUSED)
    # an event of another kind that carries a "to" key: not a status change
    with transaction.atomic():
        record("tool.call", session=a4, agent=True, payload={"to": "paused", "tool": "run_command"})

    b1 = b.session("B1", "alpha", "a1", "feature", 100, cost="5.00", tokens=(3000, 1000), review_state="reverted")
    b.timeline(b1, [("q", 1), ("r", 4), ("na", 6), ("r", 9), ("s", 10)])
    b.review(b1, R.APPROVE, 130)
    b.review(b1, R.REVERT, 202)
    b2 = b.session("B2", "charlie", "c2", "fix", 400, cost="4.00", tokens=(3000, 1000), review_state="reverted")
    b.review(b2, R.APPROVE, 480)
    b.review(b2, R.REVERT, 672)

    reject = {"cost": "1.50", "tokens": (800, 200), "review_state": "rejected"}
    d1 = b.session("D1", "alpha", "a1", "feature", 300, status=Status.FAILED, finished=320, **reject)
    b.review(d1, R.REJECT, 330)
    d2 = b.session("D2", "alpha", "a2", "fix", 310, status=Status.CANCELLED, finished=350, **reject)
    b.review(d2, R.REQUEST_CHANGES, 320)
    b.review(d2, R.REJECT, 350)
    d3 = b.session("D3", "bravo", "b1", "docs", 320, finished=340, **reject)
    b.review(d3, R.REJECT, 360)
    d4 = b.session("D4", "bravo", "b2", "feature", 500, status=Status.CANCELLED, finished=540, **reject)
    b.review(d4, R.REJECT, 540)
    d5 = b.session("D5", "charlie", "c1", "refactor", 600, status=Status.FAILED, finished=640, **reject)
    b.review(d5, R.REJECT, 650)

    cancel = {"cost": "0.50", "tokens": (300, 100), "status": Status.CANCELLED}
    e1 = b.session("E1", "alpha", "a2", "chore", 495, finished=502, **cancel)
    b.session("E2", "bravo", "b2", "feature", 100, finished=110, **cancel)
    b.session("E3", "charlie", "c2", "tests", 650, finished=700, **cancel)

    f1 = b.session("F1", "alpha", "a1", "feature", -300, cost="11.00", tokens=(5000, 5000), review_state="reverted")
    b.review(f1, R.REQUEST_CHANGES, -200)
    b.review(f1, R.APPROVE, -100)
    b.review(f1, R.REVERT, 10)
    f2 = b.session("F2", "bravo", "b1", "fix", -200, cost="11.00", tokens=(5000, 5000), review_state="rejected")
    b.review(f2, R.REJECT, -50)
    b.session(
        "F3", "charlie", "c2", "docs", -100, cost="11.00", tokens=(5000, 5000), status=Status.CANCELLED, finished=-10
    )

    g1 = b.session("G1", "alpha", "a1", "feature", 660, cost="9.99", tokens=(9000, 9000), status=Status.NEEDS_APPROVAL)
    b.session("G2", "bravo", "b2", "fix", 600, cost="3.00", tokens=(900, 900), finished=640)
    g3 = b.session(
        "G3",
        "charlie",
        "c1",
        "feature",
        500,
        cost="2.50",
        tokens=(900, 900),
        status=Status.RUNNING,
        review_state="changes_requested",
    )
    b.review(g3, R.REQUEST_CHANGES, 560)
    b.session("H1", "bravo", "b1", "chore", 200, cost="7.00", tokens=(900, 900), status=Status.FAILED, finished=230)

    E = b.escalation
    E(a2, 26, 30)
    E(a3, 50.5, 51.5)
    E(a17, 605, 607)
    E(a17, 610, 610.5, state=Escalation.State.DENIED)
    E(c1, 14, 17, state=Escalation.State.ALLOWED_ALWAYS)
    E(d1, 303, 311, state=Escalation.State.EXPIRED, human=False)
    E(b1, 105, 111)
    E(e1, 500, 502, state=Escalation.State.DENIED)
    E(g1, 672, None, state=Escalation.State.OPEN)
    E(a4, 74, 74, state=Escalation.State.DENIED, human=False)  # the grant denied it at once: nobody was asked
    E(a20, -235, -234)
    return FixtureFleet(
        pods=b.pods, stos=b.stos, reviewer=b.reviewer, leader=b.leader, repo=b.repo, sessions=b.sessions
    )


@pytest.fixture
def fixture_fleet() -> FixtureFleet:
    return build_fleet()


def window30() -> metrics.Window:
    return window_last(text="30d", now=NOW)


@pytest.fixture
def report(fixture_fleet) -> metrics.Report:
    return fleet_metrics(window=window30(), now=NOW)


# --- statistics ---------------------------------------------------------------------------------------

Z95 = 1.959963984540054


def wilson_by_quadratic(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Independently: the Wilson bounds are the p where |x/n - p| = z·sqrt(p(1-p)/n), i.e. the roots of
    (n + z²)p² - (2x + z²)p + x²/n = 0."""
    a, b, c = n + z * z, -(2 * x + z * z), x * x / n
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(
    "x, n, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_the_wilson_interval_matches_newcombes_published_values(x, n, low, high):
    got = wilson_interval(successes=x, n=n)
    assert got[0] == pytest.approx(low, abs=5e-5)
    assert got[1] == pytest.approx(high, abs=5e-5)


@pytest.mark.parametrize("x, n", [(7, 11), (21, 31), (20, 28), (2, 23), (16, 21), (1, 1), (0, 5), (5, 5), (500, 1000)])
def test_the_wilson_interval_is_the_root_pair_of_the_score_equation(x, n):
    low, high = wilson_by_quadratic(x, n)
    got = wilson_interval(successes=x, n=n)
    assert got[0] == pytest.approx(max(low, 0.0), abs=1e-12)
    assert got[1] == pytest.approx(min(high, 1.0), abs=1e-12)


def test_seven_of_eleven_has_the_known_wilson_bounds():
    # z = 1.96: centre = (7/11 + z²/22) / (1 + z²/11) = 0.60106, half = 0.24727 (worked by hand)
    low, high = wilson_interval(successes=7, n=11)
    assert (low, high) == (pytest.approx(0.3538, abs=1e-4), pytest.approx(0.8483, abs=1e-4))


def test_the_wilson_interval_refuses_impossible_counts_and_has_none_for_nothing():
    assert wilson_interval(successes=0, n=0) is None
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(successes=3, n=2)


def test_percentiles_interpolate_between_closest_ranks():
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.9) == 4.0
    assert percentile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    # [0.5, 1, 2, 2, 3, 4, 6, 8, 48]: h = 8·0.9 = 7.2 → 8 + 0.2·(48 - 8)
    assert percentile([2, 4, 1, 0.5, 3, 8, 6, 48, 2], 0.9) == pytest.approx(16)
    with pytest.raises(ValueError):
        percentile([1], 1.5)


# --- the fleet, overall -------------------------------------------------------------------------------


def test_accepted_throughput_counts_approvals_not_reverted_within_14_days_per_week(report):
    m = report.overall
    # A1..A20 and C1 (reverted 15 days after its approval); B1 and B2 were reverted in time
    assert m.counts["accepted"] == 21
    assert m.accepted_throughput.n == 21
    assert m.accepted_throughput.value == pytest.approx(21 / (30 / 7))
    assert m.accepted_throughput.small_sample is False


def test_acceptance_yield_is_accepted_over_approved_rejected_or_cancelled_in_the_window(report):
    m = report.overall
    # closed: 23 approved (A1..A20, C1, B1, B2) + 5 rejected (D1..D5) + 3 cancelled (E1..E3);
    # F1..F3 closed before the window; G1..G3 and H1 are not closed
    assert m.counts["closed"] == 23 + 5 + 3
    assert m.acceptance_yield.value == pytest.approx(21 / 31)
    assert m.acceptance_yield.n == 31
    low, high = wilson_by_quadratic(21, 31)
    assert (m.acceptance_yield.low, m.acceptance_yield.high) == (pytest.approx(low), pytest.approx(high))
    assert m.acceptance_yield.small_sample is False


def test_first_pass_acceptance_is_first_reviews_that_approved_over_first_reviews_in_the_window(report):
    m = report.overall
    # first review in the window: A1..A17, C1, B1, B2 (approve: 20), A18 and A19 (changes), D1, D3, D4,
    # D5 (reject), D2 and G3 (changes) = 28; A20's and F1's first reviews came before the window
    assert m.first_pass_acceptance.n == 28
    assert m.first_pass_acceptance.value == pytest.approx(20 / 28)
    assert m.first_pass_acceptance.low == pytest.approx(wilson_by_quadratic(20, 28)[0])


def test_revert_rate_is_reverts_within_14_days_over_approvals_in_the_window(report):
    m = report.overall
    # B1 (3 days) and B2 (8 days) of 23 approvals; C1 (15 days) does not count, nor F1 (approved before)
    assert m.revert_rate.n == 23
    assert m.revert_rate.value == pytest.approx(2 / 23)
    assert m.revert_rate.high == pytest.approx(wilson_by_quadratic(2, 23)[1])


def test_lead_time_to_acceptance_has_median_p85_and_a_running_waiting_queued_split(report):
    lead = report.overall.lead_time
    # 21 leads sorted: 13..28 (16 values), 30, 49, 61, 120, 275 → median = 11th (h=10) = 23,
    # p85: h = 20·0.85 = 17 → the 18th = 49
    assert lead.total.n == 21
    assert lead.total.median == pytest.approx(23 * H)
    assert lead.total.upper == pytest.approx(49 * H)
    assert lead.total.upper_q == 85
    # running sorted: 3 3 4 4 5 5 6 6 7 8 8 10 11 12 13 14 15 15 15 16 20 → 11th = 8, 18th = 15
    assert lead.running.median == pytest.approx(8 * H)
    assert lead.running.upper == pytest.approx(15 * H)
    # waiting sorted: 6.5 9 10×12 13 15 19 40 43 115 258 → 11th = 10, 18th = 40
    assert lead.waiting.median == pytest.approx(10 * H)
    assert lead.waiting.upper == pytest.approx(40 * H)
    # queued: 0.5, 1×16, 2×4 → 11th = 1, 18th = 2
    assert lead.queued.median == pytest.approx(1 * H)
    assert lead.queued.upper == pytest.approx(2 * H)
    # sums: lead (13+28)·16/2 + 30+49+61+120+275 = 863; waiting 6.5+9+120+13+15+19+40+43+115+258 = 638.5
    assert lead.total.total == pytest.approx(863 * H)
    assert lead.running.total == pytest.approx(200 * H)
    assert lead.queued.total == pytest.approx(24.5 * H)
    assert lead.waiting.total == pytest.approx(638.5 * H)
    assert lead.waiting_share.value == pytest.approx(638.5 / 863)


def test_escalation_response_time_counts_open_ones_until_now_and_skips_those_nobody_was_asked(report):
    response = report.overall.escalation_response
    # in the window: 4, 1, 2, 0.5, 3, 8, 6, 2, 48 (open) → sorted 0.5 1 2 2 3 4 6 8 48
    assert response.n == 9
    assert response.median == pytest.approx(3 * H)  # h = 4
    assert response.upper == pytest.approx((8 + 0.2 * 40) * H)  # h = 7.2
    assert response.upper_q == 90
    assert response.small_sample is True


def test_autonomy_rate_is_accepted_sessions_that_never_escalated(report):
    m = report.overall
    # escalated: A2, A3, A17, C1 and A20 (before the window); A4's was denied at once (nobody asked)
    assert m.autonomy_rate.value == pytest.approx(16 / 21)
    assert m.autonomy_rate.n == 21
    assert m.autonomy_rate.low == pytest.approx(wilson_by_quadratic(16, 21)[0])


def test_cost_and_tokens_per_accepted_session_take_every_session_closed_in_the_window(report):
    m = report.overall
    # 20×$2 + C1 $3 + B1 $5 + B2 $4 + 5×$1.5 + 3×$0.5 = 61; open, failed and earlier sessions excluded
    assert m.cost_per_accepted.value == pytest.approx(61 / 21)
    assert m.cost_per_accepted.numerator == pytest.approx(61)
    assert m.cost_per_accepted.n == 21
    # 20×1500 + 3000 + 4000 + 4000 + 5×1000 + 3×400 = 47200
    assert m.tokens_per_accepted.value == pytest.approx(47200 / 21)


def test_wasted_spend_share_is_rejected_cancelled_and_reverted_cost_over_all_closed_cost(report):
    m = report.overall
    # B1 5 + B2 4 + D 7.5 + E 1.5 = 18 of 61
    assert m.wasted_spend_share.value == pytest.approx(18 / 61)
    assert m.wasted_spend_share.n == 31
    assert m.wasted_spend_share.low is None  # a cost-weighted share is not a binomial proportion


def test_supervision_load_is_escalations_rejections_and_change_requests_per_accepted(report):
    m = report.overall
    # 9 escalations + 5 rejections + 5 change requests (A18, A19 twice, D2, G3) over 21 accepted
    assert (m.counts["escalations"], m.counts["rejections"], m.counts["change_requests"]) == (9, 5, 5)
    assert m.supervision_load.value == pytest.approx(19 / 21)
    assert m.supervision_load.n == 21


# --- groups -------------------------------------------------------------------------------------------


def _group(rows, key):
    return next(m for m in rows if m.key == key)


def test_every_metric_of_pod_alpha_and_its_small_sample_flags(report):
    alpha = _group(report.by_pod, "alpha")
    # alpha: A1..A6, A18 accepted; B1 approved and reverted; D1, D2 rejected; E1 cancelled; F1 earlier; G1 open
    assert alpha.accepted_throughput.value == pytest.approx(7 / WEEKS)
    assert alpha.acceptance_yield.value == pytest.approx(7 / 11)
    assert (alpha.acceptance_yield.low, alpha.acceptance_yield.high) == (
        pytest.approx(0.3538, abs=1e-4),
        pytest.approx(0.8483, abs=1e-4),
    )
    assert alpha.acceptance_yield.small_sample is True
    assert "n = 11 < 20" in alpha.acceptance_yield.note
    # first reviews: A1..A6 and B1 approve; A18, D2 changes; D1 reject
    assert alpha.first_pass_acceptance.value == pytest.approx(7 / 10)
    assert alpha.revert_rate.value == pytest.approx(1 / 8)
    # leads 120 15 13 14 16 17 28 → sorted 13 14 15 16 17 28 120: median 16, p85 h=5.1 → 28 + 0.1·92
    assert alpha.lead_time.total.median == pytest.approx(16 * H)
    assert alpha.lead_time.total.upper == pytest.approx(37.2 * H)
    # A2 4, A3 1, D1 8, B1 6, E1 2, G1 48 → 1 2 4 6 8 48: median h=2.5 → 5; p90 h=4.5 → 8 + 0.5·40
    assert alpha.escalation_response.median == pytest.approx(5 * H)
    assert alpha.escalation_response.upper == pytest.approx(28 * H)
    assert alpha.autonomy_rate.value == pytest.approx(5 / 7)
    # 7×$2 + B1 5 + D1 1.5 + D2 1.5 + E1 0.5 = 22.5; wasted 8.5
    assert alpha.cost_per_accepted.value == pytest.approx(22.5 / 7)
    assert alpha.tokens_per_accepted.value == pytest.approx((7 * 1500 + 4000 + 2 * 1000 + 400) / 7)
    assert alpha.wasted_spend_share.value == pytest.approx(8.5 / 22.5)
    # 6 escalations + 2 rejections + 2 change requests (A18, D2)
    assert alpha.supervision_load.value == pytest.approx(10 / 7)
    for figure in (
        alpha.acceptance_yield,
        alpha.first_pass_acceptance,
        alpha.revert_rate,
        alpha.autonomy_rate,
        alpha.cost_per_accepted,
        alpha.wasted_spend_share,
        alpha.supervision_load,
        alpha.lead_time.total,
    ):
        assert figure.small_sample is True, figure.key
    assert alpha.accepted_throughput.small_sample is False  # a count, not a ratio


def test_pods_add_up_to_the_fleet(report):
    assert [m.key for m in report.by_pod] == ["alpha", "bravo", "charlie"]
    # bravo: A7..A12, A19 of 7 + D3 + D4 + E2; charlie: A13..A17, A20, C1 of 7 + B2 + D5 + E3
    assert _group(report.by_pod, "bravo").acceptance_yield.value == pytest.approx(7 / 10)
    assert _group(report.by_pod, "charlie").acceptance_yield.value == pytest.approx(7 / 10)
    assert sum(m.counts["accepted"] for m in report.by_pod) == report.overall.counts["accepted"]
    assert sum(m.counts["closed_cost_usd"] for m in report.by_pod) == pytest.approx(61)


def test_by_sto_and_by_task_type(report):
    a1 = _group(report.by_sto, "a1")
    # a1: A1, A2, A5, A18 accepted; B1 (reverted), D1 (rejected) closed too
    assert a1.acceptance_yield.value == pytest.approx(4 / 6)
    assert a1.revert_rate.value == pytest.approx(1 / 5)
    assert sorted(m.key for m in report.by_sto) == ["a1", "a2", "b1", "b2", "c1", "c2"]
    feature = _group(report.by_task_type, "feature")
    # accepted features: A1 A3 A7 A8 A11 A13 A16 A18 A20 C1; closed: + B1, D1, D4, E2
    assert feature.acceptance_yield.value == pytest.approx(10 / 14)
    assert feature.revert_rate.value == pytest.approx(1 / 11)
    assert [m.key for m in report.by_task_type] == ["feature", "fix", "docs", "tests", "refactor", "chore"]


def test_the_weekly_trend_ends_at_the_window_end_and_spans_at_least_eight_weeks(report):
    assert len(report.trend) == 8
    assert report.trend[-1].end == NOW
    assert report.trend[0].start == NOW - timedelta(weeks=8)
    last = report.trend[-1].metrics  # [552 h, 720 h)
    # accepted A17 (661); closed A17, D5 (650), E3 (700); first reviews A17, D5, G3 (560)
    assert last.accepted_throughput.value == pytest.approx(1.0)
    assert last.acceptance_yield.value == pytest.approx(1 / 3)
    assert last.first_pass_acceptance.value == pytest.approx(1 / 3)
    # escalations A17 ×2, G1; rejection D5; change request G3 → 5 per accepted
    assert last.supervision_load.value == pytest.approx(5 / 1)
    # cost A17 2 + D5 1.5 + E3 0.5 = 4, wasted 2
    assert last.cost_per_accepted.value == pytest.approx(4)
    assert last.wasted_spend_share.value == pytest.approx(2 / 4)


# --- scope and window ---------------------------------------------------------------------------------


def test_a_pod_filter_gives_the_pods_own_figures(fixture_fleet):
    report = fleet_metrics(window=window30(), scope=Scope(pod="alpha"), now=NOW)
    assert report.overall.acceptance_yield.value == pytest.approx(7 / 11)
    assert [m.key for m in report.by_pod] == ["alpha"]


def test_task_type_and_tag_filters(fixture_fleet):
    by_type = fleet_metrics(window=window30(), scope=Scope(task_type="feature"), now=NOW)
    assert by_type.overall.acceptance_yield.value == pytest.approx(10 / 14)
    by_tag = fleet_metrics(window=window30(), scope=Scope(tag="pod-bravo"), now=NOW)
    assert by_tag.overall.acceptance_yield.value == pytest.approx(7 / 10)
    nothing = fleet_metrics(window=window30(), scope=Scope(tag="no-such-tag"), now=NOW)
    assert nothing.overall.acceptance_yield.value is None
    assert nothing.overall.acceptance_yield.n == 0


def test_an_unknown_pod_or_task_type_is_refused_with_a_clear_message(fixture_fleet):
    with pytest.raises(ValueError, match="no pod 'zulu'"):
        fleet_metrics(window=window30(), scope=Scope(pod="zulu"), now=NOW)
    with pytest.raises(ValueError, match="Task type 'poetry' is unknown"):
        fleet_metrics(window=window30(), scope=Scope(task_type="poetry"), now=NOW)


def test_a_window_is_half_open_an_approval_at_its_start_counts_one_at_its_end_does_not(fixture_fleet):
    # A2 was approved at 39 h: a window starting exactly then counts it, one ending then does not
    starting = metrics.Window(start=at(39), end=at(40), label="t")
    ending = metrics.Window(start=at(30), end=at(39), label="t")
    assert fleet_metrics(window=starting, now=NOW, with_trend=False).overall.counts["accepted"] == 1
    assert fleet_metrics(window=ending, now=NOW, with_trend=False).overall.counts["accepted"] == 1  # A20 at 35


def test_windows_parse_presets_days_and_dates_and_refuse_nonsense():
    assert window_last(text="7d", now=NOW).start == NOW - timedelta(days=7)
    assert window_last(text=" 90D ", now=NOW).days == 90
    first = datetime(2025, 3, 1).date()
    span = window_between(first_day=first, last_day=datetime(2025, 3, 31).date())
    assert span.days == 31
    for bad in ("", "7", "week", "0d", "1000d"):
        with pytest.raises(ValueError, match="Window"):
            window_last(text=bad, now=NOW)
    with pytest.raises(ValueError, match="before it starts"):
        window_between(first_day=first, last_day=datetime(2025, 2, 1).date())


def test_an_empty_database_gives_undefined_figures_not_errors(db):
    report = fleet_metrics(window=window30(), now=NOW)
    assert report.overall.acceptance_yield.value is None
    assert report.overall.lead_time.total.median is None
    assert report.overall.accepted_throughput.value == 0


def test_the_number_of_queries_does_not_grow_with_the_sessions(fixture_fleet, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        fleet_metrics(window=window30(), now=NOW)


# --- the command --------------------------------------------------------------------------------------


def test_the_metrics_command_prints_the_same_figures_as_json(fixture_fleet, capsys):
    with mock.patch("controlroom.management.commands.metrics.timezone.now", return_value=NOW):
        call_command("metrics", "--window", "30d", "--json")
    data = json.loads(capsys.readouterr().out)
    assert data["overall"]["acceptance_yield"]["value"] == pytest.approx(21 / 31)
    assert data["overall"]["acceptance_yield"]["n"] == 31
    assert data["overall"]["lead_time"]["total"]["median"] == pytest.approx(23 * H)
    expected = fleet_metrics(window=window30(), now=NOW).to_dict()
    assert data == json.loads(json.dumps(expected))


def test_the_metrics_command_text_and_pod_filter(fixture_fleet, capsys):
    with mock.patch("controlroom.management.commands.metrics.timezone.now", return_value=NOW):
        call_command("metrics", "--window", "30d", "--pod", "alpha")
    out = capsys.readouterr().out
    assert "Acceptance yield" in out and "63.6%" in out and "n=11" in out  # 7/11
    assert "[n<20]" in out


def test_the_metrics_command_refuses_a_bad_window_or_pod(db):
    with pytest.raises(CommandError, match="not understood"):
        call_command("metrics", "--window", "fortnight")
    with pytest.raises(CommandError, match="no pod 'zulu'"):
        call_command("metrics", "--window", "7d", "--pod", "zulu")
