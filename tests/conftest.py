"""Shared fixtures: the demo repository (real git), the personas, real Celery workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.personas import Fleet, make_fleet

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def demo_repo_template(tmp_path_factory) -> Path:
    from agents.demo_repo import create_demo_repo

    return create_demo_repo(tmp_path_factory.mktemp("template") / "demo-shop")


@pytest.fixture
def demo_repo(demo_repo_template, tmp_path) -> Path:
    """A private copy of the demo repository for one test."""
    target = tmp_path / "demo-shop"
    shutil.copytree(demo_repo_template, target, symlinks=True)
    return target


@pytest.fixture
def fleet(db, demo_repo) -> Fleet:
    return make_fleet(demo_repo)


@pytest.fixture
def worktrees_dir(tmp_path, settings):
    path = tmp_path / "worktrees"
    path.mkdir()
    settings.CONTROLROOM = {**settings.CONTROLROOM, "WORKTREES_DIR": path}
    return path


def _db_env() -> dict[str, str]:
    """Environment for child processes so they use the *test* database."""
    from django.db import connection

    env = dict(os.environ)
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


class WorkerPool:
    """Real Celery worker processes against the test database and the test Redis."""

    def __init__(
        self,
        *,
        worktrees: Path,
        processes: int = 1,
        concurrency: int = 1,
        pool: str = "prefork",
        extra_env: dict | None = None,
        label: str = "worker",
    ):
        self.procs: list[subprocess.Popen] = []
        self.worktrees, self.processes, self.concurrency, self.pool = worktrees, processes, concurrency, pool
        self.extra_env = extra_env or {}
        self.label = label
        self.logs: list[Path] = []

    def start_one(self, index: int) -> subprocess.Popen:
        env = _db_env()
        env["WORKTREES_DIR"] = str(self.worktrees)
        env.update(self.extra_env)
        log = self.worktrees.parent / f"{self.label}{index}-{len(self.logs)}.log"
        self.logs.append(log)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlroom",
                "worker",
                "-l",
                "info",
                "-P",
                self.pool,
                "-c",
                str(self.concurrency),
                "-n",
                f"{self.label}{index}-{len(self.logs)}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start(self) -> WorkerPool:
        for index in range(self.processes):
            self.start_one(index)
        return self

    def kill(self, proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(
            "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) for p in self.logs if p.exists()
        )


@pytest.fixture
def celery_workers(worktrees_dir, transactional_db):
    pools: list[WorkerPool] = []

    def start(processes: int = 1, concurrency: int = 1, pool: str = "prefork", **extra_env) -> WorkerPool:
        workers = WorkerPool(
            worktrees=worktrees_dir,
            processes=processes,
            concurrency=concurrency,
            pool=pool,
            extra_env={k: str(v) for k, v in extra_env.items()},
        ).start()
        pools.append(workers)
        return workers

    yield start
    for pool in pools:
        pool.stop()


@pytest.fixture(scope="session", autouse=True)
def _audit_triggers_step_aside_for_test_flushes():
    """Transactional tests empty every table with a flush; the audit log's append-only triggers
    would refuse it. Only here, in tests, the flush drops and reinstalls them around itself."""
    from django.db.backends.base.operations import BaseDatabaseOperations

    from audit import triggers

    original = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        triggers.uninstall(self.connection)
        try:
            original(self, sql_list)
        finally:
            triggers.install(self.connection)

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    BaseDatabaseOperations.execute_sql_flush = original


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _flush_redis_queue():
    """Each test starts with an empty broker queue (messages of a previous test's sessions)."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    client.close()
    yield


def wait_until(predicate, *, timeout: float = 30.0, interval: float = 0.1, message="condition"):
    """Poll ``predicate`` until it is truthy; ``message`` may be a callable (evaluated on failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message() if callable(message) else message}")
