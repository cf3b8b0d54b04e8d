"""Settings for the searchsync console and worker, all read from the environment.

Every variable is optional and has a local default; the README lists them.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from syncer.conf import LOCAL_SECRET_KEY
from syncer.logconfig import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise ImproperlyConfigured(f"{name} must not be negative, not {value!r}")
    return number


DEBUG = _env_bool("DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h]

# -- Production safety: secret key, HTTPS cookies, HSTS, proxy SSL (README "Production") ----
# Without SECRET_KEY the key is public, which is fine for `migrate` or `check` but not for
# a process that serves: with DEBUG off, daphne/WSGI and runsyncer refuse to start
# (syncer.E006, `syncer.checks.require_secret_key`).
SECRET_KEY = os.environ.get("SECRET_KEY", "").strip() or LOCAL_SECRET_KEY


def _env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """`X-Forwarded-Proto,https` (or `HTTP_X_FORWARDED_PROTO,https`) as Django's tuple."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    header, _, expected = (part.strip() for part in value.partition(","))
    if not header or not expected:
        raise ImproperlyConfigured(
            f"{name} must be a header and its HTTPS value, e.g. X-Forwarded-Proto,https; "
            f"not {value!r}"
        )
    meta = header.upper().replace("-", "_")
    return (meta if meta.startswith("HTTP_") else f"HTTP_{meta}", expected)


# On by default once DEBUG is off; plain-HTTP setups such as the demo turn them off.
SESSION_COOKIE_SECURE = _env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = _env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# Browsers honour HSTS only over HTTPS, so a default of a year costs plain HTTP nothing.
# Subdomains and preload commit other hosts (and a public list): the operator opts in.
SECURE_HSTS_SECONDS = int(_env_number("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000))
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", False)
# Off by default: behind a TLS proxy without SECURE_PROXY_SSL_HEADER it would loop.
SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", False)
SECURE_PROXY_SSL_HEADER = _proxy_ssl_header("SECURE_PROXY_SSL_HEADER")
# Probes inside the cluster ask over plain HTTP; a redirect would fail them.
SECURE_REDIRECT_EXEMPT = [r"^api/health$", r"^api/ready$"]
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS")
# -- end of production safety ------------------------------------------------------------

INSTALLED_APPS = [
    # daphne's runserver serves the websockets of the live monitor in development.
    "daphne",
    "channels",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Serves /api/docs (Swagger UI) from static files instead of a CDN.
    "ninja",
    "syncer",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"

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
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/searchsync"),
        conn_max_age=60,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# daphne serves no static files: WhiteNoise does, straight from the apps' static folders,
# or from STATIC_ROOT when it is set and `collectstatic` has filled it.
STATIC_ROOT = os.environ.get("STATIC_ROOT") or None
WHITENOISE_USE_FINDERS = True

# OpenSearch, the sink. The URL may carry credentials; they are never logged.
OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:9200")
OPENSEARCH_USER = os.environ.get("OPENSEARCH_USER", "")
OPENSEARCH_PASSWORD = os.environ.get("OPENSEARCH_PASSWORD", "")
OPENSEARCH_CA_CERTS = os.environ.get("OPENSEARCH_CA_CERTS", "")
OPENSEARCH_VERIFY_CERTS = _env_bool("OPENSEARCH_VERIFY_CERTS", True)

# Channels layer between the worker and the web process (used by the live monitor).
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# The live monitor: the worker publishes on this layer, the web process relays to browsers.
ASGI_APPLICATION = "console.asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # No socket timeout: a quiet group's blocking receive lasts 5 s, as long as
            # redis-py's default read timeout, which would end it with an error.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "capacity": 1000,
            "expiry": 10,
        },
    }
}

