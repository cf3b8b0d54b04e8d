"""Matched live-subscription events to NATS JetStream: at least once, stored once per
`Nats-Msg-Id` within the stream's duplicate window, never in the sync's way.

    worker ─ offer(event) ─▶ bounded buffer ─▶ sender task ─ publish (window in flight)
              never waits      full: dropped,        │         Nats-Msg-Id = event.msg_id
                               counted by reason     ▼
                                     JetStream ack ◀─┘ none (timeout, NATS down):
                                                       breaker opens, the same messages
                                                       are sent again, in order, with
                                                       the same ids, after a backoff

`offer` only appends to a deque: the sync never waits on NATS. The sender publishes up
to `window` events at once and takes the acknowledged prefix; from the first
unacknowledged event on, everything is sent again in order, so the stream keeps the
order of each live subscription's events, and JetStream drops (and acknowledges as
`duplicate`) the copies of what it had already stored inside the duplicate window.

A failed round opens the circuit breaker: the sender then probes with one event per
backoff delay (`syncer.engine.backoff`) while the buffer fills, and new events are
dropped once it is full. The first acknowledged probe closes the breaker and the
backlog goes out. The client reconnects forever, from the very first connection on: a
worker started while NATS is down starts anyway and delivers once NATS is back. The
stream is created if missing (again, if someone deletes it while the worker runs).

Events settle (acknowledged, or dropped as undeliverable) in the order they were offered:
`settled` counts them, which is all `syncer.live.nats_process` needs to run this class in
a child process and keep the worker's `unsettled_since` exact. `syncer.live.delivery`'s
`Delivery`, the base of both, is what the worker and its metrics use of either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig

from syncer.conf import NatsConfig
from syncer.engine.backoff import Backoff
from syncer.live.delivery import (
    Breaker,
    Delivery,
    DropReason,
    event_fields,
)
from syncer.live.events import MatchedEvent

log = structlog.get_logger(__name__)

_HEADER_ROOM = 256
"""Bytes kept for the headers when checking an event against the server's max payload."""
_UNSET_MAX_PAYLOAD = 1024 * 1024

# What a publish or a stream lookup raises when NATS is down, slow or refusing: all of it
# means "try again later" (a refusal that never ends is logged, and retried slowly).
_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)


@dataclass(slots=True)
class _Pending:
    subscription: str
    position: int
    offered_at: float
    event: MatchedEvent | None = None
    """As offered in this process; None when it came encoded (`offer_encoded`)."""
    subject: str = ""
    msg_id: str = ""
    payload: bytes = b""
    """Empty until encoded (`_take`), unless it came encoded."""


