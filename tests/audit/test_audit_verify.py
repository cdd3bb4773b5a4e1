"""verify_log() and the audit_verify / audit_checkpoint commands: an intact log verifies, and each
kind of tampering (done as an attacker with database access: triggers dropped first) is
reported with its kind and the first bad event."""

from __future__ import annotations

import io
import itertools
import json
import os

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import override_settings

from audit.chain import (
    BAD_SIGNATURE,
    FORGED,
    MISSING,
    MODIFIED,
    REORDERED,
    TRUNCATED,
    checkpoint_create,
    checkpoint_export,
    checkpoint_if_changed,
    verify_log,
)
from audit.log import event_fields, event_hash, record
from audit.models import AuditEvent, Checkpoint
from tests.audit.test_audit_chain import Sess, attacker_sql, json_param, make_log

pytestmark = pytest.mark.django_db


def events_of(chain: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=chain).order_by("seq"))


def only_break(result):
    assert not result.ok, "tampering went unnoticed"
    assert len(result.breaks) == 1, [b.describe() for b in result.breaks]
    return result.breaks[0]


# --- intact ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_an_intact_log_verifies_with_the_right_counts():
    make_log(sessions=3, per_session=10, system=2)
    checkpoint_create(reason="session 1 ended")
    make_log(sessions=1, per_session=2, system=0)  # appended after the checkpoint: still fine
    result = verify_log()
    assert result.ok, [b.describe() for b in result.breaks]
    assert (result.events, result.chains, result.checkpoints) == (34, 4, 1)
    assert result.summary().startswith("OK 34 events")


def test_an_empty_log_verifies():
    result = verify_log()
    assert result.ok and result.events == 0


# --- each kind of tampering ------------------------------------------------------------------


@pytest.mark.postgres
def test_an_edited_payload_is_modified_at_that_event():
    make_log()
    victim = events_of("s:2")[4]
    attacker_sql(
        f"UPDATE reviews_auditevent SET payload = {json_param()} WHERE id = %s",
        ['{"step": 4, "cmd": "rm -rf /", "ok": true}', victim.pk],
    )
    brk = only_break(verify_log())
    assert (brk.kind, brk.chain, brk.seq, brk.event_id) == (MODIFIED, "s:2", 5, victim.pk)


def test_an_edited_actor_is_modified_at_that_event():
    make_log()
    victim = events_of("s:1")[0]
    attacker_sql("UPDATE reviews_auditevent SET on_behalf_of_id = 99 WHERE id = %s", [victim.pk])
    brk = only_break(verify_log())
    assert (brk.kind, brk.event_id) == (MODIFIED, victim.pk)


def test_a_deleted_event_is_missing_and_names_the_event_after_the_gap():
    make_log()
    chain = events_of("s:3")
    attacker_sql("DELETE FROM reviews_auditevent WHERE id = %s", [chain[5].pk])
    brk = only_break(verify_log())
    assert (brk.kind, brk.chain, brk.seq, brk.event_id) == (MISSING, "s:3", 7, chain[6].pk)
    assert "seq 6 missing" in brk.message


def test_a_deleted_first_event_is_missing():
    make_log()
    chain = events_of("s:1")
    attacker_sql("DELETE FROM reviews_auditevent WHERE id = %s", [chain[0].pk])
    brk = only_break(verify_log())
    assert (brk.kind, brk.event_id) == (MISSING, chain[1].pk)


def test_two_events_whose_seqs_were_swapped_are_reordered():
    make_log()
    chain = events_of("s:2")
    a, b = chain[3], chain[4]  # seq 4 and 5
    attacker_sql("UPDATE reviews_auditevent SET seq = 1000000 WHERE id = %s", [a.pk])
    attacker_sql("UPDATE reviews_auditevent SET seq = 4 WHERE id = %s", [b.pk])
    attacker_sql("UPDATE reviews_auditevent SET seq = 5 WHERE id = %s", [a.pk])
    brk = only_break(verify_log())
    # b now stands at seq 4, first of the two in chain order.
    assert (brk.kind, brk.chain, brk.seq, brk.event_id) == (REORDERED, "s:2", 4, b.pk)


