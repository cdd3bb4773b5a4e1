"""Verification, signed checkpoints and export of the audit log (docs/AUDIT.md).

- ``verify_log()`` recomputes every chain from the events themselves and checks every
  checkpoint; it reports, per broken chain, the first bad event and what happened to it.
- ``checkpoint_create()`` signs (HMAC-SHA256, key outside the database) the heads of the chains
  that moved since they were last signed, linked to the previous checkpoint's signature, so
  that the checkpoints together sign every chain's head at every checkpoint.
- ``checkpoint_export()`` appends the checkpoints to a JSON Lines file outside the database.
- ``export_log()`` writes events and checkpoints as JSON Lines that tools/verify_audit_export.py
  (standard library only) verifies without the project.

Reads go through plain SQL in (chain, seq) keyset chunks, never model instances: verification
must keep up with a log of millions of events.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from io import TextIOBase
from pathlib import Path
from typing import Any, TextIO, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection as default_connection
from django.db import connections, transaction
from django.db.models import Field, Min
from django.utils import timezone

from audit.log import (
    BODY_TEMPLATE,
    CANONICAL_JSON,
    GENESIS,
    HASHED_FIELDS,
    event_hash,
    format_time,
    json_string,
    session_chain,
)
from audit.models import AuditEvent, ChainHead, Checkpoint

MODIFIED = "modified"
MISSING = "missing"
REORDERED = "reordered"
TRUNCATED = "truncated"
FORGED = "forged"
BAD_SIGNATURE = "bad signature"
BREAK_KINDS = (MODIFIED, MISSING, REORDERED, TRUNCATED, FORGED, BAD_SIGNATURE)

CHECKPOINT_DOMAIN = b"controlroom-audit-checkpoint-v1\n"
EXPORT_FORMAT = 1
CHUNK = 10_000
# verify_log(workers=N) forks only when the chain heads add up to at least this many events:
# below it, starting the processes costs more than it saves.
PARALLEL_MIN_EVENTS = 100_000
_sha256 = hashlib.sha256
logger = logging.getLogger(__name__)

# Columns read for verification and export, in this order (indexes used below).
(
    _ID,
    _CHAIN,
    _SEQ,
    _TIME,
    _KIND,
    _ACTOR_TYPE,
    _ACTOR_USER,
    _ACTOR_SESSION,
    _ACTOR_LABEL,
    _OBO_ID,
    _OBO_LABEL,
    _GRANT,
    _PROVENANCE,
    _SESSION,
    _POD,
    _PAYLOAD,
    _PREV,
    _HASH,
) = range(18)
_COLUMNS = ("id", *HASHED_FIELDS, "prev_hash", "hash")


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    """One broken chain (or checkpoint): the first bad event and what is wrong with it.

    ``event_id``/``seq`` name the first event that fails verification. For ``truncated`` the
    event is gone: ``event_id`` is None and ``seq`` is the first missing seq. For ``bad signature``
    ``checkpoint_id`` names the checkpoint and there is no event.
    """

    kind: str
    message: str
    chain: str | None = None
    seq: int | None = None
    event_id: int | None = None
    checkpoint_id: int | None = None

    def describe(self) -> str:
        where = []
        if self.chain is not None:
            where.append(f"chain {self.chain}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        if self.event_id is not None:
            where.append(f"event id {self.event_id}")
        if self.checkpoint_id is not None:
            where.append(f"checkpoint #{self.checkpoint_id}")
        return f"{self.kind}: {', '.join(where)}: {self.message}"


@dataclass
class VerifyResult:
    events: int = 0
    chains: int = 0
    checkpoints: int = 0
    breaks: list[Break] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def first(self) -> Break | None:
        return self.breaks[0] if self.breaks else None

    def summary(self) -> str:
        counts = f"{self.events} events in {self.chains} chains, {self.checkpoints} checkpoints"
        if self.ok:
            return f"OK {counts}"
        return f"BROKEN {len(self.breaks)} break(s); verified {counts}"

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "events": self.events,
            "chains": self.chains,
            "checkpoints": self.checkpoints,
            "seconds": round(self.seconds, 3),
            "breaks": [asdict(b) for b in self.breaks],
        }


def _sort_breaks(breaks: list[Break]) -> list[Break]:
    """Event breaks by event id (the earliest written first), then the others."""
    return sorted(
        breaks, key=lambda b: (b.event_id is None, b.event_id or 0, b.chain or "", b.seq or 0, b.checkpoint_id or 0)
    )


# --- keys and signatures ---------------------------------------------------------------------


def signing_key() -> bytes:
    key = getattr(settings, "AUDIT_SIGNING_KEY", None)
    if not key:
        raise ImproperlyConfigured("AUDIT_SIGNING_KEY: no audit signing key is configured")
    return key if isinstance(key, bytes) else str(key).encode()


def checkpoint_message(*, created_at: str, reason: str, heads: dict, prev: str) -> bytes:
    """The bytes a checkpoint's HMAC covers (docs/AUDIT.md, "Checkpoints")."""
    body = {"created_at": created_at, "heads": heads, "prev": prev, "reason": reason}
    return CHECKPOINT_DOMAIN + CANONICAL_JSON.encode(body).encode("utf-8")


