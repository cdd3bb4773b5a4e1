"""Run every benchmark against real parts and print one table.

    python -m bench            # full sizes (minutes; the numbers in bench/RESULTS.md)
    python -m bench --smoke    # tiny sizes: checks the suite still runs (used by the tests)
    python -m bench --only audit,step --write-results

Each benchmark runs in its own process with a fresh DATA_DIR, the private Redis this command
starts, and SQLite or a private PostgreSQL cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SIZES = {
    "smoke": {
        "audit": ["--events", "300", "--verify-events", "2000", "--repeats", "1"],
        "step": ["--sessions", "2", "--fleet", "0", "--memory-steps", "0", "--sandbox-repeats", "3"],
        "step_postgres": ["--sessions", "2", "--fleet", "0", "--memory-steps", "0", "--sandbox-repeats", "0"],
        "pages": ["--sessions", "20", "--big", "40", "--events", "2000", "--repeats", "2"],
        "live": ["--sessions", "20", "--updates", "40", "--pages", "1", "--rate", "100", "--viewers", "2"],
        "fleet": ["--sessions", "4", "--latency", "0.5", "--steps", "2"],
    },
    "full": {
        "audit": ["--events", "20000", "--verify-events", "1000000", "--repeats", "3"],
        "step": ["--sessions", "20", "--fleet", "100", "--workers", "2"],
        "step_postgres": ["--sessions", "20", "--fleet", "0", "--memory-steps", "0", "--sandbox-repeats", "0"],
        "pages": ["--sessions", "100", "--big", "1000", "--events", "100000", "--repeats", "10"],
        "live": ["--sessions", "100", "--updates", "2000", "--pages", "20", "--rate", "100", "--big"],
        "fleet": ["--sessions", "100", "--latency", "5", "--steps", "4"],
    },
}
MODULES = {
    "audit": "bench.audit_bench",
    "step": "bench.step_bench",
    "pages": "bench.pages_bench",
    "live": "bench.live_bench",
    "fleet": "bench.fleet_bench",
}


def run_one(name: str, args: list[str], *, env: dict[str, str]) -> list[dict]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    child_env = dict(env, DATA_DIR=str(data_dir), LITELLM_LOCAL_MODEL_COST_MAP="True", SIM_PACING_S="0")
    print(
        f"▶ {name} {' '.join(args)} [{'postgres' if 'DATABASE_URL' in env or 'postgres' in args else 'sqlite'}]",
        file=sys.stderr,
        flush=True,
    )
    proc = subprocess.run(
        [sys.executable, "-m", MODULES[name], *args],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    rows = [json.loads(line[len("BENCHROW ") :]) for line in proc.stdout.splitlines() if line.startswith("BENCHROW ")]
    if proc.returncode != 0:
        rows.append(
            {
                "bench": name,
                "case": f"FAILED (exit {proc.returncode})",
                "n": 0,
                "median": float("nan"),
                "p99": float("nan"),
                "unit": "",
                "rate": None,
                "target": "",
                "verdict": "MISSED",
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    header = ["benchmark", "case", "n", "median", "p99", "unit", "rate /s", "target", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        rate = f"{r['rate']:,.0f}" if r.get("rate") else ""
        lines.append(
            f"| {r['bench']} | {r['case']} | {r['n']:,} | {r['median']:.3f} | {r['p99']:.3f} | {r['unit']} | {rate} | {r.get('target', '')} | {r.get('verdict', '')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the suite runs")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(MODULES))
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL runs")
    parser.add_argument("--write-results", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from controlroom.localredis import start_local_redis

    sizes = SIZES["smoke" if args.smoke else "full"]
    selected = [name for name in MODULES if not args.only or name in args.only.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    redis = start_local_redis(workdir=work / "redis")
    base_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    base_env["REDIS_URL"] = redis.url
    rows: list[dict] = []
    postgres = None
    try:
        for name in selected:
            rows += run_one(name, sizes[name], env=base_env)
        if "fleet" in selected and not args.no_postgres:
            rows += run_one("fleet", [*sizes["fleet"], "--db", "postgres"], env=base_env)  # its own cluster
        if ("audit" in selected or "step" in selected) and not args.no_postgres:
            from controlroom.localpg import start_local_postgres

            os.chmod(work, 0o711)
            postgres = start_local_postgres(workdir=work / "pg")
        if "step" in selected and postgres:
            # the per-step overhead on PostgreSQL (the fleet and memory figures: the fleet benchmark)
            rows += run_one("step", [*sizes["step_postgres"]], env=dict(base_env, DATABASE_URL=postgres.url))
        if "audit" in selected and postgres:
            # filling a million events through PostgreSQL round trips takes long: verify over fewer there
            pg_args = list(sizes["audit"])
            at = pg_args.index("--verify-events") + 1
            pg_args[at] = str(min(int(pg_args[at]), 200_000))
            rows += run_one("audit", [*pg_args, "--db", "postgres"], env=dict(base_env, DATABASE_URL=postgres.url))
    finally:
        if postgres:
            postgres.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    output = table(rows)
    print(output)
    if args.write_results:
        machine = (
            f"{platform.node()} — {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores"
        )
        (ROOT / "bench" / "RESULTS.md").write_text(
            "# Benchmark results\n\n"
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M UTC} on {machine}.\n"
            f"Command: `python -m bench{' --smoke' if args.smoke else ''}{' --only ' + args.only if args.only else ''}`\n\n"
            + output
            + "\n"
        )
    missed = [r for r in rows if r.get("verdict") == "MISSED" and "FAILED" in r["case"]]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
