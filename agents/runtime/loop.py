"""One step of one agent session. Called by the Celery task ``agents.tasks.agent_step``.

    claim (conditional UPDATE lease) ─► checks (stop switches, grant window, WIP, budget)
      ─► worktree ─► context ─► model (LiteLLM; answer stored on the step record)
      ─► for each tool call: parse ─► authorize ─► record intent ─► execute ─► record result
      ─► finish the step (counters, status, audit, version) ─► after commit: broadcast, enqueue next

Idempotence: a step is identified by (session, number). A redelivered step reuses the stored
model answer and the recorded tool calls; a tool call whose intent was recorded but whose result
was not (the worker died while running it) is marked *interrupted* and never run again.
The lease (renewed by a heartbeat thread) keeps two workers from running one session at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery
from django.utils import timezone
from django.utils.text import Truncator

from agents import gitcli, services, tools
from agents.dispatch import enqueue_step_now, enqueue_step_on_commit
from agents.events import send_if_still_running
from agents.models import (
    AgentSession,
    AgentStep,
    Escalation,
    FleetControl,
    Grant,
    Status,
    SteeringMessage,
    ToolCall,
    TranscriptEntry,
)
from agents.permissions.masks import lifted_guards
from agents.runtime import capacity, leases, mirrors, worktrees
from agents.runtime import model as model_client
from agents.runtime.authorize import (
    Switches,
    ToolCallRequest,
    authorize,
    budget_exhausted,
)
from agents.runtime.leases import lease_seconds
from agents.runtime.prepared import PreparedGet, PreparedUpdate, PreparedValues
from agents.selectors import active_grants, awaiting_review_count, standing_approvals_q

logger = logging.getLogger(__name__)

MAX_IDLE_STEPS = 3
GIT_LOG_TIMEOUT_S = 10


@dataclass(frozen=True)
class _Facts:
    """What can change under a running step, read in one prepared query before every tool call."""

    status: str
    pod_paused: bool
    fleet_stopped: bool
    grant_id: int | None  # the active grant: grants are immutable, the same id is the same grant
    grant_issued: object  # with the id, the cache key (ids restart after a test database flush)
    delegator_active: bool
    has_approvals: bool  # a human allowed an action (once, unused, or always): authorize reads which
    last_seq: int  # the transcript's last entry
    last_tokens: int  # prompt tokens of the last finished step of the current iteration
    has_steering: bool = False  # a person sent a message not in the agent's context yet


def _facts_query(session_id: int):
    grants = active_grants(OuterRef("pk"))
    approvals = Escalation.objects.filter(standing_approvals_q(), session=OuterRef("pk"))
    last_entry = TranscriptEntry.objects.filter(session=OuterRef("pk")).order_by("-seq")
    last_step = AgentStep.objects.filter(
        session=OuterRef("pk"), iteration=OuterRef("iteration"), state=AgentStep.State.DONE
    ).order_by("-number")
    return (
        AgentSession.objects.filter(pk=session_id)
        .annotate(
            fleet_stopped_now=Exists(FleetControl.objects.filter(pk=1, stopped=True)),
            active_grant_id_now=Subquery(grants.values("pk")[:1]),
            delegator_active_now=Subquery(grants.values("delegator__is_active")[:1]),
            grant_issued_now=Subquery(grants.values("issued_at")[:1]),
            has_approvals_now=Exists(approvals),
            last_seq_now=Subquery(last_entry.values("seq")[:1]),
            last_tokens_now=Subquery(last_step.values("tokens_in")[:1]),
            steering_now=Exists(SteeringMessage.objects.filter(session=OuterRef("pk"), delivered_at__isnull=True)),
        )
        .values_list(
            "status",
            "pod__paused",
            "fleet_stopped_now",
            "active_grant_id_now",
            "delegator_active_now",
            "grant_issued_now",
            "has_approvals_now",
            "last_seq_now",
            "last_tokens_now",
            "steering_now",
        )
    )


_FACTS = PreparedValues(_facts_query)
# the session as a step reads it first, and under its lock when the step completes
_SESSION = PreparedGet(lambda pk: AgentSession.objects.select_related("pod", "repository").filter(pk=pk))
_SESSION_LOCKED = PreparedGet(lambda pk: AgentSession.objects.select_for_update().filter(pk=pk))


def _count_call(v, *, priced: bool):
    """A model call's tokens (and its cost, or one more call of unknown cost) on the session."""
    changes: dict[str, Any] = dict(
        tokens_in=F("tokens_in") + v.tokens_in, tokens_out=F("tokens_out") + v.tokens_out, heartbeat_at=v.now
    )
    if priced:
        changes["cost_usd"] = F("cost_usd") + v.cost
    else:
        changes["cost_unknown_calls"] = F("cost_unknown_calls") + 1
    return AgentSession.objects.filter(pk=v.pk), changes


_COUNT_PRICED_CALL = PreparedUpdate(
    lambda v: _count_call(v, priced=True), pk=int, tokens_in=int, tokens_out=int, now=datetime, cost=Decimal
)
_COUNT_UNPRICED_CALL = PreparedUpdate(
    lambda v: _count_call(v, priced=False), pk=int, tokens_in=int, tokens_out=int, now=datetime
)

# Grants never change once written (a change is a new version; revoking makes another one the
# active grant), so a worker keeps the ones it has read, keyed by id and issue time.
_GRANTS: dict[tuple, Grant] = {}
_GRANTS_MAX = 1024


def _grant(facts: _Facts) -> Grant | None:
    if facts.grant_id is None:
        return None
    key = (facts.grant_id, str(facts.grant_issued))
    grant = _GRANTS.get(key)
    if grant is None:
        grant = Grant.objects.select_related("delegator").filter(pk=facts.grant_id, revoked_at__isnull=True).first()
        if grant is None:
            return None
        if len(_GRANTS) >= _GRANTS_MAX:
            _GRANTS.clear()
        _GRANTS[key] = grant
    delegator_active = facts.delegator_active
    grant.delegator.is_active = bool(delegator_active)  # the person's standing can change: read each time
    return grant


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass
class StepOutcome:
    result: str  # done / not-claimed / stale / retry / parked / failed / gone
    retry_in: float | None = None
    detail: str = ""