def test_two_events_whose_contents_were_swapped_are_reordered():
    make_log()
    chain = events_of("s:1")
    a, b = chain[6], chain[7]
    columns = ["created_at", "kind", "payload", "prev_hash", "hash"]
    rows = {}
    with connection.cursor() as cursor:
        for e in (a, b):
            cursor.execute(f"SELECT {', '.join(columns)} FROM reviews_auditevent WHERE id = %s", [e.pk])
            rows[e.pk] = cursor.fetchone()
    assignments = ", ".join(f"{c} = {json_param() if c == 'payload' else '%s'}" for c in columns)
    attacker_sql(f"UPDATE reviews_auditevent SET {assignments} WHERE id = %s", [*rows[b.pk], a.pk])
    attacker_sql(f"UPDATE reviews_auditevent SET {assignments} WHERE id = %s", [*rows[a.pk], b.pk])
    brk = only_break(verify_log())
    assert (brk.kind, brk.seq, brk.event_id) == (REORDERED, 7, a.pk)


def test_the_last_50_events_removed_after_a_checkpoint_are_truncated():
    with transaction.atomic():
        events = [record("tool.call", session=Sess(8), agent=True, payload={"i": i}) for i in range(80)]
    make_log(sessions=2, per_session=3)
    checkpoint = checkpoint_create(reason="session 8 ended")
    attacker_sql("DELETE FROM reviews_auditevent WHERE chain = %s AND seq > 30", ["s:8"])
    # A careful attacker also moves the (unsigned) chain head back: the checkpoint still knows.
    attacker_sql("UPDATE reviews_chainhead SET seq = 30, hash = %s WHERE chain = %s", [events[29].hash, "s:8"])
    brk = only_break(verify_log())
    assert (brk.kind, brk.chain, brk.seq, brk.event_id, brk.checkpoint_id) == (
        TRUNCATED,
        "s:8",
        31,
        None,
        checkpoint.pk,
    )
    assert "reached seq 80" in brk.message and "last 50 event(s) were removed" in brk.message


def test_a_chain_removed_entirely_is_truncated():
    make_log(sessions=2, per_session=3)
    checkpoint_create(reason="nightly")
    attacker_sql("DELETE FROM reviews_auditevent WHERE chain = %s", ["s:2"])
    attacker_sql("DELETE FROM reviews_chainhead WHERE chain = %s", ["s:2"])
    brk = only_break(verify_log())
    assert (brk.kind, brk.chain, brk.seq) == (TRUNCATED, "s:2", 1)


def test_truncation_without_a_checkpoint_is_still_caught_by_the_chain_head():
    make_log(sessions=1, per_session=10)
    attacker_sql("DELETE FROM reviews_auditevent WHERE chain = %s AND seq > 7", ["s:1"])
    brk = only_break(verify_log())
    assert (brk.kind, brk.seq) == (TRUNCATED, 8)
    assert "head row" in brk.message


def test_an_event_inserted_with_a_computed_hash_but_a_wrong_prev_is_forged():
    make_log()
    last = events_of("s:1")[-1]
    fields = event_fields(last) | {"seq": last.seq + 1, "payload": {"approved": True}}
    wrong_prev = "ab" * 32
    attacker_sql(
        "INSERT INTO reviews_auditevent (chain, seq, created_at, kind, actor_type, actor_user_id, actor_session_id, "
        "actor_label, on_behalf_of_id, on_behalf_of_label, grant_id, provenance, session_id, pod_id, payload, "
        f"prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {json_param()}, %s, %s)",
        [
            fields["chain"],
            fields["seq"],
            last.created_at,
            fields["kind"],
            fields["actor_type"],
            None,
            fields["actor_session_id"],
            fields["actor_label"],
            fields["on_behalf_of_id"],
            "",
            fields["grant_id"],
            fields["provenance"],
            fields["session_id"],
            fields["pod_id"],
            json.dumps(fields["payload"]),
            wrong_prev,
            event_hash(wrong_prev, fields),
        ],
    )
    forged = AuditEvent.objects.get(chain="s:1", seq=last.seq + 1)
    assert forged.hash == event_hash(forged.prev_hash, event_fields(forged))  # self-consistent
    brk = only_break(verify_log())
    assert (brk.kind, brk.chain, brk.seq, brk.event_id) == (FORGED, "s:1", last.seq + 1, forged.pk)


