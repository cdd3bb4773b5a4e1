"""/healthz: real database, real Redis (from the test plugin), a real Celery worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from controlroom.localredis import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTSIDER_ADDR = "10.1.2.3"
TOKEN = "s3cret-token-for-monitors"
DETAILS = {"status", "database", "redis", "celery", "worktrees_bytes"}


def _redis_db_url(url: str, *, db: int) -> str:
    base = url.rsplit("/", 1)[0] if url.count("/") >= 3 else url
    return f"{base}/{db}"


@pytest.fixture(autouse=True)
def _fresh_bare_status():
    """Each test sees its own state of the world, not the bare status a previous test left cached."""
    from controlroom import health

    health._bare = None
    yield
    health._bare = None


@pytest.fixture
def token_set():
    with override_settings(CONTROLROOM={**settings.CONTROLROOM, "HEALTHZ_TOKEN": TOKEN}):
        yield TOKEN


def _dead_redis():
    """Settings under which the probes fail fast: the tests below are about who sees what."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    return override_settings(REDIS_URL=dead, CELERY_BROKER_URL=dead)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[str]:
    """A real worker on the test Redis; yields its node name once it answers pings."""
    from controlroom.celery import app

    node = f"healthz-{uuid.uuid4().hex[:8]}@localhost"
    log = (tmp_path / "worker.log").open("wb")
    env = {**os.environ, "REDIS_URL": os.environ["REDIS_URL"], "DATA_DIR": os.environ["DATA_DIR"]}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "controlroom",
            "worker",
            "--pool",
            "solo",
            "-c",
            "1",
            "-n",
            node,
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "warning",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90  # generous: a loaded CI machine starts workers slowly
        while True:
            replies = app.control.ping(timeout=0.5, destination=[node])
            if any(node in reply for reply in replies):
                break
            if process.poll() is not None:
                pytest.fail(f"worker exited early:\n{(tmp_path / 'worker.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker never answered:\n{(tmp_path / 'worker.log').read_text()}")
        yield node
    finally:
        _stop(process)
        log.close()


@pytest.mark.django_db
def test_it_reports_ok_when_database_redis_and_a_worker_answer(client, celery_worker, token_set):
    response = client.get("/healthz", headers={"Authorization": f"Bearer {token_set}"})

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is True
    assert body["celery"]["ok"] is True
    assert celery_worker in body["celery"]["workers"]
    assert isinstance(body["worktrees_bytes"], int)


@pytest.mark.django_db
def test_an_anonymous_readiness_check_gets_a_bare_ok_when_everything_answers(client, celery_worker):
    response = client.get("/healthz")  # the test client asks from 127.0.0.1: loopback gets no more

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_it_fails_naming_celery_when_no_worker_listens(client, token_set):
    # A Redis database no worker of this test session listens on (broadcasts are per-database).
    lonely_broker = _redis_db_url(settings.REDIS_URL, db=13)
    with override_settings(CELERY_BROKER_URL=lonely_broker):
        response = client.get("/healthz", {"token": token_set})

    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["celery"]["ok"] is False
    assert body["celery"]["workers"] == []
    assert "no worker" in body["celery"]["detail"]
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is True


@pytest.mark.django_db
def test_it_answers_503_quickly_when_redis_is_down(client, token_set):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    caches = {"default": {**settings.CACHES["default"], "LOCATION": dead}}
    client.get("/healthz", REMOTE_ADDR=OUTSIDER_ADDR)  # loads the URLconf, so only the probes are timed
    with override_settings(REDIS_URL=dead, CELERY_BROKER_URL=dead, CACHES=caches):
        started = time.monotonic()
        response = client.get("/healthz", headers={"Authorization": f"Bearer {token_set}"})
        elapsed = time.monotonic() - started

    body = response.json()
    assert response.status_code == 503
    assert elapsed < 1.5
    assert body["redis"]["ok"] is False
    assert body["celery"]["ok"] is False
    assert body["database"]["ok"] is True


@pytest.mark.django_db
@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", OUTSIDER_ADDR])
def test_an_anonymous_caller_gets_only_the_bare_status_loopback_included(client, addr):
    with _dead_redis():
        response = client.get("/healthz", REMOTE_ADDR=addr)

    assert response.status_code == 503
    assert response.json() == {"status": "fail"}