def checkpoint_sign(*, key: bytes, created_at: str, reason: str, heads: dict, prev: str) -> str:
    message = checkpoint_message(created_at=created_at, reason=reason, heads=heads, prev=prev)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --- fast row reading --------------------------------------------------------------------------


def _time_text(value: Any) -> str:
    """The hashed form of created_at from what the database returns (text on SQLite)."""
    if isinstance(value, str):
        if len(value) == 27 and value[10] == "T" and value[26] == "Z":
            return value
        if len(value) == 26 and value[10] == " ":
            return f"{value[:10]}T{value[11:]}Z"
        if len(value) == 19 and value[10] == " ":
            return f"{value[:10]}T{value[11:]}.000000Z"
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return format_time(value)


class _Reader:
    """Plain SQL over the events, in (chain, seq) order, in keyset chunks."""

    def __init__(self, conn) -> None:
        qn = conn.ops.quote_name
        self.conn = conn
        self.sqlite = conn.vendor == "sqlite"
        cols = [qn(cast(Field, AuditEvent._meta.get_field(name)).column) for name in _COLUMNS]
        # created_at as text, not through the drivers' datetime parsing (the hot spot otherwise).
        if self.sqlite:  # the stored text itself: "YYYY-MM-DD HH:MM:SS[.ffffff]" in UTC
            cols[_TIME] = f"CAST({cols[_TIME]} AS TEXT)"
        elif conn.vendor == "postgresql":  # already in the hashed form
            cols[_TIME] = f"""to_char({cols[_TIME]} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
        self.table = qn(AuditEvent._meta.db_table)
        self.chain_col, self.seq_col = qn("chain"), qn("seq")
        self.select = f"SELECT {', '.join(cols)} FROM {self.table}"

    def rows(
        self, *, chains: list[str] | None = None, since_seq: dict[str, int] | None = None, chunk: int = CHUNK
    ) -> Iterator[tuple]:
        """Every event (of ``chains``), ordered by (chain, seq); ``since_seq``: first seq per chain."""
        if chains is None:
            yield from self.range_rows(None, None, chunk=chunk)
            return
        for chain in sorted(set(chains)):
            yield from self.chain_rows(chain, from_seq=(since_seq or {}).get(chain, 0), chunk=chunk)

    def range_rows(self, lo: str | None, hi: str | None, *, chunk: int = CHUNK) -> Iterator[tuple]:
        """The events of the chains named ``lo <= chain < hi`` (in the database's ordering; None:
        unbounded), ordered by (chain, seq)."""
        c, s = self.chain_col, self.seq_col
        after: tuple | None = None
        while True:
            conditions: list[str]
            params: list[object]
            conditions, params = [], []
            if after is not None:
                conditions.append(f"({c}, {s}) > (%s, %s)")
                params += after
            elif lo is not None:
                conditions.append(f"{c} >= %s")
                params.append(lo)
            if hi is not None:
                conditions.append(f"{c} < %s")
                params.append(hi)
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            with self.conn.cursor() as cursor:
                cursor.execute(f"{self.select}{where} ORDER BY {c}, {s} LIMIT %s", [*params, chunk])
                batch = cursor.fetchall()
            yield from batch
            if len(batch) < chunk:
                return
            after = (batch[-1][_CHAIN], batch[-1][_SEQ])

    def chain_rows(self, chain: str, *, from_seq: int = 0, chunk: int = CHUNK) -> Iterator[tuple]:
        c, s = self.chain_col, self.seq_col
        last = from_seq - 1
        while True:
            with self.conn.cursor() as cursor:
                cursor.execute(f"{self.select} WHERE {c} = %s AND {s} > %s ORDER BY {s} LIMIT %s", [chain, last, chunk])
                batch = cursor.fetchall()
            yield from batch
            if len(batch) < chunk:
                return
            last = batch[-1][_SEQ]


def _payload_text(row: tuple) -> str:
    """The payload's canonical JSON (re-serialized: the stored text may be formatted otherwise)."""
    value = row[_PAYLOAD]
    if isinstance(value, str):
        value = json.loads(value)
    return CANONICAL_JSON.encode(value)


