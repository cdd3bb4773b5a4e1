"""``/healthz``: is this deployment able to do its job right now?

Answers JSON ``{"status": "ok"|"fail", "database": {...}, "redis": {...}, "celery": {...},
"worktrees_bytes": int|null}`` with HTTP 200 when the database, Redis and at least one Celery
worker answer, 503 otherwise. Every probe has a short timeout so the page answers within about
1.5 s even when Redis is down (the Celery probe is skipped then: it would only wait on Redis).

Who sees what: a logged-in user, or a caller presenting ``CONTROLROOM["HEALTHZ_TOKEN"]`` (when it
is set) as ``Authorization: Bearer <token>`` or ``?token=<token>``, gets the full report. Everyone
else, loopback callers included, gets the bare status, ``{"status": "ok"|"fail"}`` with the same
200/503, which is all a readiness check needs. The decision never looks at the caller's address
(``REMOTE_ADDR``, ``X-Forwarded-For``): behind a same-host reverse proxy every visitor has the
proxy's address, and forwarded headers are whatever the client wrote, so the answer is the same
behind any proxy. Prefer the header: a query string ends up in proxy and access logs. The view is
exempt from the site-wide login redirect so that a monitor gets a JSON answer instead of a login
page.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu.exceptions import KombuError

REDIS_TIMEOUT_S = 0.5
CELERY_PING_TIMEOUT_S = 1.0
WORKTREE_WALK_BUDGET_S = 0.2


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _presented_token(request: HttpRequest) -> str:
    """The token from ``Authorization: Bearer <token>``, else from ``?token=``; "" when neither."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.GET.get("token", "")


def may_see_health_details(*, request: HttpRequest) -> bool:
    """True for a logged-in user or a caller presenting ``HEALTHZ_TOKEN``; never by address."""
    if request.user.is_authenticated:
        return True
    expected = settings.CONTROLROOM.get("HEALTHZ_TOKEN")
    if not expected:
        return False
    given = _presented_token(request)
    # compare_digest on bytes: constant time in the length of the secret, any characters allowed
    return hmac.compare_digest(given.encode("utf-8", "replace"), str(expected).encode("utf-8", "replace"))


def check_database() -> dict[str, Any]:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return {"ok": False, "detail": _one_line(exc)}
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return {"ok": True, "detail": f"{connection.vendor}: SELECT 1 in {elapsed_ms} ms"}


def check_redis(*, url: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
    except ValueError as exc:
        return {"ok": False, "detail": f"REDIS_URL cannot be parsed: {exc}"}
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        return {"ok": False, "detail": _one_line(exc)}
    finally:
        client.close()
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return {"ok": True, "detail": f"PING in {elapsed_ms} ms"}


def check_celery(*, broker_url: str) -> dict[str, Any]:
    """Broadcast a ping on the broker; healthy when at least one worker answers in time."""
    from controlroom.celery import app

    try:
        with app.connection_for_write(
            broker_url,
            connect_timeout=REDIS_TIMEOUT_S,
            transport_options={"socket_timeout": 2.0, "socket_connect_timeout": REDIS_TIMEOUT_S, "max_retries": 0},
        ) as conn:
            replies = app.control.ping(timeout=CELERY_PING_TIMEOUT_S, connection=conn)
    except (OSError, KombuError, redis.exceptions.RedisError) as exc:
        return {"ok": False, "workers": [], "detail": _one_line(exc)}
    workers = sorted(name for reply in replies or [] for name in reply)
    if not workers:
        return {"ok": False, "workers": [], "detail": f"no worker answered a ping within {CELERY_PING_TIMEOUT_S} s"}
    return {"ok": True, "workers": workers, "detail": f"{len(workers)} worker(s) answered"}


def worktrees_size(*, root: Path, budget_s: float = WORKTREE_WALK_BUDGET_S) -> int | None:
    """Bytes under ``root`` (files only, symlinks not followed), or None past the time budget."""
    deadline = time.monotonic() + budget_s
    total = 0
    pending = [root]
    while pending:
        if time.monotonic() > deadline:
            return None
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # removed while we walked: it no longer counts
        except FileNotFoundError:
            if directory == root:
                return 0
            continue
        except PermissionError:
            return None
    return total


def health_report(*, measure_worktrees: bool = True) -> dict[str, Any]:
    database = check_database()
    redis_state = check_redis(url=settings.REDIS_URL)
    if redis_state["ok"]:
        celery_state = check_celery(broker_url=settings.CELERY_BROKER_URL)
    else:
        celery_state = {"ok": False, "workers": [], "detail": "not checked: Redis (the broker) is down"}
    ok = database["ok"] and redis_state["ok"] and celery_state["ok"]
    return {
        "status": "ok" if ok else "fail",
        "database": database,
        "redis": redis_state,
        "celery": celery_state,
        "worktrees_bytes": worktrees_size(root=Path(settings.CONTROLROOM["WORKTREES_DIR"]))
        if measure_worktrees
        else None,
    }


# Anyone may ask for the bare status, and each full check broadcasts a ping to every worker and
# waits up to CELERY_PING_TIMEOUT_S: the bare answer is reused for a few seconds, and one check at a
# time makes it, so a flood of anonymous requests costs a check every BARE_STATUS_TTL_S at most.
BARE_STATUS_TTL_S = 3.0
_bare_lock = threading.Lock()
_bare: tuple[float, str] | None = None  # (monotonic time, status)


def bare_status() -> str:
    global _bare
    with _bare_lock:
        if _bare is not None and time.monotonic() - _bare[0] < BARE_STATUS_TTL_S:
            return _bare[1]
        status = health_report(measure_worktrees=False)["status"]
        _bare = (time.monotonic(), status)
        return status


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    if not may_see_health_details(request=request):
        status = bare_status()
        return JsonResponse({"status": status}, status=200 if status == "ok" else 503)
    report = health_report(measure_worktrees=True)  # the disk walk only for who sees its result
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
