"""The one start command (``bin/start``): check the configuration, then run everything.

``python -m controlroom.launcher [--host H] [--port P] [--workers K] [--concurrency N] [--pool threads|prefork]
[--no-seed] [--worker-only]``

1. Checks the configuration before starting anything: settings that do not parse, a
   ``REDIS_URL`` that does not answer, a database that does not connect, a port already taken.
   Each problem is one ``error: VARIABLE: ...`` line on stderr and exit status 2.
2. Without ``REDIS_URL``, starts a private Redis and writes its URL to ``DATA_DIR/run/redis.url``
   (settings read that file, so ``manage.py`` commands run beside it find the same Redis).
3. Migrates; seeds the demo data when the database has no agent sessions (unless ``--no-seed``):
   a past month of history (``seed_history``), then tonight's fleet (``seed_demo``).
4. Runs the web server (Daphne: HTTP and websockets), K Celery workers and Celery beat under
   honcho; their output goes to the terminal, prefixed, and to ``DATA_DIR/logs/<name>.log``.
5. Prints the address and the demo login once the web server answers.
6. Ctrl-C or SIGTERM stops every child (SIGTERM; after STOP_WARM_S a cold shutdown for Celery
   workers still busy, their steps going back on the queue; SIGKILL after STOP_GRACE_S; a
   second Ctrl-C kills at once) and the private Redis. Exit status 0 after a requested stop.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import fcntl
import http.client
import os
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DEMO_PASSWORD = "controlroom"
STOP_WARM_S = 6.0  # SIGTERM (warm shutdown) ... SIGQUIT to Celery workers (cold shutdown)
STOP_GRACE_S = 12.0  # SIGTERM ... SIGKILL to whatever is left
READY_TIMEOUT_S = 180.0
# Sized for a hundred agents on one 2-core host: 2 worker processes (one core each for the
# Python side of steps) × 64 threads = 128 steps at once, ~300 MiB per process (see README).
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 64
DEFAULT_PREFORK = 2
CONFIG_ERROR = 2


class ConfigError(Exception):
    """A configuration problem, reported as one ``error: ...`` line."""


class SeedFailed(Exception):
    """The demo data could not be created (a bug, not a configuration problem)."""


class StopRequested(BaseException):
    """Ctrl-C or SIGTERM arrived before the processes were running."""


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    workers: int
    concurrency: int
    pool: str
    seed: bool
    worker_only: bool = False


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bin/start",
        description="Start Control Room: web server (HTTP + websockets), Celery workers and beat.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"Celery worker processes (default {DEFAULT_WORKERS})"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help=f"agent steps at once per worker process (default {DEFAULT_THREADS} with the threads pool, "
        f"{DEFAULT_PREFORK} with prefork)",
    )
    parser.add_argument(
        "--pool",
        choices=("threads", "prefork"),
        default="threads",
        help="worker pool: threads (default: a step waiting on a model holds a thread, not a process) or prefork",
    )
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="add this machine as a worker host of an existing control room (only Celery workers; needs "
        "REDIS_URL, DATABASE_URL and AUDIT_SIGNING_KEY of that control room; see README 'Scaling out')",
    )
    parser.add_argument(
        "--no-seed", dest="seed", action="store_false", help="do not create the demo data in an empty database"
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port: expected 1-65535, got {args.port}")
    if args.workers < 1:
        parser.error(f"--workers: expected at least 1, got {args.workers}")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error(f"--concurrency: expected at least 1, got {args.concurrency}")
    concurrency = args.concurrency or (DEFAULT_THREADS if args.pool == "threads" else DEFAULT_PREFORK)
    return Options(
        host=args.host,
        port=args.port,
        workers=args.workers,
        concurrency=concurrency,
        pool=args.pool,
        seed=args.seed,
        worker_only=args.worker_only,
    )


# --- small helpers ----------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        userinfo = f"{parts.username or ''}:***@"
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=userinfo + host))
    except ValueError:
        return "<unparseable URL>"


def loopback_for(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_port_free(*, host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--port {port}: address {host}:{port} is already in use "
                    "(another server running? pick another --port)"
                ) from None
            raise ConfigError(f"--host {host}: cannot listen there: {exc.strerror or exc}") from None


def check_redis_reachable(*, url: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL: cannot parse it ({exc})") from None
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise ConfigError(f"REDIS_URL: cannot reach {redact(url)}: {one_line(exc)}") from None
    finally:
        client.close()


def check_database_reachable() -> None:
    from django.db import DatabaseError, connections

    label = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "DATA_DIR (SQLite database)"
    try:
        connections["default"].ensure_connection()
    except DatabaseError as exc:
        raise ConfigError(f"{label}: cannot connect: {one_line(exc)}") from None
    finally:
        connections.close_all()


@contextmanager
def exclusive_data_dir(*, run_dir: Path) -> Iterator[None]:
    """One start command per DATA_DIR: they would share the Redis URL file and beat schedule."""
    lock_path = run_dir / "launcher.lock"
    handle = lock_path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"DATA_DIR: another start command (pid {holder}) is already running "
                f"with {run_dir.parent}; stop it or set another DATA_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def reap_stale_private_redis(*, run_dir: Path) -> None:
    """Stop the private Redis a previous start left behind when it was killed outright.

    Only a Redis whose working directory is this DATA_DIR's ``run/redis`` is ours to stop.
    Call it while holding the DATA_DIR lock, so no other start command is using that Redis.
    """
    import redis

    url_file = run_dir / "redis.url"
    if not url_file.exists():
        return
    url = url_file.read_text().strip()
    url_file.unlink(missing_ok=True)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
    except ValueError:
        return  # not a URL we wrote: nothing of ours to stop
    try:
        if client.config_get("dir").get("dir") != str(run_dir / "redis"):
            return
        client.shutdown(nosave=True)
    except redis.exceptions.ConnectionError:
        return  # nothing answers there any more (shutdown itself closes the connection too)
    except redis.exceptions.RedisError as exc:
        print(f"warning: could not stop the leftover private Redis at {url}: {one_line(exc)}", flush=True)
        return
    finally:
        client.close()
    print(f"Stopped the private Redis at {url} left over by a start command that did not exit cleanly.", flush=True)


def install_stop_signals() -> None:
    """Until honcho takes over, Ctrl-C and SIGTERM unwind through ``finally`` blocks."""

    def _raise(signum: int, frame: Any) -> None:
        raise StopRequested(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM while starting a child we must be able to stop (until we hold it)."""
    received: list[str] = []

    def _note(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, _note)
    signal.signal(signal.SIGTERM, _note)
    try:
        yield
    finally:
        install_stop_signals()
    if received:
        raise StopRequested(received[0])


