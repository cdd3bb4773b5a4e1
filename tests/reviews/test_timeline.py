"""The night at a glance: one swimlane per visible session grouped by pod, status segments from
the session.status events, markers for commits, denials, budget stops and failures, escalation
waits drawn until a human answered; readable with 100 lanes."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import Status
from reviews import digest as overnight
from tests.reviews.test_digest import Night, build_night, launch, login, status


@pytest.fixture
def night(fleet) -> Night:
    return build_night(fleet)


def wide(night) -> overnight.Window:
    return overnight.Window(night.since - timedelta(minutes=5), night.until + timedelta(minutes=5))


def lanes_of(result: overnight.Timeline) -> dict[int, overnight.LaneView]:
    return {lane.session.pk: lane for block in result.pods for lane in block.lanes}


def svg_of(page: str) -> str:
    start = page.index('<svg class="timeline" xmlns')
    return page[start : page.index("</svg>", start)]


def count(svg: str, element: str, cls: str) -> int:
    return len(re.findall(rf'<{element} class="{cls}"', svg))


def test_each_visible_session_gets_a_lane_grouped_by_pod(night):
    result = overnight.timeline(user=night.fleet.sto, window=wide(night))
    assert [b.pod.slug for b in result.pods] == ["alpha"]
    assert set(lanes_of(result)) == {s.pk for k, s in night.s.items() if k != "o"}
    manager = overnight.timeline(user=night.fleet.manager, window=wide(night))
    assert [b.pod.slug for b in manager.pods] == ["alpha", "bravo"] and manager.lane_count == 8


def test_status_segments_follow_the_status_events(night):
    lane = lanes_of(overnight.timeline(user=night.fleet.sto, window=wide(night)))[night.s["a"].pk]
    assert [seg.status for seg in lane.segments] == ["queued", "running", "needs_approval", "running", "succeeded"]
    xs = [seg.x for seg in lane.segments]
    assert xs == sorted(xs)
    assert lane.segments[-1].x + lane.segments[-1].w <= overnight.LABEL_W + overnight.PLOT_W + 0.1


def test_the_status_at_the_start_of_the_window_comes_from_the_last_change_before_it(night):
    b = night.s["b"]
    after_everything = timezone.now()
    time.sleep(0.05)
    later = overnight.Window(after_everything, after_everything + timedelta(hours=2))
    lane = lanes_of(overnight.timeline(user=night.fleet.sto, window=later))[b.pk]
    assert [seg.status for seg in lane.segments] == ["needs_approval"]
    assert lane.segments[0].x == overnight.LABEL_W


def test_markers_and_escalation_waits_of_a_known_night(client, night):
    login(client, night.fleet.sto)
    window = wide(night)
    fmt = "%Y-%m-%dT%H:%M:%S"
    page = client.get(
        reverse("timeline"),
        {
            "since": timezone.localtime(window.start).strftime(fmt),
            "until": timezone.localtime(window.end).strftime(fmt),
        },
    ).content.decode()
    svg = svg_of(page)
    assert count(svg, "g", "lane") == 7
    assert count(svg, "circle", "mk commit") == 2  # A's two commits (bravo's is not sam's to see)
    assert count(svg, "rect", "mk deny") == 3  # one in A, two in B
    assert count(svg, "rect", "mk budget") == 2  # C: budget exhausted, then its grant expired
    assert count(svg, "circle", "mk fail") == 3  # C: interrupted tool call; D: final model error, then failed
    assert count(svg, "rect", "esc") == 1 and count(svg, "rect", "esc open") == 1
    assert f'<a href="/audit/event/{night.events["a_commit1"].pk}"><circle class="mk commit"' in svg
    assert "allowed once by lena" in svg and "still open" in svg
    assert "Bravo" not in svg


def test_hover_text_is_escaped(night, client):
    a = night.s["a"]
    type(a).objects.filter(pk=a.pk).update(name='<script>alert("x")</script>')
    login(client, night.fleet.sto)
    page = client.get(reverse("timeline"), {"preset": "24h"}).content.decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


def test_a_session_that_ended_before_the_window_has_no_lane(night):
    status(night.s["m"], Status.SUCCEEDED, reason="finished")
    time.sleep(0.01)
    later = overnight.Window(timezone.now(), timezone.now() + timedelta(hours=1))
    lanes = lanes_of(overnight.timeline(user=night.fleet.sto, window=later))
    assert night.s["m"].pk not in lanes and night.s["a"].pk not in lanes
    assert night.s["b"].pk in lanes  # still waiting for a human


def test_the_default_window_is_the_night(client, night):
    login(client, night.fleet.sto)
    response = client.get(reverse("timeline"))
    assert response.status_code == 200
    assert 'aria-current="true">The night (18:00–09:00)' in response.content.decode()


def test_one_hundred_swimlanes_render_in_one_readable_svg(client, fleet, django_assert_max_num_queries):
    for index in range(100):
        pod, sto, by = (
            (fleet.alpha, fleet.sto, fleet.lead) if index % 2 else (fleet.bravo, fleet.outsider, fleet.outsider)
        )
        session = launch(fleet, name=f"Task {index:03d}", pod=pod, sto=sto, by=by)
        if index % 3 == 0:
            status(session, Status.RUNNING)
    login(client, fleet.manager)
    with django_assert_max_num_queries(12):
        response = client.get(reverse("timeline"), {"preset": "24h"})
    svg = svg_of(response.content.decode())
    assert count(svg, "g", "lane") == 100
    assert len(re.findall(r'<g class="pod"', svg)) == 2
    height = int(re.search(r'height="(\d+)"', svg).group(1))
    assert height <= 100 * (overnight.LANE_H + overnight.LANE_GAP) + 2 * overnight.POD_H + overnight.AXIS_H + 20
    assert count(svg, "text", "lane-label") == 100 and count(svg, "text", "tick-label") >= 12
