"""Several worker hosts without a shared disk: each keeps its own clone and worktrees, pushes every
commit to the central repository, and a lost host's sessions carry on elsewhere from their branch."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from agents import hosts, services
from agents.dispatch import enqueue_step_on_commit
from agents.models import AgentSession, AgentStep, Status, ToolCall, WorkerHost
from agents.tasks import tick
from audit.models import AuditEvent
from bench.loopback_model import LoopbackModel
from tests.agents.test_runtime import launch
from tests.conftest import WorkerPool, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

PLAN = [
    ("run_command", {"command": "echo step-{n} >> runs.log"}),
    ("git_commit", {"message": "step {n}: runs.log"}),
    ("run_command", {"command": "echo step-{n} >> runs.log"}),
    ("git_commit", {"message": "step {n}: runs.log"}),
    ("run_command", {"command": "echo step-{n} >> runs.log"}),
    ("git_commit", {"message": "step {n}: runs.log"}),
]


def _is_ancestor(repo: Path, sha: str, branch: str) -> bool:
    done = subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", sha, f"refs/heads/{branch}"])
    return done.returncode == 0


@pytest.mark.slow
def test_two_hosts_one_sigkilled_mid_run_every_session_finishes_on_the_other(fleet, tmp_path, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "HOST_LOST_AFTER_S": 6, "STALE_AFTER_S": 8}
    common = {"WORKTREE_SOURCE": "clone", "STEP_LEASE_S": "3", "HOST_LOST_AFTER_S": "6"}
    pools = []
    with LoopbackModel(latency_s=2.0, plan=PLAN) as model:
        try:
            for name in ("host-a", "host-b"):
                pools.append(
                    WorkerPool(
                        worktrees=tmp_path / name,
                        concurrency=15,  # so that neither host reserves every session's first step
                        pool="threads",
                        label=name,
                        extra_env={**common, "WORKER_HOST": name},
                    ).start()
                )
            host_a, host_b = pools
            # both hosts are up before the sessions are launched: they share the first steps
            wait_until(
                lambda: WorkerHost.objects.filter(name__in=["host-a", "host-b"]).count() == 2,
                timeout=90,
                message=lambda: host_a.log_tail() + host_b.log_tail(),
            )
            with transaction.atomic():
                ids = []
                for index in range(30):
                    session = launch(
                        fleet,
                        goal=f"Host session {index}: log and commit",
                        model="openai/loopback",
                        api_base=model.api_base,
                        spec=services.GrantSpec(mode="autonomous"),
                        seed=index,
                    )
                    enqueue_step_on_commit(session_id=session.pk, step=1, priority=session.priority)
                    ids.append(session.pk)

            def under_way() -> bool:
                rows = AgentSession.objects.filter(pk__in=ids).values_list("worker_host", "steps")
                homes = {host for host, steps in rows if steps >= 2}
                return homes == {"host-a", "host-b"} and all(steps >= 2 for _, steps in rows)

            wait_until(
                under_way,
                timeout=120,
                interval=0.2,
                message=lambda: (
                    f"{list(AgentSession.objects.filter(pk__in=ids, status='failed').values_list('status_reason', flat=True))}\n"
                    f"{host_a.log_tail()}{host_b.log_tail()}"
                ),
            )
            host_a.kill(host_a.procs[0])  # SIGKILL mid-run: its disk (clone, worktrees) is written off
            killed_at = timezone.now()
            on_a = set(
                AgentSession.objects.filter(pk__in=ids, worker_host="host-a")
                .exclude(status=Status.SUCCEEDED)
                .values_list("pk", flat=True)
            )
            assert on_a  # sessions were mid-run there

            def finished() -> bool:
                tick()  # housekeeping: host A stops beating, is marked lost, its sessions move to B
                return not AgentSession.objects.filter(pk__in=ids).exclude(status=Status.SUCCEEDED).exists()

            wait_until(
                finished,
                timeout=240,
                interval=1.0,
                message=lambda: (
                    f"{list(AgentSession.objects.filter(pk__in=ids).exclude(status=Status.SUCCEEDED).values_list('pk', 'status', 'worker_host', 'steps', 'current_activity'))}\n{host_b.log_tail()}"
                ),
            )
        finally:
            for pool in pools:
                pool.stop()
    sessions = list(AgentSession.objects.filter(pk__in=ids))
    assert all(s.status == Status.SUCCEEDED for s in sessions)
    assert {s.worker_host for s in sessions if s.pk in on_a} == {"host-b"}  # they finished on the other host
    # the audit log names the lost host, and each moved session says where it came from
    lost = AuditEvent.objects.get(kind="host.lost")
    assert lost.payload["host"] == "host-a" and set(lost.payload["sessions"]) >= on_a
    moved = AuditEvent.objects.filter(kind="session.moved", session_id__in=on_a)
    assert {e.session_id for e in moved} == on_a and {e.payload["from_host"] for e in moved} == {"host-a"}
    central = Path(fleet.repo.path)
    for session in sessions:
        # every commit that reached the central repository before the kill is on the branch there
        commits = AuditEvent.objects.filter(session_id=session.pk, kind="git.commit", created_at__lte=killed_at)
        for event in commits:
            if event.payload["in_central_repository"]:
                assert _is_ancestor(central, event.payload["sha"], session.branch), (session.pk, event.payload)
        # nothing ran twice: each step's command ran at most once (from the records), and the log
        # on the branch holds each line at most once, in order
        commands = list(
            ToolCall.objects.filter(session=session, name="run_command", state="done").values_list("action", flat=True)
        )
        assert len(commands) == len(set(commands)), (session.pk, commands)
        log = subprocess.run(
            ["git", "-C", str(central), "show", f"refs/heads/{session.branch}:runs.log"],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        assert log == sorted(set(log), key=lambda line: int(line.split("-")[1])), (session.pk, log)
        # what host A had not pushed is reported lost, never silently dropped
        lost_edits = AuditEvent.objects.filter(session_id=session.pk, kind="worktree.lost")
        expected_lines = {f"step-{n}" for n in (1, 3, 5)}
        missing = expected_lines - set(log)
        if missing:
            reported = " ".join(" ".join(e.payload["lost"]) for e in lost_edits)
            for line in missing:
                assert line in reported, (session.pk, missing, reported)


def test_a_host_that_stops_beating_is_lost_and_its_sessions_move_with_their_unpushed_edits_named(
    fleet, settings, worktrees_dir
):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "HOST_LOST_AFTER_S": 30}
    now = timezone.now()
    hosts.host_beat(name="far", now=now - timedelta(seconds=31), worktree_source="clone", worktrees_dir="/far")
    hosts.host_beat(name="near", now=now, worktree_source="clone", worktrees_dir="/near")
    running = launch(fleet, goal="running on far")
    step = AgentStep.objects.create(session=running, number=1)
    commit = ToolCall.objects.create(
        session=running, step=step, index=0, call_id="c0", name="git_commit", action="git_commit: one", state="done"
    )
    ToolCall.objects.create(
        session=running, step=step, index=1, call_id="c1", name="write_file", action="write_file: a.txt", state="done"
    )
    ToolCall.objects.create(
        session=running, step=step, index=2, call_id="c2", name="read_file", action="read_file: a.txt", state="done"
    )
    ToolCall.objects.create(
        session=running,
        step=step,
        index=3,
        call_id="c3",
        name="run_command",
        action="run_command: make",
        state="intended",
    )
    AgentSession.objects.filter(pk=running.pk).update(pushed_commit="a" * 40, pushed_call=commit)
    done = launch(fleet, goal="finished on far")
    elsewhere = launch(fleet, goal="running on near")
    AgentSession.objects.filter(pk__in=[running.pk, done.pk]).update(worker_host="far", status=Status.RUNNING)
    AgentSession.objects.filter(pk=done.pk).update(status=Status.SUCCEEDED)
    AgentSession.objects.filter(pk=elsewhere.pk).update(worker_host="near", status=Status.RUNNING)
    assert hosts.hosts_mark_lost(now=now) == ["far"]
    assert hosts.hosts_mark_lost(now=now) == []  # once
    running.refresh_from_db()
    assert running.worker_host == ""  # its next step goes to the shared queue
    assert AgentSession.objects.get(pk=done.pk).worker_host == "far"  # finished work stays where it was
    assert AgentSession.objects.get(pk=elsewhere.pk).worker_host == "near"
    event = AuditEvent.objects.get(kind="host.lost")
    assert event.payload["host"] == "far" and event.payload["sessions"] == [running.pk]
    assert AuditEvent.objects.get(kind="session.moved", session_id=running.pk).payload["from_host"] == "far"
    # what the lost host had not pushed is named: the edits after the last pushed commit, reads aside
    lost = AuditEvent.objects.get(kind="worktree.lost", session_id=running.pk).payload
    assert lost["host"] == "far" and lost["last_pushed_commit"] == "a" * 40
    assert lost["lost"] == ["write_file: a.txt", "run_command: make (interrupted: it may or may not have taken effect)"]
    # back again: recorded, and it takes new work (its old sessions have moved on)
    hosts.host_beat(name="far", now=timezone.now(), worktree_source="clone", worktrees_dir="/far")
    assert WorkerHost.objects.get(name="far").lost_at is None
    assert AuditEvent.objects.filter(kind="host.returned", payload__host="far").count() == 1


def test_a_manager_sets_where_hosts_clone_a_repository_and_it_is_audited(fleet, capsys):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="refused"):
        call_command("repository_url", fleet.repo.name, "ssh://git@example.com/shop.git", "--as", fleet.lead.username)
    with pytest.raises(CommandError, match="git URL"):
        call_command("repository_url", fleet.repo.name, "not a url", "--as", fleet.manager.username)
    call_command("repository_url", fleet.repo.name, "ssh://git@example.com/shop.git", "--as", fleet.manager.username)
    fleet.repo.refresh_from_db()
    assert fleet.repo.remote_url == "ssh://git@example.com/shop.git"
    event = AuditEvent.objects.get(kind="repository.remote_changed")
    assert event.actor_user_id == fleet.manager.pk and event.payload["to"] == "ssh://git@example.com/shop.git"
    call_command("repository_url", fleet.repo.name)
    assert "ssh://git@example.com/shop.git (remote_url)" in capsys.readouterr().out


def test_only_the_host_holding_a_clone_worktree_touches_it(fleet, settings):
    settings.CONTROLROOM = {**settings.CONTROLROOM, "WORKER_HOST": "here"}
    session = launch(fleet, goal="where is my worktree")
    now = timezone.now()
    hosts.host_beat(name="shared-disk", now=now, worktree_source="direct", worktrees_dir="/w")
    hosts.host_beat(name="elsewhere", now=now, worktree_source="clone", worktrees_dir="/e")
    hosts.host_beat(name="here", now=now, worktree_source="clone", worktrees_dir="/h")
    for home, expected in (("", Path(fleet.repo.path)), ("shared-disk", Path(fleet.repo.path)), ("elsewhere", None)):
        session.worker_host = home
        assert hosts.worktree_repository(session) == expected, home
    session.worker_host = "here"
    mirror = hosts.worktree_repository(session)
    assert mirror is not None and mirror.parent == Path(settings.CONTROLROOM["WORKTREES_DIR"]) / ".repos"
