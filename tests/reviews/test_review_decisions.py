"""Review decisions on real git: approve and merge, conflicts, request changes, reject, revert,
and who may decide (web, service and CLI)."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from agents import authority
from agents import services as agent_services
from agents.models import AgentSession, AgentStep, ReviewState, Status, ToolCall, TranscriptEntry
from agents.runtime.worktrees import ensure_worktree, remove_worktree
from audit.models import AuditEvent
from reviews import selectors, services
from reviews.models import Review
from tests.personas import PASSWORD
from tests.scripted_model import ScriptedModel, calls, finish

# -- helpers shared by the review tests -----------------------------------------------------------


def git(cwd, *argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=cwd, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


def agent_commit(session: AgentSession, files: dict[str, str], message: str = "agent work") -> str:
    """Commit in the session's worktree as the agent would (its identity and trailers)."""
    wt = Path(session.worktree_path)
    for name, content in files.items():
        (wt / name).parent.mkdir(parents=True, exist_ok=True)
        (wt / name).write_text(content)
    git(wt, "add", "-A")
    env_args = ["-c", f"user.name=Agent #{session.pk}", "-c", f"user.email=agent-{session.pk}@controlroom.invalid"]
    git(
        wt,
        *env_args,
        "commit",
        "-q",
        "-m",
        f"{message}\n\nAgent-Session: {session.pk}\nDelegated-By: {session.sto.username}",
    )
    sha = git(wt, "rev-parse", "HEAD")
    step, _ = AgentStep.objects.get_or_create(session=session, number=1)
    ToolCall.objects.create(
        session=session,
        step=step,
        index=ToolCall.objects.filter(step=step).count(),
        call_id=sha[:8],
        name="git_commit",
        state=ToolCall.State.DONE,
        action=f'git_commit: "{message}"',
    )
    return sha


def make_session(
    fleet,
    *,
    files: dict[str, str] | None = None,
    status: str = Status.SUCCEEDED,
    sto=None,
    pod=None,
    by=None,
    name: str = "Add a helper",
    hours_ago: float = 1.0,
    message: str = "agent work",
) -> AgentSession:
    """A session whose agent committed ``files`` on its branch and then ended with ``status``."""
    session = agent_services.session_launch(
        pod=pod or fleet.alpha,
        sto=sto or fleet.sto,
        goal=name,
        name=name,
        by=by or fleet.lead,
        repository=fleet.repo,
        start=False,
    )
    base = ensure_worktree(
        repo_path=Path(fleet.repo.path),
        base_branch=session.base_branch,
        branch=session.branch,
        worktree_path=Path(session.worktree_path),
    )
    session.base_commit = base
    if files:
        agent_commit(session, files, message)
    finished = timezone.now() - timedelta(hours=hours_ago)
    AgentSession.objects.filter(pk=session.pk).update(
        status=status,
        base_commit=base,
        steps=3,
        finished_at=finished if status != Status.BLOCKED else None,
        updated_at=finished,
    )
    return AgentSession.objects.select_related("pod", "sto", "repository").get(pk=session.pk)


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def events(session, kind):
    return list(AuditEvent.objects.filter(session_id=session.pk, kind=kind).order_by("id"))


# -- approve ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_approving_a_sim_sessions_work_puts_its_commits_on_main_and_removes_the_worktree(fleet, worktrees_dir):
    from tests.agents.test_runtime import drive, launch

    session = drive(launch(fleet))
    assert session.status == Status.SUCCEEDED, session.status_reason
    repo = fleet.repo.path
    main_before = git(repo, "rev-parse", "main")
    agent_commits = git(repo, "rev-list", f"main..{session.branch}").split()
    assert agent_commits
    assert session in selectors.sessions_awaiting_review(user=fleet.sto)

    review = services.review_approve(session=session, reviewer=fleet.sto, comment="looks right")

    session.refresh_from_db()
    assert session.review_state == ReviewState.APPROVED and session.status == Status.SUCCEEDED
    assert git(repo, "rev-list", f"main..{session.branch}") == ""  # every agent commit is on main
    assert git(repo, "rev-list", f"{main_before}..main").split() == agent_commits  # fast-forward: exactly those
    assert f"Agent-Session: {session.pk}" in git(repo, "log", "-1", "--format=%B", "main")
    assert git(repo, "status", "--porcelain") == ""  # main's working tree follows
    assert not Path(session.worktree_path).exists()
    assert git(repo, "rev-parse", "--verify", session.branch)  # the branch is kept
    assert review.details["method"] == "fast-forward" and review.details["base_after"] == git(repo, "rev-parse", "main")
    [approved] = events(session, "review.approved")
    assert approved.actor_user_id == fleet.sto.pk and approved.payload["comment"] == "looks right"
    assert events(session, "session.worktree_removed")
    assert session not in selectors.sessions_awaiting_review(user=fleet.sto)


