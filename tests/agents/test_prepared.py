"""Prepared hot reads: compiled once, then the same answers as the ORM for any key."""

from __future__ import annotations

import pytest
from django.db.models import F

from agents import services
from agents.models import AgentSession, FleetControl
from agents.runtime.prepared import PreparedValues

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
