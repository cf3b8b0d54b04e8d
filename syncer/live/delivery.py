"""What the worker and its metrics see of a NATS delivery, without nats-py.

`Delivery` is the base of both deliveries: `syncer.live.nats.NatsDelivery`, which
publishes from the event loop it runs in, and `syncer.live.nats_process.NatsProcessDelivery`,
which runs one in a child process (the default). The worker imports this module, its
metrics read the counters; nats-py (1.5 MB) is imported only where events are published:
in the publisher process, or in the worker once an in-process delivery is made.
"""

from __future__ import annotations

import abc
import enum
from collections import Counter
from typing import Any

import structlog

from syncer.conf import NatsConfig
from syncer.engine.telemetry import Histogram
from syncer.live.events import MatchedEvent

log = structlog.get_logger(__name__)

PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
"""Seconds from a publish to JetStream's acknowledgement."""
DELIVERY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0)
"""Seconds from `offer` to the acknowledgement: includes waiting in the buffer."""


class Breaker(enum.StrEnum):
    CLOSED = "closed"
    """Publishing normally."""
    OPEN = "open"
    """NATS did not acknowledge: probing with one event per backoff delay."""


class DropReason(enum.StrEnum):
    BUFFER_FULL = "buffer_full"
    """The buffer was full while NATS was up: events come faster than NATS takes them."""
    BREAKER_OPEN = "breaker_open"
    """The buffer was full while NATS was down (an outage longer than the buffer)."""
    TOO_LARGE = "too_large"
    """The event is larger than the server's max payload."""
    UNENCODABLE = "unencodable"
    """The document holds a value JSON cannot carry."""
    STOPPED = "stopped"
    """Offered after `stop`, or still buffered when `stop`'s timeout ran out."""


class Delivery(abc.ABC):
    """A NATS delivery as the worker and its metrics see it: `NatsDelivery` in the worker's
    own event loop, or `syncer.live.nats_process.NatsProcessDelivery`, which runs one in a
    child process. The counters are plain attributes, read at scrape time."""

    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self._stopping = False
        self.published = 0
        """Events JetStream acknowledged (once each, duplicates included)."""
        self.duplicates = 0
        """Of those, events JetStream already held (same Nats-Msg-Id): a retry after a lost
        acknowledgement, or a replay after a restart. Stored once."""
        self.retried = 0
        """Events sent again after a failed or unacknowledged publish."""
        self.dropped: Counter[str] = Counter()
        """Events never delivered, by `DropReason`."""
        self.outages = 0
        """Times the breaker opened."""
        self.restarts = 0
        """Times a publisher process ended without being asked and was started again
        (always 0 in process)."""
        self.breaker = Breaker.CLOSED
        self.connected = False
        """Whether the client holds a connection to a server right now."""
        self.publish_seconds = Histogram(PUBLISH_BUCKETS)
        self.delivery_seconds = Histogram(DELIVERY_BUCKETS)
        self.buffer_peak = 0

    def _refuses(self) -> bool:
        """Whether an offer must be dropped now (counted): the delivery is stopping, or
        its buffer is full (in flight included, so memory stays bounded)."""
        if self._stopping:
            self.dropped[DropReason.STOPPED] += 1
            return True
        if self.buffered >= self.config.buffer:
            reason = (
                DropReason.BREAKER_OPEN if self.breaker is Breaker.OPEN else DropReason.BUFFER_FULL
            )
            self.dropped[reason] += 1
            return True
        return False

    def _dropped(self, reason: DropReason, detail: str, **event: Any) -> None:
        """Count and log one event that will never be delivered."""
        self.dropped[reason] += 1
        log.warning("nats_event_dropped", reason=str(reason), detail=detail, **event)

    def _stopped_with(self, lost: int, why: str) -> None:
        """Count and log the events `stop` could not deliver."""
        if lost:
            self.dropped[DropReason.STOPPED] += lost
            log.warning(
                "nats_delivery_stopped_with_events",
                dropped=lost,
                next=f"these events were not delivered; {why}",
            )

    @property
    @abc.abstractmethod
    def buffered(self) -> int:
        """Events offered and not yet settled (acknowledged or dropped)."""

    @abc.abstractmethod
    def unsettled_since(self, subscription: str) -> int | None:
        """The lowest position of sync subscription `subscription` whose events are neither
        acknowledged by JetStream nor dropped; None when there is none.

        A checkpoint kept below it loses no event to a crash: the replay after a restart
        matches those changes again, and JetStream drops what it already had.
        """

    @abc.abstractmethod
    def offer(self, event: MatchedEvent) -> bool:
        """Queue `event` for delivery; False (and counted) when it is dropped. Never waits."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start delivering; returns at once, whether NATS is reachable or not."""

    @abc.abstractmethod
    async def stop(self, timeout: float) -> None:
        """Deliver what can be within `timeout` seconds, count the rest as dropped, close."""


def event_fields(event: MatchedEvent) -> dict[str, Any]:
    """What a log line says about one event."""
    return {
        "live_subscription": str(event.live_subscription_id),
        "subscription": event.subscription,
        "key": event.key,
        "position": event.position,
    }
