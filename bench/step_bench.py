"""Control-room overhead per agent step, and fleet throughput on real Celery workers.

Overhead = a step's wall time minus the model call and the tool's own run time: the lock (claim),
the authorization, the recording (transactions + audit events) and the broadcast (rendering the
tile once and publishing it). The offline model runs with zero pacing, so the model costs ~nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Row, log, migrate, setup_django, summarize


def _fleet():
    from django.conf import settings

    from agents.demo_repo import create_demo_repo
    from agents.models import Pod, PodMembership, Repository, User

    repo_path = create_demo_repo(Path(settings.DATA_DIR) / "repos" / "bench-demo")
    repo, _ = Repository.objects.get_or_create(name="bench-demo", defaults={"path": str(repo_path)})
    pod, _ = Pod.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    lead, _ = User.objects.get_or_create(username="bench-lead", defaults={"role": "member"})
    PodMembership.objects.get_or_create(pod=pod, user=lead, defaults={"role": "lead"})
    return pod, lead, repo


def _launch(count: int, *, start: bool) -> list[int]:
    from django.db import transaction

    from agents import services

    pod, lead, repo = _fleet()
    spec = services.GrantSpec(mode="edits", allow=("Bash(python -m pytest *)", "Git(commit)"))
    ids = []
    with transaction.atomic():
        for index in range(count):
            session = services.session_launch(
                pod=pod,
                sto=lead,
                goal=f"Bench {index}: fix the failing test in shopcart",
                by=lead,
                repository=repo,
                grant=spec,
                seed=index,
                start=start,
            )
            ids.append(session.pk)
    return ids


def _tree_rss_mib(pid: int) -> float:
    """RSS of a process and its children (a Celery worker and its pool), in MiB."""
    import psutil

    tree = psutil.Process(pid)
    total = 0
    for each in [tree, *tree.children(recursive=True)]:
        try:
            total += each.memory_info().rss
        except psutil.NoSuchProcess:  # a pool child being replaced
            pass
    return total / 2**20


def bench_overhead(sessions: int) -> None:
    from agents import events
    from agents.models import AgentSession, AgentStep, Status
    from agents.runtime.loop import run_step

    broadcasts: list[float] = []
    real_broadcast = events.broadcast_session

    def timed_broadcast(session_id: int, pod_id: int | None = None) -> None:
        started = time.perf_counter()
        real_broadcast(session_id, pod_id)
        broadcasts.append(time.perf_counter() - started)

    events.broadcast_session = timed_broadcast
    ids = _launch(sessions, start=False)
    log(f"step overhead: running {sessions} sim sessions in-process")
    for session_id in ids:
        for _ in range(60):
            session = AgentSession.objects.get(pk=session_id)
            if session.status not in (Status.QUEUED, Status.RUNNING):
                break
            run_step(session_id, session.steps + 1, owner="bench")
    events.broadcast_session = real_broadcast
    timings = [
        t for t in AgentStep.objects.filter(session_id__in=ids, state="done").values_list("timings", flat=True) if t
    ]
    from django.db import connection

    bench = "step overhead" if connection.vendor == "sqlite" else f"step overhead ({connection.vendor})"
    per_phase = {name: [t.get(name, 0.0) * 1000 for t in timings] for name in ("lock", "authorize", "record")}
    per_phase["tool"] = [t.get("tool", 0.0) * 1000 for t in timings]
    per_phase["broadcast"] = [b * 1000 for b in broadcasts]
    overhead = [(t.get("total", 0.0) - t.get("model", 0.0) - t.get("tool", 0.0)) * 1000 for t in timings]
    for name, values in per_phase.items():
        median, p99 = summarize(values)
        Row(bench, name, len(values), median, p99, "ms").emit()
    median, p99 = summarize(overhead)
    Row(
        bench,
        "total minus model and tool (+broadcast separately)",
        len(overhead),
        median,
        p99,
        "ms",
        target="≤ 20 ms median",
        verdict="met" if median <= 20 else "MISSED",
    ).emit()


SANDBOX_DENY = (
    "Read(**/.env*)",
    "Read(secrets/**)",
    "Edit(.github/**)",
    "Bash(touch *)",
    "Bash(curl *)",
    "Bash(git push *)",
)


def bench_sandbox_start(repeats: int) -> None:
    """Per-command sandbox start: `true` through the executor, without masks and with a typical
    grant's masks (what the worker pays on every run_command before the command itself)."""
    from django.conf import settings

    from agents.permissions.masks import compute_masks
    from agents.runtime.sandbox import sandbox_available
    from agents.runtime.worktrees import ensure_worktree
    from agents.tools import execute
    from agents.tools.executor import agent_env

    if not sandbox_available("bwrap"):
        log("sandbox start: bubblewrap is not available here; skipped")
        return
    _pod, _lead, repo = _fleet()
    worktree = Path(settings.DATA_DIR) / "worktrees" / "bench-sandbox"
    ensure_worktree(repo_path=Path(repo.path), base_branch="main", branch="bench/sandbox", worktree_path=worktree)
    log(f"sandbox start: {repeats} commands each, without and with the grant's masks")
    masks = compute_masks(SANDBOX_DENY, str(worktree), path=agent_env()["PATH"])
    computing = []
    for _ in range(repeats):
        started = time.perf_counter()
        compute_masks(SANDBOX_DENY, str(worktree), path=agent_env()["PATH"])
        computing.append((time.perf_counter() - started) * 1000)
    cases = (("bwrap `true`, no masks", None), ("bwrap `true`, with the grant's masks", SANDBOX_DENY))
    for label, deny in cases:
        durations = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = execute(
                "run_command", {"command": "true"}, worktree=worktree, trailers={}, sandbox="bwrap", deny=deny
            )
            durations.append((time.perf_counter() - started) * 1000)
            assert result.ok, result.output
        median, p99 = summarize(durations)
        Row("sandbox start", label, len(durations), median, p99, "ms/command").emit()
    median, p99 = summarize(computing)
    shape = f"{len(masks.hidden)} hidden, {len(masks.read_only) + len(masks.missing)} read-only, {len(masks.programs)} programs"
    Row("sandbox start", f"computing the masks ({shape})", len(computing), median, p99, "ms/command").emit()


