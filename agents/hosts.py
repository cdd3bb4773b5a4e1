"""Worker hosts: services for the machines that run agent steps (writes with their audit events).

A worker host keeps its sessions' worktrees on its own disk (``WORKTREES_DIR``) and consumes its
own queue (``host.<name>``, see agents/dispatch.py) besides the shared one. Every worker process
beats (agents/runtime/leases.py → :func:`host_beat`); the housekeeping tick marks a host that has
not beaten for ``HOST_LOST_AFTER_S`` as *lost* (:func:`hosts_mark_lost`) and moves its unfinished
sessions off it: their next step goes to the shared queue, and the host that takes it recreates the
worktree from the session branch — which, with ``WORKTREE_SOURCE=clone``, each commit pushed to the
control room's central repository. What was not pushed — commits, and edits since the last pushed
commit — is reported as lost in the audit log, naming the host, never silently dropped.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents.authority import NotAllowed
from agents.dispatch import enqueue_step_on_commit
from agents.events import send_on_commit
from agents.models import TERMINAL_STATUSES, AgentSession, Repository, Status, ToolCall, User, WorkerHost
from agents.runtime import mirrors
from audit.log import record

logger = logging.getLogger(__name__)

# tools whose effects live in the worktree until they are committed
EDITING_TOOLS = ("write_file", "edit_file", "run_command")


def host_beat(*, name: str, now: datetime, worktree_source: str, worktrees_dir: str) -> None:
    """The host is alive now: one UPDATE (an INSERT the first time). A host that comes back after
    being marked lost is recorded as back; its sessions have moved on, so its old worktrees are
    left for ``cleanup_worktrees`` to remove."""
    returned = list(WorkerHost.objects.filter(name=name, lost_at__isnull=False).values_list("pk", flat=True)[:1])
    updated = WorkerHost.objects.filter(name=name).update(
        last_seen=now, lost_at=None, worktree_source=worktree_source, worktrees_dir=worktrees_dir
    )
    if not updated:
        with transaction.atomic():
            _host, created = WorkerHost.objects.get_or_create(
                name=name,
                defaults={
                    "first_seen": now,
                    "last_seen": now,
                    "worktree_source": worktree_source,
                    "worktrees_dir": worktrees_dir,
                },
            )
            if created:
                record("host.joined", payload={"host": name, "worktree_source": worktree_source})
    elif returned:
        with transaction.atomic():
            record("host.returned", payload={"host": name})


def uncommitted_edits(session: AgentSession) -> list[str]:
    """Actions that changed (or may have changed) the worktree after the last commit that reached
    the central repository (``session.pushed_call``): what is lost with the worktree. From the
    tool-call records, in order; a commit that was made but not pushed is lost too."""
    calls = ToolCall.objects.filter(session=session).exclude(
        state__in=[ToolCall.State.DENIED, ToolCall.State.ESCALATED, ToolCall.State.ERROR]
    )
    pushed = session.pushed_call
    if pushed is not None:
        number = pushed.step.number
        calls = calls.filter(Q(step__number__gt=number) | Q(step__number=number, index__gt=pushed.index))
    edits = []
    for name, action, state in calls.order_by("step__number", "index").values_list("name", "action", "state"):
        if name not in EDITING_TOOLS and name != "git_commit":
            continue
        if name == "git_commit" and state != ToolCall.State.DONE:
            continue
        label = action or name
        unfinished = state in (ToolCall.State.INTENDED, ToolCall.State.INTERRUPTED)
        edits.append(f"{label} (interrupted: it may or may not have taken effect)" if unfinished else label)
    return edits


def hosts_mark_lost(*, now: datetime | None = None) -> list[str]:
    """Mark hosts that stopped beating as lost and move their unfinished sessions off them."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.CONTROLROOM["HOST_LOST_AFTER_S"])
    names = []
    for host in WorkerHost.objects.filter(last_seen__lt=cutoff, lost_at__isnull=True):
        try:
            moved = host_lose(host=host, now=now)
        except Exception:  # one host's trouble must not stop the others' recovery
            logger.exception("could not move the sessions off lost host %s", host.name)
            continue
        names.append(host.name)
        logger.warning("worker host %s lost (last seen %s): %d session(s) moved", host.name, host.last_seen, moved)
    return names