def _digest(row: tuple, payload_json: str) -> str:
    """sha256(prev_hash + "\n" + canonical body) of a row: audit.log.canonical_text inlined (hot loop)."""
    when = row[_TIME]
    if when.__class__ is str and len(when) == 27 and when[26] == "Z":
        pass  # PostgreSQL's to_char: already the hashed form
    elif when.__class__ is str and len(when) == 26 and when[10] == " ":
        when = when[:10] + "T" + when[11:] + "Z"
    else:
        when = _time_text(when)
    body = BODY_TEMPLATE % (
        json_string(row[_ACTOR_LABEL]),
        "null" if row[_ACTOR_SESSION] is None else "%d" % row[_ACTOR_SESSION],
        json_string(row[_ACTOR_TYPE]),
        "null" if row[_ACTOR_USER] is None else "%d" % row[_ACTOR_USER],
        json_string(row[_CHAIN]),
        json_string(when),
        "null" if row[_GRANT] is None else "%d" % row[_GRANT],
        json_string(row[_KIND]),
        "null" if row[_OBO_ID] is None else "%d" % row[_OBO_ID],
        json_string(row[_OBO_LABEL]),
        payload_json,
        "null" if row[_POD] is None else "%d" % row[_POD],
        json_string(row[_PROVENANCE]),
        row[_SEQ],
        "null" if row[_SESSION] is None else "%d" % row[_SESSION],
    )
    return _sha256((row[_PREV] + "\n" + body).encode("utf-8")).hexdigest()


def _row_fields(row: tuple) -> dict:
    payload = row[_PAYLOAD]
    if isinstance(payload, str):
        payload = json.loads(payload)
    fields = {name: row[i + 1] for i, name in enumerate(HASHED_FIELDS)}
    fields["created_at"] = _time_text(row[_TIME])
    fields["payload"] = payload
    return fields


class _Rehash:
    """Computes the hash an event should have given its own prev_hash (None when a stored value
    is one no legitimate write produces, e.g. a NULL where text is required).

    On SQLite, record() stores the payload's canonical JSON itself, so the stored text is tried
    first: when it hashes right it is the original, and parsing/re-serializing is skipped. Rows
    written otherwise (bulk loads, older code) fail that try; after many consecutive failures the
    try is given up for the rest of the run.
    """

    GIVE_UP_AFTER = 256

    def __init__(self, *, raw_payload: bool) -> None:
        self.raw = raw_payload
        self.misses = 0

    def __call__(self, row: tuple) -> str | None:
        try:
            if self.raw and row[_PAYLOAD].__class__ is str:
                digest = _digest(row, row[_PAYLOAD])
                if digest == row[_HASH]:
                    self.misses = 0
                    return digest
                self.misses += 1
                if self.misses >= self.GIVE_UP_AFTER:
                    self.raw = False
            return _digest(row, _payload_text(row))
        except (TypeError, ValueError, UnicodeError, AttributeError):
            try:
                return event_hash(row[_PREV], _row_fields(row))
            except (TypeError, ValueError, UnicodeError, AttributeError):
                return None


# --- classification of the first anomaly in a chain (same logic as tools/verify_audit_export.py) ---


@dataclass(frozen=True)
class _Ev:
    id: int
    seq: int
    time: str
    prev_hash: str
    hash: str
    recomputed: str | None


