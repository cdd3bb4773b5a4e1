"""SQLite with its writers queued: the embedded default's database engine.

SQLite lets one connection write at a time. Waiting for that turn is SQLite's busy handler: it
sleeps and retries on a fixed schedule that grows to 100 ms between looks, and whoever looks at
the right moment wins. With a hundred agent steps in two worker processes' threads, a waiter that
has slept long keeps missing the moments a writer finishes, while newcomers take them: under the
fleet benchmark some writes waited the whole 30 s busy timeout and failed with "database is
locked", and the fleet's steps queued for seconds behind them.

This engine queues the writers itself before SQLite sees them: a write transaction (``BEGIN
IMMEDIATE``, the one Django issues for every ``atomic()`` under our ``transaction_mode``) and a
write statement outside a transaction first take the process's writer lock (threads sleep on it
and wake when it is released, no polling), then an ``flock`` on a file beside the database (one
waiter per process polls it every millisecond or so); the lock is released when the transaction
commits or rolls back. So a write never waits inside SQLite's busy handler for another writer of
this engine, and the turns go round in milliseconds. Waiting longer than the database's
``timeout`` fails as before, with "database is locked".

Readers are untouched: WAL lets them read while someone writes.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time

from django.db.backends.sqlite3 import base

_WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER"})


class _Writers:
    """The writer turn for one database file, shared by the threads (and, through ``flock``, the
    processes) that write it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self.path + ".writers", os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self.lock.acquire(timeout=max(timeout, 0.0)):
            raise sqlite3.OperationalError("database is locked")
        try:
            fd = self._file()
            pause = 0.0002
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise sqlite3.OperationalError("database is locked") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.002)
        except BaseException:
            self.lock.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None and self._pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self.lock.release()


_registry: dict[str, _Writers] = {}
_registry_lock = threading.Lock()


def _writers_for(path: str) -> _Writers:
    with _registry_lock:
        writers = _registry.get(path)
        if writers is None:
            writers = _registry[path] = _Writers(path)
        return writers


def _reset_after_fork() -> None:
    # a fork taken while another thread held a lock must not leave the child's copy locked forever
    global _registry_lock
    _registry_lock = threading.Lock()
    for writers in _registry.values():
        writers.lock = threading.Lock()
        writers._fd = None


os.register_at_fork(after_in_child=_reset_after_fork)


class _Cursor(base.SQLiteCursorWrapper):
    wrapper: DatabaseWrapper

    def execute(self, query, params=None):
        if not self.wrapper.holds_writer_turn and _is_write(query):
            with self.wrapper.writer_turn():
                return super().execute(query, params)
        return super().execute(query, params)

    def executemany(self, query, param_list):
        if not self.wrapper.holds_writer_turn and _is_write(query):
            with self.wrapper.writer_turn():
                return super().executemany(query, param_list)
        return super().executemany(query, param_list)


def _is_write(query: str) -> bool:
    head = query.lstrip()[:8].split(None, 1)
    return bool(head) and head[0].upper() in _WRITE_VERBS


class _Turn:
    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self.wrapper = wrapper

    def __enter__(self) -> None:
        self.wrapper._take_writer_turn()

    def __exit__(self, *exc) -> None:
        self.wrapper._give_back_writer_turn()


class DatabaseWrapper(base.DatabaseWrapper):
    holds_writer_turn = False

    def _writers(self) -> _Writers | None:
        if self.is_in_memory_db():
            return None
        return _writers_for(os.path.abspath(str(self.settings_dict["NAME"])))

    def writer_turn(self) -> _Turn:
        return _Turn(self)

    def _take_writer_turn(self) -> None:
        writers = self._writers()
        if writers is not None:
            with self.wrap_database_errors:  # django.db.OperationalError, as SQLite's own would be
                writers.acquire(float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5)))
            self.holds_writer_turn = True

    def _give_back_writer_turn(self) -> None:
        if self.holds_writer_turn:
            self.holds_writer_turn = False
            writers = self._writers()
            if writers is not None:
                writers.release()

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=_Cursor)
        cursor.wrapper = self
        return cursor

    def _start_transaction_under_autocommit(self):
        # every atomic() of this project is a write transaction (transaction_mode IMMEDIATE)
        self._take_writer_turn()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._give_back_writer_turn()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            if not (self.connection is not None and self.connection.in_transaction):
                self._give_back_writer_turn()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._give_back_writer_turn()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._give_back_writer_turn()
