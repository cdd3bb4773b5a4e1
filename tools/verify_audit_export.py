#!/usr/bin/env python3
"""Verify a Control Room audit export without Control Room.

    python3 verify_audit_export.py EXPORT.jsonl [--key-file KEY] [--checkpoints FILE] [--json]

EXPORT.jsonl is written by ``manage.py audit_export``. This script uses the Python standard
library only and imports nothing from the project, so an auditor can read it whole and run it
anywhere (Python 3.9+). It recomputes every hash chain in the export and checks the checkpoints'
heads against it; with ``--key-file`` (the audit signing key) it also checks their HMAC
signatures. ``--checkpoints`` adds checkpoints kept outside the database
(``DATA_DIR/audit/checkpoints.jsonl``).

Exit status: 0 intact, 1 broken (the kind and the first bad event are printed), 2 could not
verify (unreadable or malformed file, unreadable key).

The algorithm (docs/AUDIT.md):
  hash = sha256(prev_hash + "\\n" + canonical_json({hashed fields})), first prev_hash = 64 zeros
  canonical_json = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                   encoded as UTF-8
  checkpoint signature = HMAC-SHA256(key, "controlroom-audit-checkpoint-v1\\n" +
                   canonical_json({"created_at", "heads", "prev", "reason"}))
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
from dataclasses import asdict, dataclass

GENESIS = "0" * 64
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
CHECKPOINT_DOMAIN = b"controlroom-audit-checkpoint-v1\n"

MODIFIED, MISSING, REORDERED, TRUNCATED, FORGED, BAD_SIGNATURE = (
    "modified",
    "missing",
    "reordered",
    "truncated",
    "forged",
    "bad signature",
)


class CannotVerify(Exception):
    """The input cannot be verified at all (exit 2)."""


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(prev_hash: str, event: dict) -> str | None:
    try:
        body = canonical_json({name: event[name] for name in HASHED_FIELDS})
        return hashlib.sha256(prev_hash.encode("utf-8") + b"\n" + body).hexdigest()
    except (KeyError, TypeError, ValueError, UnicodeError, AttributeError):
        return None


def checkpoint_signature(key: bytes, checkpoint: dict) -> str:
    body = {name: checkpoint[name] for name in ("created_at", "heads", "prev", "reason")}
    return hmac.new(key, CHECKPOINT_DOMAIN + canonical_json(body), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Break:
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


@dataclass(frozen=True)
class Ev:
    id: int
    seq: int
    time: str
    prev_hash: str
    hash: str
    recomputed: str | None


def classify(chain: str, anchor: Ev | None, events: list) -> Break:
    """Why events[0], the first event that fails, fails (same rules as audit/chain.py)."""
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


def read_lines(path: str) -> list:
    items = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise CannotVerify(f"{path}:{number}: not a JSON line ({exc})") from None
                if not isinstance(item, dict) or "type" not in item:
                    raise CannotVerify(f'{path}:{number}: not an audit export line (no "type")')
                item["_line"] = number
                items.append(item)
    except OSError as exc:
        raise CannotVerify(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CannotVerify(f"{path}: not UTF-8 ({exc})") from None
    return items


def _to_ev(item: dict, path: str) -> Ev:
    try:
        ev_id, seq = item["id"], item["seq"]
        prev_hash, digest = item["prev_hash"], item["hash"]
    except KeyError as exc:
        raise CannotVerify(f"{path}:{item['_line']}: event line without {exc}") from None
    if (
        not isinstance(ev_id, int)
        or not isinstance(seq, int)
        or not isinstance(prev_hash, str)
        or not isinstance(digest, str)
    ):
        raise CannotVerify(f"{path}:{item['_line']}: id and seq must be integers, prev_hash and hash strings")
    return Ev(ev_id, seq, str(item.get("created_at", "")), prev_hash, digest, event_hash(prev_hash, item))


def _heads(checkpoint: dict):
    heads = checkpoint.get("heads")
    if not isinstance(heads, dict):
        return
    for chain, head in heads.items():
        if isinstance(head, list) and len(head) == 2 and isinstance(head[0], int):
            yield chain, head[0], str(head[1])


def verify(path: str, *, key: bytes | None, checkpoint_file: str | None = None) -> dict:
    items = read_lines(path)
    header: dict = next((i for i in items if i["type"] == "export"), {})
    partial = header.get("since") is not None
    events: dict = {}
    for item in items:
        if item["type"] == "event":
            chain = item.get("chain")
            if not isinstance(chain, str):
                raise CannotVerify(f"{path}:{item['_line']}: event line without a chain")
            events.setdefault(chain, []).append(_to_ev(item, path))
    exported = [i for i in items if i["type"] == "checkpoint"]
    extra = read_lines(checkpoint_file) if checkpoint_file else []
    known = {(c.get("id"), c.get("signature")) for c in exported}
    checkpoints = exported + [
        c for c in extra if c["type"] == "checkpoint" and (c.get("id"), c.get("signature")) not in known
    ]
    breaks = []

    # Signatures (with the key) and, in a complete export, the link of each to the previous one.
    trusted = []
    for cp in checkpoints:
        cp_id = cp.get("id")
        if key is not None:
            try:
                good = hmac.compare_digest(
                    checkpoint_signature(key, cp).encode(), str(cp.get("signature")).encode("utf-8")
                )
            except (KeyError, TypeError, ValueError):
                good = False
            if not good:
                breaks.append(
                    Break(
                        kind=BAD_SIGNATURE,
                        checkpoint_id=cp_id,
                        message=f"checkpoint #{cp_id}: its HMAC does not match its content "
                        f"(created_at, reason, heads, prev)",
                    )
                )
                continue
        trusted.append(cp)
    if header.get("all_checkpoints"):
        previous = ""
        for cp in sorted(exported, key=lambda c: c.get("id") or 0):
            if cp.get("prev") != previous:
                breaks.append(
                    Break(
                        kind=MISSING,
                        checkpoint_id=cp.get("id"),
                        message=f"checkpoint #{cp.get('id')} follows a checkpoint that is not in "
                        f"the export: checkpoints were removed",
                    )
                )
            previous = cp.get("signature")

    expect: dict = {}
    for cp in trusted:
        for chain, seq, digest in _heads(cp):
            expect.setdefault(chain, {}).setdefault(seq, []).append(
                (f"checkpoint #{cp.get('id')}", cp.get("id"), digest)
            )
    considered = set(events)
    if header.get("session") is not None and not partial:
        considered.add(f"s:{header['session']}")
    if header.get("all_checkpoints") or not header:
        considered |= set(expect)

    n_events = 0
    for chain in sorted(considered):
        evs = sorted(events.get(chain, []), key=lambda e: (e.seq, e.id))
        n_events += len(evs)
        exp = expect.get(chain, {})
        anchor: Ev | None = None
        first_seq = evs[0].seq if evs else 1
        if evs and partial and first_seq > 1:
            # An export "since" a time starts mid-chain: its first prev_hash is taken as given.
            anchor = Ev(0, first_seq - 1, "", "", evs[0].prev_hash, None)
        found = None
        for index, e in enumerate(evs):
            p_seq = anchor.seq if anchor else 0
            p_hash = anchor.hash if anchor else GENESIS
            p_id = anchor.id if anchor else 0
            if e.seq != p_seq + 1 or e.prev_hash != p_hash or e.recomputed != e.hash or e.id <= p_id:
                found = classify(chain, anchor, evs[index:])
                break
            for source, cp_id, signed in exp.get(e.seq, []):
                if signed != e.hash:
                    agreeing = [s for s in exp if first_seq <= s < e.seq]
                    since = f"seq {max(agreeing) + 1}" if agreeing else f"seq {first_seq}"
                    found = Break(
                        kind=FORGED,
                        chain=chain,
                        seq=e.seq,
                        event_id=e.id,
                        checkpoint_id=cp_id,
                        message=f"the chain links and hashes consistently, but its event at seq {e.seq} "
                        f"has hash {e.hash[:12]}… while {source} says {signed[:12]}…: the chain "
                        f"was rewritten and rehashed (somewhere from {since} to seq {e.seq})",
                    )
                    break
            if found:
                break
            anchor = e
        if found is None:
            last_seq = evs[-1].seq if evs else 0
            beyond = [(s, claims) for s, claims in exp.items() if s > last_seq]
            if beyond:
                seq, claims = max(beyond, key=lambda item: item[0])
                source, cp_id, _ = claims[0]
                ends = f"ends at seq {last_seq}" if last_seq else "has no events"
                found = Break(
                    kind=TRUNCATED,
                    chain=chain,
                    seq=last_seq + 1,
                    checkpoint_id=cp_id,
                    message=f"{source} says the chain reached seq {seq} but it {ends}: the last "
                    f"{seq - last_seq} event(s) were removed",
                )
        if found:
            breaks.append(found)

    breaks.sort(key=lambda b: (b.event_id is None, b.event_id or 0, b.chain or "", b.seq or 0, b.checkpoint_id or 0))
    return {
        "ok": not breaks,
        "events": n_events,
        "chains": len([c for c in considered if c in events]),
        "checkpoints": len(checkpoints),
        "signatures_checked": key is not None,
        "breaks": [asdict(b) for b in breaks],
    }


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a Control Room audit export (JSON Lines).")
    parser.add_argument("export", help="the file written by manage.py audit_export")
    parser.add_argument("--key-file", help="the audit signing key (checks the checkpoints' signatures)")
    parser.add_argument("--checkpoints", help="a checkpoint file kept outside the database")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        key = None
        if args.key_file:
            try:
                with open(args.key_file, "rb") as fh:
                    key = fh.read().strip()
            except OSError as exc:
                raise CannotVerify(f"cannot read the key file {args.key_file}: {exc.strerror or exc}") from None
            if not key:
                raise CannotVerify(f"the key file {args.key_file} is empty")
        result = verify(args.export, key=key, checkpoint_file=args.checkpoints)
    except CannotVerify as exc:
        if args.json:
            print(json.dumps({"ok": None, "error": str(exc)}))
        print(f"could not verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        counts = f"{result['events']} events in {result['chains']} chains, {result['checkpoints']} checkpoints"
        signatures = "signatures checked" if key is not None else "signatures NOT checked (no --key-file)"
        if result["ok"]:
            print(f"OK {counts} ({signatures})")
        else:
            print(f"BROKEN {len(result['breaks'])} break(s); verified {counts} ({signatures})")
            for item in result["breaks"]:
                print(f"  {Break(**item).describe()}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