def _classify(chain: str, anchor: _Ev | None, events: list[_Ev]) -> Break:
    """Why ``events[0]`` (the first event that fails) fails, knowing the rest of the chain.

    ``anchor``: the last good event before it (None: the chain's start)."""
    e = events[0]
    p_seq = anchor.seq if anchor else 0
    p_hash = anchor.hash if anchor else GENESIS
    p_label = f"seq {anchor.seq} (id {anchor.id})" if anchor else "the start of the chain"

    def brk(kind: str, message: str) -> Break:
        return Break(kind=kind, message=message, chain=chain, seq=e.seq, event_id=e.id)

    if e.seq <= p_seq:
        return brk(REORDERED, f"seq {e.seq} appears again after {p_label}")
    if e.seq != p_seq + 1:
        first, last = p_seq + 1, e.seq - 1
        span = f"seq {first}" if first == last else f"seqs {first}..{last}"
        return brk(MISSING, f"{span} missing after {p_label}: {last - first + 1} event(s) deleted")
    if anchor and e.prev_hash == anchor.prev_hash and e.prev_hash != p_hash:
        # Both claim the same predecessor: the one written later (its id is higher) was slipped
        # in between, with a hash computed to link, and the events after it renumbered.
        inserted, original = (anchor, e) if anchor.id > e.id else (e, anchor)
        return Break(
            kind=FORGED,
            chain=chain,
            seq=inserted.seq,
            event_id=inserted.id,
            message=f"it and seq {original.seq} (id {original.id}) both link to the same predecessor; "
            f"it was written later: an event inserted with a computed hash",
        )
    if anchor and e.id <= anchor.id:
        return brk(REORDERED, f"its id comes before {p_label}'s although its seq comes after: events were swapped")
    later = {x.hash: x for x in events[1:]}
    self_consistent = e.recomputed == e.hash
    if e.prev_hash != p_hash and e.prev_hash in later:
        x = later[e.prev_hash]
        return brk(REORDERED, f"it links to seq {x.seq} (id {x.id}), which comes after it: events were swapped")
    if anchor and not self_consistent and e.time < anchor.time:
        return brk(REORDERED, f"its time {e.time} is before {p_label}'s ({anchor.time}): events were swapped")
    if e.prev_hash != p_hash:
        if self_consistent:
            return brk(
                FORGED,
                f"its hash is self-consistent but its prev_hash {e.prev_hash[:12]}… does not "
                f"link to {p_label} ({p_hash[:12]}…): an event inserted with a computed hash "
                f"(or its predecessor rewritten and rehashed)",
            )
        return brk(MODIFIED, f"neither its prev_hash nor its stored hash match (link to {p_label} broken)")
    if not self_consistent:
        shown = (e.recomputed or "uncomputable")[:12]
        return brk(
            MODIFIED, f"stored hash {e.hash[:12]}… but its content hashes to {shown}…: edited after it was written"
        )
    return brk(MODIFIED, "inconsistent with its predecessor")


def _as_ev(row: tuple, rehash: _Rehash) -> _Ev:
    try:
        when = _time_text(row[_TIME])
    except (TypeError, ValueError, AttributeError):
        when = str(row[_TIME])
    return _Ev(row[_ID], row[_SEQ], when, row[_PREV], row[_HASH], rehash(row))


# --- verification ------------------------------------------------------------------------------


@dataclass
class _Signed:
    """A checkpoint as read from the database or a checkpoint file."""

    id: int | None
    created_at: str
    reason: str
    heads: dict
    signature: str
    prev: str
    source: str  # "checkpoint #12" or "checkpoint #12 in FILE"


def _db_checkpoints() -> list[_Signed]:
    rows = Checkpoint.objects.order_by("id").values_list("id", "created_at", "reason", "heads", "signature")
    out, prev = [], ""
    for cp_id, created_at, reason, heads, signature in rows.iterator(chunk_size=2000):
        out.append(_Signed(cp_id, format_time(created_at), reason, heads, signature, prev, f"checkpoint #{cp_id}"))
        prev = signature
    return out