_CLAIM = PreparedUpdate(
    lambda v: (
        AgentSession.objects.filter(pk=v.pk, steps=v.steps, status__in=[Status.QUEUED, Status.RUNNING]).filter(
            Q(lease_until__isnull=True) | Q(lease_until__lt=v.now)
        ),
        dict(lease_owner=v.owner, lease_until=v.until, heartbeat_at=v.now),
    ),
    pk=int,
    steps=int,
    now=datetime,
    owner=str,
    until=datetime,
)
_RELEASE = PreparedUpdate(
    lambda v: (AgentSession.objects.filter(pk=v.pk, lease_owner=v.owner), dict(lease_owner="", lease_until=None)),
    pk=int,
    owner=str,
)


def _claim(session_id: int, step: int, owner: str) -> StepOutcome | None:
    now = timezone.now()
    claimed = _CLAIM.run(
        pk=session_id, steps=step - 1, now=now, owner=owner, until=now + timedelta(seconds=lease_seconds())
    )
    if claimed:
        return None
    row = AgentSession.objects.filter(pk=session_id).values("steps", "status", "lease_until").first()
    if row is None:
        return StepOutcome("gone")
    if row["steps"] >= step or row["status"] not in (Status.QUEUED, Status.RUNNING):
        return StepOutcome("stale", detail=f"session at step {row['steps']}, {row['status']}")
    if row["steps"] < step - 1:
        return StepOutcome("stale", detail="an earlier step is still to run")
    remaining = (row["lease_until"] - now).total_seconds() if row["lease_until"] else 1
    # poll: the holder may finish (or its lease lapse, if it died) well before the lease's end
    return StepOutcome("retry", retry_in=min(max(0.5, remaining + 0.2), 3.0), detail="another worker holds the session")


def _release(session_id: int, owner: str) -> None:
    _RELEASE.run(pk=session_id, owner=owner)


def _hand_back_connection() -> None:
    """Before waiting on something slow (a model call, a long command), give this thread's database
    connection back. On PostgreSQL the connection returns to the process's pool, so a hundred
    waiting steps hold no connection; SQLite has no connection limit and keeps its (cheap) one."""
    if connection.vendor != "sqlite" and not connection.in_atomic_block:
        connection.close()


def _wake(waiter: str) -> None:
    """Enqueue the step a model slot's release woke (``"<session>:<step>:<priority>"``). A hint: the
    step also looks again on its own, and a duplicate is dropped by the step number."""
    try:
        session_id, step, priority = (int(part) for part in waiter.split(":")[:3])
    except ValueError:
        return
    try:
        enqueue_step_now(session_id=session_id, step=step, priority=priority)
    except Exception:
        logger.warning("could not wake step %s of session %s", step, session_id, exc_info=True)


def run_step(session_id: int, step: int, *, owner: str | None = None, runner_class: type | None = None) -> StepOutcome:
    """Claim step ``step`` of the session and run it with ``runner_class`` (default: the built-in
    loop's ``_Step``; agents/runtime/runners.py picks the class for the session's agent kind)."""
    owner = owner or worker_id()
    started = time.monotonic()
    refusal = _claim(session_id, step, owner)
    if refusal is not None:
        return refusal
    leases.keeper.hold(session_id, owner)  # renewed by the process's one lease thread while the step runs
    runner = None
    try:
        runner = (runner_class or _Step)(session_id, step, owner)
        runner.timings["lock"] = time.monotonic() - started  # the claim and the runner's first read
        runner.t_start = started  # the step's wall time counts from the claim, and each part once
        return runner.run()
    finally:
        leases.keeper.drop(owner)
        if runner is None or not runner.lease_released:
            # (a completed step released it in its own transaction: one write fewer per step, and on
            # SQLite every write waits for its turn)
            _release(session_id, owner)


def _sha(text: str | bytes) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _summarize(text: str, limit: int = 240) -> str:
    return Truncator(" ".join(text.split())).chars(limit)


