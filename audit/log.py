"""The one way anything enters the audit log: ``record(...)``.

Chains: one per agent session (``s:<id>``) carrying everything that concerns that session
(agent actions and human actions on it), plus one ``system`` chain for actions that concern no
single session (fleet stop, pod pause, memberships). Per-session chains let the fleet's
writers append in parallel on PostgreSQL (each locks only its own chain head) and make an
export of one session verifiable on its own. See docs/AUDIT.md for the exact algorithm.

Hash of an event (docs/AUDIT.md, "The hash"):

    hash = sha256( prev_hash (64 ascii hex) + "\\n" + canonical_body ).hexdigest()
    canonical_body = json.dumps({the HASHED_FIELDS}, sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False).encode("utf-8")

``record()`` appends with three plain SQL statements (read and lock the chain head, insert the
event, move the head) instead of the ORM's query building: it runs inside every agent step and
every human action, so its cost is the log's throughput.

The ``audit`` app is the bottom layer: it imports nothing from ``agents``, ``reviews`` or ``controlroom``.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring as json_string  # what json.dumps(ensure_ascii=False) uses
from typing import Any, cast

from django.db import connection as default_connection
from django.db.models import Field
from django.utils import timezone

from audit.models import AuditEvent, ChainHead

GENESIS = "0" * 64
SYSTEM_CHAIN = "system"

# Fields covered by an event's hash, in the documented order (docs/AUDIT.md).
HASHED_FIELDS = (
    "chain",
    "seq",
    "created_at",
    "kind",
    "actor_type",
    "actor_user_id",
    "actor_session_id",
    "actor_label",
    "on_behalf_of_id",
    "on_behalf_of_label",
    "grant_id",
    "provenance",
    "session_id",
    "pod_id",
    "payload",
)

# The canonical JSON of docs/AUDIT.md: keys sorted, no whitespace, UTF-8 (not \\u escapes).
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)

_KIND_MAX = cast(int, AuditEvent._meta.get_field("kind").max_length)
_PROVENANCE_MAX = cast(int, AuditEvent._meta.get_field("provenance").max_length)
_LABEL_MAX = AuditEvent._meta.get_field("actor_label").max_length


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


# Substrings whose presence in a payload's JSON means a value that PostgreSQL's jsonb (or UTF-8)
# would not store exactly as hashed: NUL characters, NaN/Infinity, floats written with an
# exponent (jsonb prints 1e+20 as 100000000000000000000, which reads back as an int), -0.0.
_SUSPECT = ("\\u0000", "NaN", "Infinity", "e+", "-0.0")


def _storable(value: Any) -> Any:
    """``value`` with what the databases cannot store verbatim replaced by what they would keep."""
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, str):
        value = value.replace("\x00", "\ufffd")
        if _has_surrogate(value):  # a lone surrogate cannot be encoded in UTF-8
            value = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in value)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)  # "nan", "inf", "-inf": JSON has no such numbers
        if value == 0.0:
            return 0.0  # jsonb has no negative zero
        if "e+" in repr(value):
            return int(value)  # integral anyway at this magnitude; jsonb reads it back as an int
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _payload_json(payload: dict | None) -> tuple[dict, str]:
    """(normalized payload, its canonical JSON text). The text is what gets hashed and stored."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise TypeError(f"audit payload must be a dict, got {type(payload).__name__}")
    # Round-trip through JSON: tuples become lists, keys become strings, Decimals/datetimes
    # become strings, so that what is stored, read back and re-hashed is exactly what was hashed.
    text = json.dumps(payload, default=_jsonable, ensure_ascii=False)
    value = json.loads(text)
    if any(s in text for s in _SUSPECT) or _has_surrogate(text):
        value = _storable(value)
    return value, CANONICAL_JSON.encode(value)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_body(fields: dict) -> bytes:
    """The reference definition (docs/AUDIT.md); ``canonical_text`` is its fast equivalent."""
    body = {name: fields[name] for name in HASHED_FIELDS}
    return CANONICAL_JSON.encode(body).encode("utf-8")


def event_hash(prev_hash: str, fields: dict) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical_body(fields)).hexdigest()


