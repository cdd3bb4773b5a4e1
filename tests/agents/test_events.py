"""Live updates from sync code (workers, views) through the real Redis channel layer."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time

import pytest
from channels.layers import get_channel_layer
from django.db.models import F

from agents import services
from agents.events import broadcast_session, pod_group, publisher, send_if_still_running, watched
from agents.models import AgentSession

pytestmark = pytest.mark.django_db(transaction=True)


def _session(fleet) -> AgentSession:
    return services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="Watch me", by=fleet.lead, repository=fleet.repo, start=False
    )


def collect(group: str, action, *, listen_s: float) -> list[tuple[float, dict]]:
    """Subscribe to ``group``, run the blocking ``action`` in a thread, and return (arrival time,
    message) for everything that arrives until ``listen_s`` after the action returned."""

    async def main() -> list[tuple[float, dict]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        received: list[tuple[float, dict]] = []

        async def receive_forever() -> None:
            # one receive() at a time, never cancelled until the end: the pub/sub layer drops the
            # channel's subscription whenever a receive() is cancelled (a timeout), and whatever is
            # published before the next receive() re-subscribes is lost
            while True:
                message = await layer.receive(channel)
                received.append((time.monotonic(), message))

        receiver = asyncio.ensure_future(receive_forever())
        try:
            await asyncio.sleep(0.1)  # the subscription is in place before anything is published
            await asyncio.get_running_loop().run_in_executor(None, action)
            await asyncio.sleep(listen_s)
            return received
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            await layer.group_discard(group, channel)
            await layer.flush()

    return asyncio.run(main())


def test_a_broadcast_from_sync_code_reaches_the_pod_group_with_the_committed_version(fleet):
    session = _session(fleet)
    AgentSession.objects.filter(pk=session.pk).update(version=F("version") + 1)
    version = AgentSession.objects.get(pk=session.pk).version

    messages = collect(
        pod_group(fleet.alpha.pk), lambda: [broadcast_session(session.pk) for _ in range(3)], listen_s=0.5
    )

    assert [m["version"] for _, m in messages] == [version] * 3
    assert messages[0][1]["session_id"] == session.pk and f'id="tile-{session.pk}"' in messages[0][1]["html"]


def test_a_tool_still_running_after_a_moment_is_shown_while_it_runs_and_a_quick_one_is_not(fleet):
    session = _session(fleet)
    group = pod_group(fleet.alpha.pk)
    finished: list[float] = []

    def slow_tool() -> None:
        with send_if_still_running(session.pk, after_s=0.1):
            time.sleep(0.6)
        finished.append(time.monotonic())

    slow = collect(group, slow_tool, listen_s=0.5)
    assert len(slow) == 1 and slow[0][0] < finished[0], "one update, sent while the tool was still running"

    def quick_tool() -> None:
        with send_if_still_running(session.pk, after_s=0.3):
            time.sleep(0.01)

    assert collect(group, quick_tool, listen_s=0.6) == []


def _publish_in_child(group: str) -> None:
    publisher.group_send(get_channel_layer(), group, {"type": "session.update", "session_id": 1, "version": 7})


def test_the_publisher_keeps_working_in_a_forked_child(fleet):
    """Celery's prefork pool forks workers after the parent may have published: the child must
    publish on its own event loop and connection, not the parent's."""
    group = pod_group(fleet.alpha.pk)
    publisher.group_send(get_channel_layer(), group, {"type": "session.update", "session_id": 1, "version": 6})
    parent_thread = publisher._thread

    def fork_and_publish() -> None:
        child = multiprocessing.get_context("fork").Process(target=_publish_in_child, args=(group,))
        child.start()
        child.join(timeout=20)  # (its exit status is pytest's business after a fork: the message is the proof)

    messages = collect(group, fork_and_publish, listen_s=0.5)
    assert [m["version"] for _, m in messages] == [7]
    assert publisher._thread is parent_thread and parent_thread.is_alive() and threading.active_count() >= 2


def test_a_group_nobody_subscribed_to_is_not_watched_and_one_with_a_canvas_is(fleet):
    """Tiles are rendered for groups someone listens to only (PUBSUB NUMSUB on the real Redis)."""
    group = pod_group(fleet.alpha.pk)
    other = pod_group(fleet.bravo.pk)
    assert watched(group) is False and watched(other) is False
    seen: list[tuple[bool, bool]] = []
    collect(group, lambda: seen.append((watched(group), watched(other))), listen_s=0.1)
    assert seen == [(True, False)]
    assert watched(group) is False  # the canvas left


def test_a_broadcast_for_a_pod_nobody_watches_renders_no_tile(fleet, monkeypatch):
    from agents import events

    session = _session(fleet)
    rendered: list[int] = []
    real = events.session_update_payload
    monkeypatch.setattr(events, "session_update_payload", lambda s: rendered.append(s.pk) or real(s))
    broadcast_session(session.pk)
    assert rendered == []
    messages = collect(pod_group(fleet.alpha.pk), lambda: broadcast_session(session.pk), listen_s=0.3)
    assert rendered == [session.pk] and [m["session_id"] for _, m in messages] == [session.pk]
