"""The append path of the audit log: record(), the hash formula, the append-only triggers.

Also home of the helpers the other audit test modules import.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from audit import triggers
from audit.chain import verify_log
from audit.log import (
    GENESIS,
    SYSTEM_CHAIN,
    canonical_body,
    canonical_text,
    event_fields,
    event_hash,
    record,
)
from audit.models import AuditEvent, ChainHead, Checkpoint

# --- helpers shared by tests/audit/test_audit_*.py -----------------------------------------


@dataclass
class Sess:
    """Stands for an AgentSession: record() only needs .pk and .pod_id."""

    pk: int
    pod_id: int = 1


def attacker_sql(sql: str, params: list | tuple = ()) -> None:
    """Tamper as someone with database access would: drop the triggers, then write."""
    triggers.uninstall(connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))


def json_param() -> str:
    return "%s::jsonb" if connection.vendor == "postgresql" else "%s"


def make_log(*, sessions: int = 3, per_session: int = 10, system: int = 2) -> dict[str, list[AuditEvent]]:
    """Events interleaved across session chains (as a fleet writes them) plus a few system ones."""
    log: dict[str, list[AuditEvent]] = {}
    with transaction.atomic():
        for i in range(per_session):
            for s in range(1, sessions + 1):
                e = record(
                    "tool.call",
                    session=Sess(s),
                    agent=True,
                    on_behalf_of=7,
                    grant=3,
                    provenance="rule",
                    payload={"step": i, "cmd": f"pytest -q #{i}", "ok": i % 3 != 0},
                )
                log.setdefault(e.chain, []).append(e)
        for i in range(system):
            e = record("fleet.stop", payload={"n": i})
            log.setdefault(e.chain, []).append(e)
    return log


# --- record() --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_session_gets_its_own_gap_free_chain_and_the_rest_goes_to_the_system_chain():
    log = make_log(sessions=2, per_session=4, system=3)
    assert sorted(log) == ["s:1", "s:2", SYSTEM_CHAIN]
    for chain, events in log.items():
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[0].prev_hash == GENESIS
        for before, after in itertools.pairwise(events):
            assert after.prev_hash == before.hash
        head = ChainHead.objects.get(chain=chain)
        assert (head.seq, head.hash) == (events[-1].seq, events[-1].hash)


@pytest.mark.django_db
def test_the_stored_hash_is_the_documented_formula_over_the_stored_fields():
    make_log(sessions=1, per_session=3, system=1)
    for stored in AuditEvent.objects.all():
        assert stored.hash == event_hash(stored.prev_hash, event_fields(stored))


@pytest.mark.django_db
def test_record_returns_the_saved_event():
    with transaction.atomic():
        event = record(
            "grant.issued",
            session=Sess(9, pod_id=4),
            user=None,
            on_behalf_of=12,
            grant=5,
            payload={"rule": "allow git *"},
        )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.chain, stored.seq, stored.hash, stored.payload, stored.pod_id, stored.on_behalf_of_id) == (
        event.chain,
        event.seq,
        event.hash,
        event.payload,
        4,
        12,
    )
    assert stored.created_at == event.created_at
    assert stored.actor_type == "system"


@pytest.mark.django_db(transaction=True)
def test_record_refuses_to_run_outside_the_transaction_of_the_change():
    with pytest.raises(RuntimeError, match="inside the transaction"):
        record("x")
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_record_refuses_ids_that_would_not_hash_as_integers():
    with transaction.atomic(), pytest.raises(TypeError, match="on_behalf_of"):
        record("x", on_behalf_of="seven")


@pytest.mark.postgres
@pytest.mark.django_db
def test_payload_values_the_database_would_not_store_verbatim_are_normalized_before_hashing():
    weird = {
        "nan": math.nan,
        "inf": -math.inf,
        "big": 1e20,
        "negzero": -0.0,
        "nul": "a\x00b",
        "surrogate": "x\udcffy",
        7: ("t", 1),
        "small": 1.5e-7,
    }
    with transaction.atomic():
        event = record("tool.output", session=Sess(1), agent=True, payload=weird)
    assert event.payload == {
        "nan": "nan",
        "inf": "-inf",
        "big": 100000000000000000000,
        "negzero": 0.0,
        "nul": "a\ufffdb",
        "surrogate": "x\ufffdy",
        "7": ["t", 1],
        "small": 1.5e-7,
    }
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.payload == event.payload
    assert verify_log().ok


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
_id = st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1))
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), _text),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_text, children, max_size=4)),
    max_leaves=12,
)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain=_text,
    seq=st.integers(min_value=1, max_value=2**40),
    kind=_text,
    label=_text,
    obo_label=_text,
    provenance=_text,
    ids=st.tuples(_id, _id, _id, _id, _id, _id),
    payload=st.dictionaries(_text, _json, max_size=5),
)
def test_the_fast_canonical_text_is_byte_identical_to_the_reference_canonical_body(
    chain, seq, kind, label, obo_label, provenance, ids, payload
):
    actor_user_id, actor_session_id, on_behalf_of_id, grant_id, session_id, pod_id = ids
    fields = {
        "chain": chain,
        "seq": seq,
        "created_at": "2026-11-23T22:00:00.000001Z",
        "kind": kind,
        "actor_type": "agent",
        "actor_user_id": actor_user_id,
        "actor_session_id": actor_session_id,
        "actor_label": label,
        "on_behalf_of_id": on_behalf_of_id,
        "on_behalf_of_label": obo_label,
        "grant_id": grant_id,
        "provenance": provenance,
        "session_id": session_id,
        "pod_id": pod_id,
        "payload": payload,
    }
    payload_json = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    fast = canonical_text(
        chain,
        seq,
        fields["created_at"],
        kind,
        "agent",
        actor_user_id,
        actor_session_id,
        label,
        on_behalf_of_id,
        obo_label,
        grant_id,
        provenance,
        session_id,
        pod_id,
        payload_json,
    )
    assert fast.encode("utf-8") == canonical_body(fields)


# --- append-only at the database level -------------------------------------------------------


def _refused(action) -> None:
    with pytest.raises((IntegrityError, DatabaseError), match="append-only"):
        with transaction.atomic():  # a savepoint: PostgreSQL aborts the transaction on error
            action()


def _raw(sql: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_to_update_or_delete_audit_events_and_checkpoints():
    make_log(sessions=1, per_session=3, system=0)
    from audit.chain import checkpoint_create

    checkpoint = checkpoint_create(reason="test")
    event = AuditEvent.objects.first()
    _refused(lambda: AuditEvent.objects.filter(pk=event.pk).update(kind="edited"))
    _refused(lambda: AuditEvent.objects.filter(pk=event.pk).delete())
    _refused(lambda: AuditEvent.objects.all().delete())
    _refused(
        lambda: _raw(
            "UPDATE reviews_auditevent SET payload = " + json_param() + " WHERE id = %s", ['{"x":1}', event.pk]
        )
    )
    _refused(lambda: _raw("DELETE FROM reviews_auditevent WHERE id = %s", [event.pk]))
    _refused(lambda: Checkpoint.objects.filter(pk=checkpoint.pk).update(reason="edited"))
    _refused(lambda: Checkpoint.objects.filter(pk=checkpoint.pk).delete())
    _refused(lambda: _raw("DELETE FROM reviews_checkpoint", []))
    if connection.vendor == "postgresql":
        _refused(lambda: _raw("TRUNCATE reviews_auditevent", []))
        _refused(lambda: _raw("TRUNCATE reviews_checkpoint", []))
    assert AuditEvent.objects.count() == 3
    assert AuditEvent.objects.get(pk=event.pk).kind == "tool.call"
    assert Checkpoint.objects.get(pk=checkpoint.pk).reason == "test"


@pytest.mark.postgres
@pytest.mark.django_db
def test_every_audit_index_is_useful_and_the_triggers_survive_the_migrations():
    """Each index costs every append a page write: none may be the prefix of another."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, AuditEvent._meta.db_table)
    indexed = [
        tuple(c["columns"])
        for name, c in constraints.items()
        if c["index"] and not c["primary_key"] and not name.endswith("_like")
    ]
    redundant = [cols for cols in indexed if any(o != cols and o[: len(cols)] == cols for o in indexed)]
    assert redundant == []
    assert ("session_id", "id") in indexed and ("kind", "id") in indexed and ("pod_id", "id") in indexed
    make_log(sessions=1, per_session=1, system=0)
    _refused(lambda: AuditEvent.objects.all().delete())