# The canonical body written out directly, keys already in sorted order. It must stay
# byte-identical to canonical_body() (tests/audit/test_audit_chain.py checks it on random
# events); it exists because json.dumps(sort_keys=True) on a dict is the verifier's hot spot.
BODY_TEMPLATE = (
    '{"actor_label":%s,"actor_session_id":%s,"actor_type":%s,"actor_user_id":%s,"chain":%s,'
    '"created_at":%s,"grant_id":%s,"kind":%s,"on_behalf_of_id":%s,"on_behalf_of_label":%s,'
    '"payload":%s,"pod_id":%s,"provenance":%s,"seq":%d,"session_id":%s}'
)


def canonical_text(
    chain: str,
    seq: int,
    created_at: str,
    kind: str,
    actor_type: str,
    actor_user_id: int | None,
    actor_session_id: int | None,
    actor_label: str,
    on_behalf_of_id: int | None,
    on_behalf_of_label: str,
    grant_id: int | None,
    provenance: str,
    session_id: int | None,
    pod_id: int | None,
    payload_json: str,
) -> str:
    """``canonical_body`` as text, from the field values and the payload's canonical JSON."""
    return BODY_TEMPLATE % (
        json_string(actor_label),
        "null" if actor_session_id is None else "%d" % actor_session_id,
        json_string(actor_type),
        "null" if actor_user_id is None else "%d" % actor_user_id,
        json_string(chain),
        json_string(created_at),
        "null" if grant_id is None else "%d" % grant_id,
        json_string(kind),
        "null" if on_behalf_of_id is None else "%d" % on_behalf_of_id,
        json_string(on_behalf_of_label),
        payload_json,
        "null" if pod_id is None else "%d" % pod_id,
        json_string(provenance),
        seq,
        "null" if session_id is None else "%d" % session_id,
    )


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


def _label(user) -> str:
    if user is None:
        return ""
    label = getattr(user, "username", "") or str(user)
    return label[:_LABEL_MAX]


def _id(value: Any, *, what: str) -> int | None:
    """A plain id from a model instance, an int or None (ids are hashed as JSON integers)."""
    value = getattr(value, "pk", value)
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"audit {what}: expected an id or an object with .pk, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TypeError(f"audit {what}: expected an id or an object with .pk, got {value!r}") from None


_EVENT_ATTNAMES = ("id", *HASHED_FIELDS, "prev_hash", "hash")


class _Sql:
    """The append statements for one connection, built once from the models' metadata.

    On SQLite they run on the DB-API connection with qmark placeholders, skipping Django's
    cursor wrapper (its placeholder rewriting and query logging cost more than the statements);
    the queries therefore do not appear in ``connection.queries``. Other vendors go through
    Django's cursor.
    """

    def __init__(self, conn) -> None:
        qn = conn.ops.quote_name
        self.raw = conn.vendor == "sqlite"
        event_table = qn(AuditEvent._meta.db_table)
        head_table = qn(ChainHead._meta.db_table)
        columns = [
            cast(Field, AuditEvent._meta.get_field(name)).column for name in (*HASHED_FIELDS, "prev_hash", "hash")
        ]
        placeholders = ["%s"] * len(columns)
        if conn.vendor == "postgresql":
            placeholders[columns.index(AuditEvent._meta.get_field("payload").column)] = "%s::jsonb"
        # SQLite: lastrowid, three times cheaper than RETURNING there.
        self.returning = conn.features.can_return_columns_from_insert and not self.raw
        self.insert_event = (
            f"INSERT INTO {event_table} ({', '.join(qn(c) for c in columns)}) VALUES ({', '.join(placeholders)})"
            + (f" RETURNING {qn(AuditEvent._meta.pk.column)}" if self.returning else "")
        )
        lock = " FOR UPDATE" if conn.features.has_select_for_update else ""
        self.select_head = f"SELECT {qn('seq')}, {qn('hash')} FROM {head_table} WHERE {qn('chain')} = %s{lock}"
        self.create_head = (
            f"INSERT INTO {head_table} ({qn('chain')}, {qn('seq')}, {qn('hash')}) VALUES (%s, 0, %s) "
            f"ON CONFLICT ({qn('chain')}) DO NOTHING"
        )
        self.move_head = f"UPDATE {head_table} SET {qn('seq')} = %s, {qn('hash')} = %s WHERE {qn('chain')} = %s"
        if self.raw:
            for name in ("insert_event", "select_head", "create_head", "move_head"):
                setattr(self, name, getattr(self, name).replace("%s", "?"))
        # Positional construction of the returned instance (as Model.from_db does) is twice as
        # fast as keywords; it needs the concrete fields in this order.
        self.positional = tuple(f.attname for f in AuditEvent._meta.concrete_fields) == _EVENT_ATTNAMES


