"""The canvas page: who sees which tiles, filters in the query string, the "needs you" queue,
the fleet summary bar, and the queries it costs."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents import selectors, services
from agents.models import AgentSession, AgentStep, Escalation, FleetControl, Grant, ReviewState, Status, ToolCall
from controlroom.views import local_evening_start

pytestmark = pytest.mark.django_db

TILE = re.compile(
    r'<article id="tile-(\d+)" class="tile[^"]*" data-session-id="\d+" data-pod-id="(\d+)"'
    r' data-sto="([^"]*)" data-status="([^"]*)" data-version="(\d+)"'
)


def _session(fleet, *, pod, sto, status, name, minutes_ago=0, **changes) -> AgentSession:
    session = services.session_launch(
        pod=pod,
        sto=sto,
        goal=name,
        name=name,
        by=fleet.manager,
        repository=fleet.repo,
        start=False,
        grant=services.GrantSpec(mode="edits", max_cost_usd=Decimal("5.00"), max_steps=60),
    )
    AgentSession.objects.filter(pk=session.pk).update(
        status=status, updated_at=timezone.now() - timedelta(minutes=minutes_ago), **changes
    )
    session.refresh_from_db()
    return session


@pytest.fixture
def board(fleet):
    """alpha: a1 sam running, a2 mia needs_approval (escalation open 30 min), a3 sam blocked (10 min),
    a4 lena succeeded; bravo: b1 otto needs_approval (60 min), b2 otto running."""
    a1 = _session(
        fleet,
        pod=fleet.alpha,
        sto=fleet.sto,
        status=Status.RUNNING,
        name="a1 running",
        heartbeat_at=timezone.now(),
        cost_usd=Decimal("1.25"),
        steps=7,
    )
    a2 = _session(fleet, pod=fleet.alpha, sto=fleet.member, status=Status.NEEDS_APPROVAL, name="a2 asks", minutes_ago=1)
    a3 = _session(fleet, pod=fleet.alpha, sto=fleet.sto, status=Status.BLOCKED, name="a3 blocked", minutes_ago=10)
    a4 = _session(fleet, pod=fleet.alpha, sto=fleet.lead, status=Status.SUCCEEDED, name="a4 done", minutes_ago=5)
    b1 = _session(
        fleet, pod=fleet.bravo, sto=fleet.outsider, status=Status.NEEDS_APPROVAL, name="b1 asks", minutes_ago=60
    )
    b2 = _session(
        fleet,
        pod=fleet.bravo,
        sto=fleet.outsider,
        status=Status.RUNNING,
        name="b2 running",
        heartbeat_at=timezone.now(),
    )
    Escalation.objects.create(
        session=a2,
        grant=a2.grants.get(),
        tool="run_command",
        action="Bash(git push origin HEAD)",
        action_hash="h" * 64,
        created_at=timezone.now() - timedelta(minutes=30),
    )
    return {"a1": a1, "a2": a2, "a3": a3, "a4": a4, "b1": b1, "b2": b2}


def _tiles(html: str) -> dict[int, dict]:
    return {
        int(m[0]): {"pod": int(m[1]), "sto": m[2], "status": m[3], "version": int(m[4])} for m in TILE.findall(html)
    }


def _get(client, user, url="/", **extra):
    client.force_login(user)
    response = client.get(url, **extra)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def _needs_you(html: str) -> list[int]:
    section = html.split('id="needs-you"', 1)[1].split("</section>", 1)[0]
    return [int(x) for x in re.findall(r'<li class="status-\w+" data-session-id="(\d+)"', section)]


def ids(board, *names) -> set[int]:
    return {board[n].pk for n in names}


# --- who sees what -----------------------------------------------------------------------------


def test_the_manager_sees_every_session_as_a_tile_grouped_by_pod(client, fleet, board):
    html = _get(client, fleet.manager)
    tiles = _tiles(html)
    assert set(tiles) == ids(board, "a1", "a2", "a3", "a4", "b1", "b2")
    assert tiles[board["a2"].pk] == {
        "pod": fleet.alpha.pk,
        "sto": "mia",
        "status": "needs_approval",
        "version": board["a2"].version,
    }
    alpha = html.split(f'id="pod-{fleet.alpha.pk}"', 1)[1].split("</section>", 1)[0]
    assert set(_tiles(alpha)) == ids(board, "a1", "a2", "a3", "a4")
    # every tile opens the drawer in #drawer and keeps a real link
    assert 'id="drawer"' in html
    a1 = board["a1"].pk
    assert f'href="/sessions/{a1}/" hx-get="/sessions/{a1}/" hx-target="#drawer"' in html


def test_the_leader_sees_every_session_but_nothing_waits_for_them(client, fleet, board):
    html = _get(client, fleet.leader)
    assert set(_tiles(html)) == ids(board, "a1", "a2", "a3", "a4", "b1", "b2")
    assert _needs_you(html) == []
    assert "Leaders read the fleet" in html
    assert 'href="/launch"' not in html  # leaders do not launch


def test_a_member_of_alpha_sees_only_alpha(client, fleet, board):
    html = _get(client, fleet.member)
    assert set(_tiles(html)) == ids(board, "a1", "a2", "a3", "a4")
    assert f'data-pod-id="{fleet.bravo.pk}"' not in html
    assert "b1 asks" not in html and "b2 running" not in html


def test_the_outsider_from_bravo_sees_only_bravo(client, fleet, board):
    html = _get(client, fleet.outsider)
    assert set(_tiles(html)) == ids(board, "b1", "b2")
    assert "a2 asks" not in html


def test_a_member_of_alpha_cannot_open_a_drawer_of_bravo(client, fleet, board):
    client.force_login(fleet.member)
    assert client.get(f"/sessions/{board['b1'].pk}/").status_code == 403
    assert client.get(f"/sessions/{board['b1'].pk}/", HTTP_HX_REQUEST="true").status_code == 403
    assert client.get(f"/sessions/{board['a1'].pk}/").status_code == 200  # their own pod's drawer opens


# --- filters ------------------------------------------------------------------------------------


def test_the_pod_filter_shows_one_pod(client, fleet, board):
    html = _get(client, fleet.manager, "/?pod=bravo")
    assert set(_tiles(html)) == ids(board, "b1", "b2")
    assert f'id="pod-{fleet.alpha.pk}"' not in html


def test_the_mine_filter_shows_the_sessions_the_user_owns(client, fleet, board):
    assert set(_tiles(_get(client, fleet.sto, "/?sto=mine"))) == ids(board, "a1", "a3")
    assert set(_tiles(_get(client, fleet.manager, "/?sto=otto"))) == ids(board, "b1", "b2")


def test_status_filters_combine_and_repeat(client, fleet, board):
    html = _get(client, fleet.manager, "/?status=running&status=blocked")
    assert set(_tiles(html)) == ids(board, "a1", "a3", "b2")
    html = _get(client, fleet.manager, "/?status=running&pod=alpha&sto=sam")
    assert set(_tiles(html)) == ids(board, "a1")
    # the filter state is in the page, so the form and live updates keep it
    assert 'value="running" checked' in html
    assert 'data-filter-status="running"' in html and 'data-filter-sto="sam"' in html


def test_a_bad_filter_value_is_reported_and_ignored(client, fleet, board):
    html = _get(client, fleet.manager, "/?status=exploded&sto=nobody")
    assert set(_tiles(html)) == ids(board, "a1", "a2", "a3", "a4", "b1", "b2")
    assert "Filter status:" in html and "exploded" in html
    assert "No user named &quot;nobody&quot;" in html


def test_a_member_cannot_filter_their_way_into_another_pod(client, fleet, board):
    html = _get(client, fleet.member, "/?pod=bravo")
    assert set(_tiles(html)) == ids(board, "a1", "a2", "a3", "a4")
    assert "Filter pod:" in html


# --- needs you ----------------------------------------------------------------------------------


def test_needs_you_lists_what_the_manager_may_act_on_longest_wait_first(client, fleet, board):
    html = _get(client, fleet.manager)
    # b1 waits 60 min (updated_at), a2 30 min (its open escalation), a3 10 min (blocked)
    assert _needs_you(html) == [board["b1"].pk, board["a2"].pk, board["a3"].pk]
    assert 'Need a human <strong data-count="needs_human">3</strong>' in html


def test_needs_you_of_the_pod_lead_is_their_pod(client, fleet, board):
    assert _needs_you(_get(client, fleet.lead)) == [board["a2"].pk, board["a3"].pk]


def test_needs_you_of_a_member_is_only_what_they_own(client, fleet, board):
    assert _needs_you(_get(client, fleet.sto)) == [board["a3"].pk]
    assert _needs_you(_get(client, fleet.member)) == [board["a2"].pk]
    assert _needs_you(_get(client, fleet.outsider)) == [board["b1"].pk]


def test_the_wait_starts_at_the_open_escalation(client, fleet, board):
    html = _get(client, fleet.member)
    since = int(re.search(rf'data-session-id="{board["a2"].pk}" data-waiting-since="(\d+)"', html)[1])
    assert abs(since - (time.time() - 30 * 60)) < 60


# --- summary bar --------------------------------------------------------------------------------


def test_the_summary_counts_sessions_per_status_for_the_viewer(client, fleet, board):
    html = _get(client, fleet.manager)
    assert '<strong data-count="running">2</strong>' in html
    assert '<strong data-count="needs_approval">2</strong>' in html
    assert '<strong data-count="total">6</strong>' in html
    member = _get(client, fleet.member)
    assert '<strong data-count="running">1</strong>' in member
    assert '<strong data-count="total">4</strong>' in member


def test_the_summary_shows_tonights_cost_of_sessions_active_since_six_pm(client, fleet, board):
    AgentSession.objects.filter(pk=board["b2"].pk).update(cost_usd=Decimal("2.50"))
    AgentSession.objects.filter(pk=board["a4"].pk).update(
        cost_usd=Decimal("9.00"), updated_at=timezone.now() - timedelta(days=2)
    )
    html = _get(client, fleet.manager)
    assert '<strong data-count="cost">$3.75</strong>' in html  # a1 1.25 + b2 2.50; a4 ended two days ago


def test_tonight_starts_at_six_pm_local_time():
    tz = timezone.get_current_timezone()
    assert local_evening_start(datetime(2025, 3, 4, 23, 10, tzinfo=tz)) == datetime(2025, 3, 4, 18, 0, tzinfo=tz)
    assert local_evening_start(datetime(2025, 3, 5, 3, 0, tzinfo=tz)) == datetime(2025, 3, 4, 18, 0, tzinfo=tz)


def test_the_summary_shows_a_stopped_fleet_and_a_pod_at_its_review_wip_limit(client, fleet, board):
    FleetControl.objects.update_or_create(
        pk=1, defaults={"stopped": True, "reason": "incident 42", "changed_by": fleet.manager}
    )
    fleet.alpha.review_wip_limit = 1
    fleet.alpha.save()
    html = _get(client, fleet.manager)
    assert "The fleet is stopped" in html and "incident 42" in html
    assert "Alpha: review WIP limit reached (1/1)" in html


def test_the_side_fragments_refresh_the_summary_and_the_queue_out_of_band(client, fleet, board):
    html = _get(client, fleet.manager, "/canvas/side")
    assert '<section id="fleet-summary"' in html and 'id="needs-you"' in html
    assert html.count('hx-swap-oob="true"') == 2
    assert _needs_you(html) == [board["b1"].pk, board["a2"].pk, board["a3"].pk]
    assert "<html" not in html


# --- tonight's work: what the canvas shows by default ----------------------------------------------

FOUR_DAYS = 4 * 24 * 60  # minutes: before tonight started, whatever the time of day


@pytest.fixture
def older(fleet, board):
    """Beside the board, sessions last changed four days ago: reviewed and merged, cancelled with
    nothing to review, finished and never reviewed, cancelled after a commit, still running."""
    old = dict(pod=fleet.alpha, sto=fleet.sto, minutes_ago=FOUR_DAYS)
    made = {
        "merged": _session(fleet, status=Status.SUCCEEDED, name="old merged", review_state=ReviewState.APPROVED, **old),
        "cancelled": _session(fleet, status=Status.CANCELLED, name="old cancelled", **old),
        "unreviewed": _session(fleet, status=Status.SUCCEEDED, name="old unreviewed", **old),
        "committed": _session(fleet, status=Status.CANCELLED, name="old committed", **old),
        "running": _session(fleet, status=Status.RUNNING, name="old running", **old),
    }
    step = AgentStep.objects.create(session=made["committed"], number=1)
    ToolCall.objects.create(
        session=made["committed"], step=step, index=0, call_id="c1", name="git_commit", state=ToolCall.State.DONE
    )
    return made


def test_tonights_work_is_what_has_not_ended_awaits_review_or_changed_since_six_pm(fleet, board, older):
    current = set(AgentSession.objects.filter(selectors.current_q()).values_list("pk", flat=True))
    assert current == {s.pk for s in board.values()} | ids(older, "unreviewed", "committed", "running")
    # the line is tonight's start, 18:00 local time: a session closed at 17:59 is older, at 18:01 tonight's
    tz = timezone.get_current_timezone()
    morning = datetime(2025, 3, 5, 9, 0, tzinfo=tz)
    closed = older["cancelled"]
    for when, shown in (
        (datetime(2025, 3, 4, 17, 59, tzinfo=tz), False),
        (datetime(2025, 3, 4, 18, 1, tzinfo=tz), True),
    ):
        AgentSession.objects.filter(pk=closed.pk).update(updated_at=when)
        assert AgentSession.objects.filter(selectors.current_q(now=morning), pk=closed.pk).exists() is shown


@pytest.mark.parametrize("view", ["tiles", "compact"])
def test_the_canvas_shows_tonights_work_and_links_to_the_older_sessions(client, fleet, board, older, view):
    tonight = {s.pk for s in board.values()} | ids(older, "unreviewed", "committed", "running")
    html = _get(client, fleet.manager, f"/?view={view}")
    assert set(_tiles(html)) == tonight
    assert re.search(
        r'<a id="older-toggle"[^>]*href="\?view=' + view + r'&amp;older=1"[^>]*>show older \(2\)</a>', html
    )
    # the header counts what the canvas shows
    assert '<strong data-count="total">9</strong> sessions tonight' in html
    assert '<strong data-count="succeeded">2</strong>' in html  # a4 and the unreviewed one, not the merged one

    html = _get(client, fleet.manager, f"/?view={view}&older=1")
    assert set(_tiles(html)) == tonight | ids(older, "merged", "cancelled")
    assert re.search(r'<a id="older-toggle"[^>]*>hide older</a>', html)
    assert '<strong data-count="total">11</strong> sessions</a>' in html
    assert '<strong data-count="succeeded">3</strong>' in html
    assert 'hx-get="/canvas/side?older=1"' in html and 'data-older="1"' in html
    assert '<input type="hidden" name="older" value="1">' in html  # filtering keeps the older ones


def test_the_fleet_map_shows_tonights_work_too(client, fleet, board, older):
    cells = re.compile(r'<a id="cell-(\d+)"')
    html = _get(client, fleet.manager, "/?view=map")
    assert {int(x) for x in cells.findall(html)} == {s.pk for s in board.values()} | ids(
        older, "unreviewed", "committed", "running"
    )
    assert "show older (2)" in html
    html = _get(client, fleet.manager, "/?view=map&older=1")
    assert ids(older, "merged", "cancelled") <= {int(x) for x in cells.findall(html)}


def test_filters_and_the_older_toggle_combine_and_the_polled_summary_counts_the_same(client, fleet, board, older):
    html = _get(client, fleet.manager, "/?status=succeeded")
    assert set(_tiles(html)) == ids(board, "a4") | ids(older, "unreviewed")
    assert "show older (1)" in html  # only the merged one matches the filter
    html = _get(client, fleet.manager, "/?status=succeeded&older=1")
    assert set(_tiles(html)) == ids(board, "a4") | ids(older, "unreviewed", "merged")
    assert '<strong data-count="total">9</strong>' in _get(client, fleet.manager, "/canvas/side")
    assert '<strong data-count="total">11</strong>' in _get(client, fleet.manager, "/canvas/side?older=1")


def test_nothing_older_no_toggle_and_a_bad_value_is_reported(client, fleet, board):
    html = _get(client, fleet.manager)
    assert 'id="older-toggle"' not in html
    html = _get(client, fleet.manager, "/?older=yes")
    assert "Filter older:" in html and set(_tiles(html)) == {s.pk for s in board.values()}


# --- tiles ----------------------------------------------------------------------------------------


def test_a_tile_shows_cost_against_the_grant_budget_steps_and_a_text_status(client, fleet, board):
    html = _get(client, fleet.manager)
    tile = html.split(f'id="tile-{board["a1"].pk}"', 1)[1].split("</article>", 1)[0]
    assert "$1.25 / $5.00" in tile
    assert "7/60 steps" in tile
    assert "Running" in tile and "STO <strong>sam</strong>" in tile


def test_a_running_session_without_a_recent_heartbeat_is_shown_stranded(client, fleet, board, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "STALE_AFTER_S": 60}
    AgentSession.objects.filter(pk=board["a1"].pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    html = _get(client, fleet.manager)
    assert f'<article id="tile-{board["a1"].pk}" class="tile status-running stranded"' in html
    assert f'<article id="tile-{board["b2"].pk}" class="tile status-running"' in html


def test_a_revoked_grant_shows_no_budget(client, fleet, board):
    Grant.objects.filter(session=board["a1"]).update(revoked_at=timezone.now())
    tile = _get(client, fleet.manager).split(f'id="tile-{board["a1"].pk}"', 1)[1].split("</article>", 1)[0]
    assert "$1.25" in tile and "/ $5.00" not in tile


# --- cost of rendering --------------------------------------------------------------------------


def _bulk_sessions(fleet, count: int) -> None:
    now = timezone.now()
    sessions = AgentSession.objects.bulk_create(
        [
            AgentSession(
                pod=fleet.alpha if i % 2 else fleet.bravo,
                sto=fleet.sto if i % 2 else fleet.outsider,
                name=f"bulk {i}",
                goal="g",
                repository=fleet.repo,
                base_branch="main",
                model="sim/engineer",
                status=[Status.RUNNING, Status.QUEUED, Status.NEEDS_APPROVAL, Status.SUCCEEDED][i % 4],
                heartbeat_at=now,
                priority=i % 4,
            )
            for i in range(count)
        ]
    )
    Grant.objects.bulk_create(
        [
            Grant(
                session=s,
                delegator=fleet.manager,
                issued_by=fleet.manager,
                not_before=now,
                expires_at=now + timedelta(hours=8),
                max_cost_usd=Decimal(5),
            )
            for s in sessions
        ]
    )


def _count_queries(client, url="/") -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_canvas_costs_the_same_queries_for_ten_or_a_thousand_sessions(client, fleet):
    client.force_login(fleet.manager)
    _bulk_sessions(fleet, 10)
    few = _count_queries(client, "/?view=tiles")
    _bulk_sessions(fleet, 990)
    started = time.process_time()  # CPU time: the test machine may be busy with other work
    many = _count_queries(client, "/?view=tiles")
    elapsed = time.process_time() - started
    assert many == few, f"{few} queries for 10 sessions, {many} for 1,000: something queries per tile"
    assert few <= 18
    assert elapsed < 3.0, f"the canvas of 1,000 sessions took {elapsed:.1f}s of CPU"
    html = client.get("/?view=tiles").content.decode()
    assert len(_tiles(html)) == 1000


def test_a_members_canvas_also_costs_constant_queries(client, fleet):
    client.force_login(fleet.member)
    _bulk_sessions(fleet, 10)
    few = _count_queries(client)
    _bulk_sessions(fleet, 200)
    assert _count_queries(client) == few