# --- process supervision ----------------------------------------------------------------------


def process_commands(*, options: Options, run_dir: Path) -> dict[str, str]:
    """Name -> shell command, in the order honcho starts them."""
    python = shlex.quote(sys.executable)
    commands = {}
    if not options.worker_only:
        commands["web"] = (
            f"exec {python} -m daphne -b {shlex.quote(options.host)} -p {options.port} controlroom.asgi:application"
        )
    for index in range(1, options.workers + 1):
        commands[f"worker{index}"] = (
            f"exec {python} -m celery -A controlroom worker -l info -P {options.pool} "
            f"--concurrency {options.concurrency} -n worker{index}@%h"
        )
    if not options.worker_only:
        commands["beat"] = (
            f"exec {python} -m celery -A controlroom beat -l info "
            f"--schedule {shlex.quote(str(run_dir / 'celerybeat-schedule'))}"
        )
    return commands


def check_worker_host(*, external_redis: str | None) -> None:
    """A worker host joins an existing control room: it must reach that room's Redis and database
    and sign checkpoints with that room's key (a key of its own would make audit_verify fail)."""
    from controlroom.env import env_str

    if external_redis is None:
        raise ConfigError("REDIS_URL: --worker-only joins an existing control room: set REDIS_URL to its Redis")
    if not env_str("DATABASE_URL"):
        raise ConfigError(
            "DATABASE_URL: --worker-only joins an existing control room: set DATABASE_URL to its database"
        )
    if not env_str("AUDIT_SIGNING_KEY"):
        raise ConfigError(
            "AUDIT_SIGNING_KEY: --worker-only needs the control room's audit signing key "
            "(AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE): workers sign audit checkpoints"
        )