def _rehash_chain_from(chain: str, seq: int, *, edit: dict) -> None:
    """The attacker's rewrite: edit one event, then recompute every hash after it (and the head)."""
    events = events_of(chain)
    prev = events[seq - 2].hash if seq > 1 else "0" * 64
    for e in events[seq - 1 :]:
        fields = event_fields(e)
        if e.seq == seq:
            fields |= edit
        digest = event_hash(prev, fields)
        attacker_sql(
            f"UPDATE reviews_auditevent SET payload = {json_param()}, prev_hash = %s, hash = %s WHERE id = %s",
            [json.dumps(fields["payload"]), prev, digest, e.pk],
        )
        prev = digest
    attacker_sql("UPDATE reviews_chainhead SET hash = %s WHERE chain = %s", [prev, chain])


@pytest.mark.postgres
def test_a_chain_rewritten_and_rehashed_consistently_is_forged_per_the_signed_checkpoint():
    make_log(sessions=2, per_session=10)
    first = checkpoint_create(reason="periodic")  # s:1 at seq 10
    with transaction.atomic():
        for i in range(10):
            record("tool.call", session=Sess(1), agent=True, payload={"i": i})
    second = checkpoint_create(reason="session 1 ended")  # s:1 at seq 20
    _rehash_chain_from("s:1", 15, edit={"payload": {"i": 4, "approved_by": "nobody"}})
    # Every link and hash in the rewritten chain checks out...
    rewritten = events_of("s:1")
    assert all(e.hash == event_hash(e.prev_hash, event_fields(e)) for e in rewritten)
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rewritten))
    # ...but not against what was signed.
    brk = only_break(verify_log())
    assert (brk.kind, brk.chain, brk.seq, brk.event_id, brk.checkpoint_id) == (
        FORGED,
        "s:1",
        20,
        rewritten[19].pk,
        second.pk,
    )
    assert "from seq 11 to seq 20" in brk.message
    assert first.heads["s:1"][0] == 10


def test_a_whole_chain_rewritten_from_its_first_event_is_forged():
    make_log(sessions=1, per_session=6)
    checkpoint_create(reason="nightly")
    _rehash_chain_from("s:1", 1, edit={"payload": {"forged": True}})
    brk = only_break(verify_log())
    assert (brk.kind, brk.seq, brk.event_id) == (FORGED, 6, events_of("s:1")[5].pk)


@pytest.mark.postgres
def test_checkpoint_heads_edited_to_match_a_rewritten_chain_are_a_bad_signature():
    make_log(sessions=2, per_session=5)
    checkpoint = checkpoint_create(reason="nightly")
    _rehash_chain_from("s:2", 3, edit={"payload": {"edited": True}})
    new_head = events_of("s:2")[-1]
    heads = dict(checkpoint.heads, **{"s:2": [new_head.seq, new_head.hash]})
    attacker_sql(
        f"UPDATE reviews_checkpoint SET heads = {json_param()} WHERE id = %s", [json.dumps(heads), checkpoint.pk]
    )
    brk = only_break(verify_log())
    assert (brk.kind, brk.checkpoint_id, brk.event_id) == (BAD_SIGNATURE, checkpoint.pk, None)


def test_a_checkpoint_deleted_between_two_others_breaks_the_next_ones_signature():
    make_log(sessions=1, per_session=2)
    checkpoint_create(reason="a")
    make_log(sessions=1, per_session=2)
    middle = checkpoint_create(reason="b")
    make_log(sessions=1, per_session=2)
    last = checkpoint_create(reason="c")
    attacker_sql("DELETE FROM reviews_checkpoint WHERE id = %s", [middle.pk])
    brk = only_break(verify_log())
    assert (brk.kind, brk.checkpoint_id) == (BAD_SIGNATURE, last.pk)


def test_checkpoints_deleted_from_the_database_are_missing_per_the_checkpoint_file(tmp_path):
    with transaction.atomic():
        events = [record("tool.call", session=Sess(1), agent=True, payload={"i": i}) for i in range(10)]
    checkpoint = checkpoint_create(reason="session 1 ended")
    path = tmp_path / "checkpoints.jsonl"
    assert checkpoint_export(path) == 1
    # Truncate the chain, then remove the only checkpoint that knew better.
    attacker_sql("DELETE FROM reviews_auditevent WHERE chain = %s AND seq > 4", ["s:1"])
    attacker_sql("UPDATE reviews_chainhead SET seq = 4, hash = %s WHERE chain = %s", [events[3].hash, "s:1"])
    attacker_sql("DELETE FROM reviews_checkpoint WHERE id = %s", [checkpoint.pk])
    assert verify_log().ok  # the database alone has nothing left to compare with
    result = verify_log(checkpoint_file=path)
    kinds = {(b.kind, b.chain, b.seq, b.checkpoint_id) for b in result.breaks}
    assert kinds == {(MISSING, None, None, checkpoint.pk), (TRUNCATED, "s:1", 5, checkpoint.pk)}


