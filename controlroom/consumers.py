"""The canvas websocket (``ws/canvas/``): live tiles for the pods a browser shows.

Protocol (client → server, JSON text frames of at most ``MAX_FRAME_CHARS`` characters):
    {"type": "subscribe", "pods": [1, 2, ...], "since": 1718000000.5 | null, "older": false}
        Watch exactly these pods (replaces the previous subscription). Each pod is authorized
        with ``agents.selectors.pod_ids_visible_to``; only then is the per-pod group ``pod.<id>``
        joined. Pods the user may not see get an error frame and no group join. With ``since``
        (a server timestamp the browser saw last), the tiles of every session of the subscribed
        pods updated since then (minus a safety margin) are sent at once: the catch-up after a
        reconnect. Like the canvas, the catch-up sends tonight's work only
        (``agents.selectors.current_q``) unless ``older`` is true (the page shows older sessions).
        Live updates need no such filter: a session that changes is changed tonight.
    {"type": "ping"}  →  {"type": "pong"}

Server → client:
    HTML fragments for htmx's ws extension: one or more tiles (``<article id="tile-<id>"
    hx-swap-oob="true" data-version=…>``, rendered by ``agents.events`` from the template) followed by
    ``<i id="live-ts" data-ts="…" hx-swap-oob="true">``, the server time the browser hands back on
    reconnect. The browser ignores a tile whose version is not newer than the one it shows.
    JSON control frames: {"type": "subscribed", "pods": [...]}, {"type": "error", "error": "...", ...},
    {"type": "pong"}.

Coalescing: per tile, the first update goes out at once; later ones within
``CONTROLROOM["LIVE_COALESCE_MS"]`` wait and only the newest is sent when the window ends, so a
chatty session costs the browser a few swaps and always ends on its latest version.

Login session: the socket lives only as long as the login that opened it. On each subscribe frame
and every ``SESSION_CHECK_EVERY_S`` the consumer re-reads the session (it still exists, has not
expired, names the same user, whose password has not changed since and who is still active); when
it does not, an error frame and close code 4401 follow. Logging out therefore ends the socket within
a few seconds.

Bad frames (not JSON, too large, too deep, out-of-range numbers) get an error frame; the socket
stays open.

Consumers are thin: no git or model work; every ORM call goes through ``database_sync_to_async``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from datetime import UTC
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare
from django.utils.html import format_html

from agents import selectors
from agents.events import pod_group, prepare_tiles, render_tile

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
MAX_FRAME_CHARS = 16_384
MAX_PODS_PER_SUBSCRIPTION = 500
# A session's ``updated_at`` is set inside its transaction, its broadcast ``ts`` after commit: the
# catch-up looks this far before the browser's last timestamp so nothing committed in between
# (or stamped by a server whose clock is a little behind) is missed. Duplicates are harmless:
# the browser drops tiles that are not newer than what it shows.
CATCHUP_MARGIN_S = 30.0
CATCHUP_MAX_SESSIONS = 5_000
CATCHUP_TILES_PER_FRAME = 100
REAUTHORIZE_EVERY_S = 30.0
SESSION_CHECK_EVERY_S = 5.0
# Pod ids are database keys (signed 64-bit); a server timestamp is a number of seconds since 1970
# no later than a day ahead of this server's clock.
MAX_POD_ID = 2**63 - 1
SINCE_AHEAD_S = 86_400.0


def live_ts_html(ts: float) -> str:
    return format_html('<i id="live-ts" hidden data-ts="{}" hx-swap-oob="true"></i>', f"{ts:.6f}")


@database_sync_to_async
def _still_logged_in(session_key: str | None, user_id) -> bool:
    """The login session behind this socket still stands: it exists (not logged out, not expired),
    names this user, and its password hash is the user's current one; the user is still active."""
    if not session_key:
        return False
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    data = store.load()
    if str(data.get(SESSION_KEY)) != str(user_id):
        return False
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not user.is_active:
        return False
    return constant_time_compare(str(data.get(HASH_SESSION_KEY, "")), user.get_session_auth_hash())


@database_sync_to_async
def _authorize_pods(user, requested: set[int]) -> set[int]:
    """The requested pods this user may see (unknown pods are simply not allowed)."""
    visible = selectors.pod_ids_visible_to(user=user)
    if visible is None:
        from agents.models import Pod

        return set(Pod.objects.filter(pk__in=requested).values_list("pk", flat=True))
    return requested & visible


@database_sync_to_async
def _catchup_tiles(user, pod_ids: set[int], since: float, *, older: bool = False) -> list[tuple[int, int, str]]:
    """(session id, version, tile html) of the visible sessions of these pods updated since ``since``
    (of tonight's work only, unless ``older``)."""
    from datetime import datetime

    after = datetime.fromtimestamp(max(0.0, since - CATCHUP_MARGIN_S), tz=UTC)
    sessions: Any = selectors.sessions_visible_to(user=user)  # a QuerySet, then the list of its rows
    if not older:
        sessions = sessions.filter(selectors.current_q())
    sessions = (
        sessions.filter(pod_id__in=pod_ids, updated_at__gte=after)
        .prefetch_related(selectors.tile_grants())
        .annotate(**selectors.last_commit_q())
        .order_by("updated_at")[:CATCHUP_MAX_SESSIONS]
    )
    sessions = list(sessions)
    prepare_tiles(sessions)
    return [(s.pk, s.version, render_tile(s)) for s in sessions]