def read_checkpoint_file(path: Path | str) -> list[_Signed]:
    """Checkpoints from a file written by ``checkpoint_export`` (or an export's checkpoint lines)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            if item.get("type") != "checkpoint":
                continue
            try:
                out.append(
                    _Signed(
                        item["id"],
                        item["created_at"],
                        item["reason"],
                        item["heads"],
                        item["signature"],
                        item["prev"],
                        f"checkpoint #{item['id']} in {path}",
                    )
                )
            except KeyError as exc:
                raise ValueError(f"{path}:{number}: checkpoint line without {exc}") from None
    return out


def _check_signatures(checkpoints: list[_Signed], key: bytes) -> tuple[list[Break], list[_Signed]]:
    breaks, good = [], []
    for cp in checkpoints:
        try:
            expected = checkpoint_sign(
                key=key, created_at=cp.created_at, reason=cp.reason, heads=cp.heads, prev=cp.prev
            )
        except (TypeError, ValueError, AttributeError):
            expected = ""
        if hmac.compare_digest(expected.encode(), str(cp.signature).encode("utf-8")):
            good.append(cp)
            continue
        breaks.append(
            Break(
                kind=BAD_SIGNATURE,
                checkpoint_id=cp.id,
                message=f"{cp.source}: its HMAC does not match its content (created_at, reason, heads), or the "
                f"checkpoint before it was deleted or altered",
            )
        )
    return breaks, good


def _heads_of(cp: _Signed) -> Iterator[tuple[str, int, str]]:
    if not isinstance(cp.heads, dict):
        return
    for chain, head in cp.heads.items():
        if isinstance(head, (list, tuple)) and len(head) == 2 and isinstance(head[0], int):
            yield chain, head[0], str(head[1])


def verify_log(
    *,
    chains: Iterable[str] | None = None,
    checkpoint_file: Path | str | None = None,
    key: bytes | None = None,
    workers: int = 1,
    parallel_min_events: int | None = None,
) -> VerifyResult:
    """Recompute every chain (or ``chains``) and check every checkpoint.

    ``workers`` > 1: verify the whole log (``chains`` None) in that many forked processes, each
    taking a contiguous range of chain names, when the log holds at least ``parallel_min_events``
    (default PARALLEL_MIN_EVENTS) events and no transaction is open; the result is the same as
    with one process.

    Raises ImproperlyConfigured without a signing key and django.db.DatabaseError when the
    database cannot be read: the log could not be verified (audit_verify exits 2).
    """
    started = time.perf_counter()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    key = signing_key() if key is None else key
    selected = sorted(set(chains)) if chains is not None else None
    conn = default_connection
    result = VerifyResult()
    breaks: list[Break] = []

    # Checkpoints and heads are read BEFORE the events: everything they name was committed
    # earlier, so it is in the events read next (appends made meanwhile only extend chains).
    checkpoints = _db_checkpoints()
    db_ids = {cp.id: cp.signature for cp in checkpoints}
    if checkpoint_file is not None:
        from_file = read_checkpoint_file(checkpoint_file)
        for cp in from_file:
            if cp.id not in db_ids:
                breaks.append(
                    Break(
                        kind=MISSING,
                        checkpoint_id=cp.id,
                        message=f"{cp.source} is missing from the database: checkpoints were deleted",
                    )
                )
        checkpoints += [cp for cp in from_file if db_ids.get(cp.id) != cp.signature]
    result.checkpoints = len(checkpoints)
    sig_breaks, trusted = _check_signatures(checkpoints, key)
    breaks += sig_breaks

    # Expected (seq -> [(evidence, hash)]) per chain: signed checkpoints first, then the chain
    # head rows (not signed, but written in the same transaction as each event).
    expect: dict[str, dict[int, list[tuple[str, int | None, str]]]] = {}
    for cp in trusted:
        for chain, seq, digest in _heads_of(cp):
            if selected is None or chain in selected:
                expect.setdefault(chain, {}).setdefault(seq, []).append((cp.source, cp.id, digest))
    heads = ChainHead.objects.filter(seq__gt=0)
    if selected is not None:
        heads = heads.filter(chain__in=selected)
    sizes: list[tuple[str, int]] = []  # (chain, seq) in the database's order of chain names
    for chain, seq, digest in heads.order_by("chain").values_list("chain", "seq", "hash").iterator(chunk_size=5000):
        expect.setdefault(chain, {}).setdefault(seq, []).append(("the chain's head row", None, digest))
        sizes.append((chain, seq))

    verified = None
    if workers > 1 and selected is None and _may_fork():
        threshold = PARALLEL_MIN_EVENTS if parallel_min_events is None else parallel_min_events
        ranges = _chain_ranges(sizes, workers)
        if len(ranges) > 1 and sum(seq for _, seq in sizes) >= threshold:
            verified = _verify_parallel(ranges, expect)
    if verified is None:
        reader = _Reader(conn)
        verified = _verify_rows(reader, reader.rows(chains=selected), expect)
    chain_breaks, n_events, seen = verified
    breaks += chain_breaks

    for lost in sorted(set(expect) - seen):
        truncated = _truncation(lost, 0, expect[lost])
        if truncated:
            breaks.append(truncated)

    result.events = n_events
    result.chains = len(seen)
    result.breaks = _sort_breaks(breaks)
    result.seconds = time.perf_counter() - started
    return result


def _verify_rows(reader: _Reader, rows: Iterable[tuple], expect: dict) -> tuple[list[Break], int, set[str]]:
    """Check ``rows`` (whole chains, in (chain, seq) order) against themselves and ``expect``:
    (the first break of each bad chain, the number of events, the chains seen)."""
    rehash = _Rehash(raw_payload=reader.sqlite)
    breaks: list[Break] = []
    seen: set[str] = set()

    chain = None
    prev_seq, prev_hash, prev_id = 0, GENESIS, 0
    anomaly = False
    exp: dict = {}
    mismatch: Break | None = None
    n_events = 0

    for row in rows:
        n_events += 1
        if row[_CHAIN] != chain:
            if chain is not None:
                _finish_chain(reader, breaks, chain, prev_seq, exp, anomaly, mismatch)
            chain = row[_CHAIN]
            seen.add(chain)
            prev_seq, prev_hash, prev_id = 0, GENESIS, 0
            anomaly, mismatch = False, None
            exp = expect.get(chain, {})
        if anomaly:
            continue
        seq = row[_SEQ]
        digest = rehash(row)
        if seq != prev_seq + 1 or row[_PREV] != prev_hash or digest != row[_HASH] or row[_ID] <= prev_id:
            anomaly = True
            continue
        if exp and mismatch is None and seq in exp:
            for source, cp_id, signed in exp[seq]:
                if signed != digest:
                    assert chain is not None  # set from the first row on
                    mismatch = _rewritten(chain, row, source, cp_id, signed, exp)
                    break
        prev_seq, prev_hash, prev_id = seq, digest, row[_ID]
    if chain is not None:
        _finish_chain(reader, breaks, chain, prev_seq, exp, anomaly, mismatch)
    return breaks, n_events, seen


def _finish_chain(
    reader: _Reader, breaks: list[Break], chain: str, last_seq: int, exp: dict, anomaly: bool, mismatch: Break | None
) -> None:
    """The end of a chain's rows: record its first break, if any."""
    if mismatch is not None:  # found before any anomaly, so at a lower seq
        breaks.append(mismatch)
    elif anomaly:
        breaks.append(_diagnose(reader, chain, last_seq, raw_payload=reader.sqlite))
    else:
        truncated = _truncation(chain, last_seq, exp)
        if truncated:
            breaks.append(truncated)


