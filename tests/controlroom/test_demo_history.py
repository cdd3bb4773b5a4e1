"""The demo's past month (controlroom/demo_history.py, ``manage.py seed_history``): written through the
services on a simulated clock into an empty database, it gives the leaders' dashboard figures with
n >= 20, the night timeline lanes for last night, and an audit log that verifies. The expected
values are computed from the records (reviews, escalations, sessions, audit events), never typed in."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db.models import Q
from django.utils import timezone

from agents.models import AgentSession, Escalation, Status, User
from agents.selectors import awaiting_review_q
from audit.chain import verify_log
from audit.models import AuditEvent, Checkpoint
from controlroom.demo_history import HISTORY_TAG, NIGHT, SimulatedClock, _dusk, seed_history, simulated_time
from controlroom.metrics import REVERT_HORIZON, SMALL_SAMPLE, fleet_metrics, window_last
from reviews.digest.timeline import timeline
from reviews.digest.windows import preset_window
from reviews.models import Review

pytestmark = pytest.mark.django_db


# A month takes 10-20 s to write (more on a loaded machine): the tests that read one are slow.
slow = pytest.mark.slow


@pytest.fixture
def month(worktrees_dir):
    now = timezone.now()
    result = seed_history(nights=30, password="pw", now=now)
    assert not result.skipped, result.skipped
    return now, result


def _sessions():
    return [s for s in AgentSession.objects.all() if HISTORY_TAG in s.tags]


@slow
def test_the_dashboards_headline_figures_have_n_of_twenty_or_more_and_match_the_records(month):
    now, result = month
    window = window_last(text="30d", now=now)
    overall = fleet_metrics(window=window, now=now).overall

    def inside(moment) -> bool:
        return moment is not None and window.start <= moment < window.end

    first = {}
    for review in Review.objects.order_by("created_at", "id"):
        first.setdefault((review.session_id, review.decision), review.created_at)
    approved = {sid: at for (sid, decision), at in first.items() if decision == "approve" and inside(at)}
    reverted_soon = {
        sid
        for sid, at in approved.items()
        if (sid, "revert") in first and first[(sid, "revert")] - at <= REVERT_HORIZON
    }
    accepted = set(approved) - reverted_soon
    asked_a_human = Escalation.objects.filter(created_at__gte=window.start, created_at__lt=window.end).exclude(
        state=Escalation.State.DENIED, decided_by__isnull=True
    )
    assert overall.accepted_throughput.n == len(accepted)
    assert overall.revert_rate.n == len(approved) and overall.revert_rate.numerator == len(reverted_soon)
    assert overall.escalation_response.n == asked_a_human.count()
    assert overall.lead_time.total.n == len(accepted)
    assert overall.autonomy_rate.n == len(accepted)
    closed_cost = sum(
        (
            s.cost_usd
            for s in AgentSession.objects.all()
            if inside(
                first.get((s.pk, "approve"))
                or first.get((s.pk, "reject"))
                or (s.status == "cancelled" and s.finished_at)
            )
        ),
        Decimal(0),
    )
    assert overall.cost_per_accepted.numerator == pytest.approx(float(closed_cost))
    for figure in overall.figures():
        assert figure.n >= SMALL_SAMPLE, (figure.key, figure.n)
        assert not figure.small_sample
    # a plausible month: most work accepted, some rejected, reverted and cancelled; real waits
    assert 0.5 < overall.acceptance_yield.value < 0.95
    assert overall.counts["rejected"] > 0 and overall.counts["cancelled"] > 0 and overall.counts["reverted"] > 0
    assert overall.escalation_response.median > 60
    assert overall.cost_per_accepted.value > 0 and overall.tokens_per_accepted.value > 0
    assert 0 < overall.lead_time.waiting_share.value < 1
    # at least as many sessions as the nights each launched a few
    assert result.sessions == len(_sessions()) >= 30 * 3


@slow
def test_every_sessions_counters_are_the_sum_of_its_recorded_model_calls(month):
    calls = {}
    for sid, payload in AuditEvent.objects.filter(kind="model.call").values_list("session_id", "payload"):
        tokens_in, tokens_out, cost = calls.get(sid, (0, 0, Decimal(0)))
        calls[sid] = (
            tokens_in + payload["tokens_in"],
            tokens_out + payload["tokens_out"],
            cost + Decimal(payload["cost_usd"]),
        )
    sessions = _sessions()
    assert len(calls) == len(sessions)
    for s in sessions:
        assert (s.tokens_in, s.tokens_out, s.cost_usd) == calls[s.pk], s.pk


@slow
def test_last_nights_timeline_has_lanes_for_the_sessions_that_ran_then(month):
    _now, result = month
    morning = _dusk(result.last_night) + NIGHT + timedelta(minutes=5)
    window = preset_window("night", now=morning)
    night = timeline(user=User.objects.get(username="leader"), window=window)
    launched = AuditEvent.objects.filter(
        kind="session.launched", created_at__gte=window.start, created_at__lt=window.end
    ).count()
    assert launched >= 3
    assert night.lane_count >= launched
    assert sum(len(block.lanes) for block in night.pods) == night.lane_count
    assert all(lane.segments for block in night.pods for lane in block.lanes)


@slow
def test_the_audit_log_verifies_with_its_checkpoints_and_grows_in_time(month):
    _now, result = month
    verified = verify_log()
    assert verified.ok, verified.breaks[:3]
    assert verified.events == AuditEvent.objects.count() == result.events
    assert Checkpoint.objects.count() == result.checkpoints >= 25  # one each morning
    times = list(AuditEvent.objects.order_by("id").values_list("created_at", flat=True))
    assert times == sorted(times), "the log's ids follow its times: the past was written oldest first"
    assert times[-1] < timezone.now()


@slow
def test_no_past_session_is_left_to_run_and_nothing_was_enqueued_or_broadcast(month):
    left = AgentSession.objects.filter(status__in=[Status.QUEUED, Status.RUNNING, Status.PAUSED])
    assert not left.exists()
    assert not Escalation.objects.filter(state=Escalation.State.OPEN).exists()
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        assert client.llen("celery") == 0
    finally:
        client.close()
    unreviewed = AgentSession.objects.filter(Q(review_state="none"), ~Q(status=Status.CANCELLED))
    approvals = Review.objects.filter(decision="approve")
    assert all(r.details["method"] == "none" and "nothing was merged" in r.details["note"] for r in approvals)
    # sessions left for a review are last night's only (when the morning is still young)
    last_dawn = _dusk(month[1].last_night) + NIGHT
    assert all(s.created_at > last_dawn - NIGHT - timedelta(hours=3) for s in unreviewed)


def test_seeding_twice_writes_nothing_the_second_time(worktrees_dir):
    now = timezone.now()
    first = seed_history(nights=3, password="pw", now=now)
    counts = (AgentSession.objects.count(), AuditEvent.objects.count(), Review.objects.count())
    second = seed_history(nights=3, password="pw", now=now)
    assert first.sessions > 0 and second.skipped
    assert (AgentSession.objects.count(), AuditEvent.objects.count(), Review.objects.count()) == counts


def test_it_does_not_write_a_past_under_tonights_fleet(worktrees_dir):
    call_command("seed_demo", agents=3, no_start=True, password="pw", stdout=io.StringIO())
    out = io.StringIO()
    call_command("seed_history", nights=2, password="pw", stdout=out)
    assert "not seeded" in out.getvalue()
    assert AgentSession.objects.count() == 3


def test_the_command_then_tonights_fleet(worktrees_dir):
    out = io.StringIO()
    call_command("seed_history", nights=2, password="pw", stdout=out)
    assert "history: 2 nights" in out.getvalue()
    past = AgentSession.objects.count()
    call_command("seed_demo", agents=5, no_start=True, password="pw", stdout=io.StringIO())
    assert AgentSession.objects.count() == past + 5  # tonight's fleet counts only its own sessions
    assert verify_log().ok


def test_the_simulated_clock_is_put_back():
    real = timezone.now
    default = Escalation._meta.get_field("created_at").default
    clock = SimulatedClock(real() - timedelta(days=3))
    with simulated_time(clock):
        assert timezone.now() < real() - timedelta(days=2)
        assert Escalation._meta.get_field("created_at").get_default() < real() - timedelta(days=2)
    assert timezone.now is real
    assert Escalation._meta.get_field("created_at").default is default


def test_a_past_sessions_review_page_says_nothing_was_merged_and_a_git_revert_is_refused(worktrees_dir, client):
    from django.core.exceptions import ValidationError

    from reviews.services import review_revert

    seed_history(nights=2, password="pw")
    approval = Review.objects.filter(decision="approve").select_related("session").first()
    assert approval is not None
    client.force_login(User.objects.get(username="manager"))
    page = client.get(f"/reviews/{approval.session_id}/")
    assert page.status_code == 200
    assert "nothing was merged" in page.content.decode()
    if approval.session.review_state == "approved":
        with pytest.raises(ValidationError, match="merged no commits"):
            review_revert(session=approval.session, reviewer=User.objects.get(username="manager"))


def test_offline_services_schedule_no_live_update_and_no_step(django_capture_on_commit_callbacks):
    from agents.dispatch import enqueue_step_on_commit
    from agents.events import is_offline, offline, send_on_commit

    with django_capture_on_commit_callbacks() as callbacks:
        with offline():
            assert is_offline()
            send_on_commit(1)
            enqueue_step_on_commit(session_id=1, step=1)
        assert not is_offline()
    assert callbacks == []
    with django_capture_on_commit_callbacks() as callbacks:
        send_on_commit(1)
    assert len(callbacks) == 1


@slow
def test_a_fresh_start_shows_figures_last_nights_lanes_and_a_log_that_verifies(worktrees_dir, client):
    """The acceptance of a fresh ``bin/start``, over HTTP: seeded as the launcher seeds an empty
    database (``seed_history``, then ``seed_demo`` with its default hundred agents; not started
    here, as no worker runs), /dashboard shows every headline figure with n >= 20, /timeline for
    last night draws its lanes, and ``manage.py audit_verify`` passes."""
    import re

    from controlroom.demo_history import history_nights

    now = timezone.now()
    call_command("seed_history", "--password", "pw", stdout=io.StringIO())
    call_command("seed_demo", "--password", "pw", "--no-start", stdout=io.StringIO())
    assert len(_sessions()) >= 30 * 3 and AgentSession.objects.count() == len(_sessions()) + 100
    client.force_login(User.objects.get(username="leader"))

    html = client.get("/dashboard").content.decode()
    headline = re.findall(r'<article class="kpi( small)?" data-metric="(\w+)"[^>]*data-n="(\d+)"', html)
    assert {key for _, key, _ in headline} >= {"accepted_throughput", "revert_rate", "escalation_response"}, html[:2000]
    for small, key, n in headline:
        assert int(n) >= SMALL_SAMPLE and not small, (key, n)

    last_night = history_nights(now=now, nights=1)[-1]
    dusk = timezone.localtime(_dusk(last_night))
    since = (dusk - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    until = (dusk + NIGHT).strftime("%Y-%m-%dT%H:%M")
    response = client.get(f"/timeline?since={since}&until={until}")
    assert response.status_code == 200
    html = response.content.decode()
    lanes = re.findall(r'<g class="lane" data-session-id="(\d+)"', html)
    ran = AuditEvent.objects.filter(
        kind="session.launched", created_at__gte=dusk - timedelta(hours=2), created_at__lt=dusk + NIGHT
    ).values_list("session_id", flat=True)
    assert len(set(ran)) >= 3 and set(ran) <= {int(x) for x in lanes}
    assert "No session lived during this window" not in html

    # the manager's canvas shows tonight's fleet and what of the past still needs a review; the rest
    # of the month is behind "show older"
    client.force_login(User.objects.get(username="manager"))
    html = client.get("/").content.decode()
    shown = {int(x) for x in re.findall(r'<article id="tile-(\d+)"', html)}
    past = {s.pk for s in _sessions()}
    unreviewed = set(AgentSession.objects.filter(awaiting_review_q(), pk__in=past).values_list("pk", flat=True))
    assert shown - past == set(AgentSession.objects.exclude(pk__in=past).values_list("pk", flat=True))
    assert unreviewed <= shown and len(shown & past) < 40
    assert f"show older ({len(past - shown)})" in html

    out = io.StringIO()
    call_command("audit_verify", stdout=out)  # SystemExit(1) when a chain or checkpoint breaks
    assert out.getvalue().startswith("OK "), out.getvalue()