class CanvasConsumer(AsyncWebsocketConsumer):
    """One browser tab's canvas. See the module docstring for the protocol."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not user.is_active:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user = user
        self.pods: set[int] = set()
        self.authorized_at = time.monotonic()
        self.window = settings.CONTROLROOM["LIVE_COALESCE_MS"] / 1000.0
        self.sent_version: dict[int, int] = {}
        self.sent_at: dict[int, float] = {}
        self.pending: dict[int, dict] = {}
        self.flusher: asyncio.Task | None = None
        self.frame_s = settings.CONTROLROOM["LIVE_FRAME_MS"] / 1000.0
        self.last_frame = -math.inf
        self.wakeup = asyncio.Event()  # a tile joined the pending ones: the flusher re-plans
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        self.closing = False
        await self.accept()
        self.session_watch = asyncio.create_task(self._watch_session())

    async def disconnect(self, code: int) -> None:
        self.closing = True
        for task in (getattr(self, "flusher", None), getattr(self, "session_watch", None)):
            if task is not None:
                task.cancel()
        for pod_id in getattr(self, "pods", set()):
            await self.channel_layer.group_discard(pod_group(pod_id), self.channel_name)
        self.pods = set()

    async def dispatch(self, message: dict) -> None:
        # A message type nobody handles (another app publishing to the pod groups) is logged, not fatal.
        handler = (
            getattr(self, message.get("type", "").replace(".", "_"), None)
            if isinstance(message.get("type"), str)
            else None
        )
        if handler is None or message["type"].startswith("_"):
            logger.warning("canvas consumer: ignored a message of type %r", message.get("type"))
            return
        await super().dispatch(message)

    # --- from the browser ------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if getattr(self, "closing", False):
            return
        try:
            await self._receive(text_data, bytes_data)
        except Exception:  # a bad frame must never take the socket down; the error is logged with its trace
            logger.exception("canvas consumer: frame handling failed")
            await self._error("internal error while handling the frame")

    async def _receive(self, text_data: str | None, bytes_data: bytes | None) -> None:
        if text_data is None:
            await self._error("binary frames are not accepted: send JSON text")
            return
        if len(text_data) > MAX_FRAME_CHARS:
            await self._error(f"frame too large ({len(text_data)} characters; at most {MAX_FRAME_CHARS})")
            return
        try:
            message = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            await self._error("frame is not valid JSON")
            return
        if not isinstance(message, dict):
            await self._error('frame must be a JSON object with a "type"')
            return
        kind = message.get("type")
        if kind == "subscribe":
            await self._subscribe(message)
        elif kind == "ping":
            await self.send(text_data=json.dumps({"type": "pong"}))
        else:
            await self._error(f"unknown frame type {str(kind)[:40]!r}: use subscribe or ping")

    async def _subscribe(self, message: dict) -> None:
        if not await self._session_ok():
            return
        pods, since, older = message.get("pods"), message.get("since"), message.get("older", False)
        if not isinstance(pods, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pods):
            await self._error('subscribe: "pods" must be a list of pod ids (integers)')
            return
        if len(pods) > MAX_PODS_PER_SUBSCRIPTION:
            await self._error(f"subscribe: at most {MAX_PODS_PER_SUBSCRIPTION} pods")
            return
        if not all(1 <= p <= MAX_POD_ID for p in pods):
            await self._error(f"subscribe: pod ids are integers from 1 to {MAX_POD_ID}")
            return
        if since is not None and (
            isinstance(since, bool)
            or not isinstance(since, (int, float))
            or not math.isfinite(since)
            or not 0 <= since <= time.time() + SINCE_AHEAD_S
        ):
            await self._error(
                'subscribe: "since" must be a server timestamp (seconds since 1970, not in the future) or null'
            )
            return
        if not isinstance(older, bool):
            await self._error('subscribe: "older" must be true or false')
            return
        requested = set(pods)
        allowed = await _authorize_pods(self.user, requested)
        refused = requested - allowed
        if refused:
            await self._error("not allowed: you cannot watch these pods", pods=sorted(refused))
        for pod_id in sorted(self.pods - allowed):
            await self.channel_layer.group_discard(pod_group(pod_id), self.channel_name)
        for pod_id in sorted(allowed - self.pods):
            await self.channel_layer.group_add(pod_group(pod_id), self.channel_name)
        self.pods = allowed
        self.authorized_at = time.monotonic()
        await self.send(text_data=json.dumps({"type": "subscribed", "pods": sorted(allowed)}))
        if since is not None and allowed:
            await self._catch_up(float(since), older=older)

    async def _catch_up(self, since: float, *, older: bool = False) -> None:
        now = time.time()  # taken before the query: anything committed after it comes again next time
        tiles = await _catchup_tiles(self.user, set(self.pods), since, older=older)
        fresh = [(sid, version, html) for sid, version, html in tiles if version > self.sent_version.get(sid, 0)]
        for start in range(0, len(fresh), CATCHUP_TILES_PER_FRAME):
            chunk = fresh[start : start + CATCHUP_TILES_PER_FRAME]
            for sid, version, _ in chunk:
                self._mark_sent(sid, version)
            await self.send(text_data="".join(html for *_, html in chunk) + live_ts_html(now))
        if not fresh:
            await self.send(text_data=live_ts_html(now))

    async def _error(self, error: str, **extra) -> None:
        await self.send(text_data=json.dumps({"type": "error", "error": error, **extra}))

    # --- the login session -----------------------------------------------------------------------

    async def _session_ok(self) -> bool:
        """Whether the login still stands; when it does not, say so and close (4401)."""
        if self.closing:
            return False
        if await _still_logged_in(self.session_key, self.user.pk):
            return True
        if not self.closing:
            self.closing = True
            await self._error("logged out: the login session of this socket has ended")
            await self.close(code=CLOSE_UNAUTHENTICATED)
        return False

    async def _watch_session(self) -> None:
        """Every SESSION_CHECK_EVERY_S: close the socket once its login session is gone."""
        while not self.closing:
            await asyncio.sleep(SESSION_CHECK_EVERY_S)
            try:
                if not await self._session_ok():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: try again next round, never kill the loop
                logger.exception("canvas consumer: login session check failed")

    # --- from the channel layer ------------------------------------------------------------------

    async def session_update(self, event: dict) -> None:
        """A session changed (agents.events). Forward its tile, coalesced per tile."""
        if self.closing:
            return
        try:
            session_id, version, pod_id = int(event["session_id"]), int(event["version"]), int(event["pod_id"])
        except (KeyError, TypeError, ValueError):
            logger.warning(
                "canvas consumer: malformed session.update %r",
                {k: event.get(k) for k in ("session_id", "version", "pod_id")},
            )
            return
        if time.monotonic() - self.authorized_at > REAUTHORIZE_EVERY_S:
            await self._reauthorize()
        if pod_id not in self.pods:
            return  # a late message from a group just left
        if version <= self.sent_version.get(session_id, 0):
            return
        waiting = self.pending.get(session_id)
        if waiting is not None:
            if version > int(waiting["version"]):
                self.pending[session_id] = event
            return
        now = asyncio.get_running_loop().time()
        if (
            now - self.sent_at.get(session_id, -math.inf) >= self.window
            and now - self.last_frame >= self.frame_s
            and not self.pending
        ):
            await self._send_events([event])
            return
        self.pending[session_id] = event
        self.wakeup.set()
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush_pending())

    async def _flush_pending(self) -> None:
        """Send what is due in one frame, at most one frame per LIVE_FRAME_MS: under a burst a viewer
        gets a few frames of several tiles instead of a frame per tile (each frame costs the server a
        send and the page a render)."""
        loop = asyncio.get_running_loop()
        while self.pending:
            now = loop.time()
            due = {sid: self.sent_at.get(sid, -math.inf) + self.window for sid in self.pending}
            ready = [sid for sid, at in due.items() if at <= now]
            next_frame = self.last_frame + self.frame_s
            if ready and now >= next_frame:
                await self._send_events([self.pending.pop(sid) for sid in ready])
            else:
                wake = max(next_frame, min(due.values()))
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=max(0.0, wake - now))
                except TimeoutError:
                    pass

    async def _send_events(self, events: list[dict]) -> None:
        if self.closing:
            return
        events = [
            e
            for e in events
            if int(e["pod_id"]) in self.pods and int(e["version"]) > self.sent_version.get(int(e["session_id"]), 0)
        ]
        if not events:
            return
        for event in events:
            self._mark_sent(int(event["session_id"]), int(event["version"]))
        newest = max(float(e.get("ts") or 0.0) for e in events) or time.time()
        await self.send(text_data="".join(str(e["html"]) for e in events) + live_ts_html(newest))

    def _mark_sent(self, session_id: int, version: int) -> None:
        self.sent_version[session_id] = version
        self.sent_at[session_id] = self.last_frame = asyncio.get_running_loop().time()

    async def _reauthorize(self) -> None:
        """Memberships change: every REAUTHORIZE_EVERY_S, drop pods the user may no longer see."""
        self.authorized_at = time.monotonic()
        allowed = await _authorize_pods(self.user, set(self.pods))
        for pod_id in sorted(self.pods - allowed):
            await self.channel_layer.group_discard(pod_group(pod_id), self.channel_name)
            await self._error("not allowed any more: you cannot watch this pod", pods=[pod_id])
        self.pods = allowed