# --- parallel verification ---------------------------------------------------------------------


def _may_fork() -> bool:
    """Forked children read through their own connections: they would not see what an open
    transaction of this process wrote, and closing its connections would break it."""
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block or (conn.connection is not None and not conn.get_autocommit()):
            return False
    return True


def _chain_ranges(sizes: list[tuple[str, int]], workers: int) -> list[tuple[str | None, str | None]]:
    """Up to ``workers`` contiguous ranges [lo, hi) of chain names holding roughly equal numbers of
    events, from ``sizes`` ((chain, events) in the database's order). The first starts at the
    beginning and the last runs to the end (None): chains without a head row are covered too."""
    total = sum(seq for _, seq in sizes)
    cuts: list[str] = []
    done = 0
    for index, (_, seq) in enumerate(sizes[:-1]):
        if len(cuts) == workers - 1:
            break
        done += seq
        if done * workers >= total * (len(cuts) + 1):
            cuts.append(sizes[index + 1][0])
    bounds: list[str | None] = [None, *cuts, None]
    return list(itertools.pairwise(bounds))


_child_expect: dict | None = None

# What a forked child inherited from its parent: database connections and connection pools whose
# sockets the parent still uses. Kept referenced so they are never finalised (closing one, or
# returning it to a pool, would write to the parent's socket), never used.
_inherited: list[object] = []


