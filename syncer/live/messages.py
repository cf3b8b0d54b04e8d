"""The live monitor's messages: one contract for the worker, the consumers and the page.

The worker publishes on the Channels layer (channels-redis on REDIS_URL); consumers in
the web process relay to browsers. Publishing is best effort: bounded, rate limited,
never blocking the sync (see DESIGN.md, invariant 5).

Groups (Channels group names: ASCII letters, digits, `-`, `_`, `.`; under 100 chars):

- `MONITOR_GROUP` ("monitor"): a `sync.snapshot` per subscription once a second, sent
  in `sync.snapshots` messages that carry many (the consumer relays each), and a
  `worker.heartbeat` per worker once a second.
- `events_group(name)` ("events.<subscription name>"): `sync.events` batches of one
  subscription's applied and dead-lettered changes.

Layer messages carry a `type` (Channels maps "sync.snapshot" to a consumer's
`sync_snapshot` method). What a browser receives over its websocket is the same dict
with `type` replaced by `kind` ("snapshot", "heartbeat", "events"); the SSE stream
sends each event as `event: <kind>` + `data: <json>`.

Browser → server on `/ws/subscriptions/<name>/events/`: `{"filter": {"op": "upsert" |
"delete" | null, "doc_id_prefix": "<text>" | null}}`, any time; it replaces the
socket's filter and is answered with `{"kind": "filter", "filter": {...}}`.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

MONITOR_GROUP = "monitor"
EVENTS_PREFIX = "events."

DEFAULT_EVENTS_PER_SECOND = 200
"""Individual events per second per subscription; beyond it a drop summary is sent."""


def events_group(subscription: str) -> str:
    """The group of one subscription's events (subscription names are slugs)."""
    return f"{EVENTS_PREFIX}{subscription}"


class ChangeEvent(TypedDict):
    """A change OpenSearch acknowledged (ok or stale)."""

    kind: Literal["change"]
    op: Literal["upsert", "delete"]
    doc_id: str
    position: int  # the source position, also the document's version
    position_shown: str  # as the source's own tools show it (syncer.sources.kinds.format_position)
    commit_time: float  # epoch seconds the source committed it
    latency_ms: float  # commit -> acknowledged by OpenSearch
    batch: int  # the worker's batch number for this subscription (restarts at 1)
    outcome: Literal["ok", "stale"]


class DeadLetterEvent(TypedDict):
    """A change OpenSearch rejected for good: it went to the dead-letter queue."""

    kind: Literal["dead_letter"]
    op: Literal["upsert", "delete"]
    doc_id: str
    position: int
    position_shown: str
    commit_time: float
    batch: int
    error: str  # "<status> <type>: <reason>", shortened, as stored on the DeadLetter


class DroppedEvent(TypedDict):
    """Events not sent individually because the rate limit was reached."""

    kind: Literal["dropped"]
    dropped: int


Event = ChangeEvent | DeadLetterEvent | DroppedEvent


class EventsMessage(TypedDict):
    type: Literal["sync.events"]
    subscription: str
    events: list[Event]


class SnapshotMessage(TypedDict):
    """One subscription's state, once a second, from the worker that runs it."""

    type: Literal["sync.snapshot"]
    subscription: str
    worker: str
    status: str
    message: str
    lag: float | None  # seconds; 0 when caught up
    staleness: float | None  # seconds since the source last said it is complete
    buffer: int  # row changes held
    backpressure: bool
    throughput: float  # changes/s over the last minute
    dead_letters: int  # entries in the dead-letter queue
    live_subscriptions: int  # matched by this worker now (as of its last refresh); 0 when none
    checkpoint: int | None
    checkpoint_shown: str
    copy: dict[str, float | int | None] | None
    """A resumable copy under way: rows, estimated_rows, percent, rows_per_second,
    eta_seconds, resumes; None when none runs."""
    verification: dict[str, float | int | bool] | None
    """The last verification that ended: finished_at (epoch seconds), failed, checked,
    drifted, repaired; and running (one runs now). None when there was none."""
    at: float  # epoch seconds


class SnapshotsMessage(TypedDict):
    """Many subscriptions' snapshots in one layer message; browsers get each alone."""

    type: Literal["sync.snapshots"]
    snapshots: list[SnapshotMessage]


class HeartbeatMessage(TypedDict):
    type: Literal["worker.heartbeat"]
    worker: str
    subscriptions: list[str]
    published: int  # events published individually since the worker started
    dropped: int  # events summarised instead (rate limit or full queue)
    at: float
    interval: NotRequired[float]  # seconds between heartbeats
