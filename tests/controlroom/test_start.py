"""The start command (controlroom.launcher, behind bin/start): real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from controlroom.localredis import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _launcher_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "REDIS_URL_FILE", "DATABASE_URL", "DATABASE_URL_FILE", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **extra)
    return env


HEALTHZ_TOKEN = "start-test-health-token"


def _health(port: int, *, token: str | None = HEALTHZ_TOKEN) -> dict | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:  # 503 still carries the report
        return json.load(exc)
    except (OSError, ValueError):
        return None


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_it_starts_everything_and_ctrl_c_stops_everything(tmp_path: Path):
    port = free_port()
    output = tmp_path / "launcher.out"
    with output.open("wb") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlroom.launcher",
                "--port",
                str(port),
                "--no-seed",
                "--workers",
                "2",
                "--concurrency",
                "1",
            ],
            cwd=REPO_ROOT,
            env=_launcher_env(tmp_path / "data", HEALTHZ_TOKEN=HEALTHZ_TOKEN),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90  # generous: a loaded CI machine imports slowly
        report = None
        while time.monotonic() < deadline:
            assert launcher.poll() is None, f"launcher exited early:\n{output.read_text()}"
            report = _health(port)
            if report and report["status"] == "ok" and len(report["celery"]["workers"]) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"/healthz never reported ok (last: {report}):\n{output.read_text()}")

        assert sorted(name.split("@")[0] for name in report["celery"]["workers"]) == ["worker1", "worker2"]
        assert _health(port, token=None) == {"status": "ok"}  # loopback without the token: the bare status
        redis_url_file = tmp_path / "data" / "run" / "redis.url"
        assert redis_url_file.read_text().startswith("redis://127.0.0.1:")
        children = psutil.Process(launcher.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert "redis-server" in names and "daphne" in names and "beat" in names

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=20) == 0, output.read_text()

        survivors = [child for child in children if _alive(child)]
        assert survivors == [], [(child.pid, child.cmdline()) for child in survivors]
        assert not redis_url_file.exists()
        log = output.read_text()
        assert f"http://127.0.0.1:{port}/" in log
        assert "manager / " in log
        assert (tmp_path / "data" / "logs" / "web.log").read_text().strip()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        for child in children:
            if _alive(child):
                child.kill()


@pytest.mark.slow
@pytest.mark.parametrize("after_exec_s", [0.0, 0.05, 0.1, 0.2, 0.4])
def test_ctrl_c_while_bin_start_is_still_starting_stops_it_without_a_traceback_or_leftovers(
    tmp_path: Path, after_exec_s: float
):
    """Ctrl-C in the first moments (Python importing the project, before the launcher's own
    handlers exist) is a requested stop like any later one: one line, nothing left running."""
    data_dir = tmp_path / "data"
    start = subprocess.Popen(
        [str(REPO_ROOT / "bin" / "start"), "--port", str(free_port()), "--no-seed"],
        cwd=REPO_ROOT,
        env=_launcher_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a terminal's Ctrl-C goes to the whole foreground group
    )
    try:
        # bin/start execs Python once the virtualenv is ready: count from there (the same pid)
        deadline = time.monotonic() + 20
        while "python" not in " ".join(psutil.Process(start.pid).cmdline()):
            assert time.monotonic() < deadline and start.poll() is None
            time.sleep(0.005)
        time.sleep(after_exec_s)
        os.killpg(start.pid, signal.SIGINT)
        out, _ = start.communicate(timeout=30)
    finally:
        if start.poll() is None:
            os.killpg(start.pid, signal.SIGKILL)
            start.wait(timeout=10)

    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    # 0 after a requested stop; the interpreter's own default ends it with SIGINT if the signal
    # lands before Python has run a line
    assert start.returncode in (0, -signal.SIGINT), (start.returncode, out)
    if start.returncode == 0:
        assert "SIGINT received before start-up finished: stopped." in out, out
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(data_dir) in " ".join(proc.info["cmdline"] or []) + proc.environ().get("DATA_DIR", ""):
                leftovers.append(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    assert leftovers == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "nope://x"),
        ("DATABASE_URL", "postgres://bad:url:x"),
        ("REDIS_URL", "redis://127.0.0.1:{dead_port}/0"),
    ],
)
def test_a_bad_setting_stops_it_with_one_line_naming_the_variable(tmp_path: Path, variable: str, value: str):
    value = value.format(dead_port=free_port())
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "controlroom.launcher", "--port", str(free_port()), "--no-seed"],
        cwd=REPO_ROOT,
        env=_launcher_env(tmp_path / "data", **{variable: value}),
        capture_output=True,
        text=True,
        timeout=10,
    )

    assert time.monotonic() - started < 10
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {variable}:")
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data" / "run" / "redis.url").exists()


def test_a_port_in_use_stops_it_before_anything_starts(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "controlroom.launcher", "--port", str(port), "--no-seed"],
            cwd=REPO_ROOT,
            env=_launcher_env(tmp_path / "data"),
            capture_output=True,
            text=True,
            timeout=10,
        )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--port" in result.stderr and "already in use" in result.stderr


@pytest.mark.parametrize(
    ("missing", "given"),
    [
        ("REDIS_URL", {}),
        ("DATABASE_URL", {"REDIS_URL": "redis://127.0.0.1:1/0"}),
        ("AUDIT_SIGNING_KEY", {"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "postgres://u@127.0.0.1:1/x"}),
    ],
)
def test_a_worker_host_refuses_to_start_without_the_control_rooms_redis_database_and_key(
    tmp_path: Path, missing: str, given: dict
):
    """--worker-only joins an existing control room: without its Redis, database and audit key it
    would start a room of its own, or sign checkpoints audit_verify then refuses."""
    env = _launcher_env(tmp_path / "data", **given)
    for name in ("REDIS_URL", "DATABASE_URL", "AUDIT_SIGNING_KEY"):
        if name not in given:
            env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "controlroom.launcher", "--worker-only"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {missing}:") and "--worker-only" in result.stderr


STRONG = {"SECRET_KEY": "k" * 10 + "s3cr3t-enough-for-the-check-" * 2, "AUDIT_SIGNING_KEY": "a" * 64}


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({}, ["SECRET_KEY is not set", "AUDIT_SIGNING_KEY is not set"]),
        ({**STRONG, "DEBUG": "true"}, ["DEBUG is on"]),
        ({**STRONG, "ALLOWED_HOSTS": "*"}, ["ALLOWED_HOSTS contains '*'"]),
        ({**STRONG, "SECRET_KEY": "django-insecure-short"}, ["SECRET_KEY is weak"]),
        ({**STRONG, "AUDIT_SIGNING_KEY": "key"}, ["AUDIT_SIGNING_KEY is weak"]),
        ({**STRONG, "DEMO_PASSWORD": "controlroom"}, ["DEMO_PASSWORD is the demo's"]),
        ({**STRONG, "DEBUG": "1", "ALLOWED_HOSTS": "*"}, ["DEBUG is on", "ALLOWED_HOSTS contains '*'"]),
    ],
)
def test_production_refuses_weak_defaults_in_one_line(tmp_path: Path, given: dict, named: list[str]):
    result = subprocess.run(
        [sys.executable, "-m", "controlroom.launcher", "--port", str(free_port()), "--no-seed"],
        cwd=REPO_ROOT,
        env=_launcher_env(tmp_path / "data", PRODUCTION="true", **given),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: PRODUCTION=true refuses weak defaults: ")
    for problem in named:
        assert problem in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_production_refuses_to_seed_the_demo_with_its_documented_password(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "controlroom.launcher", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=_launcher_env(tmp_path / "data", PRODUCTION="true", **STRONG),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "manager / controlroom" in lines[0] and "--no-seed" in lines[0], result.stderr
