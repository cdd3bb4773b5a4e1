"""Celery tasks: thin adapters that take ids, re-fetch, and call the runtime or a service."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request

from celery import shared_task
from celery.signals import worker_process_init, worker_ready
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from agents import hosts, links, services
from agents.dispatch import enqueue_step_now
from agents.models import AgentSession, Escalation, Status
from agents.runtime.runners import run_step
from agents.selectors import active_grants, awaiting_review_count, never_taken_q, stale_after, stale_q

logger = logging.getLogger(__name__)


class WebhookTransientError(Exception):
    pass


@worker_ready.connect
@worker_process_init.connect
def _worker_started(**_kwargs) -> None:
    """A worker process that runs steps: say the host is alive (the lease thread beats for it) and
    import LiteLLM now, in the background, rather than inside the first hundred steps' model calls."""
    from agents.runtime import leases
    from agents.runtime import model as model_client

    leases.keeper.serve_host()
    threading.Thread(target=model_client.warm_up, name="litellm-warm-up", daemon=True).start()


@shared_task(
    name="agents.tasks.agent_step",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    soft_time_limit=settings.CONTROLROOM["STEP_TIME_LIMIT_S"],
    time_limit=settings.CONTROLROOM["STEP_TIME_LIMIT_S"] + 30,
)
def agent_step(self, session_id: int, step: int) -> str:
    """Run step ``step`` of a session. Idempotent: redelivery and duplicates are harmless."""
    try:
        outcome = run_step(session_id, step, owner=f"{self.request.hostname}:{self.request.id}")
    except (OperationalError, InterfaceError) as exc:
        # the database was briefly unavailable (locked, connection lost): transient, try the step again
        if self.request.retries >= 12:
            raise
        logger.warning("step %s of session %s: database error, retrying: %s", step, session_id, exc)
        raise self.retry(countdown=min(60, 2 ** min(self.request.retries, 6))) from None
    if outcome.result == "retry":
        raise self.retry(countdown=outcome.retry_in or 2.0)
    return f"{outcome.result}: {outcome.detail}"


@shared_task(name="agents.tasks.tick", ignore_result=True, time_limit=120)
def tick() -> dict:
    """Periodic housekeeping (Celery beat, every few seconds):
    - wake queued sessions whose grant window has opened (or whose pod's review queue has room);
    - recover stale sessions (``agents.selectors.stale_q``: a lost message or a dead worker) and sessions
      launched but never taken by a worker (``never_taken_q``) → enqueue their next step again, at most
      once per STALE_AFTER_S (the step number makes a duplicate harmless);
    - block sessions whose grant expired while they waited for a human;
    - mark worker hosts that stopped beating as lost and move their sessions off them (agents/hosts.py).
    """
    now = timezone.now()
    # first: a lost host's sessions move to the shared queue (then the stale recovery below sends
    # their steps there, not to the queue nobody reads any more). The host running this is alive.
    config = settings.CONTROLROOM
    hosts.host_beat(
        name=config["WORKER_HOST"],
        now=now,
        worktree_source=config["WORKTREE_SOURCE"],
        worktrees_dir=str(config["WORKTREES_DIR"]),
    )
    lost_hosts = hosts.hosts_mark_lost(now=now)
    stale_before = now - stale_after()
    woken = recovered = 0
    # only sessions a check parked (window not open, review WIP limit): a freshly launched one already
    # has its first step on the queue, and one launched with --no-start stays put
    parked = (
        AgentSession.objects.filter(status=Status.QUEUED)
        .filter(Q(status_reason__startswith="grant window") | Q(status_reason__startswith="review WIP limit"))
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    )
    for session_id, steps, priority, pod_id, wip_limit, reason in parked.values_list(
        "id", "steps", "priority", "pod_id", "pod__review_wip_limit", "status_reason"
    ):
        if reason.startswith("review WIP limit"):
            if wip_limit and awaiting_review_count(pod_id=pod_id) >= wip_limit:
                continue
        else:
            grant = active_grants(session_id).only("not_before").first()
            if not grant or grant.not_before > now:
                continue
        enqueue_step_now(session_id=session_id, step=steps + 1, priority=priority)
        woken += 1
    stale = AgentSession.objects.filter(stale_q(now=now) | never_taken_q(now=now)).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=stale_before)
    )
    for session_id, steps, priority in stale.values_list("id", "steps", "priority"):
        AgentSession.objects.filter(pk=session_id).update(enqueued_at=now)
        enqueue_step_now(session_id=session_id, step=steps + 1, priority=priority)
        recovered += 1
    waiting = AgentSession.objects.filter(
        status=Status.NEEDS_APPROVAL, grants__revoked_at__isnull=True, grants__expires_at__lte=now
    ).distinct()
    expired = 0
    for session in waiting:
        try:
            services.session_block_expired(session=session)
            expired += 1
        except Exception:  # one session's trouble must not stop the housekeeping of the others
            logger.exception("could not block session %s after its grant expired", session.pk)
    return {"woken": woken, "recovered": recovered, "expired": expired, "lost_hosts": lost_hosts}


@shared_task(
    name="agents.tasks.send_webhook",
    bind=True,
    autoretry_for=(WebhookTransientError,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=False,
    max_retries=6,
    time_limit=30,
    ignore_result=True,
)
def send_webhook(self, session_id: int, escalation_id: int | None = None, reason: str = "") -> str:
    session = AgentSession.objects.select_related("pod", "sto").filter(pk=session_id).first()
    if session is None or not session.pod.webhook_url:
        return "no webhook"
    escalation = Escalation.objects.filter(pk=escalation_id).first() if escalation_id else None
    what = f"asks to run `{escalation.action}`" if escalation else (reason or session.status_reason or session.status)
    # An absolute link when the deployment says where it lives (CONTROLROOM["PUBLIC_URL"]), else the path.
    path = (settings.CONTROLROOM.get("PUBLIC_URL") or "").rstrip("/") + reverse("session_drawer", args=[session.pk])
    # a signed, single-use, expiring link for the STO to decide from a phone (agents/links.py)
    decide_url = (
        links.absolute(services.escalation_link(escalation=escalation, user=session.sto))
        if escalation is not None and escalation.state == Escalation.State.OPEN
        else ""
    )
    text = f"[{session.pod.name}] #{session.pk} {session.name} (STO {session.sto.username}) needs you: {what} — {path}"
    if decide_url:
        text += f" · decide: {decide_url}"
    body = json.dumps(
        {
            "text": text,
            "session_id": session.pk,
            "pod": session.pod.slug,
            "sto": session.sto.username,
            "status": session.status,
            "escalation_id": escalation_id,
            "url": path,
            "decide_url": decide_url,
        }
    ).encode()
    request = urllib.request.Request(
        session.pod.webhook_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return f"sent: {response.status}"
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise WebhookTransientError(f"HTTP {exc.code}") from None
        logger.warning("webhook for pod %s refused: HTTP %s", session.pod.slug, exc.code)
        return f"refused: {exc.code}"
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise WebhookTransientError(str(exc)) from None


@shared_task(name="agents.tasks.worktree_remove", ignore_result=True, time_limit=300)
def worktree_remove(session_id: int, reason: str) -> None:
    """Remove a session's worktree on the worker host whose own disk holds it (sent to its queue)."""
    session = AgentSession.objects.select_related("repository").filter(pk=session_id).first()
    if session is not None:
        services.session_worktree_remove(session=session, reason=reason)