# Worker tuning; syncer.conf reads these lazily, with the defaults documented there.
SYNCER_SHUTDOWN_TIMEOUT = _env_number("SYNCER_SHUTDOWN_TIMEOUT", 30)
SYNCER_POLL_INTERVAL = _env_number("SYNCER_POLL_INTERVAL", 1.0)
SYNCER_SLOT_WAL_WARN_BYTES = int(_env_number("SYNCER_SLOT_WAL_WARN_BYTES", 1 << 30))
SYNCER_BACKOFF_BASE = _env_number("SYNCER_BACKOFF_BASE", 1)
SYNCER_BACKOFF_CAP = _env_number("SYNCER_BACKOFF_CAP", 30)
SYNCER_SLOT_CHECK_INTERVAL = _env_number("SYNCER_SLOT_CHECK_INTERVAL", 30)
SYNCER_MAX_ATTEMPTS = int(_env_number("SYNCER_MAX_ATTEMPTS", 3))
# Bulk requests one subscription keeps in flight (1: one at a time, right for osmem).
SYNCER_BULK_CONCURRENCY = int(_env_number("SYNCER_BULK_CONCURRENCY", 1))
# A subscription's checkpoint is saved at most this often (0: after every batch).
SYNCER_CHECKPOINT_INTERVAL = _env_number("SYNCER_CHECKPOINT_INTERVAL", 0.2)
# Rows per chunk of a resumable copy (0: sized to the sink's speed, 100 to 2,000).
SYNCER_COPY_CHUNK_ROWS = int(_env_number("SYNCER_COPY_CHUNK_ROWS", 0))
# A PostgreSQL copy cut into key ranges that every worker on this database helps copy.
SYNCER_COPY_SHARED = _env_bool("SYNCER_COPY_SHARED", False)
SYNCER_COPY_RANGE_ROWS = int(_env_number("SYNCER_COPY_RANGE_ROWS", 50_000))
# A verification waits this long for the subscription to write up to its snapshot,
# and compares this many rows (and documents) at a time (README, "Verifying an index").
SYNCER_VERIFY_CATCH_UP_SECONDS = _env_number("SYNCER_VERIFY_CATCH_UP_SECONDS", 120)
SYNCER_VERIFY_CHUNK_ROWS = int(_env_number("SYNCER_VERIFY_CHUNK_ROWS", 1000))
SYNCER_DLQ_RETRY_LIMIT = int(_env_number("SYNCER_DLQ_RETRY_LIMIT", 1000))
# Dead letters one API call or admin action may retry or purge; more: `manage.py dlq`.
SYNCER_API_DLQ_MAX = int(_env_number("SYNCER_API_DLQ_MAX", 1000))
SYNCER_CONTROL_INTERVAL = _env_number("SYNCER_CONTROL_INTERVAL", 1)
SYNCER_HEARTBEAT_INTERVAL = _env_number("SYNCER_HEARTBEAT_INTERVAL", 2)
SYNCER_STATS_INTERVAL = _env_number("SYNCER_STATS_INTERVAL", 2)
SYNCER_STALL_AFTER = _env_number("SYNCER_STALL_AFTER", 60)
SYNCER_LIVE_EVENTS_PER_SECOND = int(_env_number("SYNCER_LIVE_EVENTS_PER_SECOND", 200))
SYNCER_LIVE_QUEUE_SIZE = int(_env_number("SYNCER_LIVE_QUEUE_SIZE", 10000))
SYNCER_LIVE_SEND_TIMEOUT = _env_number("SYNCER_LIVE_SEND_TIMEOUT", 1)
# Push subscriptions (POST /api/subscriptions/{name}/documents/stream; syncer.conf.push).
SYNCER_PUSH_QUEUE_LIMIT = int(_env_number("SYNCER_PUSH_QUEUE_LIMIT", 100_000))
SYNCER_PUSH_MAX_REQUEST_BYTES = int(_env_number("SYNCER_PUSH_MAX_REQUEST_BYTES", 32 << 20))
SYNCER_PUSH_MAX_LINE_BYTES = int(_env_number("SYNCER_PUSH_MAX_LINE_BYTES", 1 << 20))
SYNCER_PUSH_COMMIT_LINES = int(_env_number("SYNCER_PUSH_COMMIT_LINES", 100))
# Source DSNs: the variables `env:VAR` may read (comma-separated names or patterns; the
# default is in syncer.conf), and whether the console's own database may be a source.
if os.environ.get("SYNCER_SOURCE_DSN_ENV"):
    SYNCER_SOURCE_DSN_ENV = os.environ["SYNCER_SOURCE_DSN_ENV"]
SYNCER_ALLOW_CONSOLE_DATABASE_SOURCE = _env_bool("SYNCER_ALLOW_CONSOLE_DATABASE_SOURCE", False)
# NATS JetStream delivery of matched live-subscription events (syncer.conf.nats; docs/nats.md).
LIVE_NATS_URL = os.environ.get("LIVE_NATS_URL", "nats://127.0.0.1:4222")
LIVE_NATS_STREAM = os.environ.get("LIVE_NATS_STREAM", "searchsync-live")
LIVE_NATS_SUBJECT_PREFIX = os.environ.get("LIVE_NATS_SUBJECT_PREFIX", "events")
LIVE_NATS_MAX_AGE_SECONDS = _env_number("LIVE_NATS_MAX_AGE_SECONDS", 3600)
LIVE_NATS_DUPLICATE_WINDOW_SECONDS = _env_number("LIVE_NATS_DUPLICATE_WINDOW_SECONDS", 300)
LIVE_NATS_BUFFER = int(_env_number("LIVE_NATS_BUFFER", 10000))
LIVE_NATS_PUBLISH_TIMEOUT_SECONDS = _env_number("LIVE_NATS_PUBLISH_TIMEOUT_SECONDS", 5)
# Matching live subscriptions in the worker (syncer.conf.live_matching): the queue between
# the pipelines and matching (and of websocket events), one websocket send's timeout, and
# how long a checkpoint waits for JetStream's acknowledgements (below the duplicate window).
LIVE_MATCH_QUEUE_SIZE = _env_number("LIVE_MATCH_QUEUE_SIZE", 10_000)
LIVE_WEBSOCKET_SEND_TIMEOUT = _env_number("LIVE_WEBSOCKET_SEND_TIMEOUT", 1)
LIVE_CHECKPOINT_HOLD_SECONDS = _env_number("LIVE_CHECKPOINT_HOLD_SECONDS", 30)
# Publish from a child process of the worker (default), or in the worker's own event loop.
LIVE_NATS_PROCESS = _env_bool("LIVE_NATS_PROCESS", True)

