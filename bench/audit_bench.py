"""Audit append throughput (single writer and 8 concurrent writers) and verification speed.

Runs in its own process against the database named by DATABASE_URL (the orchestrator sets it).
Every append goes through ``audit.log.record`` — the project's own path, chain included —
each in its own transaction, as the runtime does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

from bench.common import Row, log, migrate, setup_django, summarize

PAYLOAD = {
    "step": 3,
    "tool": "run_command",
    "action": "run_command: python -m pytest -q",
    "decision": "allow",
    "reason_type": "rule",
    "rule": "Bash(python -m pytest *)",
    "result": "exit 0 in 0.4s: 13 passed",
    "exit_code": 0,
}


class FakeSession:
    def __init__(self, pk: int) -> None:
        self.pk, self.pod_id = pk, pk % 20 + 1


def _append(count: int, *, base: int, sessions: int = 100) -> list[float]:
    from django.db import transaction

    from audit.log import record

    latencies = []
    for index in range(count):
        session = FakeSession(base + index % sessions)
        started = time.perf_counter()
        with transaction.atomic():
            record(
                "tool.call", session=session, agent=True, on_behalf_of=7, grant=11, provenance="rule", payload=PAYLOAD
            )
        latencies.append(time.perf_counter() - started)
    return latencies


def _writer(args: tuple[int, int]) -> list[float]:
    count, base = args
    setup_django()
    from django.db import connection

    result = _append(count, base=base)
    connection.close()
    return result


def bench_append(*, db: str, events: int) -> None:
    log(f"audit append, single writer, {events} events on {db}")
    _append(200, base=900_000)  # warm-up
    started = time.perf_counter()
    latencies = _append(events, base=1_000)
    elapsed = time.perf_counter() - started
    median, p99 = summarize([v * 1000 for v in latencies])
    rate = events / elapsed
    target = "≥ 5,000 events/s" if db == "sqlite" else ""
    Row(
        "audit append",
        f"{db}, 1 writer",
        events,
        median,
        p99,
        "ms/event",
        rate,
        target,
        ("met" if rate >= 5000 else "MISSED") if target else "",
    ).emit()

    writers = 8
    per_writer = max(1, events // writers)
    log(f"audit append, {writers} concurrent writers, {per_writer} events each on {db}")
    from django.db import connection

    connection.close()
    context = multiprocessing.get_context("spawn")
    with context.Pool(writers) as pool:
        started = time.perf_counter()
        results = pool.map(_writer, [(per_writer, 10_000 + 1_000 * w) for w in range(writers)])
        elapsed = time.perf_counter() - started
    latencies = [v * 1000 for batch in results for v in batch]
    median, p99 = summarize(latencies)
    Row(
        "audit append", f"{db}, {writers} writers", len(latencies), median, p99, "ms/event", len(latencies) / elapsed
    ).emit()


def _bulk_fill(total: int) -> None:
    """Fill the log quickly through record() with many events per transaction (setup, not measured)."""
    from django.db import transaction

    from audit.log import record
    from audit.models import AuditEvent

    have = AuditEvent.objects.count()
    batch = 5_000
    index = 0
    while have + index < total:
        with transaction.atomic():
            for _ in range(min(batch, total - have - index)):
                record(
                    "tool.call",
                    session=FakeSession(50_000 + index % 1000),
                    agent=True,
                    on_behalf_of=7,
                    grant=11,
                    provenance="rule",
                    payload=PAYLOAD,
                )
                index += 1
        if index % 100_000 == 0:
            log(f"  {have + index:,} events")


def bench_verify(*, db: str, events: int, repeats: int) -> None:
    from audit.chain import PARALLEL_MIN_EVENTS, checkpoint_create, verify_log
    from audit.models import AuditEvent

    log(f"verify: filling the log to {events:,} events on {db}")
    _bulk_fill(events)
    from django.db import transaction

    with transaction.atomic():
        checkpoint_create(reason="bench")
    total = AuditEvent.objects.count()
    # As `manage.py audit_verify` runs it (its default --workers; a log below the threshold is
    # verified in one process anyway), and in one process.
    workers = min(4, os.cpu_count() or 1) if total >= PARALLEL_MIN_EVENTS else 1
    for procs in sorted({workers, 1}, reverse=True):
        log(f"verify: {total:,} events, {procs} process{'es' if procs > 1 else ''}, {repeats} run(s)")
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = verify_log(workers=procs)
            timings.append(time.perf_counter() - started)
            if not result.ok or result.events != total:
                raise SystemExit(f"verify failed on an intact log: {result.summary()}")
        median, p99 = summarize(timings)
        rate = total / median
        case = f"{db}, {total:,} events, {procs} process{'es' if procs > 1 else ''}"
        if procs == workers:  # the target applies to verification as the command runs it
            Row(
                "audit verify",
                case,
                total,
                median,
                p99,
                "s/run",
                rate,
                "≥ 100,000 events/s",
                "met" if rate >= 100_000 else "MISSED",
            ).emit()
        else:
            Row("audit verify", case, total, median, p99, "s/run", rate).emit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--verify-events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup_django()
    migrate()
    bench_append(db=args.db, events=args.events)
    bench_verify(db=args.db, events=args.verify_events, repeats=args.repeats)


if __name__ == "__main__":
    main()
