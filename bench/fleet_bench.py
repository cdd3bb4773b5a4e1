"""A hundred agents at once: how many model calls are in flight, with a model that takes its time.

Starts the whole control room with the README's start command (``bin/start``, no capacity flags:
its defaults are what is measured; ``--no-seed`` so only the benchmark's sessions run), then
launches N sessions on a loopback OpenAI-compatible model (bench/loopback_model.py) that answers
each call after ``--latency`` seconds. Each session makes ``--steps`` model calls (steps - 1 file
edits, then finish), so the fleet cannot finish before ``steps × latency``: the *limit*.

Reports: peak and mean model calls in flight (mean over the time every session is still running,
i.e. from the last session's first call to the first session's end), fleet wall time against the
limit, total RSS of the worker processes (peak of the sum, sampled every second), and how many
times a worker log says "database is locked".

    python -m bench.fleet_bench --sessions 100 --latency 5 --steps 4 [--db postgres]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import Row, log, percentile
from bench.loopback_model import LoopbackModel

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bin/start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError("the control room did not become healthy in time")


def _worker_rss_and_cpu(launcher_pid: int) -> tuple[float, float]:
    """The worker processes' resident memory (MiB, summed) and CPU seconds so far (user + system)."""
    import psutil

    rss = cpu = 0.0
    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for child in children:
        try:
            cmdline = " ".join(child.cmdline())
            if "celery" in cmdline and " worker" in cmdline:
                rss += child.memory_info().rss
                times = child.cpu_times()
                cpu += times.user + times.system
        except psutil.Error:
            pass
    return rss / 2**20, cpu


def _launch(count: int, *, api_base: str) -> list[int]:
    from django.conf import settings
    from django.db import transaction

    from agents import services
    from agents.demo_repo import create_demo_repo
    from agents.models import Pod, PodMembership, Repository, User

    repo_path = create_demo_repo(Path(settings.DATA_DIR) / "repos" / "fleet-demo")
    repo, _ = Repository.objects.get_or_create(name="fleet-demo", defaults={"path": str(repo_path)})
    pod, _ = Pod.objects.get_or_create(slug="fleet", defaults={"name": "Fleet"})
    lead, _ = User.objects.get_or_create(username="fleet-lead", defaults={"role": "member"})
    PodMembership.objects.get_or_create(pod=pod, user=lead, defaults={"role": "lead"})
    spec = services.GrantSpec(mode="edits")
    ids = []
    with transaction.atomic():
        for index in range(count):
            session = services.session_launch(
                pod=pod,
                sto=lead,
                goal=f"Fleet session {index}: write the step notes",
                by=lead,
                repository=repo,
                grant=spec,
                model="openai/loopback",
                api_base=api_base,
                seed=index,
            )
            ids.append(session.pk)
    return ids


