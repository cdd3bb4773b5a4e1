"""One definition of "stale" (the canvas's tiles and summary count, the tick's recovery) and of
"the active grant" (the runtime, the tick, the canvas and its websocket)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents import selectors, services
from agents.models import AgentSession, Grant, Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(fleet, worktrees_dir, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "STALE_AFTER_S": 60}

    def make(**fields):
        session = services.session_launch(
            pod=fleet.alpha,
            sto=fleet.sto,
            goal="Fix the pricing bug",
            by=fleet.lead,
            repository=fleet.repo,
            start=False,
        )
        AgentSession.objects.filter(pk=session.pk).update(status=Status.RUNNING, **fields)
        return AgentSession.objects.get(pk=session.pk)

    return make


def stale_ids(now) -> set[int]:
    return set(AgentSession.objects.filter(selectors.stale_q(now=now)).values_list("pk", flat=True))


def test_a_running_session_silent_for_longer_than_stale_after_is_stale_for_the_query_and_the_tile(running):
    now = timezone.now()
    silent = running(heartbeat_at=now - timedelta(minutes=5))
    beating = running(heartbeat_at=now - timedelta(seconds=10))
    never_beat = running(heartbeat_at=None, updated_at=now - timedelta(minutes=5))
    leased = running(heartbeat_at=now - timedelta(minutes=5), lease_until=now + timedelta(seconds=20))
    assert stale_ids(now) == {silent.pk, never_beat.pk}
    assert [selectors.is_stale(s, now=now) for s in (silent, beating, never_beat, leased)] == [True, False, True, False]


def test_only_a_running_session_can_be_stale(running):
    now = timezone.now()
    paused = running(heartbeat_at=now - timedelta(minutes=5))
    AgentSession.objects.filter(pk=paused.pk).update(status=Status.PAUSED)
    paused.refresh_from_db()
    assert stale_ids(now) == set() and not selectors.is_stale(paused, now=now)


def test_the_active_grant_is_the_newest_unrevoked_version_everywhere(fleet, running):
    session = running()
    first = selectors.active_grant(session=session)
    second = services.grant_issue(
        session=session, spec=services.GrantSpec(mode="plan"), by=fleet.sto, reason="read only tonight"
    )
    assert first.version == 1 and second.version == 2
    assert selectors.active_grant(session=session).pk == second.pk
    assert list(selectors.active_grants(session.pk).values_list("pk", flat=True)) == [second.pk]
    tile = AgentSession.objects.prefetch_related(selectors.tile_grants()).get(pk=session.pk)
    assert [g.pk for g in tile.grants.all()] == [second.pk]
    Grant.objects.filter(pk=second.pk).update(revoked_at=timezone.now())
    assert selectors.active_grant(session=session) is None
