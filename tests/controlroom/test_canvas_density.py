"""The canvas's views (tiles, compact, fleet map) and what they cost, stranded sessions (tile, cell,
drawer, Recover), and the overlapping-edits warning (tiles, drawer, review page)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents import selectors
from agents.events import render_tile
from agents.models import AgentSession, AgentStep, Status, ToolCall
from audit.models import AuditEvent
from controlroom.views import MAP_ABOVE, VIEW_COOKIE
from tests.controlroom.test_canvas import _bulk_sessions, _get, _session, _tiles

pytestmark = pytest.mark.django_db

CELL = re.compile(r'<a id="cell-(\d+)" class="cell status-([a-z_]+)( stranded)?"')
HTMX = {"HTTP_HX_REQUEST": "true"}


def _cells(html: str) -> dict[int, dict]:
    return {int(m[0]): {"status": m[1], "stranded": bool(m[2])} for m in CELL.findall(html)}


# --- views ------------------------------------------------------------------------------------------


def test_compact_mode_is_chosen_in_the_query_string_and_remembered(client, fleet):
    a1 = _session(fleet, pod=fleet.alpha, sto=fleet.sto, status=Status.RUNNING, name="a1 running")
    client.force_login(fleet.manager)
    response = client.get("/?view=compact")
    html = response.content.decode()
    assert 'class="canvas view-compact"' in html and 'aria-current="page">Compact' in html.replace(
        'data-view="compact" ', ""
    )
    assert response.cookies[VIEW_COOKIE].value == "compact"
    assert a1.pk in _tiles(html)
    # the next visit, without a view in the query string, stays compact
    assert 'class="canvas view-compact"' in client.get("/").content.decode()
    # and a view chosen again replaces it
    assert 'class="canvas view-tiles"' in client.get("/?view=tiles").content.decode()
    assert 'class="canvas view-tiles"' in client.get("/").content.decode()


def test_a_bad_view_is_reported_and_ignored(client, fleet):
    client.force_login(fleet.manager)
    response = client.get("/?view=spiral")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Filter view:" in html and 'class="canvas view-tiles"' in html
    assert VIEW_COOKIE not in response.cookies


def test_the_switch_keeps_the_filters(client, fleet):
    html = _get(client, fleet.manager, "/?pod=alpha&status=running")
    assert 'href="?pod=alpha&amp;status=running&amp;view=map"' in html


def test_the_fleet_map_draws_one_cell_per_session_grouped_by_pod(client, fleet):
    a1 = _session(fleet, pod=fleet.alpha, sto=fleet.sto, status=Status.RUNNING, name="a1 <b>running</b>")
    b1 = _session(fleet, pod=fleet.bravo, sto=fleet.outsider, status=Status.NEEDS_APPROVAL, name="b1 asks")
    html = _get(client, fleet.manager, "/?view=map")
    assert _cells(html) == {
        a1.pk: {"status": "running", "stranded": False},
        b1.pk: {"status": "needs_approval", "stranded": False},
    }
    assert not _tiles(html)
    alpha = html.split(f'id="pod-{fleet.alpha.pk}"', 1)[1].split("</section>", 1)[0]
    assert set(_cells(alpha)) == {a1.pk}
    # the details a hover or keyboard focus shows are the cell's own, escaped
    cell = html.split(f'id="cell-{a1.pk}"', 1)[1].split(">", 1)[0]
    assert 'data-name="a1 &lt;b&gt;running&lt;/b&gt;"' in cell and 'data-sto="sam"' in cell
    assert f'href="/sessions/{a1.pk}/"' in cell and 'data-label="Running"' in cell
    # a member sees only her pods' cells
    assert set(_cells(_get(client, fleet.member, "/?view=map"))) == {a1.pk}


def test_a_big_fleet_opens_as_the_map_unless_another_view_was_chosen(client, fleet):
    _bulk_sessions(fleet, MAP_ABOVE + 1)
    client.force_login(fleet.manager)
    html = client.get("/").content.decode()
    assert 'class="canvas view-map"' in html and len(_cells(html)) == MAP_ABOVE + 1
    client.get("/?view=compact")
    assert len(_tiles(client.get("/").content.decode())) == MAP_ABOVE + 1


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_map_and_compact_views_cost_constant_queries(client, fleet):
    client.force_login(fleet.manager)
    _bulk_sessions(fleet, 10)
    few = {view: _queries(client, f"/?view={view}") for view in ("map", "compact")}
    _bulk_sessions(fleet, 990)
    many = {view: _queries(client, f"/?view={view}") for view in ("map", "compact")}
    assert many == few, f"{few} queries for 10 sessions, {many} for 1,000"
    assert len(_cells(client.get("/?view=map").content.decode())) == 1000


# --- stranded ---------------------------------------------------------------------------------------


@pytest.fixture
def stranded(fleet, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "STALE_AFTER_S": 60}
    session = _session(
        fleet,
        pod=fleet.alpha,
        sto=fleet.sto,
        status=Status.RUNNING,
        name="lost worker",
        heartbeat_at=timezone.now() - timedelta(minutes=5),
        lease_until=timezone.now() - timedelta(minutes=4),
        lease_owner="host-1:task-9",
        steps=3,
    )
    return session


def _commit(session, message: str, sha: str = "c0ffee1234567890" * 2 + "abcd1234") -> None:
    step = AgentStep.objects.create(session=session, number=1)
    call = ToolCall.objects.create(
        session=session,
        step=step,
        index=0,
        call_id="c1",
        name="git_commit",
        arguments={"message": message},
        state=ToolCall.State.DONE,
    )
    AgentSession.objects.filter(pk=session.pk).update(pushed_commit=sha, pushed_call=call)


def test_a_stranded_session_shows_as_stranded_with_its_last_commit_on_tile_cell_and_drawer(client, fleet, stranded):
    _commit(stranded, "Add the discount rule\n\nwith tests")
    html = _get(client, fleet.manager, "/?view=tiles")
    tile = html.split(f'id="tile-{stranded.pk}"', 1)[1].split("</article>", 1)[0]
    assert 'class="tile status-running stranded"' in html
    assert ': stranded"' in tile  # the link's accessible name says stranded, not running
    assert "<code>c0ffee12</code> Add the discount rule" in tile and "with tests" not in tile, tile
    assert f'hx-post="/sessions/{stranded.pk}/recover"' in tile and f'hx-post="/sessions/{stranded.pk}/cancel"' in tile
    assert _cells(_get(client, fleet.manager, "/?view=map"))[stranded.pk]["stranded"]
    drawer = _get(client, fleet.sto, f"/sessions/{stranded.pk}/", **HTMX)
    assert 'data-stranded="true">Stranded' in drawer and "c0ffee12" in drawer
    assert 'data-control="recover"' in drawer and 'data-control="cancel"' in drawer
    # the live tile (one render for every viewer) says the same
    live = render_tile(AgentSession.objects.get(pk=stranded.pk))
    assert "stranded" in live.split(">", 1)[0] and "c0ffee12" in live


def test_a_session_with_a_live_lease_or_a_recent_heartbeat_is_not_stranded(client, fleet, stranded):
    AgentSession.objects.filter(pk=stranded.pk).update(lease_until=timezone.now() + timedelta(minutes=1))
    html = _get(client, fleet.manager, "/?view=tiles")
    assert 'class="tile status-running"' in html and 'stranded"' not in html.split(f'id="tile-{stranded.pk}"')[0][-5:]
    assert not _cells(_get(client, fleet.manager, "/?view=map"))[stranded.pk]["stranded"]


def test_recover_sends_the_next_step_again_and_is_audited(client, fleet, stranded, django_capture_on_commit_callbacks):
    client.force_login(fleet.sto)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(f"/sessions/{stranded.pk}/recover", **HTMX)
    assert response.status_code == 200, response.content[:400]
    assert "Recovery sent" in response.content.decode()
    event = AuditEvent.objects.get(session_id=stranded.pk, kind="session.recovered")
    assert event.actor_label == "sam" and event.payload["step"] == 4 and event.payload["lease_owner"] == "host-1:task-9"
    assert len(callbacks) >= 2, "the tile is broadcast and the step enqueued after commit"
    stranded.refresh_from_db()
    assert stranded.enqueued_at is not None and "recovering: step 4" in stranded.current_activity


def test_recover_refuses_a_session_that_is_not_stranded_and_an_outsider(client, fleet, stranded):
    client.force_login(fleet.outsider)
    assert client.post(f"/sessions/{stranded.pk}/recover", **HTMX).status_code == 403
    assert not AuditEvent.objects.filter(session_id=stranded.pk, kind="session.recovered").exists()
    AgentSession.objects.filter(pk=stranded.pk).update(heartbeat_at=timezone.now())
    client.force_login(fleet.sto)
    response = client.post(f"/sessions/{stranded.pk}/recover", **HTMX)
    assert response.status_code == 409 and "not stranded" in response.content.decode()
    assert not AuditEvent.objects.filter(session_id=stranded.pk, kind="session.recovered").exists()


def test_cancel_from_a_stranded_tile_uses_the_cancel_service(client, fleet, stranded):
    client.force_login(fleet.lead)
    assert client.post(f"/sessions/{stranded.pk}/cancel", **HTMX).status_code == 200
    stranded.refresh_from_db()
    assert stranded.status == Status.CANCELLED
    assert AuditEvent.objects.filter(session_id=stranded.pk, kind="session.cancelled", actor_label="lena").exists()


# --- overlapping edits ------------------------------------------------------------------------------


def _edit(session, path: str, *, tool: str = "edit_file", state=ToolCall.State.DONE, number: int = 1) -> None:
    step, _ = AgentStep.objects.get_or_create(session=session, number=number)
    ToolCall.objects.create(
        session=session,
        step=step,
        index=step.tool_calls.count(),
        call_id=f"c{step.tool_calls.count()}",
        name=tool,
        arguments={"path": path, "old": "a", "new": "b"},
        state=state,
    )


@pytest.fixture
def pair(fleet):
    one = _session(
        fleet, pod=fleet.alpha, sto=fleet.sto, status=Status.RUNNING, name="one", heartbeat_at=timezone.now()
    )
    two = _session(fleet, pod=fleet.alpha, sto=fleet.member, status=Status.SUCCEEDED, name="two")
    return one, two


def test_two_unmerged_sessions_that_edited_the_same_file_both_say_so(client, fleet, pair):
    one, two = pair
    _edit(one, "shop/pricing.py")
    _edit(one, "README.md")
    _edit(two, "./shop/pricing.py", tool="write_file")
    _edit(two, "shop/other.py")
    html = _get(client, fleet.manager, "/?view=tiles")
    for me, other in ((one, two), (two, one)):
        tile = html.split(f'id="tile-{me.pk}"', 1)[1].split("</article>", 1)[0]
        assert f'data-overlaps="{other.pk} "' in html.split(f'id="tile-{me.pk}"', 1)[1].split(">", 1)[0]
        assert f"⚠ same files as #{other.pk}: shop/pricing.py" in tile
        assert "README.md" not in tile and "other.py" not in tile
    live = render_tile(AgentSession.objects.get(pk=one.pk))
    assert f"⚠ same files as #{two.pk}" in live
    drawer = _get(client, fleet.sto, f"/sessions/{one.pk}/", **HTMX)
    assert "Overlapping edits" in drawer and f"#{two.pk} two" in drawer and "<code>shop/pricing.py</code>" in drawer


def test_no_overlap_when_the_other_is_merged_failed_an_edit_or_only_read(client, fleet, pair):
    one, two = pair
    _edit(one, "shop/pricing.py")
    _edit(two, "shop/pricing.py", state=ToolCall.State.ERROR)
    _edit(two, "shop/pricing.py", tool="read_file")
    assert "same files as" not in _get(client, fleet.manager, "/?view=tiles")
    _edit(two, "shop/pricing.py")
    assert "same files as" in _get(client, fleet.manager, "/?view=tiles")
    AgentSession.objects.filter(pk=two.pk).update(review_state="approved")
    assert "same files as" not in _get(client, fleet.manager, "/?view=tiles")


def test_an_overlap_with_another_pods_session_does_not_name_it_to_a_member(client, fleet, pair):
    one, _two = pair
    other = _session(fleet, pod=fleet.bravo, sto=fleet.outsider, status=Status.RUNNING, name="secret bravo work")
    _edit(one, "shop/pricing.py")
    _edit(other, "shop/pricing.py")
    html = _get(client, fleet.member, "/?view=tiles")
    tile = html.split(f'id="tile-{one.pk}"', 1)[1].split("</article>", 1)[0]
    assert "another pod's session" in tile and "secret bravo work" not in tile
    drawer = _get(client, fleet.member, f"/sessions/{one.pk}/", **HTMX)
    assert "a session of another pod" in drawer and "secret bravo work" not in drawer


def test_the_overlap_costs_the_canvas_no_query_per_tile(client, fleet):
    client.force_login(fleet.manager)
    _bulk_sessions(fleet, 30)  # more than FEW_SESSIONS: a page of a few tiles reads only their files' rows
    for session in AgentSession.objects.all():
        _edit(session, "shop/pricing.py")
    few = _queries(client, "/?view=tiles")
    assert "same files as" in client.get("/?view=tiles").content.decode()
    _bulk_sessions(fleet, 90)
    for session in AgentSession.objects.filter(tool_call_records__isnull=True):
        _edit(session, "shop/pricing.py")
    assert _queries(client, "/?view=tiles") == few


def test_a_tile_names_at_most_three_overlapping_sessions_and_counts_the_rest(fleet):
    # a batch of sessions that all edited the same file: each tile names three others, then "+N"
    sessions = [
        _session(fleet, pod=fleet.alpha, sto=fleet.sto, status=Status.RUNNING, name=f"batch {i}") for i in range(8)
    ]
    for session in sessions:
        _edit(session, "CHANGELOG.md")
    found = selectors.overlaps_for([sessions[0].pk])
    assert list(found) == [sessions[0].pk]  # only the session asked for
    assert [o.session_id for o in found[sessions[0].pk]] == [s.pk for s in sessions[1:]]
    tile = render_tile(AgentSession.objects.get(pk=sessions[0].pk))
    note = tile.split('class="overlap-note"', 1)[1].split("</p>", 1)[0]
    shown = ", ".join(f"#{s.pk}" for s in sessions[1:4])
    assert f"⚠ same files as {shown} +4: CHANGELOG.md" in note
    assert f"#{sessions[4].pk}" not in note.split(">", 1)[1]
    assert "and 4 more" in note
    # every overlapping session of the same pod stays in data-overlaps (canvas.js marks the others live)
    head = tile.split(">", 1)[0]
    assert all(f"{s.pk} " in head.split('data-overlaps="', 1)[1] for s in sessions[1:])
