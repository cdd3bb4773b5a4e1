"""The review queue (ranking, visibility, filters), review capacity (WIP limit), the diff pages,
and the disk hygiene of worktrees."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from agents import services as agent_services
from agents.models import AgentSession, AgentStep, Escalation, Status, ToolCall
from agents.runtime.loop import run_step
from audit.log import record
from audit.models import AuditEvent
from reviews import selectors, services
from tests.reviews.test_review_decisions import agent_commit, git, login, make_session

HTMX = {"HTTP_HX_REQUEST": "true"}


def deny_a_tool_call(session: AgentSession) -> None:
    step, _ = AgentStep.objects.get_or_create(session=session, number=2)
    ToolCall.objects.create(
        session=session,
        step=step,
        index=0,
        call_id="d",
        name="run_command",
        decision="deny",
        state=ToolCall.State.DENIED,
        action="run_command: git push origin HEAD",
    )


def record_test_run(session: AgentSession, exit_code: int) -> None:
    from django.db import transaction

    with transaction.atomic():
        record(
            "tests.run",
            session=session,
            agent=True,
            payload={
                "command": "python -m pytest -q",
                "exit_code": exit_code,
                "passed": exit_code == 0,
                "summary": "3 passed" if exit_code == 0 else "1 failed, 2 passed",
            },
        )


# -- ranking ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_risky_large_old_work_ranks_first_and_the_row_says_why(fleet, worktrees_dir):
    small = make_session(fleet, name="Fix a typo", files={"docs/typo.md": "fixed\n"}, hours_ago=1, sto=fleet.member)
    record_test_run(small, 0)
    risky = make_session(
        fleet,
        name="Speed up CI",
        sto=fleet.member,
        hours_ago=1,
        files={
            ".github/workflows/ci.yml": "name: ci\non: push\n",
            "requirements-dev.txt": "ruff\n",
            "shopcart/fast.py": "".join(f"x{i} = {i}\n" for i in range(200)),
        },
    )
    deny_a_tool_call(risky)
    Escalation.objects.create(
        session=risky, grant=risky.grants.get(), tool="run_command", action="git push", action_hash="h"
    )
    record_test_run(risky, 1)

    rows = selectors.review_queue(user=fleet.lead)

    assert [r.session.pk for r in rows] == [risky.pk, small.pk]
    top = rows[0]
    labels = " | ".join(i.label for i in top.risk_ingredients)
    assert ".github/workflows/ci.yml" in labels and "requirements-dev.txt" in labels
    assert "denied tool call(s) ×1" in labels and "escalation(s) ×1" in labels and "last test run failed" in labels
    assert top.risk == 1 + 2 * 3 + 1 + 1 + 2
    assert top.stat.get("shopcart/fast.py").additions == 200 and top.size > rows[1].size
    assert top.score == pytest.approx(top.risk * top.size * top.age, abs=0.1)
    assert "risk 11" in top.why and f"{top.stat.additions}+ {top.stat.deletions}− in 3 file(s)" in top.why
    assert [i.label for i in rows[1].risk_ingredients] == ["base"]


@pytest.mark.django_db
def test_among_equals_the_older_wait_ranks_higher(fleet, worktrees_dir):
    young = make_session(fleet, name="young", files={"a.txt": "a\n"}, hours_ago=1, sto=fleet.member)
    old = make_session(fleet, name="old", files={"b.txt": "b\n"}, hours_ago=30, sto=fleet.member)
    rows = selectors.review_queue(user=fleet.lead)
    assert [r.session.pk for r in rows] == [old.pk, young.pk]
    assert rows[0].age == pytest.approx(1 + 30 / 12, abs=0.01)


@pytest.mark.django_db
def test_the_viewers_own_sessions_come_first(fleet, worktrees_dir):
    risky = make_session(fleet, name="risky", files={".ci/run": "exit 0\n"}, sto=fleet.member, hours_ago=20)
    mine = make_session(fleet, name="mine", files={"a.txt": "a\n"}, sto=fleet.sto, hours_ago=0.1)
    assert [r.session.pk for r in selectors.review_queue(user=fleet.sto)] == [mine.pk, risky.pk]
    assert [r.session.pk for r in selectors.review_queue(user=fleet.member)] == [risky.pk, mine.pk]


@pytest.mark.django_db
def test_the_queue_holds_finished_work_and_stopped_work_with_commits_only(fleet, worktrees_dir):
    done = make_session(fleet, name="done", files={"a.txt": "a\n"})
    failed_with_work = make_session(fleet, name="failed with work", files={"b.txt": "b\n"}, status=Status.FAILED)
    failed_empty = make_session(fleet, name="failed, nothing", status=Status.FAILED)
    running = make_session(fleet, name="running", files={"c.txt": "c\n"}, status=Status.RUNNING)
    approved = make_session(fleet, name="approved", files={"d.txt": "d\n"})
    services.review_approve(session=approved, reviewer=fleet.sto)
    queued = {r.session.pk for r in selectors.review_queue(user=fleet.sto)}
    assert queued == {done.pk, failed_with_work.pk}
    assert {failed_empty.pk, running.pk, approved.pk}.isdisjoint(queued)
    assert selectors.awaiting_review_count(pod_id=fleet.alpha.pk) == 2


@pytest.mark.django_db
def test_members_see_their_pods_work_only_and_filters_narrow_it(fleet, worktrees_dir):
    alpha = make_session(fleet, name="alpha work", files={"a.txt": "a\n"})
    bravo = make_session(
        fleet, name="bravo work", files={"b.txt": "b\n"}, pod=fleet.bravo, sto=fleet.outsider, by=fleet.outsider
    )
    assert {r.session.pk for r in selectors.review_queue(user=fleet.member)} == {alpha.pk}
    assert {r.session.pk for r in selectors.review_queue(user=fleet.outsider)} == {bravo.pk}
    assert {r.session.pk for r in selectors.review_queue(user=fleet.manager)} == {alpha.pk, bravo.pk}
    assert {r.session.pk for r in selectors.review_queue(user=fleet.manager, pod="bravo")} == {bravo.pk}
    assert {r.session.pk for r in selectors.review_queue(user=fleet.manager, sto="sam")} == {alpha.pk}


@pytest.mark.django_db
def test_diff_stats_run_one_git_diff_per_unseen_commit_pair_and_see_a_new_commit_at_once(
    fleet, worktrees_dir, monkeypatch
):
    from reviews import git_ops

    sessions = [make_session(fleet, name=f"task {i}", files={f"f{i}.txt": "x\n" * (i + 1)}) for i in range(6)]
    selectors._STAT_MEMO.clear()
    diffs = []
    real = git_ops.diff_stat
    monkeypatch.setattr(git_ops, "diff_stat", lambda *a, **k: diffs.append(a) or real(*a, **k))
    stats = selectors.diff_stats(list(AgentSession.objects.select_related("repository")))
    assert len(diffs) == 6 and {s.pk for s in sessions} == set(stats)
    assert [stats[s.pk][0].additions for s in sessions] == [1, 2, 3, 4, 5, 6]
    diffs.clear()
    started = time.monotonic()
    selectors.diff_stats(list(AgentSession.objects.select_related("repository")))
    assert diffs == [] and time.monotonic() - started < 2.0  # nothing changed: only for-each-ref ran
    agent_commit(sessions[0], {"more.txt": "more\n"})
    stats = selectors.diff_stats(list(AgentSession.objects.select_related("repository")))
    assert len(diffs) == 1 and stats[sessions[0].pk][0].additions == 2  # a new commit is seen at once


# -- review capacity -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_with_a_wip_limit_of_two_a_third_session_waits_queued_until_a_review_frees_room(
    fleet, worktrees_dir, monkeypatch
):
    from agents import tasks

    fleet.alpha.review_wip_limit = 2
    fleet.alpha.save()
    first = make_session(fleet, name="first", files={"a.txt": "a\n"})
    make_session(fleet, name="second", files={"b.txt": "b\n"})
    third = agent_services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Fix the failing test in shopcart",
        by=fleet.lead,
        repository=fleet.repo,
        start=False,
    )

    outcome = run_step(third.pk, 1, owner="test")
    third.refresh_from_db()
    assert outcome.result == "parked" and third.status == Status.QUEUED and third.steps == 0
    assert third.status_reason.startswith("review WIP limit: 2 sessions of Alpha await review")
    [wip] = selectors.wip_states(user=fleet.sto, pod="alpha")
    assert (wip.awaiting, wip.limit, wip.full, wip.waiting_to_start) == (2, 2, True, 1)

    enqueued = []
    monkeypatch.setattr(tasks, "enqueue_step_now", lambda **kw: enqueued.append(kw))
    tasks.tick()  # the beat leaves it queued while the pod's review queue is full
    assert not [kw for kw in enqueued if kw["session_id"] == third.pk]
    assert run_step(third.pk, 1, owner="test").result == "parked"  # and the step itself checks the limit too

    services.review_reject(session=first, reviewer=fleet.sto)
    enqueued.clear()
    tasks.tick()
    [call] = [kw for kw in enqueued if kw["session_id"] == third.pk]
    outcome = run_step(call["session_id"], call["step"], owner="test")
    third.refresh_from_db()
    assert outcome.result == "done" and third.status == Status.RUNNING and third.steps == 1
    [wip] = selectors.wip_states(user=fleet.sto, pod="alpha")
    assert (wip.awaiting, wip.full, wip.waiting_to_start) == (1, False, 0)


@pytest.mark.django_db(transaction=True)
def test_the_runtime_counts_stopped_work_with_commits_toward_the_wip_limit_like_the_queue(fleet, worktrees_dir):
    fleet.alpha.review_wip_limit = 2
    fleet.alpha.save()
    make_session(fleet, name="done", files={"a.txt": "a\n"})
    make_session(fleet, name="failed with work", files={"b.txt": "b\n"}, status=Status.FAILED)
    assert selectors.awaiting_review_count(pod_id=fleet.alpha.pk) == 2
    third = agent_services.session_launch(
        pod=fleet.alpha,
        sto=fleet.sto,
        goal="Fix the failing test in shopcart",
        by=fleet.lead,
        repository=fleet.repo,
        start=False,
    )
    run_step(third.pk, 1, owner="test")
    third.refresh_from_db()
    assert third.status == Status.QUEUED and third.steps == 0


# -- pages -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_queue_page_shows_rows_with_their_ingredients_and_the_wip_state(client, fleet, worktrees_dir):
    fleet.alpha.review_wip_limit = 1
    fleet.alpha.save()
    session = make_session(fleet, name="Touch <the> CI", files={".github/workflows/ci.yml": "on: push\n"})
    response = login(client, fleet.sto).get("/reviews/")
    page = response.content.decode()
    assert response.status_code == 200
    assert f'data-session-id="{session.pk}"' in page and "Touch &lt;the&gt; CI" in page
    assert "protected path(s): .github/workflows/ci.yml" in page and "no test run recorded" in page
    assert "1/1 awaiting review" in page and "WIP limit reached" in page
    assert "yours" in page
    assert login(client, fleet.outsider).get("/reviews/").content.decode().count("data-session-id=") == 0
    filtered = login(client, fleet.manager).get("/reviews/", {"pod": "bravo"}).content.decode()
    assert f'data-session-id="{session.pk}"' not in filtered


@pytest.mark.django_db
def test_the_diff_page_shows_files_commits_tests_and_handoff_with_escaped_coloured_lines(client, fleet, worktrees_dir):
    session = make_session(
        fleet,
        files={
            "shopcart/evil.py": 'def evil():\n    return "<script>alert(1)</script>"\n',
            "logo.png": "\x00binary\x00",
        },
        message="feat: add evil",
    )
    record_test_run(session, 0)
    AgentSession.objects.filter(pk=session.pk).update(
        handoff={"status": "done", "next_action": "review <it>", "do_not": ["push", "merge"]}
    )
    response = login(client, fleet.sto).get(f"/reviews/{session.pk}/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<span class="k">def</span>' in page and '<span class="nf">evil</span>' in page  # Pygments classes
    assert 'class="add"' in page and '<td class="mk">+</td>' in page
    assert "Binary file: not shown." in page
    assert "feat: add evil" in page and f"Agent-Session: {session.pk}" in page
    assert "python -m pytest -q" in page and "passed" in page
    assert "review &lt;it&gt;" in page and "push; merge" in page
    assert "Approve and merge into main" in page and "Request changes" in page


@pytest.mark.django_db
def test_a_large_diff_page_carries_only_the_first_small_files_and_loads_the_rest_per_file(client, fleet, worktrees_dir):
    files = {"a_small.py": "x = 1\n", "b_small.py": "y = 2\n"}
    files.update({f"c_big_{i}.py": "".join(f"value_{i}_{n} = {n}\n" for n in range(1000)) for i in range(5)})
    session = make_session(fleet, files=files)
    client = login(client, fleet.sto)
    page = client.get(f"/reviews/{session.pk}/").content.decode()
    assert page.count('data-loaded="true"') == 2 and page.count('data-loaded="false"') == 5
    assert "value_0_999" not in page and 'hx-trigger="revealed"' in page
    assert f'hx-get="/reviews/{session.pk}/file?path=c_big_3.py"' in page

    partial = client.get(f"/reviews/{session.pk}/file", {"path": "c_big_3.py"}, **HTMX)
    body = partial.content.decode()
    assert partial.status_code == 200 and "<html" not in body
    assert "value_3_999" in body and body.count('class="add"') == 1000
    whole = client.get(f"/reviews/{session.pk}/file", {"path": "c_big_3.py"})
    assert whole.status_code == 200 and "<html" in whole.content.decode()
    assert client.get(f"/reviews/{session.pk}/file", {"path": "../etc/passwd"}).status_code == 404


@pytest.mark.django_db
def test_an_outsider_cannot_open_the_diff_and_a_missing_session_is_404(client, fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    assert login(client, fleet.outsider).get(f"/reviews/{session.pk}/").status_code == 403
    assert client.get(f"/reviews/{session.pk}/file", {"path": "a.txt"}).status_code == 403
    assert client.get("/reviews/999999/").status_code == 404


@pytest.mark.django_db
def test_a_leader_sees_the_diff_without_decision_buttons(client, fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    page = login(client, fleet.leader).get(f"/reviews/{session.pk}/").content.decode()
    assert "Leaders read the fleet" in page and "Approve and merge" not in page


@pytest.mark.django_db
def test_a_missing_repository_shows_a_readable_error_not_a_crash(client, fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    fleet.repo.path = "/nonexistent/repo"
    fleet.repo.save()
    assert (
        "repository /nonexistent/repo does not exist"
        in login(client, fleet.sto).get(f"/reviews/{session.pk}/").content.decode()
    )
    assert "diff unavailable" in client.get("/reviews/").content.decode()
    partial = client.get(f"/reviews/{session.pk}/file", {"path": "a.txt"}, **HTMX)
    assert (
        partial.status_code == 200
        and "cannot be shown: repository /nonexistent/repo does not exist" in partial.content.decode()
    )
    assert client.get(f"/reviews/{session.pk}/file", {"path": "a.txt"}).status_code == 409


# -- disk hygiene ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cleanup_removes_worktrees_of_closed_sessions_only_and_reports_the_disk(fleet, worktrees_dir, capsys):
    old_failure = make_session(
        fleet, name="old failure", files={"a.txt": "a\n" * 1000}, status=Status.FAILED, hours_ago=48
    )
    new_failure = make_session(fleet, name="new failure", files={"b.txt": "b\n"}, status=Status.FAILED, hours_ago=1)
    awaiting = make_session(fleet, name="awaiting", files={"c.txt": "c\n"})
    running = make_session(fleet, name="running", files={"d.txt": "d\n"}, status=Status.RUNNING, hours_ago=48)
    before = selectors.worktrees_disk_usage()
    assert before > 0

    call_command("cleanup_worktrees", "--dry-run", "--older-than-hours", "24")
    out = capsys.readouterr().out
    assert f"session {old_failure.pk}: would remove" in out and "worktrees use" in out
    assert Path(old_failure.worktree_path).exists()

    call_command("cleanup_worktrees", "--older-than-hours", "24")
    out = capsys.readouterr().out
    assert f"session {old_failure.pk}: removed" in out
    assert not Path(old_failure.worktree_path).exists()
    for kept in (new_failure, awaiting, running):
        assert Path(kept.worktree_path).exists(), kept.name
    assert git(fleet.repo.path, "rev-parse", "--verify", old_failure.branch)  # the branch stays
    assert selectors.worktrees_disk_usage() < before
    [event] = AuditEvent.objects.filter(session_id=old_failure.pk, kind="session.worktree_removed")
    assert event.payload["reason"].startswith("cleanup: failed over 24 h ago") and event.payload["bytes"] > 0


@pytest.mark.django_db
def test_cleanup_finishes_a_rejection_whose_worktree_was_busy(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    AgentSession.objects.filter(pk=session.pk).update(lease_until=timezone.now() + timedelta(seconds=30))
    services.review_reject(session=session, reviewer=fleet.sto)
    assert Path(session.worktree_path).exists()  # a step was running: left for later
    AgentSession.objects.filter(pk=session.pk).update(lease_until=None)
    report = services.worktrees_cleanup(older_than_hours=24)
    assert [i.session_id for i in report.items if i.removed] == [session.pk]
    assert not Path(session.worktree_path).exists()
    assert git(fleet.repo.path, "branch", "--list", session.branch) == ""
    assert git(fleet.repo.path, "rev-parse", f"refs/archive/{session.branch}")


@pytest.mark.django_db
def test_the_periodic_task_cleans_up_too(fleet, worktrees_dir):
    from reviews.review_tasks import cleanup_worktrees

    session = make_session(fleet, files={"a.txt": "a\n"}, status=Status.CANCELLED, hours_ago=100)
    result = cleanup_worktrees.apply().get()
    assert result["removed"] == [session.pk] and result["freed_bytes"] > 0
    assert cleanup_worktrees.name == "reviews.tasks.cleanup_worktrees"