# Live subscriptions (clients' filtered feeds): seconds one lives without a heartbeat, and
# how many may be active per owner (the API token's user) and over all owners.
LIVE_SUBSCRIPTION_TTL_SECONDS = _env_number("LIVE_SUBSCRIPTION_TTL_SECONDS", 300)
LIVE_SUBSCRIPTIONS_PER_OWNER = int(_env_number("LIVE_SUBSCRIPTIONS_PER_OWNER", 10_000))
LIVE_SUBSCRIPTIONS_MAX = int(_env_number("LIVE_SUBSCRIPTIONS_MAX", 200_000))
# Seconds between two runs of each worker's expiry of live subscriptions (idempotent).
LIVE_SUBSCRIPTION_EXPIRE_INTERVAL = _env_number("LIVE_SUBSCRIPTION_EXPIRE_INTERVAL", 10)
# Of one subscription's, those whose filter pins no value (each is evaluated on every
# change); the default is syncer.engine.matching's, set from bench/matching.py.
if os.environ.get("LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION", "").strip():
    LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION = int(
        _env_number("LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION", 0)
    )
# Seconds between `: heartbeat` comments of an event stream (/api/.../events/stream).
LIVE_SSE_HEARTBEAT = _env_number("LIVE_SSE_HEARTBEAT", 15)

LOG_FORMAT = os.environ.get("LOG_FORMAT", "json")
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()

LOGGING = logging_config(LOG_FORMAT, LOG_LEVEL)

# --- Admin login rate limit (django-axes) and the API's live streams -------------------------
# After AXES_FAILURE_LIMIT failed admin logins, from one address or for one username, further
# logins from it / for it are refused (429) for AXES_COOLOFF_MINUTES; a successful login resets
# the count. `manage.py axes_reset` (or axes_reset_ip / axes_reset_username) lifts a lock now.
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last, as axes requires
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before the rest
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = _env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = int(_env_number("AXES_FAILURE_LIMIT", 5)) or 5
AXES_COOLOFF_TIME = timedelta(minutes=_env_number("AXES_COOLOFF_MINUTES", 15) or 15)
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no banner on every manage.py command; failures and lockouts still log
# Behind reverse proxies, how many append to X-Forwarded-For: without it every login seems to
# come from the proxy's address, and one attacker's failures lock out everyone.
LOGIN_PROXY_COUNT = int(_env_number("LOGIN_PROXY_COUNT", 0))
AXES_CLIENT_IP_CALLABLE = "console.login_limit.client_ip"

# A live stream (websocket or event stream) re-checks its caller this often, in seconds: a
# revoked token, a logout, a lost staff flag or permission ends it within this time.
LIVE_STREAM_RECHECK_SECONDS = _env_number("LIVE_STREAM_RECHECK_SECONDS", 10) or 10
# Live streams one user may hold open at once, over all web processes (counted in Redis).
LIVE_STREAMS_PER_USER = int(_env_number("LIVE_STREAMS_PER_USER", 10)) or 10
# /ws/live/ (console.live.live_subscriptions): seconds a socket may take to send its token as
# the first message; events one socket buffers for a slow client before dropping them; and
# seconds it may keep dropping before it is closed (4008).
LIVE_WS_AUTH_SECONDS = _env_number("LIVE_WS_AUTH_SECONDS", 5) or 5
LIVE_WS_SEND_BUFFER = int(_env_number("LIVE_WS_SEND_BUFFER", 1000)) or 1000
LIVE_WS_BEHIND_SECONDS = _env_number("LIVE_WS_BEHIND_SECONDS", 10) or 10

# --- The worker process ----------------------------------------------------------------------
# The streaming worker (`runsyncer`) serves no page, API or websocket, so it installs only the
# apps it runs: without daphne (Twisted), the admin, django-ninja, axes, sessions, messages and
# static files it starts about 30 MB smaller (docs/benchmarks.md, "worker memory"). On for
# `manage.py runsyncer`; SEARCHSYNC_WORKER_PROCESS=1 says the same for another entry point
# that runs pipelines (bench/worker.py), =0 turns it off.
WORKER_PROCESS = _env_bool("SEARCHSYNC_WORKER_PROCESS", sys.argv[1:2] == ["runsyncer"])
WEB_ONLY_APPS = {
    "daphne",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "axes",
}
if WORKER_PROCESS:
    INSTALLED_APPS = [app for app in INSTALLED_APPS if app not in WEB_ONLY_APPS]
    # channels_redis imports cryptography's Fernet whenever cryptography is installed (it
    # is, for daphne), though it encrypts only with `symmetric_encryption_keys`, which these
    # layers do not set: declined (an import of it fails as if it were missing, which
    # channels_redis expects), the worker loads 6.7 MB less. A layer with keys keeps it.
    if not any("symmetric_encryption_keys" in layer["CONFIG"] for layer in CHANNEL_LAYERS.values()):
        sys.modules.setdefault("cryptography.fernet", None)  # type: ignore[arg-type]