class NatsDelivery(Delivery):
    """Publishes `MatchedEvent`s on `<prefix>.<gateway_id>.<live subscription id>`.

    Call `offer` from the event loop `start` ran on. The counters are plain attributes,
    read by the worker's metrics at scrape time.
    """

    def __init__(
        self,
        config: NatsConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.clock = clock
        self.on_settled = on_settled
        """Called each time an event settles (so a child process can report it)."""
        self.settled = 0
        """Events acknowledged or dropped once offered, in offer order (not those dropped by
        `offer` itself, nor by `stop`)."""
        self.gave_up = False
        """Whether the sender ended for good (a bad setting: `nats_delivery_failed`)."""
        self._buffer: collections.deque[_Pending] = collections.deque()
        self._positions: dict[str, collections.deque[int]] = {}
        """Positions of the events not yet settled (acknowledged or dropped), per sync
        subscription, in offer order: the sender settles events in that order too."""
        self._wake = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._backoff = Backoff(config.retry_base, config.retry_cap)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._in_flight = 0
        self._last_client_error = ""
        self._stopped_connection = False

    # -- the worker's side -------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Events offered and not yet acknowledged (waiting or in flight)."""
        return len(self._buffer) + self._in_flight

    def unsettled_since(self, subscription: str) -> int | None:
        """The lowest position of sync subscription `subscription` whose events are neither
        acknowledged by JetStream nor dropped; None when there is none.

        A checkpoint kept below it loses no event to a crash: the replay after a restart
        matches those changes again, and JetStream drops what it already had.
        """
        positions = self._positions.get(subscription)
        return min(positions) if positions else None

    def offer(self, event: MatchedEvent) -> bool:
        """Queue `event` for delivery; False (and counted) when it is dropped. Never waits."""
        return self._enqueue(_Pending(event.subscription, event.position, self.clock(), event))

    def offer_encoded(
        self,
        subscription: str,
        position: int,
        subject: str,
        msg_id: str,
        payload: bytes,
        offered_at: float,
    ) -> bool:
        """`offer` for an event another process encoded (`payload` is `MatchedEvent.to_json`),
        offered there at `offered_at` (`time.monotonic`, the same clock for every process)."""
        return self._enqueue(
            _Pending(subscription, position, offered_at, None, subject, msg_id, payload)
        )

    def _enqueue(self, item: _Pending) -> bool:
        if self._refuses():
            return False
        self._buffer.append(item)
        self._positions.setdefault(item.subscription, collections.deque()).append(item.position)
        self.buffer_peak = max(self.buffer_peak, self.buffered)
        self._wake.set()
        return True

    async def start(self) -> None:
        """Start the sender; returns at once, whether NATS is reachable or not."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="nats-delivery")

    async def stop(self, timeout: float) -> None:
        """Deliver what can be within `timeout` seconds, count the rest as dropped, close."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            # Nothing to flush: no need to wait for a connection that may never come.
            _, pending = await asyncio.wait({task}, timeout=timeout if self.buffered else 0)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._stopped_with(self.buffered, "NATS was unreachable or slow")
        self._buffer.clear()
        self._positions.clear()
        self._in_flight = 0
        await self._close()

    # -- the sender ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect()
        except Exception as exc:  # the client retries every outage: this is a bad setting
            self._stopping = True
            self.gave_up = True
            log.error(
                "nats_delivery_failed",
                error=_describe(exc),
                servers=self.config.servers,
                next="fix LIVE_NATS_URL and restart the worker; matched events are dropped",
            )
            return
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            if batch:
                await self._deliver(batch)

    def _take(self) -> list[_Pending]:
        """Up to `window` events off the buffer, encoded; those that cannot go are dropped.

        A batch ends before an event that cannot go, which is dropped first thing in the
        next one: events settle in offer order, so `settled` says exactly which."""
        assert self._nc is not None
        limit = (self._nc.max_payload or _UNSET_MAX_PAYLOAD) - _HEADER_ROOM
        batch: list[_Pending] = []
        while self._buffer and len(batch) < self.config.window:
            item = self._buffer[0]
            problem = self._unsendable(item, limit)
            if problem is None:
                batch.append(self._buffer.popleft())
            elif batch:
                break
            else:
                self._buffer.popleft()
                self._drop(item, *problem)
        self._in_flight = len(batch)
        return batch

    def _unsendable(self, item: _Pending, limit: int) -> tuple[DropReason, str] | None:
        """Why `item` cannot be published (encoding it first if it came as an event), or None."""
        event = item.event
        if event is not None and not item.payload:
            try:
                item.payload = event.to_json()
            except orjson.JSONEncodeError as exc:
                return DropReason.UNENCODABLE, str(exc)
            item.subject = self.config.subject(event.gateway_id, str(event.live_subscription_id))
            item.msg_id = event.msg_id
        if len(item.payload) > limit:
            return DropReason.TOO_LARGE, f"{len(item.payload):,} bytes > {limit:,}"
        return None

    def _settle(self, item: _Pending) -> None:
        positions = self._positions[item.subscription]
        positions.popleft()
        if not positions:
            del self._positions[item.subscription]
        self.settled += 1
        if self.on_settled is not None:
            self.on_settled()

    def _drop(self, item: _Pending, reason: DropReason, detail: str) -> None:
        self._settle(item)
        self._dropped(reason, detail, **_fields(item))

    async def _deliver(self, batch: list[_Pending]) -> None:
        """Publish `batch` until all of it is acknowledged, in order (the sender's only
        way out is success, or cancellation by `stop`)."""
        pending = batch
        while pending:
            if self.breaker is Breaker.OPEN:
                await self._wait_before_probe()
            if not self._stream_ready:
                if not await self._ensure_stream():
                    self._open_breaker("stream not ready")
                    continue
            sending = pending[:1] if self.breaker is Breaker.OPEN else pending
            try:
                acked, error = await self._publish(sending)
            except Exception as exc:  # not NATS's known failures: retried all the same
                log.exception("nats_publish_failed")
                acked, error = 0, exc
            pending = pending[acked:]
            self._in_flight = len(pending)
            if error is None:
                self._close_breaker()
                continue
            self.retried += len(pending)
            if isinstance(error, nats.js.errors.NoStreamResponseError):
                self._stream_ready = False  # deleted under us: create it again
            self._open_breaker(_describe(error))

    async def _publish(self, items: list[_Pending]) -> tuple[int, BaseException | None]:
        """Send `items` pipelined; how many were acknowledged in order, and the first
        failure (None when all were)."""
        assert self._js is not None
        sent: list[tuple[_Pending, asyncio.Future[PubAck], float]] = []
        failure: BaseException | None = None
        for item in items:
            try:
                future = await self._js.publish_async(
                    item.subject,
                    item.payload,
                    stream=self.config.stream,
                    headers={"Nats-Msg-Id": item.msg_id},
                )
            except _NATS_ERRORS as exc:
                failure = exc
                break
            sent.append((item, future, self.clock()))
        if sent:
            _, late = await asyncio.wait(
                [future for _, future, _ in sent], timeout=self.config.publish_timeout
            )
            for future in late:
                future.cancel()  # frees the client's slot; a late ack is then ignored
        acked = 0
        now = self.clock()
        for item, future, sent_at in sent:
            if future.cancelled():
                failure = failure or TimeoutError("no acknowledgement in time")
                break
            if (refused := future.exception()) is not None:
                failure = refused
                break
            ack = future.result()
            self._settle(item)
            self.published += 1
            self.duplicates += bool(ack.duplicate)
            self.publish_seconds.observe(now - sent_at)
            self.delivery_seconds.observe(now - item.offered_at)
            acked += 1
        return acked, failure

    async def _wait_before_probe(self) -> None:
        """Sleep one backoff delay; then, while not connected, until the client reconnects."""
        await asyncio.sleep(self._backoff.next_delay())
        while self._nc is not None and not self._nc.is_connected:
            self._reconnected.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconnected.wait(), self.config.retry_cap)

    def _open_breaker(self, error: str) -> None:
        if self.breaker is Breaker.OPEN:
            log.info("nats_retrying", error=error, attempt=self._backoff.attempts)
            return
        self.breaker = Breaker.OPEN
        self.outages += 1
        self._down_since = self.clock()
        log.warning(
            "nats_unavailable",
            error=error,
            buffered=self.buffered,
            next=f"events wait in the buffer ({self.config.buffer:,} at most, then dropped "
            "and counted) and are retried with the same Nats-Msg-Id; the sync goes on",
        )

    def _close_breaker(self) -> None:
        self._backoff.reset()
        if self.breaker is Breaker.CLOSED:
            return
        self.breaker = Breaker.CLOSED
        down = self.clock() - self._down_since if self._down_since is not None else 0.0
        log.info(
            "nats_available",
            down_s=round(down, 1),
            buffered=self.buffered,
            next="delivering the buffered events",
        )

    # -- the connection and the stream -----------------------------------------------------

    async def _connect(self) -> None:
        """Connect, trying forever (the client's own loop): NATS may come up after us."""

        async def disconnected() -> None:
            self.connected = False
            if not self._stopped_connection:
                log.info("nats_disconnected", next="reconnecting, without limit")

        async def reconnected() -> None:
            self.connected = True
            self._last_client_error = ""  # the next outage's first error is logged again
            self._reconnected.set()
            log.info("nats_reconnected")

        async def errored(exc: Exception) -> None:
            # Called on every failed attempt: one line per change of error, not per second.
            text = _describe(exc)
            if text != self._last_client_error:
                self._last_client_error = text
                log.warning("nats_client_error", error=text)

        self._nc = await nats.connect(
            self.config.servers,
            name=self.config.name,
            max_reconnect_attempts=-1,  # never give up (the default stops after 60)
            reconnect_time_wait=self.config.reconnect_wait,
            connect_timeout=self.config.connect_timeout,
            ping_interval=self.config.ping_interval,
            max_outstanding_pings=2,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=errored,
        )
        self.connected = True
        self._last_client_error = ""
        self._js = self._nc.jetstream(timeout=self.config.publish_timeout)
        log.info("nats_connected", servers=self.config.servers, stream=self.config.stream)

    async def _ensure_stream(self) -> bool:
        """Create the stream, or bring its subjects and limits to the settings'."""
        assert self._js is not None
        cfg = self.config
        try:
            try:
                info = await self._js.stream_info(cfg.stream)
            except nats.js.errors.NotFoundError:
                await self._js.add_stream(
                    StreamConfig(
                        name=cfg.stream,
                        subjects=cfg.stream_subjects,
                        max_age=cfg.max_age,
                        duplicate_window=cfg.duplicate_window,
                    )
                )
                log.info("nats_stream_created", stream=cfg.stream, subjects=cfg.stream_subjects)
            else:
                have = info.config
                subjects = list(have.subjects or [])
                subjects += [s for s in cfg.stream_subjects if s not in subjects]
                if (
                    subjects != (have.subjects or [])
                    or not _same_seconds(have.max_age, cfg.max_age)
                    or not _same_seconds(have.duplicate_window, cfg.duplicate_window)
                ):
                    await self._js.update_stream(
                        have.evolve(
                            subjects=subjects,
                            max_age=cfg.max_age,
                            duplicate_window=cfg.duplicate_window,
                        )
                    )
                    log.info("nats_stream_updated", stream=cfg.stream, subjects=subjects)
        except nats.js.errors.APIError as exc:
            # A refusal (subjects taken by another stream, a bad limit) needs a person.
            log.error(
                "nats_stream_refused",
                stream=cfg.stream,
                error=_describe(exc),
                next="fix LIVE_NATS_STREAM / LIVE_NATS_SUBJECT_PREFIX or the stream; retrying",
            )
            return False
        except _NATS_ERRORS as exc:
            log.info("nats_stream_unreachable", stream=cfg.stream, error=_describe(exc))
            return False
        except Exception:  # an answer the client could not read: retried like an outage
            log.exception("nats_stream_check_failed", stream=cfg.stream)
            return False
        self._stream_ready = True
        return True

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        self._stopped_connection = True
        if nc is None or nc.is_closed:
            return
        try:
            await asyncio.wait_for(nc.close(), self.config.connect_timeout + 1)
        except _NATS_ERRORS as exc:
            log.info("nats_close_failed", error=_describe(exc))
        self.connected = False


def _fields(item: _Pending) -> dict[str, Any]:
    """What a log line says about a dropped event; read back from its JSON when it came
    encoded (a rare line: the cost does not matter)."""
    event = item.event
    if event is None:
        try:
            event = MatchedEvent.from_json(item.payload)
        except ValueError:  # orjson.JSONDecodeError is one
            return {"subscription": item.subscription, "position": item.position}
    return event_fields(event)


def _same_seconds(have: float | None, want: float) -> bool:
    return have is not None and abs(have - want) < 1e-3


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name