@pytest.mark.django_db
def test_chain_heads_stay_writable_because_appending_moves_them():
    make_log(sessions=1, per_session=2, system=0)
    make_log(sessions=1, per_session=2, system=0)
    assert ChainHead.objects.get(chain="s:1").seq == 4


# --- throughput ------------------------------------------------------------------------------


# --- admin -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_shows_audit_events_and_checkpoints_read_only_to_everyone(rf):
    from django.contrib import admin

    from agents.models import User
    from reviews.models import Review

    superuser = User.objects.create_superuser("root", "root@example.com", "x")
    request = rf.get("/admin/")
    request.user = superuser
    for model in (AuditEvent, Checkpoint, Review):
        model_admin = admin.site._registry[model]
        assert model_admin.check() == []
        assert not model_admin.has_add_permission(request)
        assert not model_admin.has_change_permission(request)
        assert not model_admin.has_delete_permission(request)
        assert model_admin.has_view_permission(request)
    audit_admin = admin.site._registry[AuditEvent]
    assert {"kind", "actor_type"} <= set(audit_admin.list_filter)
    make_log(sessions=2, per_session=2, system=1)
    by_session, _ = audit_admin.get_search_results(request, AuditEvent.objects.all(), "2")
    assert {e.session_id for e in by_session} == {2} and by_session.count() == 2
    by_chain, _ = audit_admin.get_search_results(request, AuditEvent.objects.all(), "system")
    assert by_chain.count() == 1
