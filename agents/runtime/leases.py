"""One thread per worker process keeps the leases of every step that process is running.

A step holds a lease on its session (``lease_owner`` / ``lease_until``) so that no other worker runs
the same session meanwhile; the lease must outlive slow model calls and commands, so it is renewed
while the step runs. A worker runs up to a hundred steps in threads: one renewing thread (and one
database connection) per *process*, renewing all of them in one UPDATE, instead of one per step.
The same beat says this worker host is alive (``agents.WorkerHost``), so a host that stops beating
can be told apart from a host that is merely idle. A forked child (Celery's prefork pool) starts
its own thread on first use.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

logger = logging.getLogger(__name__)


def lease_seconds() -> int:
    return int(os.environ.get("STEP_LEASE_S", "20"))


class LeaseKeeper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # lease owner (unique per running step) -> session id
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.beats = 0
        self.serves_host = False  # a worker process (not a test or a benchmark running steps in-process)

    # -- what steps call ----------------------------------------------------------------------
    def hold(self, session_id: int, owner: str) -> None:
        with self._lock:
            self._held[owner] = session_id
        self.ensure_started()

    def drop(self, owner: str) -> None:
        with self._lock:
            self._held.pop(owner, None)

    def held(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    # -- the beat -------------------------------------------------------------------------------
    def serve_host(self) -> None:
        """Called when a worker process starts: beat for the host even while no step runs."""
        self.serves_host = True
        self.ensure_started()

    def beat(self) -> None:
        """Renew every lease this process holds, and (in a worker) say the host is alive. At most
        two statements; none when there is nothing to say."""
        from agents import hosts
        from agents.models import AgentSession

        now = timezone.now()
        owners = list(self.held())
        if not owners and not self.serves_host:
            return
        until = now + timedelta(seconds=lease_seconds())
        for start in range(0, len(owners), 500):
            AgentSession.objects.filter(lease_owner__in=owners[start : start + 500]).update(
                lease_until=until, heartbeat_at=now
            )
        if not self.serves_host:
            return
        config = settings.CONTROLROOM
        hosts.host_beat(
            name=config["WORKER_HOST"],
            now=now,
            worktree_source=config["WORKTREE_SOURCE"],
            worktrees_dir=str(config["WORKTREES_DIR"]),
        )
        self.beats += 1

    def _run(self) -> None:
        interval = max(1.0, lease_seconds() / 4)
        first = True
        try:
            while True:
                if not first:  # the first beat at once: a (re)started host says so before anything else
                    self._wake.wait(interval)
                    self._wake.clear()
                first = False
                try:
                    self.beat()
                except Exception:  # a locked or briefly unreachable database: try again next beat
                    logger.warning("lease renewal failed; retrying", exc_info=True)
                    close_old_connections()
        finally:
            close_old_connections()


keeper = LeaseKeeper()


# a fork taken while another thread held the lock must not leave the child's copy locked forever
def _after_fork_in_child() -> None:
    keeper._lock = threading.Lock()
    keeper._held = {}
    keeper._thread = None
    keeper.serves_host = False  # a prefork child is a worker too: worker_process_init says so again


os.register_at_fork(after_in_child=_after_fork_in_child)
