"""pytest plugin (loaded with ``-p controlroom.testing`` from pyproject): real services for tests.

Imported before Django settings load, so it can point the settings at what it starts:
- DATA_DIR: a fresh temporary directory (tests never touch ./var);
- REDIS_URL: a private redis-server on a free loopback port, unless REDIS_URL is set;
- DATABASE_URL: with CR_TEST_POSTGRES=1 and no DATABASE_URL, a private PostgreSQL cluster
  (initdb + pg_ctl as the ``postgres`` system user when running as root).
Everything it starts is stopped at exit.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from controlroom.localredis import free_port, start_local_redis

_ROOT = Path(tempfile.mkdtemp(prefix="controlroom-test-"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DATA_DIR", str(_ROOT / "data"))
os.environ.setdefault("SIM_PACING_S", "0")


def _cleanup_root() -> None:
    shutil.rmtree(_ROOT, ignore_errors=True)


atexit.register(_cleanup_root)

if not os.environ.get("REDIS_URL"):
    _redis = start_local_redis(workdir=_ROOT / "redis")
    os.environ["REDIS_URL"] = _redis.url
    atexit.register(_redis.stop)


def _pg_bin(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/lib/postgresql/15/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    raise RuntimeError(f"PostgreSQL's {name} not found: install the postgresql package")


def _start_postgres() -> str:
    pgdata = _ROOT / "pg"
    pgdata.mkdir(mode=0o700)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(_ROOT, user="postgres")
        shutil.chown(pgdata, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True, stdout=subprocess.DEVNULL, timeout=120,
    )
    subprocess.run(
        [*as_user, _pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l", str(pgdata / "server.log"),
         "-o", f"-p {port} -k {pgdata} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
         "start"],
        check=True, stdout=subprocess.DEVNULL, timeout=90,
    )

    def stop() -> None:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    atexit.register(stop)
    return f"postgres://postgres@127.0.0.1:{port}/controlroom"


if os.environ.get("CR_TEST_POSTGRES") == "1" and not os.environ.get("DATABASE_URL"):
    os.environ["DATABASE_URL"] = _start_postgres()
