"""What the worker tells the live monitor, without ever holding the sync back.

    pipeline ─ batch_written ─▶ budget (N events/s/subscription) ─▶ bounded queue
                                                                       │ put_nowait:
    runner ─ snapshot / heartbeat (latest kept) ─┐                     │ full = dropped
                                                 ▼                     ▼
                          send task: one `sync.events` per subscription per round,
                          the drop summaries owed, the snapshots (in `sync.snapshots`
                          of up to SNAPSHOTS_PER_MESSAGE), heartbeat ─▶ group_send

The observer only counts, slices and puts; all I/O is in the send task. A send that
fails or takes longer than `send_timeout` (Redis down) counts as a failure, and the
task then discards what comes for a second before trying again: the monitor goes
dark, the sync goes on, and publishing resumes by itself once Redis answers. An
outage is logged when it starts and when it ends, not per message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import structlog
from channels.layers import get_channel_layer

from syncer.engine.changes import Change, Op, Transaction
from syncer.engine.interfaces import Rejected
from syncer.engine.outcomes import Outcome
from syncer.engine.pipeline import BatchReport
from syncer.engine.ratelimit import EventBudget
from syncer.live.messages import (
    MONITOR_GROUP,
    ChangeEvent,
    DeadLetterEvent,
    DroppedEvent,
    Event,
    EventsMessage,
    HeartbeatMessage,
    SnapshotMessage,
    SnapshotsMessage,
    events_group,
)
from syncer.sources.kinds import format_position
from syncer.text import redact

log = structlog.get_logger(__name__)

RETRY_AFTER = 1.0
"""Seconds a failed send keeps the publisher quiet before it tries Redis again."""
_IDLE_WAKE = 0.25
"""Seconds between rounds when nothing arrives: owed drop summaries still go out."""
_ERROR_LIMIT = 500
SNAPSHOTS_PER_MESSAGE = 100
"""Snapshots sent in one layer message: one send a round, not one per subscription (a
worker with 100 idle subscriptions spent a tenth of its CPU on those sends), and a
message of tens of kilobytes at most."""


class LivePublisher:
    """The worker's side of the live bus; counters are read by whoever wants them."""

    def __init__(
        self,
        worker: str,
        *,
        events_per_second: int,
        queue_size: int,
        send_timeout: float = 1.0,
        layer: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.worker = worker
        self.send_timeout = send_timeout
        self.clock = clock
        self.published = 0
        """Events sent individually."""
        self.dropped = 0
        """Events not sent individually: over the rate limit, or the queue was full."""
        self.send_failures = 0
        """Sends to the channel layer that failed or timed out."""
        self.lost = 0
        """Events that could not be sent because the channel layer was unreachable."""
        self._layer = layer
        self._budget = EventBudget(events_per_second)
        self._queue: asyncio.Queue[tuple[str, Event]] = asyncio.Queue(maxsize=queue_size)
        self._snapshots: dict[str, SnapshotMessage] = {}
        self._redacted: dict[str, tuple[str, str]] = {}
        """Per subscription, its last status message and that message redacted."""
        self._heartbeat: HeartbeatMessage | None = None
        self._wake = asyncio.Event()
        self._quiet_until = 0.0
        self._outage_failures = 0

    @property
    def layer(self) -> Any:
        if self._layer is None:
            self._layer = get_channel_layer()
        return self._layer

    @property
    def connected(self) -> bool:
        """False while the channel layer is unreachable (the last send failed)."""
        return self._outage_failures == 0

    def observer(self, subscription: str, source_kind: str) -> SubscriptionObserver:
        """The pipeline observer of one subscription (see syncer.engine.pipeline)."""
        return SubscriptionObserver(self, subscription, source_kind)

    # -- called from the sync: never waits ------------------------------------------------

    def offer_batch(self, subscription: str, source_kind: str, report: BatchReport) -> None:
        """Queue what the budget admits of a batch's events; count the rest as dropped."""
        total = len(report.dead_lettered) + len(report.applied)
        if not total:
            return
        admitted = self._budget.admit(subscription, total, self.clock())
        self.dropped += total - admitted
        # Dead letters first: an operator most wants to see those.
        events: list[Event] = [
            dead_letter_event(item, source_kind, report.number)
            for item in report.dead_lettered[:admitted]
        ]
        events.extend(
            change_event(change, outcome, source_kind, report.number, report.at)
            for change, outcome in report.applied[: admitted - len(events)]
        )
        self._enqueue(subscription, events)

    def offer_snapshot(self, snapshot: SnapshotMessage) -> None:
        """The subscription's latest state; one not yet sent is replaced."""
        # The status message may quote a driver's error, DSN included: browsers see it.
        # It seldom changes, and redacting reads the environment: done once per message.
        name, message = snapshot["subscription"], snapshot["message"]
        known = self._redacted.get(name)
        if known is None or known[0] != message:
            known = self._redacted[name] = (message, redact(message))
        self._snapshots[name] = {**snapshot, "message": known[1]}
        self._wake.set()

    def offer_heartbeat(self, subscriptions: Sequence[str], interval: float) -> None:
        self._heartbeat = HeartbeatMessage(
            type="worker.heartbeat",
            worker=self.worker,
            subscriptions=sorted(subscriptions),
            published=self.published,
            dropped=self.dropped,
            at=self.clock(),
            interval=interval,
        )
        self._wake.set()

    def forget(self, subscription: str) -> None:
        """The subscription stopped running here."""
        self._budget.forget(subscription)
        self._snapshots.pop(subscription, None)
        self._redacted.pop(subscription, None)

    def _enqueue(self, subscription: str, events: list[Event]) -> None:
        for queued, event in enumerate(events):
            try:
                self._queue.put_nowait((subscription, event))
            except asyncio.QueueFull:
                lost = len(events) - queued
                self.dropped += lost
                self._budget.drop(subscription, lost, self.clock())
                break
        self._wake.set()

    # -- the send task ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Send what is offered until `stop`, then once more (bounded by the timeout)."""
        while not stop.is_set():
            waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waits, timeout=_IDLE_WAKE, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            self._wake.clear()
            await self.send_once()
        await self.send_once()

    async def send_once(self) -> None:
        """One round: everything queued, the summaries owed, the snapshots and heartbeat."""
        now = self.clock()
        batches: dict[str, list[Event]] = {}
        while not self._queue.empty():
            subscription, event = self._queue.get_nowait()
            batches.setdefault(subscription, []).append(event)
        for subscription, dropped in self._budget.summaries(now).items():
            batches.setdefault(subscription, []).append(
                DroppedEvent(kind="dropped", dropped=dropped)
            )
        sends: list[tuple[str, Mapping[str, object], int]] = []
        for subscription, events in batches.items():
            message = EventsMessage(type="sync.events", subscription=subscription, events=events)
            individual = sum(1 for event in events if event["kind"] != "dropped")
            sends.append((events_group(subscription), message, individual))
        snapshots = list(self._snapshots.values())
        self._snapshots = {}
        for start in range(0, len(snapshots), SNAPSHOTS_PER_MESSAGE):
            chunk = snapshots[start : start + SNAPSHOTS_PER_MESSAGE]
            together = SnapshotsMessage(type="sync.snapshots", snapshots=chunk)
            sends.append((MONITOR_GROUP, together, 0))
        if self._heartbeat is not None:
            sends.append((MONITOR_GROUP, self._heartbeat, 0))
            self._heartbeat = None
        if not sends:
            return
        if now < self._quiet_until:  # Redis was unreachable a moment ago
            self.lost += sum(individual for _, _, individual in sends)
            return
        for done, (group, payload, individual) in enumerate(sends):
            if not await self._send(group, payload):
                self.lost += sum(n for _, _, n in sends[done:])
                return
            self.published += individual

    async def _send(self, group: str, message: Mapping[str, object]) -> bool:
        try:
            await asyncio.wait_for(self.layer.group_send(group, dict(message)), self.send_timeout)
        except Exception as exc:  # Redis down, slow or refusing: the monitor waits, not the sync
            self.send_failures += 1
            self._quiet_until = self.clock() + RETRY_AFTER
            if self._outage_failures == 0:
                log.warning(
                    "live_publish_failed",
                    error=str(exc) or type(exc).__name__,
                    hint="the live monitor is dark until the channel layer (REDIS_URL) answers; "
                    "the sync is not affected",
                )
            self._outage_failures += 1
            return False
        if self._outage_failures:
            log.info("live_publish_recovered", failed_sends=self._outage_failures)
            self._outage_failures = 0
        return True


class SubscriptionObserver:
    """One pipeline's observer: hands each written batch to the publisher."""

    def __init__(self, publisher: LivePublisher, subscription: str, source_kind: str) -> None:
        self.publisher = publisher
        self.subscription = subscription
        self.source_kind = source_kind

    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        """Nothing: `batch_written` carries what the monitor shows."""

    def batch_written(self, report: BatchReport) -> None:
        self.publisher.offer_batch(self.subscription, self.source_kind, report)


def _op(change: Change) -> Literal["upsert", "delete"]:
    return "delete" if change.op is Op.DELETE else "upsert"


def change_event(
    change: Change, outcome: Outcome, source_kind: str, batch: int, at: float
) -> ChangeEvent:
    return ChangeEvent(
        kind="change",
        op=_op(change),
        doc_id=change.doc_id,
        position=change.version,
        position_shown=format_position(source_kind, change.version),
        commit_time=change.commit_time,
        latency_ms=round(max(0.0, at - change.commit_time) * 1000, 1),
        batch=batch,
        outcome="stale" if outcome is Outcome.STALE else "ok",
    )


def dead_letter_event(item: Rejected, source_kind: str, batch: int) -> DeadLetterEvent:
    change, result = item.change, item.result
    error = f"{result.status} {result.error_type}: {result.reason}".strip()
    return DeadLetterEvent(
        kind="dead_letter",
        op=_op(change),
        doc_id=change.doc_id,
        position=change.version,
        position_shown=format_position(source_kind, change.version),
        commit_time=change.commit_time,
        batch=batch,
        error=redact(error)[:_ERROR_LIMIT],
    )
