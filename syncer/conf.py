"""Typed, lazily read settings of the worker (`SYNCER_*`, `OPENSEARCH_*`, `LIVE_NATS_*`,
`LIVE_SUBSCRIPTION*`, `LIVE_MATCH_*`).

Read at call time, never at import, so `override_settings` and per-test
environments work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings

from syncer.sinks.opensearch.connection import Connection

LOCAL_SECRET_KEY = "searchsync-insecure-local-key-set-SECRET_KEY"
"""The key used when SECRET_KEY is not set: public, so only for local use (DEBUG on)."""


def secret_key_missing() -> bool:
    """Whether DEBUG is off and SECRET_KEY is unset (the public local key is in use)."""
    return not settings.DEBUG and settings.SECRET_KEY in {"", LOCAL_SECRET_KEY}


@dataclass(frozen=True)
class WorkerSettings:
    shutdown_timeout: float
    """Seconds a SIGTERM/SIGINT waits for pending changes to flush before giving up."""
    poll_interval: float
    """Seconds between looks at an idle source: bounds the wake-up latency."""
    slot_wal_warn_bytes: int
    """A replication slot retaining more WAL than this puts a warning in the status."""
    backoff_base: float
    """First reconnect delay in seconds; it doubles up to `backoff_cap`."""
    backoff_cap: float
    slot_check_interval: float
    """Seconds between checks of the replication slot's retained WAL."""
    max_attempts: int
    """Transient failures of one document before it goes to the dead-letter queue."""
    bulk_concurrency: int
    """Bulk requests one subscription keeps in flight at once (1: one at a time)."""
    checkpoint_interval: float
    """Seconds at most between a subscription's checkpoint saves (0: after every batch)."""
    copy_chunk_rows: int
    """Rows per chunk of a resumable copy (0: sized to how fast the sink writes them)."""
    copy_shared: bool
    """PostgreSQL copies are cut into key ranges that every worker helps copy."""
    copy_range_rows: int
    """Rows per range of a shared copy, as the planner estimates them."""
    dlq_retry_batch: int
    """Dead letters retried per round by `runsyncer --dlq-retry-every`."""
    control_interval: float
    """Seconds between looks at the subscriptions table (new, deleted, changed, paused...)."""
    heartbeat_interval: float
    """Seconds between refreshes of the worker's WorkerHeartbeat row."""
    stats_interval: float
    """Seconds between publications of lag, staleness and throughput on each subscription."""
    stall_after: float
    """Seconds without progress after which the worker's /ready calls a subscription stalled."""


def opensearch() -> Connection:
    """Where the worker and the console reach OpenSearch (the OPENSEARCH_* settings)."""
    return Connection(
        url=settings.OPENSEARCH_URL,
        user=settings.OPENSEARCH_USER,
        password=settings.OPENSEARCH_PASSWORD,
        ca_certs=settings.OPENSEARCH_CA_CERTS,
        verify_certs=settings.OPENSEARCH_VERIFY_CERTS,
    )


def worker() -> WorkerSettings:
    return WorkerSettings(
        shutdown_timeout=float(getattr(settings, "SYNCER_SHUTDOWN_TIMEOUT", 30.0)),
        poll_interval=float(getattr(settings, "SYNCER_POLL_INTERVAL", 1.0)),
        slot_wal_warn_bytes=int(getattr(settings, "SYNCER_SLOT_WAL_WARN_BYTES", 1 << 30)),
        backoff_base=float(getattr(settings, "SYNCER_BACKOFF_BASE", 1.0)),
        backoff_cap=float(getattr(settings, "SYNCER_BACKOFF_CAP", 30.0)),
        slot_check_interval=float(getattr(settings, "SYNCER_SLOT_CHECK_INTERVAL", 30.0)),
        max_attempts=int(getattr(settings, "SYNCER_MAX_ATTEMPTS", 3)),
        bulk_concurrency=int(getattr(settings, "SYNCER_BULK_CONCURRENCY", 1)),
        checkpoint_interval=float(getattr(settings, "SYNCER_CHECKPOINT_INTERVAL", 0.2)),
        copy_chunk_rows=int(getattr(settings, "SYNCER_COPY_CHUNK_ROWS", 0)),
        copy_shared=bool(getattr(settings, "SYNCER_COPY_SHARED", False)),
        copy_range_rows=int(getattr(settings, "SYNCER_COPY_RANGE_ROWS", 50_000)),
        dlq_retry_batch=int(getattr(settings, "SYNCER_DLQ_RETRY_LIMIT", 1000)),
        control_interval=float(getattr(settings, "SYNCER_CONTROL_INTERVAL", 1.0)),
        heartbeat_interval=float(getattr(settings, "SYNCER_HEARTBEAT_INTERVAL", 2.0)),
        stats_interval=float(getattr(settings, "SYNCER_STATS_INTERVAL", 2.0)),
        stall_after=float(getattr(settings, "SYNCER_STALL_AFTER", 60.0)),
    )