@pytest.mark.django_db
def test_approving_after_main_moved_on_makes_a_merge_commit_by_the_reviewer(fleet, worktrees_dir):
    session = make_session(fleet, files={"shopcart/helper.py": "def helper():\n    return 1\n"})
    tip = git(session.worktree_path, "rev-parse", "HEAD")
    repo = fleet.repo.path
    (Path(repo) / "HUMAN.md").write_text("a human's change\n")
    git(repo, "add", "HUMAN.md")
    git(repo, "-c", "user.name=Human", "-c", "user.email=h@example.com", "commit", "-q", "-m", "human change")
    main_before = git(repo, "rev-parse", "main")

    review = services.review_approve(session=session, reviewer=fleet.lead)

    assert review.details["method"] == "merge"
    assert git(repo, "log", "-1", "--format=%P", "main").split() == [main_before, tip]
    body = git(repo, "log", "-1", "--format=%an|%B", "main")
    assert (
        body.startswith("lena|Merge session #")
        and f"Agent-Session: {session.pk}" in body
        and "Reviewed-By: lena" in body
    )
    assert (Path(repo) / "shopcart/helper.py").exists() and (Path(repo) / "HUMAN.md").exists()


@pytest.mark.django_db
def test_a_conflicting_branch_leaves_main_the_branch_and_the_worktree_untouched_and_names_the_files(
    client, fleet, worktrees_dir
):
    session = make_session(fleet, files={"README.md": "# Agent's readme\n"})
    repo = fleet.repo.path
    (Path(repo) / "README.md").write_text("# A human's readme\n")
    git(repo, "-c", "user.name=Human", "-c", "user.email=h@example.com", "commit", "-qam", "human readme")
    main_before, tip = git(repo, "rev-parse", "main"), git(repo, "rev-parse", session.branch)
    (Path(session.worktree_path) / "wip.txt").write_text("uncommitted\n")

    with pytest.raises(services.ReviewConflict) as caught:
        services.review_approve(session=session, reviewer=fleet.sto)
    assert caught.value.files == ["README.md"]
    assert "README.md" in str(caught.value)
    assert git(repo, "rev-parse", "main") == main_before and git(repo, "rev-parse", session.branch) == tip
    assert git(repo, "status", "--porcelain") == ""
    assert (Path(session.worktree_path) / "wip.txt").read_text() == "uncommitted\n"
    assert git(session.worktree_path, "rev-parse", "HEAD") == tip
    session.refresh_from_db()
    assert session.review_state == ReviewState.NONE and not Review.objects.filter(session=session).exists()
    [conflict] = events(session, "review.merge_conflict")
    assert conflict.payload["files"] == ["README.md"] and conflict.actor_user_id == fleet.sto.pk

    response = login(client, fleet.sto).post(f"/reviews/{session.pk}/decide/approve")
    assert response.status_code == 409
    page = response.content.decode()
    assert "Conflicting files" in page and "<code>README.md</code>" in page
    assert git(repo, "rev-parse", "main") == main_before