def _forget_inherited_connections() -> None:  # also run after every fork (audit.apps)
    """In a forked child: drop the parent's connections and pools without touching their sockets,
    so this process's first query opens its own connection (and, with pooling, its own pool)."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None
        pools = getattr(type(conn), "_connection_pools", None)  # PostgreSQL with psycopg_pool
        if pools:
            _inherited.append(dict(pools))
            pools.clear()


def _child_start(expect: dict) -> None:
    global _child_expect
    _child_expect = expect
    _forget_inherited_connections()


def _verify_range(lo: str | None, hi: str | None) -> tuple[list[Break], int, set[str]]:
    """In a forked child: verify the chains in [lo, hi)."""
    try:
        reader = _Reader(default_connection)
        return _verify_rows(reader, reader.range_rows(lo, hi), _child_expect or {})
    finally:
        connections.close_all()


def _verify_parallel(
    ranges: list[tuple[str | None, str | None]], expect: dict
) -> tuple[list[Break], int, set[str]] | None:
    """Verify each range in a forked process and merge, in range order; None when that fails
    (the caller then verifies in this process)."""
    try:
        connections.close_all()  # a forked child must not share this process's connections
        context = multiprocessing.get_context("fork")
        # With fork, initargs reach the children by inheritance, not pickled.
        with ProcessPoolExecutor(
            max_workers=len(ranges), mp_context=context, initializer=_child_start, initargs=(expect,)
        ) as pool:
            parts = list(pool.map(_verify_range, [lo for lo, _ in ranges], [hi for _, hi in ranges]))
    except Exception as exc:
        logger.warning(
            "audit verification in %d processes failed (%s: %s); verifying in one process",
            len(ranges),
            type(exc).__name__,
            exc,
        )
        return None
    breaks: list[Break] = []
    n_events = 0
    seen: set[str] = set()
    for part_breaks, part_events, part_seen in parts:
        breaks += part_breaks
        n_events += part_events
        seen |= part_seen
    return breaks, n_events, seen


def _diagnose(reader: _Reader, chain: str, good_seq: int, *, raw_payload: bool) -> Break:
    """Reload the chain from its last good event and classify the first anomaly."""
    rehash = _Rehash(raw_payload=raw_payload)
    evs = [_as_ev(row, rehash) for row in reader.chain_rows(chain, from_seq=max(good_seq, 1))]
    if good_seq > 0 and evs and evs[0].seq == good_seq:
        return _classify(chain, evs[0], evs[1:])
    return _classify(chain, None, evs)


def _rewritten(chain: str, row: tuple, source: str, cp_id: int | None, signed: str, exp: dict) -> Break:
    """An intact-looking chain whose event at a signed seq has another hash: rewritten and rehashed."""
    seq = row[_SEQ]
    # Every claim at a lower seq was checked on the way and agreed.
    agreeing = [s for s in exp if s < seq]
    since = "its first event" if not agreeing else f"seq {max(agreeing) + 1}"
    return Break(
        kind=FORGED,
        chain=chain,
        seq=seq,
        event_id=row[_ID],
        checkpoint_id=cp_id,
        message=f"the chain links and hashes consistently, but its event at seq {seq} has hash {row[_HASH][:12]}… "
        f"while {source} says {signed[:12]}…: the chain was rewritten and rehashed "
        f"(somewhere from {since} to seq {seq})",
    )


def _truncation(chain: str, last_seq: int, exp: dict) -> Break | None:
    beyond = [(seq, claims) for seq, claims in exp.items() if seq > last_seq]
    if not beyond:
        return None
    seq, claims = max(beyond, key=lambda item: item[0])
    source, cp_id, _ = claims[0]
    ends = f"ends at seq {last_seq}" if last_seq else "has no events"
    return Break(
        kind=TRUNCATED,
        chain=chain,
        seq=last_seq + 1,
        event_id=None,
        checkpoint_id=cp_id,
        message=f"{source} says the chain reached seq {seq} but it {ends}: the last {seq - last_seq} "
        f"event(s) were removed",
    )


# --- checkpoints -----------------------------------------------------------------------------


def _lock_checkpoints() -> None:
    """Serialize checkpoint writers (each links to the previous one's signature)."""
    if default_connection.vendor == "postgresql":
        with default_connection.cursor() as cursor:
            cursor.execute(
                f"LOCK TABLE {default_connection.ops.quote_name(Checkpoint._meta.db_table)} IN SHARE ROW EXCLUSIVE MODE"
            )
    # SQLite: the settings' IMMEDIATE transactions already hold the database's write lock.


def _signed_state() -> tuple[dict[str, list], str]:
    """({chain: [seq, hash]} as last signed, the latest checkpoint's signature)."""
    state: dict[str, list] = {}
    last = ""
    for heads, signature in (
        Checkpoint.objects.order_by("id").values_list("heads", "signature").iterator(chunk_size=2000)
    ):
        if isinstance(heads, dict):
            state.update(heads)
        last = signature
    return state, last


def _create(*, reason: str, only_if_changed: bool) -> Checkpoint | None:
    key = signing_key()
    with transaction.atomic():
        _lock_checkpoints()
        signed, prev = _signed_state()
        current = {
            chain: [seq, digest]
            for chain, seq, digest in ChainHead.objects.filter(seq__gt=0)
            .values_list("chain", "seq", "hash")
            .iterator(chunk_size=5000)
        }
        heads = {chain: head for chain, head in current.items() if signed.get(chain) != head}
        if only_if_changed and not heads:
            return None
        now = timezone.now()
        reason = reason[: Checkpoint._meta.get_field("reason").max_length]
        signature = checkpoint_sign(key=key, created_at=format_time(now), reason=reason, heads=heads, prev=prev)
        return Checkpoint.objects.create(created_at=now, reason=reason, heads=heads, signature=signature)


def checkpoint_create(*, reason: str) -> Checkpoint:
    """Sign now the heads of every chain that moved since it was last signed (always creates one)."""
    checkpoint = _create(reason=reason, only_if_changed=False)
    if checkpoint is None:  # only_if_changed=False always creates one
        raise RuntimeError("checkpoint_create: no checkpoint was created")
    return checkpoint


def checkpoint_if_changed(*, reason: str = "periodic") -> Checkpoint | None:
    """Like ``checkpoint_create`` but does nothing (returns None) when no chain moved."""
    return _create(reason=reason, only_if_changed=True)


def default_checkpoint_file() -> Path:
    return Path(settings.DATA_DIR) / "audit" / "checkpoints.jsonl"


def _checkpoint_line(cp: _Signed) -> dict:
    return {
        "type": "checkpoint",
        "id": cp.id,
        "created_at": cp.created_at,
        "reason": cp.reason,
        "heads": cp.heads,
        "prev": cp.prev,
        "signature": cp.signature,
    }


def _dumps(item: dict) -> str:
    return json.dumps(item, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def checkpoint_export(path: Path | str | None = None) -> int:
    """Append to ``path`` (JSON Lines, default ``DATA_DIR/audit/checkpoints.jsonl``) the
    checkpoints it does not hold yet; returns how many. Existing lines are never rewritten, so
    the file keeps the checkpoints as signed even if the database is later tampered with."""
    path = Path(path) if path is not None else default_checkpoint_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        last_id = 0
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                last_id = max(last_id, int(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: not a checkpoint line; refusing to append") from None
        fresh = [cp for cp in _db_checkpoints() if cast(int, cp.id) > last_id]  # from the database: an id
        fh.seek(0, os.SEEK_END)
        for cp in fresh:
            fh.write(_dumps(_checkpoint_line(cp)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return len(fresh)


# --- export ------------------------------------------------------------------------------------


@dataclass
class ExportStats:
    events: int = 0
    checkpoints: int = 0
    chains: list[str] = field(default_factory=list)


def _event_line(row: tuple) -> dict:
    item = {"type": "event", "id": row[_ID]}
    item.update(_row_fields(row))
    item["prev_hash"] = row[_PREV]
    item["hash"] = row[_HASH]
    return item


def export_log(
    *, out: TextIO | TextIOBase, since: datetime | None = None, session_id: int | None = None
) -> ExportStats:
    """Write the log (or one session's chain, or what happened since ``since``) as JSON Lines:
    a header, one line per event ordered by (chain, seq), then the checkpoints that sign them.

    With ``since``, each chain is exported from its first event at or after ``since`` to its end
    (whole, contiguous), so that it verifies on its own from that point."""
    stats = ExportStats()
    reader = _Reader(default_connection)
    chains: list[str] | None = None
    starts: dict[str, int] = {}
    if session_id is not None:
        chains = [session_chain(session_id)]
    if since is not None:
        if timezone.is_naive(since):
            since = since.replace(tzinfo=UTC)
        first = AuditEvent.objects.filter(created_at__gte=since)
        if chains is not None:
            first = first.filter(chain__in=chains)
        starts = dict(first.values("chain").annotate(first=Min("seq")).values_list("chain", "first"))
        chains = sorted(starts)
    header = {
        "type": "export",
        "format": EXPORT_FORMAT,
        "exported_at": format_time(timezone.now()),
        "since": format_time(since) if since is not None else None,
        "session": session_id,
        "all_checkpoints": since is None and session_id is None,
        "hash": "sha256(prev_hash + '\\n' + canonical_json(hashed fields)); see docs/AUDIT.md",
    }
    out.write(_dumps(header) + "\n")
    first_seq: dict[str, int] = {}
    for row in reader.rows(chains=chains, since_seq=starts):
        first_seq.setdefault(row[_CHAIN], row[_SEQ])
        out.write(_dumps(_event_line(row)) + "\n")
        stats.events += 1
    stats.chains = sorted(first_seq)
    for cp in _db_checkpoints():
        relevant = header["all_checkpoints"] or any(
            chain in first_seq and seq >= first_seq[chain] for chain, seq, _ in _heads_of(cp)
        )
        if relevant:
            out.write(_dumps(_checkpoint_line(cp)) + "\n")
            stats.checkpoints += 1
    return stats