@dataclass(frozen=True)
class LiveSettings:
    events_per_second: int
    """Individual events per second per subscription on the live monitor; beyond, a summary."""
    queue_size: int
    """Events the worker holds for the monitor before dropping (counted) instead of waiting."""
    send_timeout: float
    """Seconds a send to the channel layer (Redis) may take before it counts as failed."""


def live() -> LiveSettings:
    return LiveSettings(
        events_per_second=int(getattr(settings, "SYNCER_LIVE_EVENTS_PER_SECOND", 200)),
        queue_size=int(getattr(settings, "SYNCER_LIVE_QUEUE_SIZE", 10000)),
        send_timeout=float(getattr(settings, "SYNCER_LIVE_SEND_TIMEOUT", 1.0)),
    )


_TOKENS = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


@dataclass(frozen=True)
class NatsConfig:
    url: str = "nats://127.0.0.1:4222"
    """One or several servers, comma-separated (`nats://host:4222,nats://other:4222`)."""
    stream: str = "searchsync-live"
    """The JetStream stream, created if missing, its limits updated if they differ."""
    subject_prefix: str = "events"
    """Subjects are `<prefix>.<gateway_id>.<live subscription id>`; the stream holds
    `<prefix>.>`."""
    max_age: float = 3600.0
    """Seconds the stream keeps an event: how long a client may be away and catch up."""
    duplicate_window: float = 300.0
    """Seconds JetStream remembers a `Nats-Msg-Id`: a retry or a replay after a worker
    restart inside it is not stored twice."""
    buffer: int = 10_000
    """Matched events held while NATS is slow or down; beyond, new ones are dropped."""
    publish_timeout: float = 5.0
    """Seconds to wait for JetStream's acknowledgement before the publish counts as failed."""
    window: int = 256
    """Publishes in flight at once (pipelined, acknowledged together)."""
    reconnect_wait: int = 1
    """Seconds between the client's reconnect attempts (it never stops trying)."""
    connect_timeout: int = 2
    """Seconds one connection attempt may take."""
    ping_interval: int = 10
    """Seconds between pings: a silent, half-open connection is noticed within about two."""
    retry_base: float = 0.5
    """First delay of the retry backoff while the breaker is open; doubles up to retry_cap."""
    retry_cap: float = 10.0
    name: str = "searchsync"
    """The client name NATS monitoring shows."""
    process: bool = True
    """Publish from a child process of the worker (`syncer.live.nats_process`), so that
    publishing and its acknowledgements do not share the worker's interpreter (its GIL)
    with the sync; False: in the worker's own event loop."""

    def __post_init__(self) -> None:
        if not _STREAM_NAME.fullmatch(self.stream):
            raise ValueError(
                f"LIVE_NATS_STREAM {self.stream!r}: use ASCII letters, digits, '-' or '_'"
            )
        if not _TOKENS.fullmatch(self.subject_prefix):
            raise ValueError(
                f"LIVE_NATS_SUBJECT_PREFIX {self.subject_prefix!r}: use dot-separated tokens "
                "of ASCII letters, digits, '-' or '_' (no wildcards)"
            )
        if self.max_age <= 0 or self.duplicate_window <= 0:
            raise ValueError(
                "LIVE_NATS_MAX_AGE_SECONDS and LIVE_NATS_DUPLICATE_WINDOW_SECONDS must be positive"
            )
        if self.duplicate_window > self.max_age:
            raise ValueError(
                f"LIVE_NATS_DUPLICATE_WINDOW_SECONDS ({self.duplicate_window:g}) must not exceed "
                f"LIVE_NATS_MAX_AGE_SECONDS ({self.max_age:g}): JetStream refuses such a stream"
            )
        if self.buffer < 1 or self.window < 1:
            raise ValueError("LIVE_NATS_BUFFER and the publish window must be at least 1")

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.url.split(",") if url.strip()]

    def subject(self, gateway_id: str, live_subscription_id: str) -> str:
        return f"{self.subject_prefix}.{gateway_id}.{live_subscription_id}"

    @property
    def stream_subjects(self) -> list[str]:
        return [f"{self.subject_prefix}.>"]