# -- request changes ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_requested_changes_reach_the_agents_next_iteration_and_the_work_returns_to_the_queue(fleet, worktrees_dir):
    from tests.agents.test_runtime import drive, scripted

    comment = "Please also cover the empty cart in a test"
    first = [
        calls([("write_file", {"path": "NOTES.md", "content": "first pass\n"})]),
        calls([("git_commit", {"message": "docs: first pass"})]),
        finish("first pass done"),
    ]
    spec = agent_services.GrantSpec(mode="edits", allow=("Git(commit)",))
    with ScriptedModel(first) as model:
        session = drive(scripted(fleet, model, spec=spec))
        assert session.status == Status.SUCCEEDED, session.status_reason
        remove_worktree(repo_path=Path(fleet.repo.path), worktree_path=Path(session.worktree_path))  # disk hygiene ran
        assert session in selectors.sessions_awaiting_review(user=fleet.sto)

        review = services.review_request_changes(session=session, reviewer=fleet.sto, comment=comment)

        session.refresh_from_db()
        assert session.status == Status.RUNNING and session.review_state == ReviewState.CHANGES_REQUESTED
        assert session.iteration == 2 and session.finished_at is None
        assert (
            Path(session.worktree_path, "NOTES.md").read_text() == "first pass\n"
        )  # worktree re-created from the branch
        brief = TranscriptEntry.objects.filter(session=session, iteration=2, role="user").first()
        assert f"Changes requested: {comment}" in brief.content
        assert session not in selectors.sessions_awaiting_review(user=fleet.sto)  # at work again
        assert review.decision == Review.Decision.REQUEST_CHANGES and review.comment == comment
        [event] = events(session, "review.changes_requested")
        assert event.payload["comment"] == comment and event.actor_user_id == fleet.sto.pk

        seen = len(model.requests)
        model.add(
            calls([("write_file", {"path": "NOTES.md", "content": "first pass\nempty cart covered\n"})]),
            calls([("git_commit", {"message": "test: cover the empty cart"})]),
            finish("addressed the comment"),
        )
        session = drive(session)

    assert session.status == Status.SUCCEEDED
    later = model.requests[seen:]
    assert later, "the agent was not called again"
    for request in later:
        contents = " ".join(str(m.get("content") or "") for m in request["messages"])
        assert f"Changes requested: {comment}" in contents
        assert "first pass done" not in contents  # a fresh context, not the old transcript
    assert session in selectors.sessions_awaiting_review(user=fleet.sto)
    [row] = [r for r in selectors.review_queue(user=fleet.sto) if r.session.pk == session.pk]
    assert row.last_review.decision == Review.Decision.REQUEST_CHANGES
    assert selectors.awaiting_review_count(pod_id=fleet.alpha.pk) == 1
    assert len(git(fleet.repo.path, "rev-list", f"main..{session.branch}").split()) == 2