class _Step:
    def __init__(self, session_id: int, number: int, owner: str) -> None:
        self.session_id, self.number, self.owner = session_id, number, owner
        self.timings: dict[str, float] = {"lock": 0.0, "model": 0.0, "authorize": 0.0, "tool": 0.0, "record": 0.0}
        self.t_start = time.monotonic()
        self.grant: Grant | None = None
        self.fresh_step = False
        self.lease_released = False  # _complete_step released the lease in its transaction
        self.refresh()

    # -- helpers --------------------------------------------------------------------------
    def refresh(self) -> AgentSession:
        self.session: AgentSession = _SESSION.get(self.session_id)
        self.facts = self.read_facts()
        return self.session

    def read_facts(self) -> _Facts:
        """Stop switches, status and the active grant as they are now (one prepared query). The
        session's counters need no re-reading during a step: only this step's runner changes them."""
        row = _FACTS.first(self.session_id)
        if row is None:
            raise AgentSession.DoesNotExist(f"session {self.session_id} is gone")
        (
            status,
            pod_paused,
            fleet_stopped,
            grant_id,
            delegator_active,
            grant_issued,
            has_approvals,
            last_seq,
            last_tokens,
            has_steering,
        ) = row
        self.session.status = status
        self.session.pod.paused = bool(pod_paused)
        self.next_seq = (last_seq or 0) + 1
        return _Facts(
            status=status,
            pod_paused=bool(pod_paused),
            fleet_stopped=bool(fleet_stopped),
            grant_id=grant_id,
            grant_issued=grant_issued,
            delegator_active=bool(delegator_active),
            has_approvals=bool(has_approvals),
            last_seq=last_seq or 0,
            last_tokens=last_tokens or 0,
            has_steering=bool(has_steering),
        )

    def park(
        self, status: str, reason: str, *, hold: str = "", event: str | None = None, payload: dict | None = None
    ) -> StepOutcome:
        left = services.session_park(
            session_id=self.session_id,
            status=status,
            reason=reason,
            hold=hold,
            grant=self.grant,
            event=event,
            payload=payload,
        )
        if left:
            return StepOutcome("stale", detail=f"session is {left}: left as it is")
        return StepOutcome("parked", detail=reason)

    def stop_switch(self) -> tuple[str, str] | None:
        """(hold, reason) when a stop switch applies to this session, as of the last ``read_facts``."""
        facts = self.facts
        if facts.fleet_stopped:
            return "fleet", "fleet stopped"
        if facts.pod_paused:
            return "pod", "pod paused"
        if facts.status not in (Status.QUEUED, Status.RUNNING):
            return "user", f"session {facts.status}"
        return None

    def switches(self) -> Switches:
        facts = self.facts
        return Switches(
            fleet_stopped=facts.fleet_stopped,
            pod_paused=facts.pod_paused,
            session_stopped=facts.status in (Status.PAUSED, Status.CANCELLED),
        )

    # -- the step ----------------------------------------------------------------------------
    def run(self) -> StepOutcome:
        session = self.session
        now = timezone.now()
        switch = self.stop_switch()
        if switch:
            hold, reason = switch
            if hold == "user":
                return StepOutcome("stale", detail=reason)
            return self.park(Status.PAUSED, reason, hold=hold)
        self.grant = _grant(self.facts)
        grant = self.grant
        if grant is None:
            return self.park(Status.BLOCKED, "no active grant: issue one to continue")
        if now < grant.not_before:
            if session.status != Status.QUEUED or not session.status_reason.startswith("grant window"):
                with transaction.atomic():
                    services.set_status(
                        AgentSession.objects.select_for_update().get(pk=self.session_id),
                        Status.QUEUED,
                        reason=f"grant window opens at {timezone.localtime(grant.not_before):%Y-%m-%d %H:%M %Z}",
                        agent=True,
                    )
            return StepOutcome("parked", detail="waiting for the grant window")
        if now >= grant.expires_at:
            return self._expire(grant)
        if session.steps == 0 and session.status == Status.QUEUED and session.pod.review_wip_limit:
            waiting = awaiting_review_count(pod_id=session.pod_id)
            if waiting >= session.pod.review_wip_limit:
                reason = f"review WIP limit: {waiting} sessions of {session.pod.name} await review (limit {session.pod.review_wip_limit})"
                if session.status_reason != reason:
                    with transaction.atomic():
                        services.set_status(
                            AgentSession.objects.select_for_update().get(pk=self.session_id),
                            Status.QUEUED,
                            reason=reason,
                            agent=True,
                        )
                return StepOutcome("parked", detail=reason)
        exhausted = budget_exhausted(session=session, grant=grant, now=now)
        if exhausted:
            return self.park(Status.BLOCKED, exhausted, event="budget.exhausted", payload={"reason": exhausted})
        if session.status == Status.QUEUED:
            with transaction.atomic():
                locked = AgentSession.objects.select_for_update().get(pk=self.session_id)
                services.set_status(locked, Status.RUNNING, reason="", agent=True, current_activity="starting")
            session = self.refresh()
        t_worktree = time.monotonic()
        try:
            base_commit, worktree_path = self._worktree()
        except worktrees.WorktreeError as exc:
            return self.park(Status.FAILED, f"worktree: {exc}", event="session.error", payload={"error": str(exc)})
        here = settings.CONTROLROOM["WORKER_HOST"]
        if not session.base_commit or session.worker_host != here or session.worktree_path != worktree_path:
            # this host's disk holds the worktree now: the session's next steps come to its queue
            AgentSession.objects.filter(pk=self.session_id).update(
                base_commit=base_commit, worker_host=here, worktree_path=worktree_path
            )
            session.base_commit, session.worker_host, session.worktree_path = base_commit, here, worktree_path
        self.timings["worktree"] = time.monotonic() - t_worktree
        return self.work()

    def work(self) -> StepOutcome:
        """The step's own work, once the checks passed and the worktree is ready: here one model
        call and its tool calls (agents/runtime/runners.py: other agents override this)."""
        self._maybe_new_iteration()
        record_row, reply_message = self._model_turn()
        if record_row is None:
            return reply_message  # an outcome: retry or failure
        return self._tools_and_finish(record_row, reply_message)

    def _worktree(self) -> tuple[str, str]:
        """(base commit, worktree path on this host). ``direct``: a worktree of the central repository.
        ``clone``: a worktree of this host's own clone, under this host's WORKTREES_DIR; a session
        arriving from elsewhere (its first step, or its host was lost) first fetches the base branch
        and its own branch as last pushed (agents/runtime/mirrors.py)."""
        session, config = self.session, settings.CONTROLROOM
        repository = session.repository
        if config["WORKTREE_SOURCE"] != "clone":
            base = worktrees.ensure_worktree(
                repo_path=Path(repository.path),
                base_branch=session.base_branch,
                branch=session.branch,
                worktree_path=Path(session.worktree_path),
                known_base=session.base_commit or None,
            )
            return base, session.worktree_path
        mirror = mirrors.mirror_dir(
            worktrees_dir=Path(config["WORKTREES_DIR"]), repository_id=repository.pk, name=repository.name
        )
        worktree_path = Path(config["WORKTREES_DIR"]) / Path(session.worktree_path).name
        arriving = session.worker_host != config["WORKER_HOST"] or str(worktree_path) != session.worktree_path
        if arriving or not (mirror / "HEAD").is_file():
            mirrors.prepare(
                url=mirrors.source_url(path=repository.path, remote_url=repository.remote_url),
                mirror=mirror,
                base_branch=session.base_branch,
                branch=session.branch,
            )
        base = worktrees.ensure_worktree(
            repo_path=mirror,
            base_branch=session.base_branch,
            branch=session.branch,
            worktree_path=worktree_path,
            known_base=session.base_commit or None,
        )
        return base, str(worktree_path)

    def _push(self) -> tuple[str | None, str]:
        """After a commit: (pushed sha, "") or (None, why not). ``direct`` worktrees commit into the
        central repository itself; ``clone`` worktrees push the branch there (outside any transaction)."""
        if settings.CONTROLROOM["WORKTREE_SOURCE"] != "clone":
            return None, ""
        repository = self.session.repository
        mirror = mirrors.mirror_dir(
            worktrees_dir=Path(settings.CONTROLROOM["WORKTREES_DIR"]), repository_id=repository.pk, name=repository.name
        )
        try:
            return mirrors.push(
                mirror=mirror, worktree=Path(self.session.worktree_path), branch=self.session.branch
            ), ""
        except worktrees.WorktreeError as exc:
            logger.warning("session %s: push failed: %s", self.session_id, exc)
            return None, str(exc)

    def _expire(self, grant: Grant) -> StepOutcome:
        reason = services.session_block_expired(session=self.session)
        return StepOutcome("parked", detail=reason)

    # -- context ------------------------------------------------------------------------------
    def _maybe_new_iteration(self) -> None:
        session = self.session
        config = settings.CONTROLROOM
        steps_in_iteration = session.steps - session.iteration_started_step
        last_tokens = self.facts.last_tokens
        if steps_in_iteration < config["STEPS_PER_ITERATION"] and last_tokens < config["CONTEXT_TOKEN_LIMIT"]:
            return
        if AgentStep.objects.filter(session=session, number=self.number).exclude(response=None).exists():
            return  # a redelivered step keeps the context its model answer was made in
        reason = (
            f"context of {last_tokens} tokens"
            if last_tokens >= config["CONTEXT_TOKEN_LIMIT"]
            else f"{steps_in_iteration} steps"
        )
        services.session_start_iteration(session=session, reason=reason)
        self.refresh()

    def _messages(self) -> list[dict]:
        entries = TranscriptEntry.objects.filter(session_id=self.session_id, iteration=self.session.iteration).order_by(
            "seq"
        )
        return [model_client.to_openai_message(entry.as_message()) for entry in entries]

    # -- model --------------------------------------------------------------------------------
    def _model_turn(self):
        session = self.session
        try:  # a new step (the common case) first: one INSERT; a redelivered one hits the unique key
            # (one statement needs no transaction of its own; inside a caller's, a savepoint)
            with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
                step_row = AgentStep.objects.create(
                    session=session,
                    number=self.number,
                    iteration=session.iteration,
                    worker=self.owner,
                    started_at=timezone.now(),
                )
            created = True
        except IntegrityError:
            step_row, created = AgentStep.objects.get(session=session, number=self.number), False
        self.fresh_step = created
        if not created:
            AgentStep.objects.filter(pk=step_row.pk).update(worker=self.owner)
            step_row.refresh_from_db()
        if step_row.response is not None:
            return step_row, step_row.response
        if self.facts.has_steering:
            # a person's message waits: into the context now, before the model is asked
            with transaction.atomic():
                self.next_seq += services.steering_deliver(
                    session=session, grant=self.grant, step=self.number, seq=self.next_seq
                )
        # provider back-pressure: no free slot → back on the queue, holding nothing while it waits
        provider = capacity.provider_key(model=session.model, api_base=session.api_base)
        try:
            slot = capacity.acquire(
                provider=provider,
                waiter=f"{self.session_id}:{self.number}:{session.priority}",
                hold_s=settings.CONTROLROOM["MODEL_TIMEOUT_S"] + 30,
            )
        except Exception as exc:  # Redis unreachable: the broker is down too; look again shortly
            logger.warning("model capacity of %s unknown: %s", provider, exc)
            return None, self._wait_for_capacity(step_row, f"waiting for model capacity: {provider} (Redis error)")
        if isinstance(slot, capacity.Full):
            return None, self._wait_for_capacity(step_row, slot.activity)
        if step_row.waits and session.current_activity.startswith("waiting for model capacity"):
            self._say_activity(f"calling {session.model}")
        try:
            messages = self._messages()
            t_model = time.monotonic()
            self.timings["before_model"] = t_model - self.t_start
            _hand_back_connection()  # a slow call must not hold one of the pool's connections
            try:
                reply = model_client.complete(
                    model=session.model,
                    messages=messages,
                    tools=tools.TOOL_SCHEMAS,
                    api_base=session.api_base,
                    api_key_env=session.api_key_env,
                    fallbacks=session.fallback_models,
                    seed=session.seed + self.number,
                )
            except model_client.ModelError as exc:
                return None, self._model_failed(step_row, exc, provider=provider)
        finally:
            woken = capacity.release(slot)
            if woken:
                _wake(woken)
        self.timings["model"] = time.monotonic() - t_model
        t0 = time.monotonic()
        with transaction.atomic():
            AgentStep.objects.filter(pk=step_row.pk).update(
                response=reply.message,
                state=AgentStep.State.MODEL_DONE,
                model=reply.model,
                tokens_in=reply.tokens_in,
                tokens_out=reply.tokens_out,
                cost_usd=reply.cost_usd,
                latency_ms=reply.latency_ms,
                error="",
            )
            self._append_transcript(
                role="assistant", content=reply.message["content"], tool_calls=reply.message["tool_calls"] or None
            )
            counters = dict(
                pk=self.session_id, tokens_in=reply.tokens_in, tokens_out=reply.tokens_out, now=timezone.now()
            )
            if reply.cost_usd is None:
                _COUNT_UNPRICED_CALL.run(**counters)
            else:
                _COUNT_PRICED_CALL.run(**counters, cost=reply.cost_usd)
            services.agent_event_record(
                kind="model.call",
                session=session,
                grant=self.grant,
                payload={
                    "step": self.number,
                    "model": reply.model,
                    "tokens_in": reply.tokens_in,
                    "tokens_out": reply.tokens_out,
                    "cost_usd": reply.cost_usd,
                    "cost_known": reply.cost_usd is not None,
                    "latency_ms": reply.latency_ms,
                    "prompt_sha256": _sha(repr(messages)),
                    "response_sha256": _sha(repr(reply.message)),
                    "response": reply.message,
                },
            )
        self.timings["record"] += time.monotonic() - t0
        # mirror the counters just added in the database (the budget checks read them)
        session.tokens_in += reply.tokens_in
        session.tokens_out += reply.tokens_out
        session.cost_usd = (session.cost_usd or Decimal(0)) + (reply.cost_usd or Decimal(0))
        step_row.response, step_row.state, step_row.model = reply.message, AgentStep.State.MODEL_DONE, reply.model
        step_row.tokens_in, step_row.tokens_out, step_row.cost_usd = reply.tokens_in, reply.tokens_out, reply.cost_usd
        step_row.latency_ms, step_row.error = reply.latency_ms, ""
        return step_row, reply.message

    def _model_failed(self, step_row: AgentStep, exc: model_client.ModelError, *, provider: str) -> StepOutcome:
        if exc.rate_limited:
            return self._rate_limited(step_row, exc, provider=provider)
        attempts = step_row.attempts
        final = not exc.transient or attempts >= settings.CONTROLROOM["MODEL_ATTEMPTS"]
        with transaction.atomic():
            AgentStep.objects.filter(pk=step_row.pk).update(
                error=str(exc),
                state=AgentStep.State.FAILED if final else AgentStep.State.STARTED,
                attempts=attempts if final else attempts + 1,
            )
            services.agent_event_record(
                kind="model.error",
                session=self.session,
                grant=self.grant,
                payload={
                    "step": self.number,
                    "error": str(exc),
                    "attempt": attempts,
                    "transient": exc.transient,
                    "final": final,
                },
            )
        if final:
            # the step record of a failed model call is discarded so a later resume can retry it
            AgentStep.objects.filter(pk=step_row.pk).delete()
            return self.park(Status.FAILED, f"model error after {attempts} attempt(s): {exc}")
        self._say_activity(_summarize(f"model error, retrying: {exc}", 200), force=True)
        return StepOutcome("retry", retry_in=min(60.0, 2.0**attempts), detail=str(exc))

    def _rate_limited(self, step_row: AgentStep, exc: model_client.ModelError, *, provider: str) -> StepOutcome:
        """HTTP 429: wait as long as the provider asks (at least a second), on the queue, not in a
        worker thread; it does not count as a failed attempt. A provider that keeps refusing for
        MODEL_RATE_LIMIT_WAITS retries in a row fails the session like any persistent error."""
        waits = step_row.waits + 1
        wait = exc.retry_after if exc.retry_after is not None else capacity.retry_delay(waits) * 2
        wait = max(1.0, wait)
        final = waits > settings.CONTROLROOM["MODEL_RATE_LIMIT_WAITS"]
        with transaction.atomic():
            AgentStep.objects.filter(pk=step_row.pk).update(error=str(exc), waits=waits)
            services.agent_event_record(
                kind="model.error",
                session=self.session,
                grant=self.grant,
                payload={
                    "step": self.number,
                    "error": str(exc),
                    "attempt": step_row.attempts,
                    "transient": True,
                    "rate_limited": True,
                    "retry_after_s": exc.retry_after,
                    "provider": provider,
                    "final": final,
                },
            )
        if final:
            AgentStep.objects.filter(pk=step_row.pk).delete()
            return self.park(Status.FAILED, f"model rate-limited {waits - 1} times in a row by {provider}: {exc}")
        self._say_activity(
            f"waiting for model capacity: {provider} answered HTTP 429 (rate limited); retrying in {wait:.0f} s",
            force=True,
        )
        return StepOutcome("retry", retry_in=wait, detail=f"rate limited by {provider}")

    def _wait_for_capacity(self, step_row: AgentStep, activity: str) -> StepOutcome:
        waits = step_row.waits + 1
        AgentStep.objects.filter(pk=step_row.pk).update(waits=waits)
        self._say_activity(activity)
        return StepOutcome("retry", retry_in=capacity.retry_delay(waits), detail=activity)

    def _say_activity(self, activity: str, *, force: bool = False) -> None:
        """Show what the session waits for on its tile (broadcast); only when it changes, unless forced."""
        if not force and self.session.current_activity == activity:
            return
        with transaction.atomic():
            locked = AgentSession.objects.select_for_update().get(pk=self.session_id)
            if locked.status == Status.RUNNING:
                services.session_update(locked, locked=True, current_activity=activity[:300])
        self.session.current_activity = activity[:300]

    def _append_transcript(
        self, *, role: str, content: str, tool_calls=None, tool_call_id: str = "", name: str = ""
    ) -> None:
        """Append with the next sequence number this runner keeps: it alone writes the transcript while
        it holds the lease, and the (session, seq) unique key refuses a clash. A failed transaction
        ends the runner (the exception propagates), so a number is never reused by it."""
        services.transcript_append(
            session_id=self.session_id,
            iteration=self.session.iteration,
            step=self.number,
            role=role,
            content=content,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            name=name,
            seq=self.next_seq,
        )
        self.next_seq += 1

    # -- tools --------------------------------------------------------------------------------
    def mark_interrupted(self, call: ToolCall, result: str) -> bool:
        """Inside the caller's transaction: a tool call still *intended* (its result never came: the
        worker died or the run was ended under it) becomes *interrupted*, never run again, with its
        audit event. False when it was no longer intended."""
        changed = ToolCall.objects.filter(pk=call.pk, state=ToolCall.State.INTENDED).update(
            state=ToolCall.State.INTERRUPTED, finished_at=timezone.now(), result=result
        )
        if changed:
            services.agent_event_record(
                kind="tool.interrupted",
                session=self.session,
                grant=self.grant,
                payload={"step": self.number, "index": call.index, "tool": call.name, "action": call.action},
            )
        return bool(changed)

    def _tools_and_finish(self, step_row: AgentStep, message: dict) -> StepOutcome:
        calls = message.get("tool_calls") or []
        finished_summary: str | None = None
        block_reason: str | None = None
        for index, call in enumerate(calls):
            outcome = self._one_tool_call(step_row, index, call)
            if isinstance(outcome, StepOutcome):
                return outcome  # parked (stop switch or escalation): the step resumes from here later
            kind, value = outcome
            if kind == "finish":
                finished_summary = value
            elif kind == "block":
                block_reason = value
                break
        return self._complete_step(step_row, calls, finished_summary, block_reason)

    def _one_tool_call(self, step_row: AgentStep, index: int, call: dict):
        # a step row made by this run has no tool calls yet; a redelivered one may
        existing = None if self.fresh_step else ToolCall.objects.filter(step=step_row, index=index).first()
        if existing and existing.state in (
            ToolCall.State.DONE,
            ToolCall.State.ERROR,
            ToolCall.State.DENIED,
            ToolCall.State.INTERRUPTED,
        ):
            if existing.name == "finish" and existing.state == ToolCall.State.DONE:
                return ("finish", existing.result)
            return ("ok", None)
        if existing and existing.state == ToolCall.State.INTENDED:
            with transaction.atomic():
                self.mark_interrupted(existing, "interrupted: the worker stopped while this ran; it was not run again")
                self._append_transcript(
                    role="tool",
                    tool_call_id=existing.call_id,
                    name=existing.name,
                    content="error: interrupted (the worker stopped while this ran); it was not run again. Check the state before retrying.",
                )
            return ("ok", None)
        self.facts = self.read_facts()
        switch = self.stop_switch()
        if switch:
            hold, reason = switch
            if hold == "user":
                return StepOutcome("parked", detail=reason)
            return self.park(Status.PAUSED, reason, hold=hold)
        # the grant may have changed (allow always, revocation) while we waited
        self.grant = _grant(self.facts)
        name, raw = call.get("name", ""), call.get("arguments", "")
        raw_hash = _sha(raw if isinstance(raw, str) else repr(raw))
        try:
            args = tools.parse_arguments(name, raw)
        except tools.ToolArgumentError as exc:
            return self._tool_error(step_row, index, call, raw_hash, f"invalid arguments: {exc}")
        t0 = time.monotonic()
        if self.grant is None:
            decision = None
        else:
            decision = authorize(
                self.session,
                ToolCallRequest(name=name, args=args),
                grant=self.grant,
                switches=self.switches(),
                read_approvals=self.facts.has_approvals,
            )
        self.timings["authorize"] += time.monotonic() - t0
        if decision is None:
            return self._deny(step_row, index, call, args, raw_hash, None, "no active grant", block=True)
        action = decision.action
        if decision.decision == "ask":
            escalation = (
                Escalation.objects.filter(
                    session=self.session, action_hash=action.hash, tool_call__step=step_row, tool_call__index=index
                )
                .order_by("-pk")
                .first()
                if action
                else None
            )
            if escalation and escalation.state in (Escalation.State.DENIED, Escalation.State.EXPIRED):
                if escalation.state == Escalation.State.DENIED:
                    who = escalation.decided_by.username if escalation.decided_by else "a human"
                    reason, provenance = f"denied by {who}: {escalation.decision_reason or 'no reason given'}", "human"
                else:
                    reason, provenance = "nobody answered before the grant expired", "expired"
                return self._deny(
                    step_row, index, call, args, raw_hash, decision, reason, provenance=provenance, existing=existing
                )
            if escalation and escalation.state == Escalation.State.OPEN:
                with transaction.atomic():
                    session = AgentSession.objects.select_for_update().get(pk=self.session_id)
                    if session.status != Status.NEEDS_APPROVAL:
                        services.set_status(
                            session, Status.NEEDS_APPROVAL, reason=f"asks: {escalation.action}"[:480], agent=True
                        )
                return StepOutcome("parked", detail="still waiting for a human")
            assert self.grant is not None  # a decision was made: under a grant
            if self.grant.on_unanswered == Grant.OnUnanswered.DENY:
                return self._escalate(step_row, index, call, args, raw_hash, decision, existing, deny_now=True)
            return self._escalate(step_row, index, call, args, raw_hash, decision, existing)
        if decision.decision == "deny":
            block = decision.reason_type in ("expired", "revoked")
            return self._deny(
                step_row, index, call, args, raw_hash, decision, decision.reason, block=block, existing=existing
            )
        return self._execute(step_row, index, call, args, raw_hash, decision, existing)

    def _tool_row(self, step_row, index, call, args, raw_hash, decision, state, existing=None, **extra) -> ToolCall:
        action = decision.action if decision else None
        values = dict(
            session=self.session,
            call_id=str(call.get("id", ""))[:120],
            name=str(call.get("name", ""))[:80],
            arguments=args,
            raw_arguments_hash=raw_hash,
            action=action.text if action else "",
            action_hash=action.hash if action else "",
            decision=decision.decision if decision else "deny",
            reason_type=decision.reason_type if decision else "revoked",
            reason=decision.reason if decision else "no active grant",
            rule=decision.rule if decision else "",
            grant=self.grant,
            state=state,
            **extra,
        )
        if existing:
            ToolCall.objects.filter(pk=existing.pk).update(**values)
            existing.refresh_from_db()
            return existing
        return ToolCall.objects.create(step=step_row, index=index, **values)

    def _audit_tool(self, row: ToolCall, *, provenance: str, result: str = "") -> None:
        services.agent_event_record(
            kind="tool.call",
            session=self.session,
            grant=self.grant,
            provenance=provenance,
            payload={
                "step": self.number,
                "index": row.index,
                "tool": row.name,
                "action": row.action,
                "action_hash": row.action_hash,
                "decision": row.decision,
                "reason_type": row.reason_type,
                "reason": row.reason,
                "rule": row.rule,
                "state": row.state,
                "result": _summarize(result or row.result, 400),
                "exit_code": row.exit_code,
                "duration_ms": row.duration_ms,
                "arguments_sha256": row.raw_arguments_hash,
            },
        )

    def _tool_error(self, step_row, index, call, raw_hash, message) -> tuple[str, None]:
        with transaction.atomic():
            row = ToolCall.objects.create(
                step=step_row,
                index=index,
                session=self.session,
                call_id=str(call.get("id", ""))[:120],
                name=str(call.get("name", ""))[:80],
                arguments=None,
                raw_arguments_hash=raw_hash,
                decision="deny",
                reason_type="error",
                reason=message,
                grant=self.grant,
                state=ToolCall.State.ERROR,
                result=message,
                finished_at=timezone.now(),
            )
            self._append_transcript(role="tool", tool_call_id=row.call_id, name=row.name, content=f"error: {message}")
            self._audit_tool(row, provenance="error")
        return ("ok", None)

    def _deny(
        self, step_row, index, call, args, raw_hash, decision, reason, *, block=False, provenance=None, existing=None
    ):
        with transaction.atomic():
            row = self._tool_row(
                step_row,
                index,
                call,
                args,
                raw_hash,
                decision,
                ToolCall.State.DENIED,
                existing,
                result=f"denied: {reason}",
                finished_at=timezone.now(),
            )
            if provenance in ("human", "expired", "budget"):  # the grant's rules did not decide: say who did
                ToolCall.objects.filter(pk=row.pk).update(reason_type=provenance, reason=reason, decision="deny")
                row.refresh_from_db()
            self._append_transcript(role="tool", tool_call_id=row.call_id, name=row.name, content=f"denied: {reason}")
            self._audit_tool(row, provenance=provenance or (decision.reason_type if decision else "revoked"))
        if block:
            return ("block", reason)
        return ("ok", None)

    def _escalate(self, step_row, index, call, args, raw_hash, decision, existing, *, deny_now=False):
        action = decision.action
        suggestions = [] if decision.reason_type == "guard" else suggested_rules(action)
        with transaction.atomic():
            row = self._tool_row(
                step_row,
                index,
                call,
                args,
                raw_hash,
                decision,
                ToolCall.State.DENIED if deny_now else ToolCall.State.ESCALATED,
                existing,
            )
            escalation = services.escalation_open(
                session=self.session,
                grant=self.grant,
                tool_call=row,
                action=action.text,
                action_hash=action.hash,
                reason=decision.reason,
                reason_type=decision.reason_type,
                matched_rule=decision.rule,
                suggested_rules=suggestions,
                deny_now=deny_now,
            )
            if deny_now:
                ToolCall.objects.filter(pk=row.pk).update(
                    result="denied: needs approval and the grant denies unanswered questions"
                )
                self._append_transcript(
                    role="tool",
                    tool_call_id=row.call_id,
                    name=row.name,
                    content=f"denied: this needs a human's approval ({decision.reason}) and nobody is available; carry on without it",
                )
                self._audit_tool(row, provenance="guard")
        if deny_now:
            return ("ok", None)
        from agents.notify import notify_needs_human_on_commit

        with transaction.atomic():
            session = AgentSession.objects.select_for_update().get(pk=self.session_id)
            services.set_status(
                session,
                Status.NEEDS_APPROVAL,
                reason=f"asks: {action.text}"[:480],
                agent=True,
                current_activity=_summarize(f"waiting for approval: {action.text}", 200),
            )
            notify_needs_human_on_commit(session_id=self.session_id, escalation_id=escalation.pk)
        return StepOutcome("parked", detail="needs approval")

    def _execute(self, step_row, index, call, args, raw_hash, decision, existing):
        grant = self.grant
        t0 = time.monotonic()
        name = str(call.get("name", ""))[:80]
        with transaction.atomic():
            # the tile's activity line changes with the reservation; it is broadcast only if the tool
            # is still running after a moment (below): the step's end is broadcast anyway
            activity = _summarize(f"{name}: {decision.action.text if decision.action else name}", 200)
            if not services.tool_call_reserve(
                session_id=self.session_id, limit=grant.max_tool_calls, activity=activity
            ):
                reason = f"budget: max tool calls ({grant.max_tool_calls}) reached"
                return self._deny(
                    step_row,
                    index,
                    call,
                    args,
                    raw_hash,
                    decision,
                    reason,
                    block=True,
                    provenance="budget",
                    existing=existing,
                )
            self.session.tool_calls += 1
            provenance = decision.reason_type
            if decision.reason_type == "human" and not services.approval_consume(
                session_id=self.session_id, action_hash=decision.action.hash
            ):
                raise RuntimeError("approval vanished")  # cannot happen under the lease; fail closed
            row = self._tool_row(step_row, index, call, args, raw_hash, decision, ToolCall.State.INTENDED, existing)
        self.timings["record"] += time.monotonic() - t0
        t1 = time.monotonic()
        if row.name == "run_command":
            _hand_back_connection()  # a command may run for minutes
        lift: tuple[str, ...] = ()
        if decision.reason_type == "human" and decision.action is not None:
            # the human approved exactly this action, protected paths included: those guards' masks
            # are lifted for it (the deny rules' masks never are)
            lift = lifted_guards(
                decision.action.resources, decision.action.recursive, root=os.path.realpath(self.session.worktree_path)
            )
        with send_if_still_running(self.session_id):
            result = self._run_tool(row, args, grant, lift=lift)
        self.timings["tool"] += time.monotonic() - t1
        return self._record_result(row, args, grant, result, provenance)

    def _run_tool(self, row: ToolCall, args: dict, grant: Grant, *, lift: tuple[str, ...] = ()):
        return tools.execute(
            row.name,
            args,
            worktree=Path(self.session.worktree_path),
            trailers={
                "Agent-Session": str(self.session_id),
                "Delegated-By": grant.delegator.username,
                "Grant": str(grant.pk),
            },
            allow_network=any(rule.startswith("Net(") for rule in grant.allow),
            timeout_s=min(
                int(args.get("timeout_s") or settings.CONTROLROOM["COMMAND_TIMEOUT_S"]),
                settings.CONTROLROOM["COMMAND_TIMEOUT_S"],
            ),
            output_cap=settings.CONTROLROOM["OUTPUT_CAP_BYTES"],
            sandbox=settings.CONTROLROOM["SANDBOX"],
            author=(f"Agent #{self.session_id}", f"agent-{self.session_id}@controlroom.invalid"),
            hide_paths=[settings.DATA_DIR],
            branch=self.session.branch,
            deny_read=tuple(grant.deny),
            deny=tuple(grant.deny),
            lift=lift,
        )

    def _record_result(self, row: ToolCall, args: dict, grant: Grant, result, provenance: str):
        t2 = time.monotonic()
        pushed, push_error = self._push() if "sha" in result.data else (None, "")
        with transaction.atomic():
            outcome = dict(
                state=ToolCall.State.DONE if result.ok else ToolCall.State.ERROR,
                result=Truncator(result.output).chars(20000),
                exit_code=result.exit_code,
                duration_ms=result.duration_ms,
                finished_at=timezone.now(),
            )
            if ToolCall.objects.filter(pk=row.pk, state=ToolCall.State.INTENDED).update(**outcome):
                for key, value in outcome.items():
                    setattr(row, key, value)
            else:
                row.refresh_from_db()
            self._append_transcript(
                role="tool",
                tool_call_id=row.call_id,
                name=row.name,
                content=result.output if result.ok else f"error: {result.output}",
            )
            self._audit_tool(row, provenance=provenance, result=result.summary or result.output)
            for refusal in result.data.get("denied_by_sandbox") or ():
                # the evaluator let the command run; the sandbox refused a program the grant denies
                services.agent_event_record(
                    kind="tool.denied_by_sandbox",
                    session=self.session,
                    grant=grant,
                    provenance="rule",
                    payload={
                        "step": self.number,
                        "index": row.index,
                        "tool": row.name,
                        "action": row.action,
                        "action_hash": row.action_hash,
                        "program": refusal["program"],
                        "rule": refusal["rule"],
                    },
                )
            session_changes = {}
            if "handoff" in result.data:
                session_changes["handoff"] = result.data["handoff"]
            if "sha" in result.data:
                direct = settings.CONTROLROOM["WORKTREE_SOURCE"] != "clone"
                in_central = direct or pushed is not None
                services.agent_event_record(
                    kind="git.commit",
                    session=self.session,
                    grant=grant,
                    payload={
                        "sha": result.data["sha"],
                        "message": args.get("message", ""),
                        "branch": self.session.branch,
                        "host": settings.CONTROLROOM["WORKER_HOST"],
                        "in_central_repository": in_central,
                    },
                )
                if in_central:
                    # what a lost host cannot take with it (agents/hosts.py: later edits are reported lost)
                    session_changes.update(pushed_commit=pushed or result.data["sha"], pushed_call=row)
                else:
                    services.agent_event_record(
                        kind="git.push_failed",
                        session=self.session,
                        grant=grant,
                        payload={"sha": result.data["sha"], "branch": self.session.branch, "error": push_error},
                    )
            if (
                row.name == "run_command"
                and result.exit_code is not None
                and _looks_like_tests(args.get("command", ""))
            ):
                services.agent_event_record(
                    kind="tests.run",
                    session=self.session,
                    grant=grant,
                    payload={
                        "command": args.get("command", ""),
                        "exit_code": result.exit_code,
                        "passed": result.exit_code == 0,
                        "summary": result.summary,
                    },
                )
            if session_changes:
                AgentSession.objects.filter(pk=self.session_id).update(**session_changes)
        self.timings["record"] += time.monotonic() - t2
        if row.name == "finish" and result.ok:
            return ("finish", result.data.get("finish", args.get("summary", "")))
        return ("ok", None)

    # -- end of step -----------------------------------------------------------------------------
    def _complete_step(
        self, step_row: AgentStep, calls: list, finished_summary: str | None, block_reason: str | None
    ) -> StepOutcome:
        t0 = time.monotonic()
        with transaction.atomic():
            session = _SESSION_LOCKED.get(self.session_id)
            if session.steps >= self.number:
                return StepOutcome("stale", detail="step already completed")
            human_stop = session.status in (Status.CANCELLED, Status.PAUSED)
            idle = 0 if calls else session.idle_steps + 1
            if not calls:
                self._append_transcript(
                    role="user",
                    content="Use the tools to make progress; call finish with a summary when the goal is met.",
                )
            self.timings["total"] = time.monotonic() - self.t_start
            AgentStep.objects.filter(pk=step_row.pk).update(
                state=AgentStep.State.DONE, finished_at=timezone.now(), timings=self.timings
            )
            # the lease is released in the same transaction, so the next step (enqueued after commit)
            # finds the session free, whichever worker takes it
            changes: dict[str, Any] = dict(
                steps=self.number, idle_steps=idle, heartbeat_at=timezone.now(), lease_owner="", lease_until=None
            )
            next_status: str
            next_status, reason = Status.RUNNING, ""
            if finished_summary is not None:
                next_status, reason = Status.SUCCEEDED, "finished"
                changes["summary"] = finished_summary
                changes["current_activity"] = _summarize(f"done: {finished_summary}", 200)
            elif block_reason:
                next_status, reason = Status.BLOCKED, block_reason
                changes["current_activity"] = _summarize(block_reason, 200)
            elif idle >= MAX_IDLE_STEPS:
                next_status, reason = Status.FAILED, f"the model answered {idle} times without using a tool"
            if human_stop or (session.status != Status.RUNNING and next_status == Status.RUNNING):
                next_status, reason = session.status, ""  # a human paused or cancelled it meanwhile: that stands
            if next_status != session.status or reason:
                services.set_status(session, next_status, reason=reason, agent=True, locked=True, **changes)
            else:
                services.session_update(
                    session, locked=True, **changes
                )  # version + 1: the canvas shows the new counters
            if next_status == Status.RUNNING:
                enqueue_step_on_commit(
                    session_id=session.pk, step=self.number + 1, priority=session.priority, host=session.worker_host
                )
            if next_status in (Status.SUCCEEDED, Status.FAILED):
                transaction.on_commit(lambda: _checkpoint_quietly(self.session_id))
        self.lease_released = True  # committed with the step's completion
        self.timings["record"] += time.monotonic() - t0
        return StepOutcome("done", detail=next_status)