def nats() -> NatsConfig:
    """Where and how matched live-subscription events go to NATS JetStream (LIVE_NATS_*)."""
    defaults = NatsConfig()
    return NatsConfig(
        url=str(getattr(settings, "LIVE_NATS_URL", defaults.url)),
        stream=str(getattr(settings, "LIVE_NATS_STREAM", defaults.stream)),
        subject_prefix=str(getattr(settings, "LIVE_NATS_SUBJECT_PREFIX", defaults.subject_prefix)),
        max_age=float(getattr(settings, "LIVE_NATS_MAX_AGE_SECONDS", defaults.max_age)),
        duplicate_window=float(
            getattr(settings, "LIVE_NATS_DUPLICATE_WINDOW_SECONDS", defaults.duplicate_window)
        ),
        buffer=int(getattr(settings, "LIVE_NATS_BUFFER", defaults.buffer)),
        publish_timeout=float(
            getattr(settings, "LIVE_NATS_PUBLISH_TIMEOUT_SECONDS", defaults.publish_timeout)
        ),
        process=bool(getattr(settings, "LIVE_NATS_PROCESS", defaults.process)),
    )


@dataclass(frozen=True)
class LogSettings:
    format: str
    """`json` (one object per line) or `console` (readable lines)."""
    level: str


def logs() -> LogSettings:
    """How the worker logs (LOG_FORMAT, LOG_LEVEL): its child processes log the same way."""
    return LogSettings(
        format=str(getattr(settings, "LOG_FORMAT", "json")),
        level=str(getattr(settings, "LOG_LEVEL", "INFO")).upper(),
    )


@dataclass(frozen=True)
class LiveMatchingSettings:
    queue_size: int
    """Acknowledged changes waiting to be matched, and matched websocket events waiting to
    be sent; beyond, new ones are dropped (counted) instead of slowing the sync."""
    websocket_send_timeout: float
    """Seconds one websocket event's send to the channel layer (Redis) may take."""
    checkpoint_hold: float
    """Seconds at most a checkpoint waits for NATS to acknowledge its changes' events
    (0: it does not wait); below the duplicate window, so that a replay after a crash
    is stored once."""


def live_matching() -> LiveMatchingSettings:
    """LIVE_MATCH_QUEUE_SIZE, LIVE_WEBSOCKET_SEND_TIMEOUT, LIVE_CHECKPOINT_HOLD_SECONDS;
    raises ValueError, naming the setting, for a value that cannot work."""
    size = getattr(settings, "LIVE_MATCH_QUEUE_SIZE", 10_000)
    if isinstance(size, float) and size.is_integer():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(
            f"LIVE_MATCH_QUEUE_SIZE must be a whole number of at least 1, not {size!r}"
        )
    timeout = float(getattr(settings, "LIVE_WEBSOCKET_SEND_TIMEOUT", 1.0))
    if timeout <= 0:
        raise ValueError(
            f"LIVE_WEBSOCKET_SEND_TIMEOUT must be a positive number of seconds, not {timeout:g}"
        )
    hold = float(getattr(settings, "LIVE_CHECKPOINT_HOLD_SECONDS", 30.0))
    window = nats().duplicate_window
    if not 0 <= hold < window:
        raise ValueError(
            f"LIVE_CHECKPOINT_HOLD_SECONDS ({hold:g}) must be at least 0 and below "
            f"LIVE_NATS_DUPLICATE_WINDOW_SECONDS ({window:g}): a change replayed after a crash "
            "must reach JetStream inside the duplicate window to be stored once"
        )
    return LiveMatchingSettings(size, timeout, hold)