@pytest.mark.django_db
def test_request_changes_without_a_comment_is_refused_and_changes_nothing(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    with pytest.raises(ValidationError, match="Say what should change"):
        services.review_request_changes(session=session, reviewer=fleet.sto, comment="   ")
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED and session.review_state == ReviewState.NONE and session.iteration == 1


@pytest.mark.django_db
def test_request_changes_on_a_session_whose_grant_expired_warns_that_it_needs_a_new_grant(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    grant = session.grants.get()
    type(grant).objects.filter(pk=grant.pk).update(
        not_before=timezone.now() - timedelta(hours=10), expires_at=timezone.now() - timedelta(hours=1)
    )
    review = services.review_request_changes(session=session, reviewer=fleet.sto, comment="rename it")
    assert "issue a new grant" in review.details["warning"]


# -- reject ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_reject_keeps_the_commits_under_the_archive_ref_and_removes_the_worktree(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    first = git(session.worktree_path, "rev-parse", "HEAD")
    second = agent_commit(session, {"b.txt": "b\n"}, "second")
    repo = fleet.repo.path

    review = services.review_reject(session=session, reviewer=fleet.lead, comment="not what we need")

    session.refresh_from_db()
    assert session.review_state == ReviewState.REJECTED and session.status == Status.SUCCEEDED
    assert not Path(session.worktree_path).exists()
    archived = git(repo, "rev-list", f"refs/archive/{session.branch}").split()
    assert first in archived and second in archived
    assert git(repo, "rev-parse", f"refs/archive/{session.branch}") == second
    assert git(repo, "branch", "--list", session.branch) == ""  # moved under the archive ref
    assert review.details["archive_ref"] == f"refs/archive/{session.branch}"
    assert events(session, "review.rejected")[0].payload["comment"] == "not what we need"
    assert session not in selectors.sessions_awaiting_review(user=fleet.lead)
    # the rejected work can still be looked at
    diff = selectors.session_diff(session=session)
    assert diff.archived and {f.path for f in diff.stat.files} == {"a.txt", "b.txt"}


@pytest.mark.django_db
def test_rejecting_a_blocked_session_cancels_it(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"}, status=Status.BLOCKED)
    assert session in selectors.sessions_awaiting_review(user=fleet.sto)
    services.review_reject(session=session, reviewer=fleet.sto)
    session.refresh_from_db()
    assert session.status == Status.CANCELLED and session.review_state == ReviewState.REJECTED


# -- revert ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_revert_puts_a_revert_commit_on_main_and_records_it(fleet, worktrees_dir):
    session = make_session(fleet, files={"shopcart/helper.py": "def helper():\n    return 1\n"})
    repo = fleet.repo.path
    approval = services.review_approve(session=session, reviewer=fleet.sto)
    assert (Path(repo) / "shopcart/helper.py").exists()
    with pytest.raises(ValidationError, match="already approved"):
        services.review_approve(session=session, reviewer=fleet.sto)

    review = services.review_revert(session=session, reviewer=fleet.manager, comment="broke prod")

    session.refresh_from_db()
    assert session.review_state == ReviewState.REVERTED
    assert git(repo, "rev-parse", "main") == review.details["revert_commit"]
    assert git(repo, "log", "-1", "--format=%P", "main") == approval.details["base_after"]
    assert not (Path(repo) / "shopcart/helper.py").exists()
    assert f"Reverted-By: {fleet.manager.username}" in git(repo, "log", "-1", "--format=%B", "main")
    [event] = events(session, "review.reverted")
    assert (
        event.payload["revert_commit"] == review.details["revert_commit"]
        and event.payload["merged_method"] == "fast-forward"
    )
    with pytest.raises(ValidationError, match="Only approved"):
        services.review_revert(session=session, reviewer=fleet.manager)


@pytest.mark.django_db
def test_work_that_was_never_approved_cannot_be_reverted(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    with pytest.raises(ValidationError, match="Only approved"):
        services.review_revert(session=session, reviewer=fleet.sto)


@pytest.mark.django_db
def test_a_running_session_cannot_be_approved_yet(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"}, status=Status.RUNNING)
    with pytest.raises(ValidationError, match="once it has finished"):
        services.review_approve(session=session, reviewer=fleet.sto)


# -- who may decide ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["sto", "lead", "manager"])
def test_the_sto_the_pod_lead_and_a_manager_may_approve(fleet, worktrees_dir, who):
    session = make_session(fleet, files={"a.txt": "a\n"})
    services.review_approve(session=session, reviewer=getattr(fleet, who))
    session.refresh_from_db()
    assert session.review_state == ReviewState.APPROVED


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["outsider", "leader", "member"])
@pytest.mark.parametrize("decision", sorted(services.DECISIONS))
def test_a_member_of_another_pod_a_leader_and_a_pod_member_who_is_not_the_sto_cannot_decide(
    fleet, worktrees_dir, who, decision
):
    session = make_session(fleet, files={"a.txt": "a\n"})
    main_before = git(fleet.repo.path, "rev-parse", "main")
    with pytest.raises(authority.NotAllowed):
        services.DECISIONS[decision](session=session, reviewer=getattr(fleet, who), comment="x")
    session.refresh_from_db()
    assert session.review_state == ReviewState.NONE and session.status == Status.SUCCEEDED
    assert git(fleet.repo.path, "rev-parse", "main") == main_before and Path(session.worktree_path).exists()
    [refused] = events(session, "review.refused")
    assert refused.actor_user_id == getattr(fleet, who).pk and refused.payload["decision"] == decision.replace("-", "_")


@pytest.mark.django_db
def test_a_request_from_inside_an_agent_session_is_refused_even_with_the_stos_name(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    with pytest.raises(authority.NotAllowed, match="Agents cannot make review decisions"):
        services.review_approve(session=session, reviewer=fleet.sto, acting_session_id=session.pk)
    [refused] = events(session, "review.refused")
    assert refused.payload["acting_session"] == session.pk
    assert session.review_state == ReviewState.NONE


def test_an_agents_command_is_recognised_by_its_identity_or_its_worktree(settings, tmp_path):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "WORKTREES_DIR": tmp_path / "wt"}
    (tmp_path / "wt" / "s12" / "src").mkdir(parents=True)
    assert services.acting_agent_session(environ={"GIT_AUTHOR_EMAIL": "agent-7@controlroom.invalid"}, cwd=tmp_path) == 7
    assert services.acting_agent_session(environ={}, cwd=tmp_path / "wt" / "s12" / "src") == 12
    assert services.acting_agent_session(environ={"GIT_AUTHOR_EMAIL": "sam@example.com"}, cwd=tmp_path) is None


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["outsider", "leader"])
def test_the_web_answers_403_to_an_outsider_and_a_leader_and_records_it(client, fleet, worktrees_dir, who):
    session = make_session(fleet, files={"a.txt": "a\n"})
    response = login(client, getattr(fleet, who)).post(f"/reviews/{session.pk}/decide/approve", {"comment": "ok"})
    assert response.status_code == 403
    session.refresh_from_db()
    assert session.review_state == ReviewState.NONE
    assert events(session, "review.refused")[0].actor_user_id == getattr(fleet, who).pk


@pytest.mark.django_db
def test_the_web_approves_for_the_sto_and_returns_to_the_queue(client, fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    response = login(client, fleet.sto).post(f"/reviews/{session.pk}/decide/approve", follow=True)
    assert response.redirect_chain[-1][0] == "/reviews/"
    assert "merged into main" in response.content.decode()
    session.refresh_from_db()
    assert session.review_state == ReviewState.APPROVED


@pytest.mark.django_db
def test_the_web_asks_for_a_comment_when_requesting_changes(client, fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    response = login(client, fleet.sto).post(f"/reviews/{session.pk}/decide/request-changes", {"comment": ""})
    assert response.status_code == 400 and "Say what should change" in response.content.decode()


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_cli_approves_and_reports_the_merge(fleet, worktrees_dir, capsys):
    session = make_session(fleet, files={"a.txt": "a\n"})
    call_command("review", str(session.pk), "approve", "--as", "sam")
    assert "merged into main (fast-forward)" in capsys.readouterr().out
    session.refresh_from_db()
    assert session.review_state == ReviewState.APPROVED


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["otto", "leo"])
def test_the_cli_refuses_an_outsider_and_a_leader_with_an_error_and_records_it(fleet, worktrees_dir, who):
    session = make_session(fleet, files={"a.txt": "a\n"})
    with pytest.raises(CommandError, match="refused"):
        call_command("review", str(session.pk), "reject", "--as", who)
    assert events(session, "review.refused")[0].payload["who"] == who


@pytest.mark.django_db
def test_the_cli_refuses_a_run_from_an_agents_environment(fleet, worktrees_dir, monkeypatch):
    session = make_session(fleet, files={"a.txt": "a\n"})
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", f"agent-{session.pk}@controlroom.invalid")
    with pytest.raises(CommandError, match="Agents cannot make review decisions"):
        call_command("review", str(session.pk), "approve", "--as", "sam")
    [refused] = events(session, "review.refused")
    assert refused.payload["acting_session"] == session.pk
    session.refresh_from_db()
    assert session.review_state == ReviewState.NONE


@pytest.mark.django_db
def test_the_cli_explains_bad_input(fleet, worktrees_dir):
    session = make_session(fleet, files={"a.txt": "a\n"})
    with pytest.raises(CommandError, match="no agent session with id '999999'"):
        call_command("review", "999999", "approve", "--as", "sam")
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("review", str(session.pk), "approve", "--as", "nobody")
    with pytest.raises(CommandError, match="comment: Say what should change"):
        call_command("review", str(session.pk), "request-changes", "--as", "sam")


@pytest.mark.django_db
def test_the_cli_lists_the_conflicting_files(fleet, worktrees_dir):
    session = make_session(fleet, files={"README.md": "# agent\n"})
    (Path(fleet.repo.path) / "README.md").write_text("# human\n")
    git(fleet.repo.path, "-c", "user.name=H", "-c", "user.email=h@example.com", "commit", "-qam", "human")
    with pytest.raises(CommandError, match=r"conflicting files:\n  README.md"):
        call_command("review", str(session.pk), "approve", "--as", "lena")


@pytest.mark.slow
def test_the_cli_exits_non_zero_on_an_error(tmp_path):
    import sys

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "manage.py", "review", "1", "approve"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "DATA_DIR": str(tmp_path)},
    )
    assert result.returncode != 0 and "--as" in result.stderr
