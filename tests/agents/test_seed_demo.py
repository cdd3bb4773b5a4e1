"""The demo data: pods of 3–5 people with a lead, a manager and a leader, a real demo repository,
and N sessions each with an STO from its pod and a grant. Idempotent."""

import git
import pytest
from django.core.management import call_command

from agents.models import AgentSession, Grant, Pod, PodMembership, Repository, User

pytestmark = pytest.mark.django_db


def test_seeding_twice_still_makes_exactly_a_hundred_sessions(worktrees_dir, capsys):
    call_command("seed_demo", no_start=True)
    first = capsys.readouterr().out
    assert "login: manager /" in first
    call_command("seed_demo", no_start=True)
    assert AgentSession.objects.count() == 100
    assert Grant.objects.count() == 100
    assert "(0 new)" in capsys.readouterr().out


def test_the_demo_fleet_has_pods_owners_and_a_real_repository(worktrees_dir):
    call_command("seed_demo", agents=40, no_start=True, password="pw")
    assert User.objects.get(username="manager").role == User.Role.MANAGER
    assert User.objects.get(username="leader").role == User.Role.LEADER
    pods = Pod.objects.all()
    assert 15 <= pods.count() <= 25
    for pod in pods:
        members = PodMembership.objects.filter(pod=pod)
        assert 3 <= members.count() <= 5
        assert members.filter(role="lead").count() == 1
    for session in AgentSession.objects.select_related("pod", "sto"):
        assert PodMembership.objects.filter(pod=session.pod, user=session.sto).exists()
        assert session.grants.filter(revoked_at__isnull=True).count() == 1
    repo = git.Repo(Repository.objects.get(name="demo-shop").path)
    assert len(list(repo.iter_commits("main"))) >= 5
    personas = {
        tag
        for tags in AgentSession.objects.values_list("tags", flat=True)
        for tag in tags
        if tag.startswith("persona:")
    }
    assert {"persona:engineer", "persona:pusher", "persona:networker", "persona:ci-editor"} <= personas
    tonight = [g for g in Grant.objects.all() if g.not_before.hour == 22]
    assert tonight, "a few sessions are scheduled for tonight's 22:00–06:00 window"


def test_reset_removes_the_demo_sessions_and_seeds_again(worktrees_dir):
    call_command("seed_demo", agents=5, no_start=True)
    first_ids = set(AgentSession.objects.values_list("pk", flat=True))
    call_command("seed_demo", agents=5, no_start=True, reset=True)
    assert AgentSession.objects.count() == 5
    assert not first_ids & set(AgentSession.objects.values_list("pk", flat=True))


def test_demo_users_get_distinct_passwords_printed_once_and_the_manager_keeps_the_demo_one(worktrees_dir, capsys):
    import re

    from django.contrib.auth import authenticate
    from django.test import RequestFactory

    from agents.management.commands.seed_demo import DEFAULT_DEMO_PASSWORD

    call_command("seed_demo", agents=5, no_start=True)
    out = capsys.readouterr().out
    assert f"login: manager / {DEFAULT_DEMO_PASSWORD}" in out
    printed = dict(re.findall(r"([a-z0-9]+) / ([A-Za-z0-9_-]{16})", out))
    others = User.objects.exclude(username="manager")
    assert set(printed) == set(others.values_list("username", flat=True))
    assert len(set(printed.values())) == len(printed), "every demo user has their own password"
    request = RequestFactory().post("/login/")
    for username in ("leader", next(iter(set(printed) - {"leader"}))):
        assert authenticate(request, username=username, password=printed[username]) is not None
        assert authenticate(request, username=username, password=DEFAULT_DEMO_PASSWORD) is None
    assert authenticate(request, username="manager", password=DEFAULT_DEMO_PASSWORD) is not None

    call_command("seed_demo", agents=5, no_start=True)  # again: nobody's password is shown or changed
    again = capsys.readouterr().out
    assert not set(printed.values()) & set(re.findall(r"/ ([A-Za-z0-9_-]{16})", again))
    assert authenticate(request, username="leader", password=printed["leader"]) is not None


def test_same_password_gives_every_demo_user_the_given_one(worktrees_dir):
    from django.contrib.auth import authenticate
    from django.test import RequestFactory

    call_command("seed_demo", agents=3, no_start=True, password="pw-every-one", same_password=True)
    request = RequestFactory().post("/login/")
    for user in User.objects.all():
        assert authenticate(request, username=user.username, password="pw-every-one") is not None