@dataclass(frozen=True)
class LiveSubscriptionSettings:
    ttl: timedelta
    """How long a live subscription lives after its registration or last heartbeat."""
    per_owner: int
    """Active (unexpired) live subscriptions one owner may have."""
    total: int
    """Active live subscriptions all owners together may have."""
    unpinned_setting: int | None
    """LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION, or None for the matcher's default."""
    expire_interval: float
    """Seconds between two runs of each worker's expiry loop (idempotent on every worker)."""

    @property
    def unpinned_per_subscription(self) -> int:
        """Active live subscriptions of one subscription whose filter pins no value and
        bounds no number (`doc.total > 500` at the top level is indexed: not counted)."""
        if self.unpinned_setting is not None:
            return self.unpinned_setting
        # Imported here: the matching package loads CEL (about 40 MB), which a worker
        # reading only `expire_interval` never needs.
        from syncer.engine.matching import DEFAULT_UNPINNED_QUOTA

        return DEFAULT_UNPINNED_QUOTA


def live_subscriptions() -> LiveSubscriptionSettings:
    """LIVE_SUBSCRIPTION_TTL_SECONDS, LIVE_SUBSCRIPTIONS_PER_OWNER, LIVE_SUBSCRIPTIONS_MAX,
    LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION, LIVE_SUBSCRIPTION_EXPIRE_INTERVAL."""
    unpinned = getattr(settings, "LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION", None)
    return LiveSubscriptionSettings(
        ttl=timedelta(seconds=float(getattr(settings, "LIVE_SUBSCRIPTION_TTL_SECONDS", 300))),
        per_owner=int(getattr(settings, "LIVE_SUBSCRIPTIONS_PER_OWNER", 10_000)),
        total=int(getattr(settings, "LIVE_SUBSCRIPTIONS_MAX", 200_000)),
        unpinned_setting=None if unpinned is None else int(unpinned),
        expire_interval=float(getattr(settings, "LIVE_SUBSCRIPTION_EXPIRE_INTERVAL", 10)),
    )


def api_dlq_max() -> int:
    """Dead letters one API call or admin action may retry or purge (SYNCER_API_DLQ_MAX)."""
    return int(getattr(settings, "SYNCER_API_DLQ_MAX", 1000))


@dataclass(frozen=True)
class PushSettings:
    queue_limit: int
    """Operations a push subscription's queue may hold (accepted, not yet removed); a push
    beyond it is answered 429."""
    max_request_bytes: int
    """Bytes of one push request's body read at most; the rest is refused, said in a
    final line."""
    max_line_bytes: int
    """Bytes of one line at most (its newline not counted); a longer line is refused alone."""
    commit_lines: int
    """Lines committed per transaction at most (their status lines follow the commit)."""


def push() -> PushSettings:
    """SYNCER_PUSH_QUEUE_LIMIT, SYNCER_PUSH_MAX_REQUEST_BYTES, SYNCER_PUSH_MAX_LINE_BYTES,
    SYNCER_PUSH_COMMIT_LINES."""
    return PushSettings(
        queue_limit=max(1, int(getattr(settings, "SYNCER_PUSH_QUEUE_LIMIT", 100_000))),
        max_request_bytes=max(1, int(getattr(settings, "SYNCER_PUSH_MAX_REQUEST_BYTES", 32 << 20))),
        max_line_bytes=max(1, int(getattr(settings, "SYNCER_PUSH_MAX_LINE_BYTES", 1 << 20))),
        commit_lines=max(1, int(getattr(settings, "SYNCER_PUSH_COMMIT_LINES", 100))),
    )


DEFAULT_SOURCE_DSN_ENV = ("SOURCE_DATABASE_URL", "MATERIALIZE_URL", "*_SOURCE_URL", "*_SOURCE_DSN")
"""The environment variables a source DSN may name as `env:VAR` unless told otherwise:
the README's and the demo's, and names that say they hold a source's DSN."""


@dataclass(frozen=True)
class SourceDsnSettings:
    env_allowed: tuple[str, ...]
    """Names or shell-style patterns (`*_SOURCE_URL`) of the variables `env:VAR` may read."""
    allow_console_database: bool
    """Whether a source may be the console's own database (DATABASE_URL, or a DSN to it)."""


def source_dsn() -> SourceDsnSettings:
    allowed = getattr(settings, "SYNCER_SOURCE_DSN_ENV", DEFAULT_SOURCE_DSN_ENV)
    if isinstance(allowed, str):
        allowed = allowed.split(",")
    return SourceDsnSettings(
        env_allowed=tuple(name.strip() for name in allowed if name.strip()),
        allow_console_database=bool(
            getattr(settings, "SYNCER_ALLOW_CONSOLE_DATABASE_SOURCE", False)
        ),
    )
