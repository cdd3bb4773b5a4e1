"""Prepared hot reads: compiled once, then the same answers as the ORM for any key."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import F

from agents import services
from agents.models import AgentSession, FleetControl
from agents.runtime.prepared import PreparedGet, PreparedValues

pytestmark = pytest.mark.django_db


def _query(session_id: int):
    return AgentSession.objects.filter(pk=session_id).values_list("pk", "status", "pod__slug", "steps")


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