def bench_fleet(sessions: int, workers: int) -> None:
    from agents.models import AgentSession, AgentStep

    ids = _launch(sessions, start=True)
    env = dict(os.environ, SIM_PACING_S="0")
    log(f"fleet: {sessions} sim sessions on {workers} worker processes")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlroom",
                "worker",
                "-c",
                "1",
                "-n",
                f"bench{i}@%h",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for i in range(workers)
    ]
    started = time.perf_counter()
    try:
        deadline = started + 1800
        while time.perf_counter() < deadline:
            if not AgentSession.objects.filter(pk__in=ids, status__in=["queued", "running"]).exists():
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        rss = [_tree_rss_mib(proc.pid) for proc in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    steps = AgentStep.objects.filter(session_id__in=ids, state="done").count()
    durations = [
        (f - s).total_seconds() * 1000
        for s, f in AgentStep.objects.filter(session_id__in=ids, state="done").values_list("started_at", "finished_at")
        if f
    ]
    median, p99 = summarize(durations)
    Row(
        "fleet", f"{sessions} sessions, {workers} workers", steps, median, p99, "ms/step (incl. tools)", steps / elapsed
    ).emit()
    Row(
        "memory",
        f"worker RSS (main + pool child) after ~{steps // max(1, workers)} steps each",
        len(rss),
        sorted(rss)[len(rss) // 2],
        max(rss),
        "MiB",
    ).emit()  # the 1,000-step figure: bench_worker_memory


def bench_worker_memory(steps: int) -> None:
    """RSS of one worker (main process + its pool child) once it has run ``steps`` agent steps."""
    from django.conf import settings

    from agents.models import AgentStep

    ids = _launch(max(1, steps // 6), start=True)
    log(f"memory: 1 worker process until it has run {steps} steps")
    env = dict(os.environ, SIM_PACING_S="0")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "controlroom",
            "worker",
            "-c",
            "1",
            "-n",
            "benchmem@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    samples: list[float] = []
    try:
        deadline = time.perf_counter() + 1800
        done = 0
        while time.perf_counter() < deadline:
            done = AgentStep.objects.filter(session_id__in=ids, state="done").count()
            samples.append(_tree_rss_mib(proc.pid))
            if done >= steps:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the pool child is replaced every CELERY_MAX_TASKS_PER_CHILD tasks: the peak is the figure to plan for
    Row(
        "memory",
        f"worker RSS (main + pool child) over {done} steps: median of samples, peak as p99 "
        f"(child recycled every {settings.CELERY_WORKER_MAX_TASKS_PER_CHILD} tasks)",
        len(samples),
        sorted(samples)[len(samples) // 2],
        max(samples),
        "MiB",
    ).emit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--fleet", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-steps", type=int, default=1000, help="worker RSS after this many steps (0: skip)")
    parser.add_argument("--sandbox-repeats", type=int, default=50, help="commands per sandbox start case (0: skip)")
    args = parser.parse_args()
    setup_django()
    migrate()
    bench_overhead(args.sessions)
    if args.sandbox_repeats:
        bench_sandbox_start(args.sandbox_repeats)
    if args.fleet:
        bench_fleet(args.fleet, args.workers)
    if args.memory_steps:
        bench_worker_memory(args.memory_steps)


if __name__ == "__main__":
    main()
