"""The embedded default's SQLite engine queues its writers (controlroom/sqlite/base.py).

Threads of one process wait on the process's writer lock, processes on an ``flock`` beside the
database, so a writer never sits in SQLite's busy handler behind another writer of this engine;
the turn is given back at commit, rollback and close; waiting longer than the database's
``timeout`` still fails with "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from django.db import OperationalError, connection, connections, transaction

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def table():
    assert type(connections["default"]).__module__ == "controlroom.sqlite.base"
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS writers_probe (who TEXT, at REAL)")
    yield "writers_probe"
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE writers_probe")


def _rows() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT who FROM writers_probe ORDER BY rowid")
        return [row[0] for row in cursor.fetchall()]


def _insert(who: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO writers_probe (who, at) VALUES (%s, %s)", [who, time.monotonic()])


class _Thread(threading.Thread):
    """Runs ``target`` on its own database connection and keeps what it raised."""

    def __init__(self, target) -> None:
        super().__init__(daemon=True)
        self.target, self.error = target, None

    def run(self) -> None:
        try:
            self.target()
        except Exception as exc:  # kept for the test to look at
            self.error = exc
        finally:
            connections.close_all()


def _holder(inside: threading.Event, release: threading.Event, *, fail: bool = False):
    def hold() -> None:
        try:
            with transaction.atomic():
                _insert("holder")
                inside.set()
                release.wait(10)
                if fail:
                    raise RuntimeError("the holder's transaction fails")
        except RuntimeError:
            pass

    return _Thread(hold)


def test_a_second_writer_waits_for_the_first_to_commit_then_writes(table):
    inside, release = threading.Event(), threading.Event()
    holder = _holder(inside, release)
    holder.start()
    assert inside.wait(10)

    def write() -> None:
        with transaction.atomic():
            _insert("second")

    second = _Thread(write)
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second writer must wait for the holder's turn"
    release.set()
    holder.join(10)
    second.join(10)
    assert holder.error is None and second.error is None
    assert _rows() == ["holder", "second"]


def test_a_write_outside_a_transaction_takes_the_turn_too(table):
    inside, release = threading.Event(), threading.Event()
    holder = _holder(inside, release)
    holder.start()
    assert inside.wait(10)
    lone = _Thread(lambda: _insert("autocommit"))
    lone.start()
    lone.join(0.5)
    assert lone.is_alive()
    release.set()
    holder.join(10)
    lone.join(10)
    assert lone.error is None and _rows() == ["holder", "autocommit"]


def test_a_rolled_back_transaction_gives_the_turn_back(table):
    inside, release = threading.Event(), threading.Event()
    holder = _holder(inside, release, fail=True)
    holder.start()
    assert inside.wait(10)
    release.set()
    holder.join(10)
    with transaction.atomic():  # would wait out the timeout if the turn were still taken
        _insert("after")
    assert _rows() == ["after"]


def test_readers_do_not_wait_for_a_writer(table):
    _insert("before")
    inside, release = threading.Event(), threading.Event()
    holder = _holder(inside, release)
    holder.start()
    assert inside.wait(10)
    seen: list[list[str]] = []
    reader = _Thread(lambda: seen.append(_rows()))
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and seen == [["before"]]  # WAL: the committed state, at once
    release.set()
    holder.join(10)


def test_waiting_longer_than_the_timeout_fails_as_database_is_locked(table, settings):
    inside, release = threading.Event(), threading.Event()
    holder = _holder(inside, release)
    holder.start()
    assert inside.wait(10)
    options = connection.settings_dict["OPTIONS"]
    saved = options.get("timeout")
    options["timeout"] = 0.3
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            with transaction.atomic():
                _insert("too late")
    finally:
        options["timeout"] = saved
        release.set()
        holder.join(10)
    assert _rows() == ["holder"]
    with transaction.atomic():  # and the failed wait left the turn free
        _insert("then")


def test_many_threads_writing_at_once_all_get_their_turn(table):
    def writer(n: int):
        def run() -> None:
            for i in range(15):
                with transaction.atomic():
                    _insert(f"{n}-{i}")
                    time.sleep(0.002)  # a transaction that takes a little while, like a step's

        return run

    threads = [_Thread(writer(n)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [t.error for t in threads] == [None] * 12
    assert len(_rows()) == 12 * 15


def test_another_process_holding_the_turn_makes_this_one_wait(table, tmp_path):
    path = connection.settings_dict["NAME"]
    released = tmp_path / "released"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(path) + '.writers'!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(1.0)\n"
            f"open({str(released)!r}, 'w').close()\n"
            "fcntl.flock(fd, fcntl.LOCK_UN)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with transaction.atomic():
            assert released.exists(), "the transaction began while another process had the turn"
            _insert("after the other process")
    finally:
        child.wait(10)
    assert _rows() == ["after the other process"]
