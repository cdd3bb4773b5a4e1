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

import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)


def pod_group(pod_id: int) -> str:
    return f"pod.{pod_id}"


def render_tile(session) -> str:
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


def broadcast_session(session_id: int) -> None:
    """Render the session's current face and publish it to its pod group. Never raises."""
    from agents.models import AgentSession

    try:
        session = AgentSession.objects.select_related("pod", "sto").get(pk=session_id)
        layer = get_channel_layer()
        if layer is None:
            return
        async_to_sync(layer.group_send)(pod_group(session.pod_id), session_update_payload(session))
    except Exception:  # the channel layer is best effort: state is in the database
        logger.warning("live update for session %s not sent", session_id, exc_info=True)


def send_on_commit(session_id: int) -> None:
    transaction.on_commit(lambda: broadcast_session(session_id))