def test_password_validators_refuse_weak_passwords(db):
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    for weak in ("short1", "password123", "12345678901234", "morgan-manager"):
        with pytest.raises(ValidationError):
            validate_password(weak, user=User(username="morgan-manager", first_name="Morgan"))
    validate_password("correct horse battery staple 42")


needs_claude_cli = pytest.mark.skipif(
    __import__("agents.runtime.claude_code", fromlist=["claude_binary"]).claude_binary() is None
    and not __import__("os").environ.get("CI"),
    reason="the Claude Code CLI is not installed (pip install -e '.[agents]'; bin/test installs it)",
)


@needs_claude_cli
def test_the_demo_has_claude_code_sessions_driven_offline_when_the_cli_is_installed(worktrees_dir, client, capsys):
    call_command("seed_demo", agents=4, claude_code=3, no_start=True, password="pw")
    assert "3 Claude Code sessions" in capsys.readouterr().out
    claude = list(AgentSession.objects.filter(agent_kind="claude-code").select_related("pod"))
    assert len(claude) == 3 and AgentSession.objects.filter(agent_kind="builtin").count() == 4
    assert {s.model for s in claude} == {"sim/engineer"}  # the offline model, through the broker
    assert all("demo" in s.tags and s.grants.get().allow for s in claude)
    assert all("Bash(git commit *)" in s.grants.get().allow for s in claude), "they may commit their work"
    call_command("seed_demo", agents=4, claude_code=3, no_start=True, password="pw")  # idempotent
    assert AgentSession.objects.filter(agent_kind="claude-code").count() == 3
    client.force_login(User.objects.get(username="manager"))
    page = client.get(f"/?pod={claude[0].pod.slug}").content.decode()
    assert 'class="agent-kind"' in page and "Claude Code" in page  # the tile says who works it


def test_without_the_cli_the_demo_has_no_claude_code_sessions_and_says_so(worktrees_dir, capsys, monkeypatch):
    from agents.runtime import claude_code

    monkeypatch.setattr(claude_code, "claude_binary", lambda: None)
    call_command("seed_demo", agents=2, claude_code=3, no_start=True, password="pw")
    out = capsys.readouterr().out
    assert not AgentSession.objects.filter(agent_kind="claude-code").exists()
    (line,) = [line for line in out.splitlines() if "Claude Code" in line]
    assert "not installed" in line and "[agents]" in line


def test_bin_start_seeds_the_demo_with_its_claude_code_sessions(db, monkeypatch):
    from django.core import management

    from agents.management.commands.seed_demo import CLAUDE_CODE_SESSIONS
    from controlroom import launcher

    calls = []
    monkeypatch.setattr(management, "call_command", lambda *args, **kwargs: calls.append(args))
    options = launcher.Options(host="127.0.0.1", port=8000, workers=1, concurrency=1, pool="threads", seed=True)
    launcher.prepare_database(options=options, password="pw")
    assert ("seed_demo", "--password", "pw", "--claude-code", str(CLAUDE_CODE_SESSIONS)) in calls
    assert CLAUDE_CODE_SESSIONS >= 1


@pytest.mark.slow
@needs_claude_cli
@pytest.mark.django_db(transaction=True)
def test_a_demo_claude_code_session_runs_to_done_on_a_real_worker(celery_workers, capsys):
    from agents.models import Status
    from tests.conftest import wait_until

    pool = celery_workers(processes=1, concurrency=2)
    call_command("seed_demo", agents=0, claude_code=1, password="pw")
    session = AgentSession.objects.get(agent_kind="claude-code")
    wait_until(
        lambda: AgentSession.objects.get(pk=session.pk).is_terminal,
        timeout=240,
        interval=1.0,
        message=lambda: f"{AgentSession.objects.get(pk=session.pk).status_reason}\n{pool.log_tail()}",
    )
    session.refresh_from_db()
    assert session.status == Status.SUCCEEDED, (session.status, session.status_reason, pool.log_tail())
    repo = git.Repo(session.repository.path)
    (commit,) = list(repo.iter_commits(f"main..{session.branch}"))
    assert f"Agent-Session: {session.pk}" in commit.message
    assert "the tests pass" in session.summary
