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
