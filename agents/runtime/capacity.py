"""Provider back-pressure: at most N model calls in flight per provider, across every worker host.

A local Ollama serves 2–4 calls at once; a hosted provider has a rate limit. ``MODEL_CONCURRENCY``
says how many calls each provider may have in flight, e.g.
``http://127.0.0.1:11434=2,anthropic=20,*=200`` — a key is an ``api_base`` origin (or a prefix of
one: scheme, host, port, path) or a model-string prefix (``anthropic``, ``ollama``); the longest
matching key wins; ``*`` is the default for everything else. Without an entry a provider is
unlimited.

The slots are a counting semaphore in Redis (one sorted set per provider: member = the holder's
token, score = when the slot lapses on its own, so a worker that dies mid-call cannot leak one).
A step that finds no free slot does not wait in its worker thread: it goes back on the queue with
a short countdown (``retry_in``) and says "waiting for model capacity" on its tile; it is also put
on the provider's wait list, and whoever frees a slot wakes the first waiter at once, so a slot
does not stay idle until the next poll. Both are hints on top of the database's own guarantees (the
lease and the step number): a lost wake-up costs a poll, a duplicate one is dropped as stale.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

# KEYS: slots zset, waiters list. ARGV: now, lapse-at, limit, token, waiter.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('LREM', KEYS[2], 0, ARGV[5])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], 3600)
  return {1, redis.call('ZCARD', KEYS[1])}
end
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[2], 3600)
return {0, redis.call('ZCARD', KEYS[1])}
"""
# KEYS: slots zset, waiters list. ARGV: token. Returns the first waiter (to wake) or nil.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('LPOP', KEYS[2])
"""


@dataclass(frozen=True)
class Slot:
    provider: str
    token: str
    limit: int | None  # None: unlimited, nothing was taken


@dataclass(frozen=True)
class Full:
    provider: str
    limit: int
    in_flight: int

    @property
    def activity(self) -> str:
        return f"waiting for model capacity: {self.provider} has {self.in_flight} of {self.limit} calls in flight"


def parse_limits(text: str) -> dict[str, int]:
    """``key=N,key=N`` → {key: N}; raises ValueError naming the bad entry."""
    limits: dict[str, int] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, value = entry.rpartition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{entry!r}: expected provider=N (e.g. http://127.0.0.1:11434=2 or anthropic=20)")
        try:
            limit = int(value)
        except ValueError:
            raise ValueError(f"{entry!r}: the limit must be a whole number") from None
        if limit < 1:
            raise ValueError(f"{entry!r}: the limit must be at least 1")
        limits[_normalise(key)] = limit
    return limits


def _normalise(key: str) -> str:
    if "://" not in key:
        return key.strip().lower()
    parts = urlsplit(key.strip())
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{host}:{port}{parts.path.rstrip('/')}"


def provider_key(*, model: str, api_base: str) -> str:
    """Who serves this call: the api_base's origin and path when one is set, else the model's prefix."""
    if api_base:
        return _normalise(api_base)
    return (model.split("/", 1)[0] if "/" in model else model).lower()


def limit_for(provider: str, limits: dict[str, int] | None = None) -> int | None:
    limits = settings.CONTROLROOM["MODEL_CONCURRENCY"] if limits is None else limits
    best: tuple[int, int] | None = None
    for key, limit in limits.items():
        if key == "*":
            continue
        # a URL key covers its own path and everything below it; a model prefix only itself
        matches = provider == key or ("://" in key and provider.startswith(key + "/"))
        if matches and (best is None or len(key) > best[0]):
            best = (len(key), limit)
    if best is not None:
        return best[1]
    if provider.startswith("sim") and "sim" not in limits:
        return None  # the offline model runs inside the worker: nothing to protect
    return limits.get("*")


_client_lock = threading.Lock()
_client = None
_scripts: dict[str, Any] = {}  # redis Script objects (callable)


def _redis():
    global _client
    with _client_lock:
        if _client is None:
            import redis

            _client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
            _scripts["acquire"] = _client.register_script(_ACQUIRE)
            _scripts["release"] = _client.register_script(_RELEASE)
        return _client


def _keys(provider: str) -> list[str]:
    prefix = settings.CACHES["default"].get("KEY_PREFIX") or "cr"
    return [f"{prefix}:model-slots:{provider}", f"{prefix}:model-waiters:{provider}"]


def acquire(*, provider: str, waiter: str, hold_s: float) -> Slot | Full:
    """Take a slot for one model call, or say the provider is full (and queue ``waiter`` to be woken)."""
    limit = limit_for(provider)
    if limit is None:
        return Slot(provider=provider, token="", limit=None)
    _redis()
    token = f"{waiter}:{uuid.uuid4().hex[:8]}"
    now = time.time()
    got, in_flight = _scripts["acquire"](keys=_keys(provider), args=[now, now + hold_s, limit, token, waiter])
    if got:
        return Slot(provider=provider, token=token, limit=limit)
    return Full(provider=provider, limit=limit, in_flight=int(in_flight))


def release(slot: Slot) -> str | None:
    """Give the slot back; returns the waiter to wake (``"<session>:<step>:<priority>"``), if any."""
    if slot.limit is None:
        return None
    try:
        woken = _scripts["release"](keys=_keys(slot.provider), args=[slot.token])
    except Exception:  # Redis unreachable: the slot lapses on its own
        logger.warning("could not release a model slot of %s", slot.provider, exc_info=True)
        return None
    return woken.decode() if isinstance(woken, bytes) else woken


def retry_delay(waits: int) -> float:
    """Seconds until a step that found no slot looks again: 1, 2, then 4 s, with jitter (the wake-up
    on release usually comes first)."""
    return min(4.0, 2.0 ** max(0, waits)) * random.uniform(0.75, 1.25)


def in_flight(provider: str) -> int:
    client = _redis()
    key = _keys(provider)[0]
    client.zremrangebyscore(key, "-inf", time.time())
    return int(client.zcard(key))
