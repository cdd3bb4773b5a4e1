"""The one way anything enters the audit log: ``record(...)``.

Chains: one per agent session (``s:<id>``) carrying everything that concerns that session
(agent actions and human actions on it), plus one ``system`` chain for actions that concern no
single session (fleet stop, pod pause, memberships). Per-session chains let the fleet's
writers append in parallel on PostgreSQL (each locks only its own chain head) and make an
export of one session verifiable on its own. See docs/AUDIT.md for the exact algorithm.

This module is the bottom layer: it imports nothing from ``agents``.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from reviews.models import AuditEvent, ChainHead

GENESIS = "0" * 64
SYSTEM_CHAIN = "system"

# Fields covered by an event's hash, in the documented order (docs/AUDIT.md).
HASHED_FIELDS = (
    "chain", "seq", "created_at", "kind", "actor_type", "actor_user_id", "actor_session_id",
    "actor_label", "on_behalf_of_id", "on_behalf_of_label", "grant_id", "provenance",
    "session_id", "pod_id", "payload",
)


def session_chain(session_id: int) -> str:
    return f"s:{session_id}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def normalize_payload(payload: dict | None) -> dict:
    """Round-trip through JSON so the stored payload is exactly what was hashed."""
    return json.loads(json.dumps(payload or {}, default=_jsonable, ensure_ascii=False))


def format_time(value: datetime) -> str:
    return value.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_body(fields: dict) -> bytes:
    body = {name: fields[name] for name in HASHED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(prev_hash: str, fields: dict) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical_body(fields)).hexdigest()


def event_fields(event: AuditEvent) -> dict:
    """The hashed view of a stored event (the same shape audit_export writes)."""
    return {
        "chain": event.chain,
        "seq": event.seq,
        "created_at": format_time(event.created_at),
        "kind": event.kind,
        "actor_type": event.actor_type,
        "actor_user_id": event.actor_user_id,
        "actor_session_id": event.actor_session_id,
        "actor_label": event.actor_label,
        "on_behalf_of_id": event.on_behalf_of_id,
        "on_behalf_of_label": event.on_behalf_of_label,
        "grant_id": event.grant_id,
        "provenance": event.provenance,
        "session_id": event.session_id,
        "pod_id": event.pod_id,
        "payload": event.payload,
    }


def _lock_head(chain: str) -> ChainHead:
    heads = ChainHead.objects.select_for_update()
    try:
        return heads.get(chain=chain)
    except ChainHead.DoesNotExist:
        ChainHead.objects.bulk_create([ChainHead(chain=chain, seq=0, hash=GENESIS)], ignore_conflicts=True)
        return heads.get(chain=chain)


def _label(user) -> str:
    if user is None:
        return ""
    return getattr(user, "username", "") or str(user)


def record(
    kind: str,
    *,
    session=None,
    user=None,
    agent: bool = False,
    on_behalf_of=None,
    grant=None,
    provenance: str = "",
    pod_id: int | None = None,
    payload: dict | None = None,
) -> AuditEvent:
    """Append one event. Must run inside the transaction of the state change it records.

    ``session``: the agent session concerned (its chain is used); ``agent=True`` when the
    session itself acted, else ``user`` is the human who acted (neither: the system).
    ``on_behalf_of``: the delegator whose authority was used; ``grant``: the grant (or its id).
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit.record() must be called inside the transaction of the change it records")
    if agent and session is None:
        raise ValueError("an agent event needs its session")
    session_id = getattr(session, "pk", session)
    if session is not None and pod_id is None:
        pod_id = getattr(session, "pod_id", None)
    if agent:
        actor_type, actor_label = AuditEvent.Actor.AGENT, f"agent #{session_id}"
    elif user is not None:
        actor_type, actor_label = AuditEvent.Actor.USER, _label(user)
    else:
        actor_type, actor_label = AuditEvent.Actor.SYSTEM, "system"
    chain = session_chain(session_id) if session_id is not None else SYSTEM_CHAIN
    head = _lock_head(chain)
    fields = {
        "chain": chain,
        "seq": head.seq + 1,
        "created_at": None,
        "kind": kind,
        "actor_type": str(actor_type),
        "actor_user_id": getattr(user, "pk", None) if not agent else None,
        "actor_session_id": session_id if agent else None,
        "actor_label": actor_label,
        "on_behalf_of_id": getattr(on_behalf_of, "pk", on_behalf_of),
        "on_behalf_of_label": _label(on_behalf_of) if hasattr(on_behalf_of, "pk") else "",
        "grant_id": getattr(grant, "pk", grant),
        "provenance": provenance,
        "session_id": session_id,
        "pod_id": pod_id,
        "payload": normalize_payload(payload),
    }
    now = timezone.now()
    fields["created_at"] = format_time(now)
    digest = event_hash(head.hash, fields)
    event = AuditEvent.objects.create(
        **{k: v for k, v in fields.items() if k != "created_at"},
        created_at=now,
        prev_hash=head.hash,
        hash=digest,
    )
    ChainHead.objects.filter(chain=chain).update(seq=fields["seq"], hash=digest)
    return event