def test_only_the_first_bad_event_of_each_broken_chain_is_reported_earliest_first():
    make_log()
    a, b = events_of("s:3")[2], events_of("s:1")[8]
    attacker_sql("UPDATE reviews_auditevent SET kind = 'x' WHERE id IN (%s, %s)", [a.pk, b.pk])
    attacker_sql("UPDATE reviews_auditevent SET kind = 'y' WHERE chain = 's:3' AND seq > 3")
    result = verify_log()
    assert [(x.kind, x.event_id) for x in result.breaks] == [(MODIFIED, a.pk), (MODIFIED, b.pk)]


def test_verification_can_be_limited_to_some_chains():
    make_log()
    attacker_sql("UPDATE reviews_auditevent SET kind = 'x' WHERE chain = 's:1' AND seq = 2")
    assert verify_log(chains=["s:2", "system"]).ok
    limited = verify_log(chains=["s:1"])
    assert (limited.events, limited.chains, only_break(limited).kind) == (10, 1, MODIFIED)


# --- checkpoints -----------------------------------------------------------------------------


def test_a_checkpoint_signs_only_the_chains_that_moved_and_links_to_the_previous_one():
    make_log(sessions=2, per_session=3, system=1)
    first = checkpoint_create(reason="one")
    assert sorted(first.heads) == ["s:1", "s:2", "system"]
    with transaction.atomic():
        moved = record("tool.call", session=Sess(2), agent=True)
    second = checkpoint_create(reason="two")
    assert second.heads == {"s:2": [moved.seq, moved.hash]}
    assert checkpoint_if_changed(reason="periodic") is None
    assert Checkpoint.objects.count() == 2
    assert verify_log().ok


def test_checkpoint_export_appends_only_new_checkpoints(tmp_path):
    path = tmp_path / "audit" / "checkpoints.jsonl"
    make_log(sessions=1, per_session=2)
    checkpoint_create(reason="one")
    assert checkpoint_export(path) == 1
    before = path.read_text()
    make_log(sessions=1, per_session=2)
    checkpoint_create(reason="two")
    assert checkpoint_export(path) == 1
    assert checkpoint_export(path) == 0
    lines = path.read_text().splitlines()
    assert path.read_text().startswith(before) and len(lines) == 2
    assert [json.loads(line)["reason"] for line in lines] == ["one", "two"]


def test_the_periodic_task_signs_what_moved_and_keeps_the_file(tmp_path):
    from audit.tasks import audit_checkpoint

    with override_settings(DATA_DIR=tmp_path):
        make_log(sessions=1, per_session=2)
        checkpoint_id = audit_checkpoint()
        assert Checkpoint.objects.filter(pk=checkpoint_id).exists()
        assert audit_checkpoint() is None  # nothing moved
        assert len((tmp_path / "audit" / "checkpoints.jsonl").read_text().splitlines()) == 1


# --- the commands ----------------------------------------------------------------------------