_sql_cache: dict[str, _Sql] = {}


def _sql(conn) -> _Sql:
    sql = _sql_cache.get(conn.alias)
    if sql is None:
        sql = _sql_cache[conn.alias] = _Sql(conn)
    return sql


def _append(conn, sql: _Sql, chain: str, build) -> tuple[int, list]:
    """Lock the chain head, insert the event ``build(prev_seq, prev_hash)`` returns, move the head."""
    cursor = conn.connection.cursor() if sql.raw else conn.cursor()
    try:
        cursor.execute(sql.select_head, [chain])
        row = cursor.fetchone()
        if row is None:
            cursor.execute(sql.create_head, [chain, GENESIS])
            cursor.execute(sql.select_head, [chain])
            row = cursor.fetchone()
        values = build(row[0], row[1])  # the insert's parameters, in column order
        cursor.execute(sql.insert_event, values)
        event_id = cursor.fetchone()[0] if sql.returning else cursor.lastrowid
        cursor.execute(sql.move_head, [values[1], values[-1], chain])
    finally:
        cursor.close()
    return event_id, values


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
    conn = default_connection
    if not conn.in_atomic_block:
        raise RuntimeError("audit.record() must be called inside the transaction of the change it records")
    if agent and session is None:
        raise ValueError("an agent event needs its session")
    if not kind or len(kind) > _KIND_MAX:
        raise ValueError(f"audit kind must be 1..{_KIND_MAX} characters, got {kind!r}")
    if len(provenance) > _PROVENANCE_MAX:
        raise ValueError(f"audit provenance must be at most {_PROVENANCE_MAX} characters, got {provenance!r}")
    session_id = _id(session, what="session")
    if session is not None and pod_id is None:
        pod_id = getattr(session, "pod_id", None)
    pod_id = _id(pod_id, what="pod_id")
    if agent:
        actor_type, actor_label = AuditEvent.Actor.AGENT.value, f"agent #{session_id}"
    elif user is not None:
        actor_type, actor_label = AuditEvent.Actor.USER.value, _label(user)
    else:
        actor_type, actor_label = AuditEvent.Actor.SYSTEM.value, "system"
    actor_user_id = None if agent else _id(user, what="user")
    actor_session_id = session_id if agent else None
    on_behalf_of_id = _id(on_behalf_of, what="on_behalf_of")
    on_behalf_of_label = _label(on_behalf_of) if hasattr(on_behalf_of, "pk") else ""
    grant_id = _id(grant, what="grant")
    payload_value, payload_json = _payload_json(payload)
    chain = session_chain(session_id) if session_id is not None else SYSTEM_CHAIN

    sql = _sql(conn)
    now = None

    def build(prev_seq: int, prev_hash: str) -> list:
        nonlocal now
        now = timezone.now()  # taken under the head's lock: times grow with seq in a chain
        created_at = format_time(now)
        seq = prev_seq + 1
        body = canonical_text(
            chain,
            seq,
            created_at,
            kind,
            actor_type,
            actor_user_id,
            actor_session_id,
            actor_label,
            on_behalf_of_id,
            on_behalf_of_label,
            grant_id,
            provenance,
            session_id,
            pod_id,
            payload_json,
        )
        digest = hashlib.sha256(prev_hash.encode("ascii") + b"\n" + body.encode("utf-8")).hexdigest()
        return [
            chain,
            seq,
            conn.ops.adapt_datetimefield_value(now),
            kind,
            actor_type,
            actor_user_id,
            actor_session_id,
            actor_label,
            on_behalf_of_id,
            on_behalf_of_label,
            grant_id,
            provenance,
            session_id,
            pod_id,
            payload_json,
            prev_hash,
            digest,
        ]

    event_id, values = _append(conn, sql, chain, build)
    values[2], values[14] = now, payload_value
    if sql.positional:
        event = AuditEvent(event_id, *values)  # type: ignore[misc]  # a whole row positionally: the plugin cannot match *values to fields
    else:
        event = AuditEvent(id=event_id, **dict(zip(_EVENT_ATTNAMES[1:], values)))
    event._state.adding = False
    event._state.db = conn.alias
    return event
