"""Start a private PostgreSQL cluster (tests and benchmarks): initdb + pg_ctl on a free loopback port.

As root, the server runs as the ``postgres`` system user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controlroom.localredis import free_port


def pg_binary(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/lib/postgresql/15/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    raise RuntimeError(f"PostgreSQL's {name} not found: install the postgresql package")


@dataclass
class LocalPostgres:
    pgdata: Path
    url: str
    as_user: list[str]

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, pg_binary("pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )


def start_local_postgres(*, workdir: Path, database: str = "controlroom") -> LocalPostgres:
    workdir.mkdir(parents=True, exist_ok=True)
    pgdata = workdir / "pg"
    pgdata.mkdir(mode=0o700)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, user="postgres")
        shutil.chown(pgdata, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_user, pg_binary("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    subprocess.run(
        [
            *as_user,
            pg_binary("pg_ctl"),
            "-D",
            str(pgdata),
            "-w",
            "-t",
            "60",
            "-l",
            str(pgdata / "server.log"),
            "-o",
            f"-p {port} -k {pgdata} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=90,
    )
    subprocess.run(
        [*as_user, pg_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )
    return LocalPostgres(pgdata=pgdata, url=f"postgres://postgres@127.0.0.1:{port}/{database}", as_user=as_user)
