"""One audit event: its neighbours in its chain, whether its stored hash is what its fields hash
to, and the first signed checkpoint that covers it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.db.models import Max

from agents.models import AgentSession
from audit.log import event_fields, event_hash
from audit.models import AuditEvent, Checkpoint
from reviews.digest.events import describe


@dataclass
class EventDetail:
    event: AuditEvent
    payload_json: str
    hash_ok: bool
    previous_id: int | None
    next_id: int | None
    chain_length: int
    checkpoint: Checkpoint | None
    session: AgentSession | None
    text: str


def event_detail(*, event: AuditEvent) -> EventDetail:
    """An event with its neighbours in its chain, whether its stored hash is what its fields hash
    to, and the first signed checkpoint that covers it."""
    neighbours = AuditEvent.objects.filter(chain=event.chain)
    previous_id = neighbours.filter(seq=event.seq - 1).values_list("id", flat=True).first()
    next_id = neighbours.filter(seq=event.seq + 1).values_list("id", flat=True).first()
    length = neighbours.aggregate(m=Max("seq"))["m"] or event.seq
    checkpoint = None
    for cp in Checkpoint.objects.filter(created_at__gte=event.created_at).order_by("id")[:200]:
        head = (cp.heads or {}).get(event.chain)
        if head and int(head[0]) >= event.seq:
            checkpoint = cp
            break
    session = None
    if event.session_id:
        session = AgentSession.objects.select_related("pod", "sto").filter(pk=event.session_id).first()
    return EventDetail(
        event=event,
        payload_json=json.dumps(event.payload, indent=2, sort_keys=True, ensure_ascii=False),
        hash_ok=event_hash(event.prev_hash, event_fields(event)) == event.hash,
        previous_id=previous_id,
        next_id=next_id,
        chain_length=length,
        checkpoint=checkpoint,
        session=session,
        text=describe(event.kind, event.payload),
    )