def _checkpoint_quietly(session_id: int) -> None:
    from audit.chain import checkpoint_create

    try:
        with transaction.atomic():
            checkpoint_create(reason=f"session {session_id} ended")
    except Exception:
        logger.warning("checkpoint after session %s failed", session_id, exc_info=True)


def _looks_like_tests(command: str) -> bool:
    return any(
        word in command for word in ("pytest", "unittest", "npm test", "make test", "tox", "go test", "cargo test")
    )


def suggested_rules(action) -> list[str]:
    """The rules that 'allow always' adds: exactly the action's resources, nothing broader. Empty when
    one of them cannot be written as an exact rule (then the action can only be allowed once)."""
    from agents.permissions import exact_rule

    rules = []
    for resource in action.resources if action else ():
        if resource.kind == "Meta":
            continue
        rule = exact_rule(resource)
        if rule is None:
            return []
        rules.append(rule)
    return list(dict.fromkeys(rules))


def git_log_summary(session: AgentSession, limit: int = 20) -> str:
    if not session.worktree_path:
        return "(git log unavailable: no worktree yet)"
    base = session.base_commit or session.base_branch
    try:
        text = gitcli.run(
            Path(session.worktree_path),
            "log",
            "--oneline",
            f"-{limit}",
            f"{base}..HEAD",
            "--",
            what="the branch's git log",
            timeout_s=GIT_LOG_TIMEOUT_S,
        ).out
    except gitcli.GitError as exc:  # a missing worktree must not stop a fresh iteration
        return f"(git log unavailable: {type(exc).__name__})"
    return text.strip() or "(no commits yet)"