def _verify_command(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.postgres
def test_audit_verify_exits_0_on_an_intact_log_and_1_naming_the_first_broken_event():
    make_log(sessions=2, per_session=5, system=1)
    checkpoint_create(reason="nightly")
    code, out, _ = _verify_command()
    assert code == 0
    assert out.startswith("OK 11 events in 3 chains, 1 checkpoints")
    victim = events_of("s:2")[1]
    attacker_sql("UPDATE reviews_auditevent SET actor_label = 'someone else' WHERE id = %s", [victim.pk])
    code, out, _ = _verify_command()
    assert code == 1
    assert f"modified: chain s:2, seq 2, event id {victim.pk}" in out
    code, out, _ = _verify_command("--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["breaks"][0]["event_id"] == victim.pk


def test_audit_verify_exits_2_when_it_cannot_verify():
    make_log(sessions=1, per_session=2)
    with override_settings(AUDIT_SIGNING_KEY=b""):
        code, _, err = _verify_command()
    assert code == 2 and "signing key" in err
    code, _, err = _verify_command("--checkpoints", "/nonexistent/checkpoints.jsonl")
    assert code == 2 and "checkpoint file" in err


def test_audit_verify_exits_2_when_the_database_cannot_be_read(monkeypatch):
    from django.db import OperationalError

    from audit import chain

    def unreachable():
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(chain, "_db_checkpoints", unreachable)
    code, _, err = _verify_command()
    assert code == 2 and "could not connect" in err


def test_audit_verify_can_check_one_session():
    make_log(sessions=2, per_session=3)
    attacker_sql("UPDATE reviews_auditevent SET kind = 'x' WHERE chain = 's:2' AND seq = 1")
    assert _verify_command("--session", "1")[0] == 0
    assert _verify_command("--session", "2")[0] == 1


def test_audit_checkpoint_command_creates_one_and_appends_it_to_the_file(tmp_path):
    make_log(sessions=1, per_session=2)
    out = io.StringIO()
    call_command("audit_checkpoint", "--file", str(tmp_path / "cp.jsonl"), stdout=out)
    checkpoint = Checkpoint.objects.get()
    assert f"checkpoint #{checkpoint.pk}" in out.getvalue()
    assert json.loads((tmp_path / "cp.jsonl").read_text())["signature"] == checkpoint.signature


# --- throughput ------------------------------------------------------------------------------


def test_an_event_slipped_into_the_middle_with_a_hash_that_links_is_forged():
    make_log()
    chain = events_of("s:2")
    k = 4
    for e in reversed(chain[k - 1 :]):  # make room at seq 4, as an attacker would
        attacker_sql("UPDATE reviews_auditevent SET seq = seq + 1 WHERE id = %s", [e.pk])
    fields = event_fields(chain[k - 1]) | {"seq": k, "payload": {"approved": "by nobody"}}
    prev = chain[k - 2].hash  # links correctly to seq 3
    attacker_sql(
        "INSERT INTO reviews_auditevent (chain, seq, created_at, kind, actor_type, actor_user_id, actor_session_id, "
        "actor_label, on_behalf_of_id, on_behalf_of_label, grant_id, provenance, session_id, pod_id, payload, "
        f"prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {json_param()}, %s, %s)",
        [
            fields["chain"],
            k,
            chain[k - 1].created_at,
            fields["kind"],
            fields["actor_type"],
            None,
            fields["actor_session_id"],
            fields["actor_label"],
            fields["on_behalf_of_id"],
            "",
            fields["grant_id"],
            fields["provenance"],
            fields["session_id"],
            fields["pod_id"],
            json.dumps(fields["payload"]),
            prev,
            event_hash(prev, fields),
        ],
    )
    inserted = AuditEvent.objects.get(chain="s:2", seq=k)
    brk = only_break(verify_log())
    assert (brk.kind, brk.seq, brk.event_id) == (FORGED, k, inserted.pk)


# --- parallel verification -------------------------------------------------------------------
# Forked children read through their own connections, so these tests commit (transaction=True).


class Forks:
    """Records, for each run of the per-event loop, the process it ran in and how many events it
    checked (children write to a file: their memory is not the test's)."""

    def __init__(self, path) -> None:
        self.path = path

    def runs(self) -> list[tuple[int, int]]:
        if not self.path.exists():
            return []
        return [tuple(map(int, line.split())) for line in self.path.read_text().splitlines()]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def forks(monkeypatch, tmp_path) -> Forks:
    from audit import chain

    monkeypatch.setattr(chain, "PARALLEL_MIN_EVENTS", 1)  # any log is big enough to fork for
    recorder = Forks(tmp_path / "runs.txt")
    original = chain._verify_rows

    def recording(reader, rows, expect):
        out = original(reader, rows, expect)
        with open(recorder.path, "a") as fh:
            fh.write(f"{os.getpid()} {out[1]}\n")
        return out

    monkeypatch.setattr(chain, "_verify_rows", recording)
    return recorder


def big_log() -> dict[str, list[AuditEvent]]:
    return make_log(sessions=30, per_session=20, system=2)


def verify_both_ways(forks: Forks):
    """verify_log with 2 workers (asserting it really forked into 2 ranges) and with 1."""
    forks.clear()
    parallel = verify_log(workers=2)
    runs = forks.runs()
    assert len(runs) == 2, runs
    assert all(pid != os.getpid() for pid, _ in runs), "the ranges were not verified in child processes"
    assert all(events > 0 for _, events in runs) and sum(events for _, events in runs) == parallel.events
    forks.clear()
    single = verify_log(workers=1)
    assert [pid for pid, _ in forks.runs()] == [os.getpid()]
    return parallel, single


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_big_log_verifies_in_two_processes_with_the_same_counts(forks):
    big_log()
    checkpoint_create(reason="nightly")
    parallel, single = verify_both_ways(forks)
    assert parallel.ok and single.ok, [b.describe() for b in parallel.breaks + single.breaks]
    assert (parallel.events, parallel.chains, parallel.checkpoints) == (602, 31, 1)
    assert (single.events, single.chains, single.checkpoints) == (602, 31, 1)


def _edit_payload(log):
    attacker_sql(
        f"UPDATE reviews_auditevent SET payload = {json_param()} WHERE id = %s",
        ['{"step": 4, "cmd": "rm -rf /", "ok": true}', log["s:2"][4].pk],
    )
    return {(MODIFIED, "s:2")}


def _delete_event(log):
    attacker_sql("DELETE FROM reviews_auditevent WHERE id = %s", [log["s:3"][5].pk])
    return {(MISSING, "s:3")}


def _swap_seqs(log):
    a, b = log["s:25"][3], log["s:25"][4]
    attacker_sql("UPDATE reviews_auditevent SET seq = 1000000 WHERE id = %s", [a.pk])
    attacker_sql("UPDATE reviews_auditevent SET seq = 4 WHERE id = %s", [b.pk])
    attacker_sql("UPDATE reviews_auditevent SET seq = 5 WHERE id = %s", [a.pk])
    return {(REORDERED, "s:25")}


def _truncate_with_the_head_moved_back(log):
    checkpoint_create(reason="session 8 ended")
    attacker_sql("DELETE FROM reviews_auditevent WHERE chain = %s AND seq > 12", ["s:8"])
    attacker_sql("UPDATE reviews_chainhead SET seq = 12, hash = %s WHERE chain = %s", [log["s:8"][11].hash, "s:8"])
    attacker_sql("DELETE FROM reviews_auditevent WHERE chain = %s AND seq > 7", ["s:11"])  # head row left
    return {(TRUNCATED, "s:8"), (TRUNCATED, "s:11")}


def _remove_a_chain_entirely(log):
    checkpoint_create(reason="nightly")
    attacker_sql("DELETE FROM reviews_auditevent WHERE chain = %s", ["s:27"])
    attacker_sql("DELETE FROM reviews_chainhead WHERE chain = %s", ["s:27"])
    return {(TRUNCATED, "s:27")}


def _edit_chains_without_head_rows(log):
    # The first and the last chain in name order lose their head rows: the ranges, cut from the
    # head rows, must still cover their events.
    attacker_sql("DELETE FROM reviews_chainhead WHERE chain IN ('s:1', 'system')")
    attacker_sql(
        "UPDATE reviews_auditevent SET kind = 'x' WHERE id IN (%s, %s)", [log["s:1"][9].pk, log["system"][1].pk]
    )
    return {(MODIFIED, "s:1"), (MODIFIED, "system")}


def _rewrite_and_rehash(log):
    checkpoint_create(reason="periodic")
    _rehash_chain_from("s:5", 10, edit={"payload": {"approved_by": "nobody"}})
    return {(FORGED, "s:5")}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "tamper",
    [
        _edit_payload,
        _delete_event,
        _swap_seqs,
        _truncate_with_the_head_moved_back,
        _remove_a_chain_entirely,
        _edit_chains_without_head_rows,
        _rewrite_and_rehash,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_tampering_gives_the_same_breaks_in_two_processes_as_in_one(forks, tamper):
    expected = tamper(big_log())
    parallel, single = verify_both_ways(forks)
    assert {(b.kind, b.chain) for b in single.breaks} == expected, [b.describe() for b in single.breaks]
    assert [(b.kind, b.chain, b.seq, b.event_id, b.checkpoint_id) for b in parallel.breaks] == [
        (b.kind, b.chain, b.seq, b.event_id, b.checkpoint_id) for b in single.breaks
    ]
    assert parallel.breaks == single.breaks  # messages included
    assert (parallel.events, parallel.chains, parallel.checkpoints) == (
        single.events,
        single.chains,
        single.checkpoints,
    )


@pytest.mark.django_db(transaction=True)
def test_breaks_in_several_ranges_are_merged_earliest_first(forks):
    log = big_log()
    a, b, c = log["system"][0], log["s:2"][3], log["s:30"][17]
    attacker_sql("UPDATE reviews_auditevent SET kind = 'x' WHERE id IN (%s, %s, %s)", [a.pk, b.pk, c.pk])
    parallel, single = verify_both_ways(forks)
    ordered = sorted([a, b, c], key=lambda e: e.pk)
    assert [(x.kind, x.event_id) for x in parallel.breaks] == [(MODIFIED, e.pk) for e in ordered]
    assert parallel.breaks == single.breaks


def test_inside_a_transaction_verification_stays_in_this_process(forks):
    big_log()  # uncommitted: children would not see it
    forks.clear()
    result = verify_log(workers=2)
    assert result.ok and result.events == 602
    assert [pid for pid, _ in forks.runs()] == [os.getpid()]


@pytest.mark.django_db(transaction=True)
def test_a_small_log_is_verified_in_this_process(forks, monkeypatch):
    from audit import chain

    big_log()
    monkeypatch.setattr(chain, "PARALLEL_MIN_EVENTS", 603)
    assert verify_log(workers=2).ok
    assert [pid for pid, _ in forks.runs()] == [os.getpid()]
    forks.clear()
    assert verify_log(workers=2, parallel_min_events=602).events == 602
    assert len(forks.runs()) == 2 and os.getpid() not in [pid for pid, _ in forks.runs()]


@pytest.mark.django_db(transaction=True)
def test_when_forking_fails_verification_falls_back_to_this_process(forks, monkeypatch):
    from audit import chain

    log = big_log()
    attacker_sql("UPDATE reviews_auditevent SET kind = 'x' WHERE id = %s", [log["s:9"][2].pk])

    def no_fork(*args, **kwargs):
        raise OSError("fork: Resource temporarily unavailable")

    monkeypatch.setattr(chain, "ProcessPoolExecutor", no_fork)
    brk = only_break(verify_log(workers=2))
    assert (brk.kind, brk.event_id) == (MODIFIED, log["s:9"][2].pk)
    assert [pid for pid, _ in forks.runs()] == [os.getpid()]


def test_chain_ranges_cover_every_name_and_balance_the_events():
    from audit.chain import _chain_ranges

    sizes = [("a", 10), ("b", 10), ("c", 10), ("d", 10)]
    assert _chain_ranges(sizes, 2) == [(None, "c"), ("c", None)]
    assert _chain_ranges(sizes, 4) == [(None, "b"), ("b", "c"), ("c", "d"), ("d", None)]
    assert _chain_ranges(sizes, 9) == [(None, "b"), ("b", "c"), ("c", "d"), ("d", None)]
    assert _chain_ranges([("a", 1), ("b", 100), ("c", 1)], 2) == [(None, "c"), ("c", None)]
    assert _chain_ranges([("a", 5)], 4) == [(None, None)]
    assert _chain_ranges([], 4) == [(None, None)]


@pytest.mark.django_db(transaction=True)
def test_audit_verify_runs_in_several_processes_and_refuses_fewer_than_one(forks):
    log = big_log()
    code, out, _ = _verify_command("--workers", "2")
    assert code == 0 and out.startswith("OK 602 events in 31 chains")
    assert len(forks.runs()) == 2 and os.getpid() not in [pid for pid, _ in forks.runs()]
    attacker_sql("UPDATE reviews_auditevent SET kind = 'x' WHERE id = %s", [log["s:20"][0].pk])
    code, out, _ = _verify_command("--workers", "2")
    assert code == 1 and f"modified: chain s:20, seq 1, event id {log['s:20'][0].pk}" in out
    with pytest.raises(CommandError, match="--workers must be at least 1") as refused:
        call_command("audit_verify", "--workers", "0", stdout=io.StringIO(), stderr=io.StringIO())
    assert refused.value.returncode == 2
