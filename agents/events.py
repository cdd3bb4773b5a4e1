"""Live updates: the one place that emits them.

``send_on_commit(session_id)`` is called only from services and the runtime, inside the
transaction that changed the session; after commit it renders the session's tile ONCE and
publishes it to the session's pod group (``pod.<id>``), where every authorized viewer's
consumer receives it. The channel layer is at-most-once: a lost message costs a refresh,
never data — the database holds the state, and reconnecting browsers catch up from it.

Event payload (type ``session.update``), documented in docs/ARCHITECTURE.md:
    {"type": "session.update", "session_id": int, "pod_id": int, "version": int,
     "status": str, "needs_human": bool, "html": str (the rendered tile), "ts": float (epoch s at commit)}
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)


def pod_group(pod_id: int) -> str:
    return f"pod.{pod_id}"


def prepare_tiles(sessions, *, now=None) -> None:
    """Set what a tile shows beyond its own fields, for all the tiles at once (a constant number of
    queries): ``stranded`` (agents.selectors.is_stranded), ``last_commit`` (short sha, subject: read
    with ``selectors.last_commit_q`` when annotated) and ``overlaps`` (selectors.overlaps_for)."""
    from agents import selectors

    sessions = list(sessions)
    overlaps = selectors.overlaps_for(s.pk for s in sessions)
    for session in sessions:
        session.stranded = selectors.is_stranded(session, now=now)
        session.last_commit = selectors.last_commit_of(session)
        session.overlaps = overlaps.get(session.pk, [])
        session.tile_ready = True


def render_tile(session) -> str:
    if not getattr(session, "tile_ready", False):
        prepare_tiles([session])
    return render_to_string("agents/_tile.html", {"s": session, "live": True})


def session_update_payload(session) -> dict:
    from agents.models import NEEDS_HUMAN_STATUSES

    return {
        "type": "session.update",
        "session_id": session.pk,
        "pod_id": session.pod_id,
        "version": session.version,
        "status": session.status,
        "needs_human": session.status in NEEDS_HUMAN_STATUSES,
        "html": render_tile(session),
        "ts": time.time(),
    }


class _Publisher:
    """One event loop per process, on its own thread, through which sync code publishes.

    ``async_to_sync`` from a plain thread runs every call in a fresh event loop, and the pub/sub
    layer keeps one Redis connection per loop, so each broadcast paid a new connection (~5 ms on
    an agent step's path). This loop lives as long as the process, and so does its connection;
    a forked child (Celery's prefork pool) starts its own. Calls wait for the PUBLISH, so updates
    leave in the order they were made.
    """

    TIMEOUT_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _loop_for_this_process(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="live-publisher", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def group_send(self, layer, group: str, message: dict) -> None:
        future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), self._loop_for_this_process())
        future.result(self.TIMEOUT_S)


publisher = _Publisher()
# a fork taken while another thread held the lock must not leave the child's copy locked forever
os.register_at_fork(after_in_child=lambda: setattr(publisher, "_lock", threading.Lock()))


_redis_client = None
_redis_lock = threading.Lock()


def watched(group: str) -> bool:
    """Whether a canvas listens to ``group`` now: the pub/sub layer's subscriber count for it
    (``PUBSUB NUMSUB``, one Redis round trip). Rendering a tile and its overlaps is most of what a
    broadcast costs, and overnight, when a hundred agents work, nobody may be watching.

    Nothing is lost by not sending: the layer keeps no messages, so a canvas that subscribes later
    never received them anyway; it catches up from the database after subscribing
    (controlroom/consumers.py). True when the layer is not the pub/sub one or Redis does not say."""
    global _redis_client
    layer: dict[str, Any] = settings.CHANNEL_LAYERS.get("default", {})
    if layer.get("BACKEND") != "channels_redis.pubsub.RedisPubSubChannelLayer":
        return True
    config: dict[str, Any] = layer.get("CONFIG") or {}
    hosts = config.get("hosts") or []
    if len(hosts) != 1 or not isinstance(hosts[0], str):
        return True
    try:
        with _redis_lock:
            if _redis_client is None:
                import redis

                _redis_client = redis.Redis.from_url(hosts[0], socket_connect_timeout=2, socket_timeout=2)
            client = _redis_client
        channel = f"{config.get('prefix', 'asgi')}__group__{group}"
        [(_name, count)] = client.pubsub_numsub(channel)
        return count > 0
    except Exception:  # best effort, like the broadcast itself: send when unsure
        return True


def broadcast_session(session_id: int, pod_id: int | None = None) -> None:
    """Render the session's current face and publish it to its pod group, if a canvas listens to
    that group (``watched``; callers that hold the session pass its ``pod_id``: an unwatched pod
    then costs no query). Never raises."""
    from agents.models import AgentSession

    try:
        from agents.selectors import last_commit_q

        layer = get_channel_layer()
        if layer is None:
            return
        if pod_id is None:
            pod_id = AgentSession.objects.filter(pk=session_id).values_list("pod_id", flat=True).first()
        if pod_id is None or not watched(pod_group(pod_id)):
            return
        session = AgentSession.objects.select_related("pod", "sto").annotate(**last_commit_q()).get(pk=session_id)
        publisher.group_send(layer, pod_group(session.pod_id), session_update_payload(session))
    except Exception:  # the channel layer is best effort: state is in the database
        logger.warning("live update for session %s not sent", session_id, exc_info=True)


_offline: contextvars.ContextVar[bool] = contextvars.ContextVar("controlroom_offline", default=False)


@contextmanager
def offline() -> Iterator[None]:
    """Inside, the services change the database and the audit log as usual, but nothing leaves the
    process: no live update is broadcast and no agent step is enqueued (``agents.dispatch``).

    For writing the past (the demo's month of history, ``controlroom/demo_history.py``): nobody
    watches it live, and none of its sessions may be run by a worker."""
    token = _offline.set(True)
    try:
        yield
    finally:
        _offline.reset(token)


def is_offline() -> bool:
    return _offline.get()


def send_on_commit(session_id: int, pod_id: int | None = None) -> None:
    if _offline.get():
        return
    transaction.on_commit(lambda: broadcast_session(session_id, pod_id))


class send_if_still_running:
    """Broadcast the session once ``after_s`` seconds have passed inside the ``with`` block.

    The runtime records what a tool is about to do (the tile's activity line) before running it;
    most tools finish in milliseconds and the step's end is broadcast anyway, so the canvas only
    needs the "running pytest…" face of tools that take a while. The broadcast runs on a timer
    thread with its own database connection, closed afterwards.
    """

    def __init__(self, session_id: int, *, after_s: float = 0.25) -> None:
        self.session_id, self.after_s = session_id, after_s
        self._timer = threading.Timer(after_s, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        from django.db import connection

        try:
            broadcast_session(self.session_id)
        finally:
            connection.close()

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