@transaction.atomic
def host_lose(*, host: WorkerHost, now: datetime) -> int:
    host = WorkerHost.objects.select_for_update().get(pk=host.pk)
    if host.lost_at is not None:
        return 0
    host.lost_at = now
    host.save(update_fields=["lost_at"])
    sessions = list(
        AgentSession.objects.select_for_update()
        .filter(worker_host=host.name)
        .exclude(status__in=list(TERMINAL_STATUSES))
        .order_by("pk")
    )
    record(
        "host.lost",
        payload={
            "host": host.name,
            "last_seen": host.last_seen.isoformat(),
            "worktree_source": host.worktree_source,
            "sessions": [s.pk for s in sessions],
        },
    )
    for session in sessions:
        session_move_off_host(session=session, host=host, locked=True)
    return len(sessions)


def session_move_off_host(*, session: AgentSession, host: WorkerHost, locked: bool = False) -> None:
    """The session's next step goes to the shared queue; with a worktree on the lost host's own disk
    (``clone``), what it had not pushed is recorded as lost. Inside the caller's transaction."""
    lost = uncommitted_edits(session) if host.worktree_source == "clone" else []
    record(
        "session.moved",
        session=session,
        payload={
            "from_host": host.name,
            "reason": f"worker host {host.name} lost (no beat since {host.last_seen.isoformat()})",
            "worktree": session.worktree_path,
            "recreated_from": session.pushed_commit or session.base_commit or session.base_branch,
            "uncommitted_edits_lost": lost,
        },
    )
    if lost:
        record(
            "worktree.lost",
            session=session,
            payload={
                "host": host.name,
                "worktree": session.worktree_path,
                "last_pushed_commit": session.pushed_commit,
                "base_commit": session.base_commit,
                "lost": lost,
            },
        )
    from agents import services

    changes = {"worker_host": ""}
    if lost:
        changes["current_activity"] = f"moved off lost host {host.name}: {len(lost)} unpushed edit(s) lost"[:300]
    services.session_update(session, locked=locked, **changes)
    if session.status == Status.RUNNING:
        enqueue_step_on_commit(session_id=session.pk, step=session.steps + 1, priority=session.priority, host="")
    send_on_commit(session.pk, session.pod_id)


GIT_URL = re.compile(r"\A(?:(?:ssh|git|https?|file)://\S+|[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:\S+|/\S*)\Z")


@transaction.atomic
def repository_set_remote(*, repository: Repository, remote_url: str, by: User) -> Repository:
    """Where worker hosts with disks of their own clone the repository and push session branches
    (empty: its path). Managers only; audited: it decides where agents' work goes."""
    if not by.is_manager:
        raise NotAllowed("Only a manager may change where worker hosts clone and push a repository.")
    remote_url = (remote_url or "").strip()
    if remote_url and (len(remote_url) > 500 or not GIT_URL.match(remote_url)):
        raise ValidationError(
            {"remote_url": "Give a git URL (ssh://…, https://…, file://…, user@host:path) or an absolute path."}
        )
    repository = Repository.objects.select_for_update().get(pk=repository.pk)
    previous = repository.remote_url
    repository.remote_url = remote_url
    repository.save(update_fields=["remote_url"])
    record(
        "repository.remote_changed",
        user=by,
        payload={"repository": repository.name, "from": previous, "to": remote_url},
    )
    return repository


def worktree_repository(session: AgentSession) -> Path | None:
    """The repository the session's worktree belongs to, as this process sees it: the central
    repository (``direct`` hosts), this host's own clone (a ``clone`` host, here), or None when the
    worktree lives on another ``clone`` host's disk (only that host can touch it)."""
    source = (
        WorkerHost.objects.filter(name=session.worker_host).values_list("worktree_source", flat=True).first()
        if session.worker_host
        else None
    )
    if source != WorkerHost.Source.CLONE:
        return Path(session.repository.path)
    config = settings.CONTROLROOM
    if session.worker_host != config["WORKER_HOST"]:
        return None
    return mirrors.mirror_dir(
        worktrees_dir=Path(config["WORKTREES_DIR"]), repository_id=session.repository_id, name=session.repository.name
    )
