"""Prepared hot reads: compiled once, then the same answers as the ORM for any key."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import transaction
from django.db.models import F

from agents import services
from agents.models import AgentSession, FleetControl
from agents.runtime.prepared import PreparedGet, PreparedUpdate, PreparedValues

pytestmark = pytest.mark.django_db


def _query(session_id: int):
    return AgentSession.objects.filter(pk=session_id).values_list("pk", "status", "pod__slug", "steps")


@pytest.mark.postgres  # the SQL and the value conversions differ by vendor
def test_a_prepared_query_answers_like_the_orm_for_every_key_and_none_for_a_missing_one(fleet):
    first = services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="One", by=fleet.lead, repository=fleet.repo, start=False
    )
    second = services.session_launch(
        pod=fleet.bravo, sto=fleet.outsider, goal="Two", by=fleet.outsider, repository=fleet.repo, start=False
    )
    AgentSession.objects.filter(pk=second.pk).update(steps=F("steps") + 4)
    prepared = PreparedValues(_query)
    for session in (first, second, first):
        assert prepared.first(session.pk) == _query(session.pk).first()
    assert prepared.first(second.pk)[2:] == ("bravo", 4)
    assert prepared.first(10**9) is None


def test_a_query_that_does_not_filter_on_its_key_is_refused():
    prepared = PreparedValues(lambda key: FleetControl.objects.filter(pk=1).values_list("stopped"))
    with pytest.raises(ValueError, match="filter on its key"):
        prepared.first(5)


def _fields(instance) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}


@pytest.mark.postgres  # the SQL and the value conversions differ by vendor
def test_a_prepared_get_builds_the_same_instance_and_related_objects_as_the_orm(fleet, django_assert_num_queries):
    first = services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="One", by=fleet.lead, repository=fleet.repo, start=False
    )
    second = services.session_launch(
        pod=fleet.bravo, sto=fleet.outsider, goal="Two", by=fleet.outsider, repository=fleet.repo, start=False
    )
    # a JSON field, a decimal, a datetime and a null among the columns
    AgentSession.objects.filter(pk=second.pk).update(
        steps=F("steps") + 4, fallback_models=["openai/a", "openai/b"], cost_usd="1.25"
    )
    prepared = PreparedGet(lambda pk: AgentSession.objects.select_related("pod", "repository").filter(pk=pk))
    for session in (first, second, first):
        expected = AgentSession.objects.select_related("pod", "repository").get(pk=session.pk)
        got = prepared.get(session.pk)
        assert _fields(got) == _fields(expected)
        assert _fields(got.pod) == _fields(expected.pod) and _fields(got.repository) == _fields(expected.repository)
        assert not got._state.adding and got._state.db == "default"
        with django_assert_num_queries(0):
            assert got.pod.slug == expected.pod.slug  # the related objects came with the row
    got = prepared.get(second.pk)
    assert got.fallback_models == ["openai/a", "openai/b"] and got.steps == 4 and got.cost_usd == Decimal("1.25")
    got.steps = 5
    got.save(update_fields=["steps"])  # a normal instance: it saves
    assert AgentSession.objects.get(pk=second.pk).steps == 5
    with pytest.raises(AgentSession.DoesNotExist):
        prepared.get(10**9)


@pytest.mark.postgres  # the SQL and the value conversions differ by vendor
def test_a_prepared_locked_get_reads_inside_a_transaction(fleet):
    session = services.session_launch(
        pod=fleet.alpha, sto=fleet.sto, goal="One", by=fleet.lead, repository=fleet.repo, start=False
    )
    prepared = PreparedGet(lambda pk: AgentSession.objects.select_for_update().filter(pk=pk))
    with transaction.atomic():
        assert _fields(prepared.get(session.pk)) == _fields(AgentSession.objects.get(pk=session.pk))


def test_a_prepared_get_refuses_annotations_and_queries_without_the_key():
    with pytest.raises(ValueError, match="filter on its key"):
        PreparedGet(lambda pk: AgentSession.objects.filter(pk=1)).get(5)
    with pytest.raises(ValueError, match="one model"):
        PreparedGet(lambda pk: AgentSession.objects.filter(pk=pk).annotate(two=F("steps") + 2)).get(5)


def _row(pk: int) -> dict:
    return AgentSession.objects.values(
        "lease_owner", "lease_until", "heartbeat_at", "tokens_in", "cost_usd", "current_activity", "steps"
    ).get(pk=pk)


@pytest.mark.postgres  # the SQL and the value conversions differ by vendor
def test_a_prepared_update_changes_the_rows_the_orm_update_would(fleet):
    from datetime import UTC, datetime, timedelta

    twins = [
        services.session_launch(
            pod=fleet.alpha, sto=fleet.sto, goal=goal, by=fleet.lead, repository=fleet.repo, start=False
        )
        for goal in ("One", "Two")
    ]

    def build(v):
        return (
            AgentSession.objects.filter(pk=v.pk, steps=v.steps, status__in=["queued", "running"]),
            dict(
                lease_owner=v.owner,
                lease_until=v.until,
                heartbeat_at=v.until,
                tokens_in=F("tokens_in") + v.tokens,
                cost_usd=F("cost_usd") + v.cost,
            ),
        )

    prepared = PreparedUpdate(build, pk=int, steps=int, owner=str, until=datetime, tokens=int, cost=Decimal)
    cases = [
        dict(
            steps=0,
            owner='w\'1 "quoted" ü',
            until=datetime(2026, 12, 3, 17, 5, 1, 250, tzinfo=UTC),
            tokens=7,
            cost=Decimal("0.125"),
        ),
        dict(
            steps=0,
            owner="",
            until=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(microseconds=1),
            tokens=0,
            cost=Decimal("3"),
        ),
        dict(steps=5, owner="nobody", until=datetime(2031, 1, 1, tzinfo=UTC), tokens=1, cost=Decimal("1")),  # no row
    ]
    for case in cases:
        by_orm, by_prepared = twins
        queryset, changes = build(SimpleNamespace(pk=by_orm.pk, **case))
        expected = queryset.update(**changes)
        assert prepared.run(pk=by_prepared.pk, **case) == expected
        assert _row(by_prepared.pk) == _row(by_orm.pk)
    assert _row(twins[1].pk)["lease_owner"] == ""  # the third case changed nothing
    assert _row(twins[1].pk)["tokens_in"] == 7 and _row(twins[1].pk)["cost_usd"] == Decimal("3.125")


def test_a_prepared_update_refuses_what_would_change_its_shape():
    from datetime import datetime

    prepared = PreparedUpdate(
        lambda v: (AgentSession.objects.filter(pk=v.pk), dict(heartbeat_at=v.now)), pk=int, now=datetime
    )
    with pytest.raises(ValueError, match="cannot be None"):
        prepared.run(pk=1, now=None)
    with pytest.raises(TypeError, match="exactly"):
        prepared.run(pk=1)
    with pytest.raises(TypeError, match="values, not"):
        PreparedUpdate(lambda v: (AgentSession.objects.all(), {}), when=float)
    unused = PreparedUpdate(lambda v: (AgentSession.objects.filter(pk=v.pk), dict(steps=1)), pk=int, extra=str)
    with pytest.raises(ValueError, match="does not use its value 'extra'"):
        unused.run(pk=1, extra="x")
    joined = PreparedUpdate(lambda v: (AgentSession.objects.filter(pod__slug=v.slug), dict(steps=1)), slug=str)
    with pytest.raises(ValueError, match="one table"):
        joined.run(slug="alpha")