@pytest.mark.django_db
def test_a_forwarded_for_header_claiming_loopback_changes_nothing(client):
    # what a same-host reverse proxy forwards: REMOTE_ADDR is the proxy's, X-Forwarded-For the client's word
    with _dead_redis():
        response = client.get(
            "/healthz",
            REMOTE_ADDR="127.0.0.1",
            headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "X-Forwarded-Proto": "https"},
        )

    assert response.json() == {"status": "fail"}


@pytest.mark.django_db
def test_it_answers_a_logged_in_user_from_another_machine(client, django_user_model):
    user = django_user_model.objects.create_user(username="manager-h", password="pw-123456789")
    client.force_login(user)
    with _dead_redis():
        response = client.get("/healthz", REMOTE_ADDR=OUTSIDER_ADDR)

    assert response.status_code == 503
    assert set(response.json()) >= DETAILS


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["header", "lowercase-scheme", "query"])
def test_it_answers_a_monitor_presenting_the_token(client, token_set, how):
    request = {
        "header": {"headers": {"Authorization": f"Bearer {token_set}"}},
        "lowercase-scheme": {"headers": {"Authorization": f"bearer  {token_set} "}},
        "query": {"data": {"token": token_set}},
    }[how]
    with _dead_redis():
        response = client.get("/healthz", REMOTE_ADDR=OUTSIDER_ADDR, **request)

    assert response.status_code == 503
    assert set(response.json()) >= DETAILS
    assert response.json()["redis"]["ok"] is False


@pytest.mark.django_db
@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"data": {"token": "guess"}},
        {"data": {"token": TOKEN[:-1]}},
        {"data": {"token": TOKEN + "x"}},
        {"data": {"token": "é\x00" * 1000}},
        {"headers": {"Authorization": "Bearer guess"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},
        {"headers": {"Authorization": TOKEN}},
        {"headers": {"Authorization": "Bearer"}},
    ],
    ids=["wrong", "prefix", "longer", "hostile", "wrong-bearer", "basic-scheme", "no-scheme", "empty-bearer"],
)
def test_a_wrong_token_gets_only_the_bare_status(client, token_set, request_kwargs):
    with _dead_redis():
        response = client.get("/healthz", REMOTE_ADDR=OUTSIDER_ADDR, **request_kwargs)

    assert response.status_code == 503
    assert response.json() == {"status": "fail"}


@pytest.mark.django_db
@pytest.mark.parametrize("unset", [None, ""])
def test_an_unset_token_setting_lets_no_token_through(client, unset):
    controlroom = {**settings.CONTROLROOM, "HEALTHZ_TOKEN": unset}
    with override_settings(CONTROLROOM=controlroom), _dead_redis():
        query = client.get("/healthz", {"token": ""}, REMOTE_ADDR=OUTSIDER_ADDR)
        header = client.get("/healthz", REMOTE_ADDR=OUTSIDER_ADDR, headers={"Authorization": "Bearer "})

    assert query.json() == {"status": "fail"}
    assert header.json() == {"status": "fail"}


@pytest.mark.django_db
def test_it_is_never_cached(client):
    with _dead_redis():
        response = client.get("/healthz")

    assert "no-cache" in response.headers["Cache-Control"]


@pytest.mark.django_db
def test_anonymous_requests_share_one_check_for_a_few_seconds(client, monkeypatch):
    """A flood of anonymous readiness checks costs one full check (a ping to every worker) per
    BARE_STATUS_TTL_S; a caller who sees the details always gets a fresh one."""
    from controlroom import health

    checks: list[bool] = []
    real = health.health_report

    def counting(**kwargs):
        checks.append(kwargs["measure_worktrees"])
        return real(**kwargs)

    monkeypatch.setattr(health, "health_report", counting)
    with _dead_redis():
        answers = [client.get("/healthz").json() for _ in range(5)]
        assert answers == [{"status": "fail"}] * 5 and checks == [False]
        health._bare = (time.monotonic() - health.BARE_STATUS_TTL_S - 0.1, "fail")  # the answer has aged
        client.get("/healthz")
        assert checks == [False, False]