def make_printer(*, logs_dir: Path) -> Any:
    from honcho.printer import Printer

    class TeePrinter(Printer):
        """honcho's terminal output, plus one plain log file per process under DATA_DIR/logs."""

        def __init__(self) -> None:
            super().__init__(sys.stdout)
            self._files: dict[str, IO[str]] = {}

        def write(self, message: Any) -> None:
            super().write(message)
            name = (message.name or "system").strip() or "system"
            handle = self._files.get(name)
            if handle is None:
                filename = "launcher.log" if name == "system" else f"{name}.log"
                handle = (logs_dir / filename).open("a", encoding="utf-8", buffering=1)
                self._files[name] = handle
            data = message.data.decode("utf-8", "replace") if isinstance(message.data, bytes) else message.data
            stamp = message.time.strftime("%Y-%m-%d %H:%M:%S")
            for line in data.splitlines():
                handle.write(f"{stamp} {line}\n")

        def close(self) -> None:
            for handle in self._files.values():
                handle.close()
            self._files.clear()

    return TeePrinter()


def make_manager(*, printer: Any, on_started: Callable[[Any], None]) -> Any:
    from honcho.manager import Manager
    from honcho.printer import Message

    class Supervisor(Manager):
        """honcho's Manager with a stop that always ends, even mid-start, and spares agent steps.

        honcho's own stop sends SIGTERM to whole process groups (killing Celery's pool children
        mid-step), only signals processes whose start it has already seen, SIGKILLs everything
        5 s after the first process stops, and ignores a second Ctrl-C. Here a stopper thread
        escalates in stages, each process as soon as its pid is known:
        - at once: SIGTERM to each command (thanks to ``exec``, the group leader): a Celery
          worker shuts down warmly, letting running steps finish;
        - after STOP_WARM_S: SIGQUIT to workers still busy: Celery's cold shutdown, which
          abandons the steps and puts their messages back on the queue (steps are idempotent);
        - after STOP_GRACE_S: SIGKILL to every process group still alive.
        A second Ctrl-C kills at once.
        """

        def __init__(self) -> None:
            super().__init__(printer=printer)
            self.stop_requested = False
            self.stopped_first: list[str] = []
            self.stopping = threading.Event()
            self.finished = threading.Event()
            self._stopper: threading.Thread | None = None
            self._kill_allowed = threading.Event()

        def say(self, text: str) -> None:
            """Print a 'system' line from any thread (the main loop does the printing)."""
            self.events.put(
                Message(type="line", data=text + "\n", time=datetime.datetime.now(), name="system", colour=None)
            )

        def _start(self) -> None:
            # loop() has just installed honcho's handlers; ours replace them before any fork.
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
            super()._start()
            on_started(self)

        def _on_signal(self, signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.stop_requested:
                self.say(f"{name} again: killing every process now")
                self._kill_allowed.set()
                self.kill()
                return
            self.stop_requested = True
            self.say(f"{name} received: stopping everything (press Ctrl-C again to kill at once)")
            self.terminate()

        def terminate(self) -> None:
            """Called on a signal, and by honcho as soon as any process stops."""
            if self.stopping.is_set():
                return
            self.stopped_first = sorted(
                f"{name} (rc={p['returncode']})" for name, p in self._processes.items() if "returncode" in p
            )
            if not self.stopped_first and self.returncode in {130, 143}:
                # honcho's own handler (installed by loop() a moment before ours) caught the signal.
                self.stop_requested = True
            self.stopping.set()
            self._stopper = threading.Thread(target=self._stop_all, name="stopper", daemon=True)
            self._stopper.start()

        def kill(self) -> None:
            """SIGKILL every process group still running; honcho's early call is deferred."""
            if not self._kill_allowed.is_set():
                return
            for _name, pid in self._running():
                if pid is not None:
                    self._procmgr.kill(pid)

        def _running(self) -> list[tuple[str, int | None]]:
            return [(name, p.get("pid")) for name, p in list(self._processes.items()) if "returncode" not in p]

        def _signal_leader(self, *, name: str, pid: int, signum: signal.Signals) -> None:
            self.say(f"sending {signum.name} to {name} (pid {pid})")
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self.say(f"{name} (pid {pid}) had already exited")

        def _stop_all(self) -> None:
            started = time.monotonic()
            termed: set[str] = set()
            quitted: set[str] = set()
            while not self.finished.is_set():
                running = self._running()
                if not running:
                    return
                elapsed = time.monotonic() - started
                for name, pid in running:
                    if pid is None:
                        continue
                    if name not in termed:
                        self._signal_leader(name=name, pid=pid, signum=signal.SIGTERM)
                        termed.add(name)
                    elif elapsed > STOP_WARM_S and name.startswith("worker") and name not in quitted:
                        self.say(
                            f"{name} is still finishing a step after {STOP_WARM_S:.0f} s: "
                            "cold shutdown (the step goes back on the queue)"
                        )
                        self._signal_leader(name=name, pid=pid, signum=signal.SIGQUIT)
                        quitted.add(name)
                if elapsed > STOP_GRACE_S and not self._kill_allowed.is_set():
                    self.say(f"still running after {STOP_GRACE_S:.0f} s: killing")
                    self._kill_allowed.set()
                if self._kill_allowed.is_set():
                    self.kill()
                self.finished.wait(0.1)

        def process_groups(self) -> list[int]:
            return [p["pid"] for p in list(self._processes.values()) if p.get("pid")]

    return Supervisor()


def wait_for_groups_to_end(*, pgids: list[int], timeout: float) -> None:
    """Each child runs in its own process group: make sure nothing in any group survives
    (Celery's prefork children may outlive their parent by a moment)."""
    deadline = time.monotonic() + timeout
    remaining = list(pgids)
    while remaining:
        alive = []
        for pgid in remaining:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                continue  # the group id was reused by someone else's process: not ours
            alive.append(pgid)
        remaining = alive
        if not remaining:
            return
        if time.monotonic() > deadline:
            for pgid in remaining:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            return
        time.sleep(0.05)


def watch_until_ready(*, manager: Any, options: Options, password: str) -> None:
    """Announce the address and login once the web server answers (runs in a thread)."""
    target = loopback_for(options.host)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not manager.stopping.is_set():
        try:
            conn = http.client.HTTPConnection(target, options.port, timeout=10)
            try:
                conn.request("GET", "/login/")
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
        except OSError:
            if time.monotonic() > deadline:
                manager.say(
                    f"warning: the web server has not answered after {READY_TIMEOUT_S:.0f} s; see its output above"
                )
                return
            manager.stopping.wait(0.25)
            continue
        shown = url_host(target if options.host in {"", "0.0.0.0", "::"} else options.host)
        lines = [
            "",
            f"Control Room is running: http://{shown}:{options.port}/",
            f"  log in as: manager / {password}   (other demo users: the passwords printed above, once)",
            f"  health:    http://{shown}:{options.port}/healthz",
            "  stop:      Ctrl-C",
            "",
        ]
        if response.status >= 500:
            lines.insert(2, f"  warning: GET /login/ answered {response.status}: see the web output above")
        manager.say("\n".join(lines))
        return


# --- the start sequence -----------------------------------------------------------------------


@dataclass
class Resources:
    """What the launcher started itself and must stop on the way out."""

    redis: Any = None
    redis_url_file: Path | None = None

    def release(self) -> None:
        url_file = self.redis_url_file
        if url_file is not None and self.redis is not None and url_file.exists():
            if url_file.read_text().strip() == self.redis.url:  # not if another start replaced it
                url_file.unlink(missing_ok=True)
        if self.redis is not None:
            self.redis.stop()


def refuse_demo_password_in_production() -> None:
    """PRODUCTION=true: a `manager` account that still has the demo's password is refused."""
    from django.conf import settings

    if not settings.PRODUCTION:
        return
    from django.contrib.auth import get_user_model

    manager = get_user_model().objects.filter(username="manager").first()
    if manager is not None and manager.check_password(DEFAULT_DEMO_PASSWORD):
        raise ConfigError(
            f"PRODUCTION=true refuses weak defaults: the user 'manager' has the demo's password"
            f" ({DEFAULT_DEMO_PASSWORD!r}): change it (manage.py changepassword manager)"
        )


def prepare_database(*, options: Options, password: str) -> None:
    from django.core.management import call_command, get_commands
    from django.db import DatabaseError, connections

    label = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "DATA_DIR (SQLite database)"
    try:
        call_command("migrate", interactive=False, verbosity=1)
    except DatabaseError as exc:
        raise ConfigError(f"{label}: migrate failed: {one_line(exc)}") from None
    refuse_demo_password_in_production()
    if options.seed:
        from agents.models import AgentSession

        if AgentSession.objects.exists():
            print("Database already has agent sessions: not seeding the demo.", flush=True)
        elif "seed_demo" not in get_commands():
            print("warning: the seed_demo command is not available: starting with an empty database", flush=True)
        else:
            # the past month first (the audit log is appended in time order), then tonight's fleet
            from agents.management.commands.seed_demo import CLAUDE_CODE_SESSIONS

            # tonight's fleet includes a few Claude Code sessions when the [agents] extra is installed
            extra = {"seed_history": (), "seed_demo": ("--claude-code", str(CLAUDE_CODE_SESSIONS))}
            for command in ("seed_history", "seed_demo"):
                try:
                    call_command(command, "--password", password, *extra[command])
                except Exception as exc:  # a bug in seeding: show it, then say how to start without it
                    traceback.print_exc()
                    raise SeedFailed(f"{command} failed ({one_line(exc)}); start with --no-seed to skip it") from exc
    connections.close_all()


def run(*, options: Options) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlroom.settings")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The demo fleet's offline model takes its time per step, so the canvas looks alive.
    os.environ.setdefault("SIM_PACING_S", "1.5")

    from controlroom.env import env_str
    from controlroom.localredis import free_port

    external_redis = env_str("REDIS_URL")
    private_redis_port = None
    if options.worker_only:
        check_worker_host(external_redis=external_redis)
    elif external_redis is None:
        # Settings read REDIS_URL at import: decide the private Redis's address before that.
        private_redis_port = free_port()
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{private_redis_port}/0"

    from django.conf import settings

    try:
        settings.DATABASES  # noqa: B018 - imports the settings module: ImproperlyConfigured surfaces here
    except OSError as exc:  # DATA_DIR (or a subdirectory) cannot be created or written
        where = exc.filename or os.environ.get("DATA_DIR", "DATA_DIR")
        raise ConfigError(f"DATA_DIR: cannot use {where}: {exc.strerror or one_line(exc)}") from None
    data_dir = Path(settings.DATA_DIR)
    run_dir = Path(settings.RUN_DIR)
    logs_dir = data_dir / "logs"
    os.environ["DATA_DIR"] = str(data_dir)  # children resolve the same directory whatever their cwd
    password = os.environ.get("DEMO_PASSWORD") or DEFAULT_DEMO_PASSWORD
    if settings.PRODUCTION and options.seed and not options.worker_only and password == DEFAULT_DEMO_PASSWORD:
        raise ConfigError(
            f"PRODUCTION=true refuses weak defaults: the demo would be seeded with manager / {DEFAULT_DEMO_PASSWORD}:"
            " start with --no-seed, or set DEMO_PASSWORD to a strong password"
        )

    if options.host not in {"127.0.0.1", "localhost", "::1"} and not os.environ.get("ALLOWED_HOSTS"):
        print(
            f"warning: listening on {options.host}, but ALLOWED_HOSTS is the default "
            f"({', '.join(settings.ALLOWED_HOSTS)}): set ALLOWED_HOSTS to the names clients use",
            flush=True,
        )
    if external_redis is not None:
        check_redis_reachable(url=settings.REDIS_URL)
    if not options.worker_only:
        check_port_free(host=options.host, port=options.port)

    with exclusive_data_dir(run_dir=run_dir):
        import django

        django.setup()
        check_database_reachable()

        reap_stale_private_redis(run_dir=run_dir)
        resources = Resources()
        try:
            if private_redis_port is not None:
                from controlroom.localredis import start_local_redis

                with stop_signals_deferred():
                    try:
                        resources.redis = start_local_redis(workdir=run_dir / "redis", port=private_redis_port)
                    except (RuntimeError, OSError) as exc:
                        raise ConfigError(
                            f"REDIS_URL is not set and a private Redis could not start: "
                            f"{one_line(exc)} (install redis-server or set REDIS_URL)"
                        ) from None
                resources.redis_url_file = run_dir / "redis.url"
                resources.redis_url_file.write_text(resources.redis.url + "\n")
                print(f"Started a private Redis at {resources.redis.url} (REDIS_URL is not set).", flush=True)
            if options.worker_only:
                print(
                    f"Worker host {settings.CONTROLROOM['WORKER_HOST']} joining the control room "
                    f"(worktrees in {settings.CONTROLROOM['WORKTREES_DIR']}, "
                    f"WORKTREE_SOURCE={settings.CONTROLROOM['WORKTREE_SOURCE']}).",
                    flush=True,
                )
            else:
                prepare_database(options=options, password=password)
            return supervise(options=options, run_dir=run_dir, logs_dir=logs_dir, password=password)
        finally:
            # Cleanup must finish: further Ctrl-C presses are ignored while it runs (it is bounded).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            resources.release()


def supervise(*, options: Options, run_dir: Path, logs_dir: Path, password: str) -> int:
    logs_dir.mkdir(parents=True, exist_ok=True)
    printer = make_printer(logs_dir=logs_dir)

    def on_started(manager: Any) -> None:
        if options.worker_only:
            return
        threading.Thread(
            target=watch_until_ready,
            kwargs={"manager": manager, "options": options, "password": password},
            name="ready-watch",
            daemon=True,
        ).start()

    manager = make_manager(printer=printer, on_started=on_started)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}
    for name, command in process_commands(options=options, run_dir=run_dir).items():
        manager.add_process(name, command, env=env, cwd=str(BASE_DIR))
    print(f"Logs: {logs_dir}/<process>.log", flush=True)
    try:
        manager.loop()
    finally:
        manager.stopping.set()
        manager.finished.set()
        wait_for_groups_to_end(pgids=manager.process_groups(), timeout=5.0)
        printer.close()
    if manager.stop_requested:
        print("Stopped.", flush=True)
        return 0
    culprits = ", ".join(manager.stopped_first) or "a process"
    print(
        f"error: {culprits} stopped on its own, so everything was stopped; see its output above",
        file=sys.stderr,
        flush=True,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    install_stop_signals()
    options = parse_args(argv)
    try:
        from django.core.exceptions import ImproperlyConfigured
    except StopRequested as exc:
        print(f"{exc} received before start-up finished: stopped.", flush=True)
        return 0

    try:
        return run(options=options)
    except (ImproperlyConfigured, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return CONFIG_ERROR
    except SeedFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except StopRequested as exc:
        print(f"{exc} received before start-up finished: stopped.", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
