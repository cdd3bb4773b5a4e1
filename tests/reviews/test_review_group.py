"""Approving several diffs in one decision: only those whose tests passed and that touch no
protected path, each merged separately through the approve service."""

from __future__ import annotations

import pytest

from agents.models import ReviewState
from audit.models import AuditEvent
from reviews import selectors
from reviews.models import Review
from tests.reviews.test_digest import record_tests_run
from tests.reviews.test_review_decisions import git, login, make_session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queue(fleet, worktrees_dir):
    safe = []
    for i in range(3):
        session = make_session(fleet, name=f"Add helper {i}", files={f"pkg/helper_{i}.py": f"X = {i}\n"})
        record_tests_run(session, passed=True)
        safe.append(session)
    failed = make_session(fleet, name="Broken tests", files={"pkg/broken.py": "Y = 1\n"})
    record_tests_run(failed, passed=False)
    untested = make_session(fleet, name="No tests", files={"pkg/untested.py": "Z = 1\n"})
    ci = make_session(fleet, name="Touch CI", files={".github/workflows/ci.yml": "on: push\n"})
    record_tests_run(ci, passed=True)
    mias = make_session(fleet, name="Mia's helper", files={"pkg/mia.py": "M = 1\n"}, sto=fleet.member)
    record_tests_run(mias, passed=True)
    return {"safe": safe, "failed": failed, "untested": untested, "ci": ci, "mias": mias}


def test_only_passed_unprotected_diffs_the_reviewer_may_decide_are_offered_together(fleet, queue):
    rows = selectors.review_queue(user=fleet.sto)
    offered = {r.session.pk for r in selectors.safe_approvals(rows, user=fleet.sto)}
    assert offered == {s.pk for s in queue["safe"]}
    lead_offered = {
        r.session.pk for r in selectors.safe_approvals(selectors.review_queue(user=fleet.lead), user=fleet.lead)
    }
    assert lead_offered == offered | {queue["mias"].pk}


def test_the_group_approval_merges_each_separately_and_refuses_the_unsafe_ones(client, fleet, queue):
    ids = [s.pk for s in queue["safe"]] + [queue["ci"].pk, queue["failed"].pk]
    page = login(client, fleet.sto).get("/reviews/").content.decode()
    assert "Approve the 3 diffs whose tests passed and that touch no protected path" in page
    response = client.post("/reviews/approve-safe", {"session": ids}, follow=True)
    text = response.content.decode()
    assert response.status_code == 200 and "Approved and merged 3 diff(s), each separately" in text
    assert text.count("Not approved") == 2
    for session in queue["safe"]:
        session.refresh_from_db()
        assert session.review_state == ReviewState.APPROVED
        assert Review.objects.filter(session=session, decision="approve", reviewer=fleet.sto).count() == 1
        assert AuditEvent.objects.filter(session_id=session.pk, kind="review.approved", actor_label="sam").count() == 1
    for session in (queue["ci"], queue["failed"]):
        session.refresh_from_db()
        assert session.review_state == ReviewState.NONE
    assert git(fleet.repo.path, "ls-tree", "-r", "--name-only", "main").count("pkg/helper_") == 3


def test_an_empty_selection_is_a_clear_error(client, fleet, queue):
    response = login(client, fleet.sto).post("/reviews/approve-safe", {"session": ["x"]}, follow=True)
    assert response.status_code == 200 and "Choose at least one diff" in response.content.decode()
