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
import tempfile
from pathlib import Path

from controlroom.localredis import start_local_redis

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


def _start_postgres() -> str:
    from controlroom.localpg import start_local_postgres

    os.chmod(_ROOT, 0o711)  # the postgres system user must traverse it
    server = start_local_postgres(workdir=_ROOT / "postgres")
    atexit.register(server.stop)
    return server.url


if os.environ.get("CR_TEST_POSTGRES") == "1" and not os.environ.get("DATABASE_URL"):
    os.environ["DATABASE_URL"] = _start_postgres()
