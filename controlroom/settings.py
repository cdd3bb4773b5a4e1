"""Settings: everything comes from the environment, with embedded defaults.

Every variable is documented in README.md ("Configuration"). Everything the app writes lives
under DATA_DIR (default ./var/): the SQLite database, the generated dev secret key, the demo
repository, the agents' worktrees, logs and the audit signing key.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import dj_database_url
from csp import constants as csp_constants
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from controlroom.env import env_bool, env_float, env_int, env_list, env_str

# LiteLLM must never reach for the network (its cost map) at import or run time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).expanduser().resolve()
RUN_DIR = DATA_DIR / "run"
for _sub in ("", "run", "logs", "worktrees", "repos", "audit", "static"):
    (DATA_DIR / _sub).mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
PRODUCTION = env_bool("PRODUCTION", False)
# PRODUCTION=true refuses to start on a weak default; every problem found is collected here and
# reported together, as one line, at the end of this module.
_WEAK_DEFAULTS: list[str] = []
# the demo's documented password (seed_demo, bin/start): never acceptable in production
DEMO_DEFAULT_PASSWORD = "controlroom"
MIN_SECRET_CHARS = 32


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        if PRODUCTION and (len(key) < MIN_SECRET_CHARS or key.startswith("django-insecure")):
            _WEAK_DEFAULTS.append(f"SECRET_KEY is weak (at least {MIN_SECRET_CHARS} random characters)")
        return key
    if PRODUCTION:
        _WEAK_DEFAULTS.append("SECRET_KEY is not set (a generated dev key is not for production)")
        return "unset"
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "axes",
    "django_htmx",
    "template_partials",
    "audit",
    "reviews",
    "agents",
    "controlroom",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (django-csp; the policy: CONTENT_SECURITY_POLICY below)
    "controlroom.csp.SitePolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # last, as django-axes asks: turns a locked-out login attempt into the lockout page (429)
    "axes.middleware.AxesMiddleware",
]

# --- Content-Security-Policy (django-csp 4; controlroom/csp.py says why each page fits it) ----------
# Everything from this site only: no inline script, no eval, no inline style. connect-src gets
# ws:// and wss:// of the request's own host added per request (the canvas websocket).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp_constants.SELF],
        "script-src": [csp_constants.SELF],
        "style-src": [csp_constants.SELF],
        "img-src": [csp_constants.SELF, "data:"],
        "connect-src": [csp_constants.SELF],
        "object-src": [csp_constants.NONE],
        "frame-ancestors": [csp_constants.NONE],
        "form-action": [csp_constants.SELF],
        "base-uri": [csp_constants.SELF],
    },
}

# --- login throttling (django-axes) -------------------------------------------------------
# LOGIN_FAILURE_LIMIT wrong passwords in a row for one username lock that username out of /login/
# and /admin/login/ (even with the right password) for LOGIN_LOCKOUT_MINUTES; each further try
# during the lockout starts it again. `manage.py axes_reset` (or axes_reset_username NAME) lifts it.
# By username, not by address: behind a same-host proxy every visitor has the proxy's address.
AUTHENTICATION_BACKENDS = [
    "controlroom.auth.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_RESET_ON_SUCCESS = True  # "in a row": a successful login forgets the earlier failures
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
# axes.W006 asks for the address among the lockout parameters; by username alone is the choice above
# (a guesser gets LOGIN_FAILURE_LIMIT tries per username whatever address, user agent or cookie it uses).
SILENCED_SYSTEM_CHECKS = ["axes.W006"]

ROOT_URLCONF = "controlroom.urls"
ASGI_APPLICATION = "controlroom.asgi.application"
AUTH_USER_MODEL = "agents.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "canvas"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]


SQLITE_OPTIONS = {
    # WAL lets readers (pages) proceed while workers write; IMMEDIATE takes the write lock at
    # BEGIN so concurrent writers (several worker processes) queue instead of failing with
    # "database is locked" when a read transaction tries to upgrade.
    # wal_autocheckpoint: a checkpoint (with its fsync) every 10,000 pages instead of 1,000 — an
    # audit append writes ~12 pages, so the default checkpointed every ~80 appends; the WAL file
    # is truncated back to 64 MiB after each checkpoint.
    "init_command": (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;"
        " PRAGMA mmap_size=268435456; PRAGMA cache_size=-65536;"
        " PRAGMA wal_autocheckpoint=10000; PRAGMA journal_size_limit=67108864;"
    ),
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}


# Django's SQLite engine with the writers queued in the process and across processes before SQLite's
# busy handler sees them (controlroom/sqlite/base.py): a hundred agent steps' writes take turns
# in milliseconds instead of some waiting out the busy timeout.
SQLITE_ENGINE = "controlroom.sqlite"


def _database() -> dict:
    url = env_str("DATABASE_URL")
    if not url:
        return {
            "ENGINE": SQLITE_ENGINE,
            "NAME": DATA_DIR / "controlroom.sqlite3",
            "OPTIONS": dict(SQLITE_OPTIONS),
            "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
        }
    try:
        config = cast("dict[str, Any]", dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))
    except Exception as exc:  # dj-database-url raises bare ValueError/KeyError on bad URLs
        raise ImproperlyConfigured(f"DATABASE_URL: cannot parse it ({exc})") from None
    if not config.get("ENGINE"):
        raise ImproperlyConfigured("DATABASE_URL: unknown scheme (use postgres://… or sqlite:///…)")
    if config["ENGINE"].endswith("postgresql"):
        config.setdefault("OPTIONS", {})["connect_timeout"] = 5
        # A worker runs up to a hundred agent steps in threads; each thread would keep its own
        # connection. A process-wide pool (psycopg_pool) lends connections per query burst instead:
        # the runtime hands its connection back while it waits on a model or a long tool.
        pool_size = env_int("DATABASE_POOL_SIZE", 16, minimum=0)
        if pool_size:
            config["OPTIONS"]["pool"] = {"min_size": 1, "max_size": pool_size, "timeout": 30}
            config["CONN_MAX_AGE"] = 0
            config["CONN_HEALTH_CHECKS"] = False
    if config["ENGINE"].endswith("sqlite3"):
        config["ENGINE"] = SQLITE_ENGINE
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
        config["CONN_MAX_AGE"] = 0
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _redis_url() -> str:
    url = env_str("REDIS_URL")
    if url:
        return url
    # The start command launches a private Redis and writes its URL here, so that
    # management commands run beside it reach the same Redis without configuration.
    url_file = RUN_DIR / "redis.url"
    if url_file.exists():
        return url_file.read_text().strip()
    return "redis://127.0.0.1:6379/0"


REDIS_URL = _redis_url()
if not REDIS_URL.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured(f"REDIS_URL: expected redis://host:port/db, got {REDIS_URL!r}")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("REDIS_PREFIX", "cr"),
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 5},
    }
}

CHANNEL_LAYERS = {
    "default": {
        # Pub/sub layer: one PUBLISH per group send, whatever the number of viewers.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": env_str("REDIS_PREFIX", "cr")},
    }
}

# --- Celery ---------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("CELERY_MAX_TASKS_PER_CHILD", 500, minimum=1)
CELERY_TASK_DEFAULT_QUEUE = "celery"
# Every worker consumes the shared queue and its own host's queue (agents/dispatch.py): steps of a
# session whose worktree is on this host's disk come here. A worker started without -Q takes both.
_WORKER_HOST = env_str("WORKER_HOST", socket.gethostname()) or "localhost"
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}", _WORKER_HOST):
    raise ImproperlyConfigured(
        f"WORKER_HOST: expected letters, digits, dots, dashes (a host name), got {_WORKER_HOST!r}"
    )
CELERY_TASK_QUEUES = [Queue("celery"), Queue(f"host.{_WORKER_HOST}")]
CELERY_TASK_CREATE_MISSING_QUEUES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than any agent step (CELERY_STEP_TIME_LIMIT), so a slow step is never redelivered
    # while still running; a killed worker's step is redelivered after this.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 900, minimum=30),
    "priority_steps": list(range(10)),
    "sep": ":",
    "queue_order_strategy": "priority",
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
}
CELERY_TASK_DEFAULT_PRIORITY = 5
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_BEAT_SCHEDULE_FILENAME = str(RUN_DIR / "celerybeat-schedule")

# --- Control room behaviour -----------------------------------------------------------


def _model_concurrency() -> dict[str, int]:
    from agents.runtime.capacity import parse_limits

    try:
        return parse_limits(env_str("MODEL_CONCURRENCY", "") or "")
    except ValueError as exc:
        raise ImproperlyConfigured(f"MODEL_CONCURRENCY: {exc}") from None


class ControlRoomSettings(TypedDict):
    """The keys of CONTROLROOM and their types (what ``settings.CONTROLROOM[...]`` gives to mypy)."""

    WORKTREES_DIR: Path
    REPOS_DIR: Path
    DEFAULT_MODEL: str
    SIM_PACING_S: float
    STEP_TIME_LIMIT_S: int
    MODEL_TIMEOUT_S: float
    MODEL_ATTEMPTS: int
    MODEL_CONCURRENCY: dict[str, int]
    MODEL_RATE_LIMIT_WAITS: int
    MODEL_API_BASES: list
    WORKER_HOST: str
    HOST_LOST_AFTER_S: int
    WORKTREE_SOURCE: str
    STALE_AFTER_S: int
    CONTEXT_TOKEN_LIMIT: int
    STEPS_PER_ITERATION: int
    COMMAND_TIMEOUT_S: int
    OUTPUT_CAP_BYTES: int
    SANDBOX: str
    CLAUDE_CODE_BIN: str
    ANTHROPIC_API_BASE: str
    CODEX_BIN: str
    OPENAI_API_BASE: str
    HEALTHZ_TOKEN: str | None
    PUBLIC_URL: str
    DECISION_LINK_MAX_AGE_S: int
    LIVE_COALESCE_MS: int
    LIVE_FRAME_MS: int
    AUDIT_CHECKPOINT_EVERY_S: int
    WORKTREE_RETENTION_HOURS: NotRequired[float]  # not set here: cleanup_worktrees' default (24)


def _model_api_bases() -> list:
    from agents.endpoints import parse_allow_list

    try:
        return parse_allow_list(env_list("MODEL_API_BASES", []))
    except ValueError as exc:
        raise ImproperlyConfigured(f"MODEL_API_BASES: {exc}") from None


CONTROLROOM: ControlRoomSettings = {
    "WORKTREES_DIR": Path(env_str("WORKTREES_DIR", str(DATA_DIR / "worktrees"))),
    "REPOS_DIR": DATA_DIR / "repos",
    "DEFAULT_MODEL": env_str("DEFAULT_MODEL", "sim/engineer"),
    "SIM_PACING_S": env_float("SIM_PACING_S", 0.0, minimum=0.0),
    "STEP_TIME_LIMIT_S": env_int("CELERY_STEP_TIME_LIMIT", 300, minimum=10),
    "MODEL_TIMEOUT_S": env_float("MODEL_TIMEOUT_S", 60.0, minimum=1.0),
    # attempts of one step's model call on transient errors (timeouts, 5xx, unreadable answers)
    # before the session fails; between attempts the step waits on the queue (2, 4, 8 … s)
    "MODEL_ATTEMPTS": env_int("MODEL_ATTEMPTS", 4, minimum=1),
    "MODEL_CONCURRENCY": _model_concurrency(),
    # the model endpoints a session's api_base may name (empty: any http(s) URL with a host)
    "MODEL_API_BASES": _model_api_bases(),
    # a step the provider keeps answering HTTP 429 gives up (the session fails) after this many waits
    "MODEL_RATE_LIMIT_WAITS": env_int("MODEL_RATE_LIMIT_WAITS", 100, minimum=1),
    # where this process runs agent steps: its worktrees live on this host's disk (WORKTREES_DIR)
    "WORKER_HOST": _WORKER_HOST,
    "HOST_LOST_AFTER_S": env_int("HOST_LOST_AFTER_S", 60, minimum=5),
    # direct: worktrees of the central repository (this host shares its disk: one machine, or an NFS
    # mount); clone: this host keeps its own clone under WORKTREES_DIR and pushes each commit
    "WORKTREE_SOURCE": env_str("WORKTREE_SOURCE", "direct"),
    "STALE_AFTER_S": env_int("STALE_AFTER_S", 120, minimum=5),
    "CONTEXT_TOKEN_LIMIT": env_int("CONTEXT_TOKEN_LIMIT", 24000, minimum=1000),
    "STEPS_PER_ITERATION": env_int("STEPS_PER_ITERATION", 30, minimum=2),
    "COMMAND_TIMEOUT_S": env_int("COMMAND_TIMEOUT_S", 120, minimum=1),
    "OUTPUT_CAP_BYTES": env_int("OUTPUT_CAP_BYTES", 64_000, minimum=1024),
    "SANDBOX": env_str("SANDBOX", "auto"),  # auto | bwrap | none
    # Claude Code sessions (the [agents] extra): the CLI (empty: the one the claude-agent-sdk wheel ships)
    # and the Anthropic Messages endpoint a session without its own API base uses
    "CLAUDE_CODE_BIN": env_str("CLAUDE_CODE_BIN", ""),
    "ANTHROPIC_API_BASE": env_str("ANTHROPIC_API_BASE", "https://api.anthropic.com"),
    # Codex sessions: the CLI (empty: the one bin/codex-install put under .venv/codex) and the
    # OpenAI Responses endpoint a session without its own API base uses
    "CODEX_BIN": env_str("CODEX_BIN", ""),
    "OPENAI_API_BASE": env_str("OPENAI_API_BASE", "https://api.openai.com/v1"),
    "HEALTHZ_TOKEN": env_str("HEALTHZ_TOKEN"),
    "PUBLIC_URL": (env_str("PUBLIC_URL", "") or "").rstrip("/"),
    # how long a signed decision link (the "needs you" webhook, the queue) stays good
    "DECISION_LINK_MAX_AGE_S": env_int("DECISION_LINK_MAX_AGE_S", 12 * 3600, minimum=60),
    "LIVE_COALESCE_MS": env_int("LIVE_COALESCE_MS", 100, minimum=0),
    "LIVE_FRAME_MS": env_int("LIVE_FRAME_MS", 30, minimum=0),
    "AUDIT_CHECKPOINT_EVERY_S": env_int("AUDIT_CHECKPOINT_EVERY_S", 300, minimum=10),
}
if CONTROLROOM["WORKTREE_SOURCE"] not in {"direct", "clone"}:
    raise ImproperlyConfigured(f"WORKTREE_SOURCE: expected direct or clone, got {CONTROLROOM['WORKTREE_SOURCE']!r}")
if CONTROLROOM["SANDBOX"] not in {"auto", "bwrap", "none"}:
    raise ImproperlyConfigured(f"SANDBOX: expected auto, bwrap or none, got {CONTROLROOM['SANDBOX']!r}")


def _audit_key() -> bytes:
    """The checkpoint signing key. Never stored in the database."""
    key = env_str("AUDIT_SIGNING_KEY")
    if key:
        if PRODUCTION and len(key) < MIN_SECRET_CHARS:
            _WEAK_DEFAULTS.append(f"AUDIT_SIGNING_KEY is weak (at least {MIN_SECRET_CHARS} random characters)")
        return key.encode()
    if PRODUCTION:
        _WEAK_DEFAULTS.append("AUDIT_SIGNING_KEY is not set (the audit checkpoints' key)")
        return b"unset"
    key_file = DATA_DIR / "audit" / "signing.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
    return key_file.read_text().strip().encode()


AUDIT_SIGNING_KEY = _audit_key()

# --- i18n / static --------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"LiteLLM": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

CELERY_IMPORTS = ["reviews.review_tasks"]
CELERY_BEAT_SCHEDULE = {
    "cleanup-worktrees": {"task": "reviews.tasks.cleanup_worktrees", "schedule": 3600.0},
    "agents-tick": {"task": "agents.tasks.tick", "schedule": float(env_int("TICK_EVERY_S", 5, minimum=1))},
    "audit-checkpoint": {
        "task": "audit.tasks.audit_checkpoint",
        "schedule": float(CONTROLROOM["AUDIT_CHECKPOINT_EVERY_S"]),
    },
}


def _production_refusals() -> None:
    """PRODUCTION=true: refuse the development defaults, all named in one line."""
    if not PRODUCTION:
        return
    if DEBUG:
        _WEAK_DEFAULTS.append("DEBUG is on")
    if "*" in ALLOWED_HOSTS:
        _WEAK_DEFAULTS.append("ALLOWED_HOSTS contains '*' (name the hosts clients use)")
    demo_password = env_str("DEMO_PASSWORD")
    if demo_password is not None and (demo_password == DEMO_DEFAULT_PASSWORD or len(demo_password) < 12):
        _WEAK_DEFAULTS.append("DEMO_PASSWORD is the demo's or shorter than 12 characters")
    if _WEAK_DEFAULTS:
        raise ImproperlyConfigured("PRODUCTION=true refuses weak defaults: " + "; ".join(_WEAK_DEFAULTS))


_production_refusals()
