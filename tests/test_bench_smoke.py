"""The benchmark suite runs (tiny sizes), so it cannot rot. The figures themselves are reported by
``python -m bench``, never asserted here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(900)
def test_every_benchmark_runs_in_smoke_mode_and_prints_its_rows():
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "DATABASE_URL", "REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-postgres"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    assert "FAILED" not in table, table
    for bench in (
        "audit append",
        "audit verify",
        "step overhead",
        "sandbox start",
        "page canvas",
        "page digest",
        "page dashboard",
        "first paint",
        "live status→DOM",
        "live status→socket",
        "fleet",
    ):
        assert f"| {bench} |" in table, (bench, table, proc.stderr[-3000:])