def run(*, sessions: int, latency: float, steps: int, database_url: str, label: str, start_args: list[str]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DATA_DIR")}
    env.update(DATA_DIR=str(data_dir), LITELLM_LOCAL_MODEL_COST_MAP="True", SIM_PACING_S="0")
    if database_url:
        env["DATABASE_URL"] = database_url
    log(f"fleet [{label}]: bin/start {' '.join(start_args)} (DATA_DIR {data_dir})")
    launcher = subprocess.Popen(
        [str(ROOT / "bin" / "start"), "--no-seed", "--port", str(port), *start_args],
        cwd=ROOT,
        env=env,
        stdout=(data_dir / "start.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_healthy(port, launcher)
        # this process talks to what bin/start runs: its DATA_DIR, its private Redis (settings read
        # DATA_DIR/run/redis.url when REDIS_URL is unset) and its database
        os.environ.pop("REDIS_URL", None)
        os.environ.pop("DATABASE_URL", None)
        os.environ.update(DATA_DIR=str(data_dir))
        if database_url:
            os.environ["DATABASE_URL"] = database_url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlroom.settings")
        import django

        django.setup()
        from agents.models import AgentSession, Status

        with LoopbackModel(latency_s=latency, steps=steps) as model:
            log(f"fleet [{label}]: launching {sessions} sessions, {steps} model calls each, {latency:g} s per call")
            started_launch = time.time()
            ids = _launch(sessions, api_base=model.api_base)
            launched = time.time()  # committed: from here on the fleet has every session
            log(f"fleet [{label}]: {sessions} sessions launched in {launched - started_launch:.1f} s")
            rss_peak = 0.0
            cpu_before = _worker_rss_and_cpu(launcher.pid)[1]
            cpu_used = 0.0
            deadline = time.monotonic() + max(600.0, 20 * steps * latency * max(1, sessions / 4))
            terminal = [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.BLOCKED]
            while time.monotonic() < deadline:
                rss, cpu = _worker_rss_and_cpu(launcher.pid)
                rss_peak, cpu_used = max(rss_peak, rss), max(cpu_used, cpu - cpu_before)
                if not AgentSession.objects.filter(pk__in=ids).exclude(status__in=terminal).exists():
                    break
                time.sleep(1.0)
            finished = time.time()
            rows = list(AgentSession.objects.filter(pk__in=ids).values_list("status", "finished_at"))
            calls = model.served()
        succeeded = sum(1 for status, _ in rows if status == Status.SUCCEEDED)
        wall = finished - launched
        limit = steps * latency
        first_calls: dict[str, float] = {}
        for call in calls:
            first_calls.setdefault(call.conversation, call.started)
        ends = [f.timestamp() for _, f in rows if f is not None]
        window_start = max(first_calls.values()) if first_calls else launched
        window_end = min(ends) if ends else finished
        if window_end <= window_start:  # never all running at once: measure over the whole run
            window_start, window_end = launched, finished
        series = model.in_flight_series(window_start, window_end, every_s=0.1)
        whole = model.in_flight_series(launched, finished, every_s=0.1)
        peak = max(whole) if whole else 0
        mean = sum(series) / len(series) if series else 0.0
        locked = 0
        for path in (data_dir / "logs").glob("*.log"):
            locked += path.read_text(errors="replace").count("database is locked")
        case = f"{sessions} sessions × {steps} calls × {latency:g} s, bin/start {' '.join(start_args) or 'defaults'} [{label}]"
        Row(
            "fleet",
            f"{case}: peak calls in flight",
            len(calls),
            peak,
            peak,
            "calls",
            target=f"≥ {int(0.9 * sessions)}",
            verdict="met" if peak >= 0.9 * sessions else "MISSED",
        ).emit()
        Row(
            "fleet",
            f"{case}: mean calls in flight while all run",
            len(series),
            mean,
            mean,
            "calls",
            target=f"≥ {int(0.8 * sessions)}",
            verdict="met" if mean >= 0.8 * sessions else "MISSED",
        ).emit()
        Row(
            "fleet",
            f"{case}: wall time ({succeeded}/{sessions} succeeded; limit {limit:g} s)",
            sessions,
            wall,
            wall / limit,
            "s (p99 column: × limit)",
            target="≤ 1.5 × limit",
            verdict="met" if wall <= 1.5 * limit and succeeded == sessions else "MISSED",
        ).emit()
        # Where a session's time goes outside the model: the control room's own share of the wall time.
        by_conversation: dict[str, list] = {}
        for call in calls:
            by_conversation.setdefault(call.conversation, []).append(call)
        gaps = []
        for convo in by_conversation.values():
            convo.sort(key=lambda c: c.started)
            gaps += [b.started - a.ended for a, b in itertools.pairwise(convo) if a.ended is not None]
        to_first = [started - launched for started in first_calls.values()]
        last_ends = sorted(c.ended for convo in by_conversation.values() for c in convo[-1:] if c.ended is not None)
        to_end = [f - e for f, e in zip(sorted(ends), last_ends)] if len(ends) == len(last_ends) else []
        for what, values in (
            ("launch committed → first model call", to_first),
            ("model answer → next model call (one step of the runtime)", gaps),
            ("last model answer → session finished (n-th fastest to n-th fastest)", to_end),
        ):
            if values:
                Row("fleet", f"{case}: {what}", len(values), percentile(values, 50), percentile(values, 99), "s").emit()
        Row(
            "fleet",
            f"{case}: worker RSS, all worker processes",
            1,
            rss_peak,
            rss_peak,
            "MiB",
            target="≤ 2048 MiB",
            verdict="met" if rss_peak <= 2048 else "MISSED",
        ).emit()
        steps_run = sessions * steps
        Row(
            # what a step costs the worker hosts' CPUs, whatever else loads the machine: with the
            # wall time, the figure that says whether a host's cores or its waiting is the limit
            "fleet",
            f"{case}: worker CPU per step (user + system, all worker processes)",
            steps_run,
            1000 * cpu_used / steps_run,
            1000 * cpu_used / steps_run,
            "ms",
        ).emit()
        Row(
            "fleet",
            f"{case}: 'database is locked' in worker logs",
            1,
            locked,
            locked,
            "lines",
            target="0",
            verdict="met" if locked == 0 else "MISSED",
        ).emit()
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGTERM)
            launcher.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(launcher.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if os.environ.get("BENCH_KEEP_DATA") != "1":
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            log(f"kept {data_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--latency", type=float, default=5.0, help="seconds the loopback model takes per call")
    parser.add_argument("--steps", type=int, default=4, help="model calls per session")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--start-args", default="", help="extra bin/start arguments (to compare settings)")
    args = parser.parse_args()
    start_args = args.start_args.split()
    if args.db == "postgres":
        sys.path.insert(0, str(ROOT))
        from controlroom.localpg import start_local_postgres

        work = Path(tempfile.mkdtemp(prefix="bench-fleet-pg-"))
        os.chmod(work, 0o711)
        postgres = start_local_postgres(workdir=work / "pg")
        try:
            run(
                sessions=args.sessions,
                latency=args.latency,
                steps=args.steps,
                database_url=postgres.url,
                label="postgres",
                start_args=start_args,
            )
        finally:
            postgres.stop()
            shutil.rmtree(work, ignore_errors=True)
    else:
        run(
            sessions=args.sessions,
            latency=args.latency,
            steps=args.steps,
            database_url="",
            label="sqlite",
            start_args=start_args,
        )


if __name__ == "__main__":
    main()
