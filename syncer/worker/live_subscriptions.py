"""The worker's side of live subscriptions: match every acknowledged change, deliver.

    pipeline ─ batch_written ─▶ bounded queue ─▶ matching task: activation, Matcher.match
               never waits      full: dropped,      │ per matched live subscription
                                counted             ├─ nats ──▶ NatsDelivery.offer (bounded)
                                                    └─ websocket ─▶ bounded queue ─▶ send task
                                                                     group_send(live_group(id))

Per owned sync subscription, a `Matcher` holds its unexpired live subscriptions. `refresh`
(every control interval) reads one fingerprint per sync subscription (count and a sum of
id hashes, aggregated in PostgreSQL); when it changed, it diffs the id sets (deletes and
expiry are hard deletes) and reads only the new rows. A live subscription's filter,
delivery and gateway never change after registration. Matching runs after OpenSearch
acknowledged a batch: a client is told only what the index already shows. Changes found
stale (a replay after a restart) are matched too: their events carry the same
`Nats-Msg-Id`, so JetStream keeps one copy.

Websocket messages are numbered per live subscription under this run's `epoch`
(syncer.live.events.live_message): the socket turns a missing number into a `dropped`
summary, so events lost on the way (this queue, the Channels layer) are never silent.

NATS delivery starts on the first refresh that finds a live subscription delivered over
NATS: a deployment without any never opens a connection (nor logs its absence).

The checkpoint waits for NATS (`MatchingObserver.lowest_unsettled`, the pipeline's
`CheckpointHold`): a change still queued for matching, or whose events JetStream has not
acknowledged, keeps its sync subscription's checkpoint below it, so a kill -9 loses none;
the restarted worker matches them again. Websocket deliveries hold nothing: the Channels
layer keeps no message for a client that is not connected, so waiting would buy nothing.
A sync subscription without NATS live subscriptions is never held.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from django.db import DatabaseError, close_old_connections, connections

from syncer import conf
from syncer.engine.changes import Change, Op, Transaction
from syncer.engine.pipeline import BatchObserver, BatchReport, Observer
from syncer.engine.telemetry import Histogram
from syncer.errors import ConsoleDatabaseUnavailable, FilterError
from syncer.live.delivery import Delivery
from syncer.live.events import MatchedEvent, live_group, live_message
from syncer.live.nats_process import nats_delivery
from syncer.worker import state

if TYPE_CHECKING:
    from syncer.engine.matching import Filter, Matcher

log = structlog.get_logger(__name__)
T = TypeVar("T")

CANDIDATE_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
"""Filters evaluated per change."""
MATCH_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)
"""Seconds one change's matching takes (activation, index, CEL)."""
WEBSOCKET_RETRY_AFTER = 1.0
"""Seconds a failed group_send keeps websocket delivery quiet (Redis down) before retrying."""


@dataclass(slots=True)
class _Known:
    filter: str
    delivery: str
    gateway_id: str
    sent: int = 0
    """Websocket events numbered so far (`seq` of syncer.live.events.live_message)."""


@dataclass(slots=True)
class _Watched:
    """One owned sync subscription's live subscriptions."""

    name: str
    matcher: Matcher[uuid.UUID] | None = None
    """Made with the first live subscription: a worker without any never loads CEL."""
    known: dict[uuid.UUID, _Known] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    """known's keys as text, which the diff compares with the ids it reads as text."""
    fields: Mapping[str, str] | None = None
    """Its document fields' source types, once known (numeric compares as a number)."""
    fields_asked_at: float = float("-inf")
    fingerprint: state.Fingerprint | None = None
    """Of the live subscriptions loaded; None before the first load."""
    holds: bool = False
    """Whether one of them is delivered over NATS: only those hold the checkpoint."""

    def count(self) -> int:
        """Live subscriptions matched."""
        return 0 if self.matcher is None else len(self.matcher)


class LiveMatching:
    """Matches acknowledged changes against live subscriptions and delivers the events.

    The counters are plain attributes, read by the worker's metrics at scrape time.
    """

    def __init__(
        self,
        *,
        queue_size: int,
        send_timeout: float,
        layer: Any = None,
        nats_config: Callable[[], conf.NatsConfig] = conf.nats,
        fields_of: Callable[[int], Mapping[str, str] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layer = layer
        """The Channels layer for websocket delivery; None: websocket events fail, counted."""
        self.send_timeout = send_timeout
        self.clock = clock
        self.nats: Delivery | None = None
        """Started on the first refresh that finds a live subscription delivered over NATS."""
        self._nats_config = nats_config
        self._fields_of = fields_of
        self._watched: dict[int, _Watched] = {}
        self._db = ThreadPoolExecutor(1, thread_name_prefix="live-subscriptions-db")
        self._changes: asyncio.Queue[tuple[int, Change]] = asyncio.Queue(maxsize=queue_size)
        self._unmatched: dict[int, deque[list[int]]] = {}
        """Per sync subscription, the changes queued and not matched yet: one [lowest
        position, count] per batch, in queue order (the queue is FIFO)."""
        self._websocket: asyncio.Queue[tuple[MatchedEvent, int]] = asyncio.Queue(maxsize=queue_size)
        self.epoch = secrets.token_hex(8)
        """This run's name on websocket messages: a restart's numbers are not a gap."""
        self._quiet_until = float("-inf")
        self.dropped = 0
        """Acknowledged changes not matched: the matching queue was full."""
        self.matched = 0
        """Changes matched (each against every live subscription of its sync subscription)."""
        self.evaluation_errors = 0
        """Filters that could not be evaluated on a change (counted as no match)."""
        self.invalid_filters = 0
        """Stored filters the worker could not compile (registration checks them first)."""
        self.expired = 0
        """Live subscriptions this worker's expiry loop removed."""
        self.failures = 0
        """Changes whose matching failed with an unexpected error (logged; a bug)."""
        self.deliveries: Counter[tuple[str, str]] = Counter()
        """Events by (channel, outcome): nats offered|dropped, websocket sent|dropped|failed."""
        self.candidates = Histogram(CANDIDATE_BUCKETS)
        self.match_seconds = Histogram(MATCH_BUCKETS)
        self.refresh_seconds = 0.0
        """How long the last refresh took (the query and the diff)."""

    async def _in_db(self, function: Callable[[], T]) -> T:
        """ORM work on this object's own database thread, not the worker's: the refresh
        every control interval must never delay a pipeline's checkpoint save."""

        def call() -> T:
            close_old_connections()  # survives a console database restart
            try:
                return function()
            except DatabaseError as exc:
                close_old_connections()
                raise ConsoleDatabaseUnavailable(f"console database: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._db, call)

    async def close(self) -> None:
        """Close the database thread's connection and the thread."""
        await asyncio.get_running_loop().run_in_executor(self._db, connections.close_all)
        self._db.shutdown(wait=False)

    def active(self) -> dict[str, int]:
        """Live subscriptions matched now, by sync subscription name."""
        return {watched.name: watched.count() for watched in self._watched.values()}

    # -- the live subscriptions ------------------------------------------------------------

    async def refresh(self, owned: Mapping[int, str]) -> None:
        """Bring each owned sync subscription's matcher (id to name) to its unexpired live
        subscriptions. One aggregate query tells which changed; only those are diffed by
        id, only new rows are read, and their filters compile off the event loop.
        Raises ConsoleDatabaseUnavailable."""
        started = time.perf_counter()
        prints = await self._in_db(lambda: state.live_subscription_fingerprints(list(owned)))
        for gone in set(self._watched) - set(owned):
            del self._watched[gone]
        for sub_id, name in owned.items():
            watched = self._watched.get(sub_id)
            if watched is None:
                watched = self._watched[sub_id] = _Watched(name)
            watched.name = name
            fingerprint = prints.get(sub_id, _EMPTY)
            if fingerprint != watched.fingerprint:
                await self._diff(sub_id, watched)
                watched.holds = any(k.delivery == "nats" for k in watched.known.values())
                # The one read before the diff: a change meanwhile shows at the next refresh.
                watched.fingerprint = fingerprint
        self.refresh_seconds = time.perf_counter() - started
        if self.nats is None and any(
            k.delivery == "nats" for w in self._watched.values() for k in w.known.values()
        ):
            self.nats = nats_delivery(self._nats_config())
            await self.nats.start()
        await self._ask_fields(owned)

    async def _diff(self, sub_id: int, watched: _Watched) -> None:
        texts: dict[str, Filter | FilterError] = {}
        if not watched.known:  # the first load: every row is new, read in one query
            rows = await self._in_db(lambda: state.live_subscription_rows_of(sub_id))
            for start in range(0, len(rows), _CHUNK):
                await self._add(watched, rows[start : start + _CHUNK], texts)
            return
        ids = await self._in_db(lambda: state.live_subscription_ids(sub_id))
        for text in watched.ids - ids:
            live_id = uuid.UUID(text)
            assert watched.matcher is not None  # it holds every known id
            watched.matcher.remove(live_id)
            del watched.known[live_id]
            watched.ids.discard(text)
        new = [uuid.UUID(text) for text in ids - watched.ids]
        for start in range(0, len(new), _CHUNK):
            chunk = new[start : start + _CHUNK]
            rows_of = await self._in_db(lambda: state.live_subscription_rows(chunk))  # noqa: B023
            await self._add(watched, list(rows_of.items()), texts)

    async def _add(
        self,
        watched: _Watched,
        rows: Sequence[tuple[uuid.UUID, state.LiveSubscriptionRow]],
        texts: dict[str, Filter | FilterError],
    ) -> None:
        """Compile the rows' filters off the event loop and add them to the matcher;
        `texts`, shared by the chunks of one load, holds each distinct text's result."""
        compiled = await asyncio.to_thread(_compile_all, rows, texts)
        for (live_id, row), result in zip(rows, compiled, strict=True):
            if isinstance(result, FilterError):
                self.invalid_filters += 1
                log.warning(
                    "live_subscription_filter_invalid",
                    live_subscription=str(live_id),
                    subscription=watched.name,
                    error=str(result),
                )
                continue
            if watched.matcher is None:
                from syncer.engine.matching.matcher import Matcher

                watched.matcher = Matcher()
            watched.matcher.add(live_id, result)
            watched.known[live_id] = _Known(row.filter, row.delivery, row.gateway_id)
            watched.ids.add(str(live_id))

    async def _ask_fields(self, owned: Mapping[int, str]) -> None:
        """Ask each watched sync subscription's field types, at most once a minute, off
        the database thread (the source may take seconds to answer)."""
        if self._fields_of is None:
            return
        now = self.clock()
        for sub_id, watched in self._watched.items():
            if not watched.known or now - watched.fields_asked_at < _FIELDS_EVERY:
                continue
            watched.fields_asked_at = now
            try:
                watched.fields = await asyncio.to_thread(self._fields_of, sub_id)
            except Exception as exc:  # matching goes on with the document's own values
                log.info("live_fields_unknown", subscription=owned[sub_id], error=str(exc))

    # -- from the pipelines: never waits ----------------------------------------------------

    def observer(self, subscription_id: int) -> MatchingObserver:
        return MatchingObserver(self, subscription_id)

    def offer(self, subscription_id: int, report: BatchReport) -> None:
        watched = self._watched.get(subscription_id)
        if watched is None or not watched.count():
            return
        queued, lowest = 0, None
        for change, _ in report.applied:
            try:
                self._changes.put_nowait((subscription_id, change))
            except asyncio.QueueFull:
                self.dropped += 1  # settled: counted, never matched
            else:
                queued += 1
                if lowest is None or change.version < lowest:
                    lowest = change.version
        if lowest is not None:
            self._unmatched.setdefault(subscription_id, deque()).append([lowest, queued])

    def lowest_unsettled(self, subscription_id: int) -> int | None:
        """The lowest position of the sync subscription's changes queued for matching (if
        it has NATS live subscriptions) or of its events NATS has not acknowledged."""
        watched = self._watched.get(subscription_id)
        if watched is None:
            return None
        lowest = None
        if watched.holds and (batches := self._unmatched.get(subscription_id)):
            lowest = min(position for position, _ in batches)  # a replay may go lower
        if self.nats is not None:
            sent = self.nats.unsettled_since(watched.name)
            if sent is not None and (lowest is None or sent < lowest):
                lowest = sent
        return lowest

    # -- the matching and websocket tasks ---------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Match and deliver until `stop`; then what is queued, within `send_timeout`."""
        sender = asyncio.create_task(self._send_websocket(), name="live websocket")
        try:
            while not stop.is_set():
                getting = asyncio.ensure_future(self._changes.get())
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {getting, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                stopping.cancel()
                if getting not in done:
                    getting.cancel()
                    break
                self._match_safely(*getting.result())
                # What queued meanwhile, at once: one change per turn of the event loop
                # would fall behind a busy pipeline's many callbacks.
                for _ in range(min(self._changes.qsize(), _DRAIN)):
                    self._match_safely(*self._changes.get_nowait())
            while not self._changes.empty():
                self._match_safely(*self._changes.get_nowait())
            if not self._websocket.empty():
                await asyncio.wait(
                    {asyncio.ensure_future(self._websocket.join())}, timeout=self.send_timeout
                )
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def stop_nats(self, timeout: float) -> None:
        if self.nats is not None:
            await self.nats.stop(timeout)

    def _match_safely(self, subscription_id: int, change: Change) -> None:
        """`match_once`, whose bug on one change must not end matching for all the others."""
        try:
            self.match_once(subscription_id, change)
        except Exception:
            self.failures += 1
            log.exception("live_matching_failed", key=change.doc_id, position=change.version)
        finally:  # its events, if any, are NATS's to settle now
            batches = self._unmatched[subscription_id]
            batches[0][1] -= 1
            if not batches[0][1]:
                batches.popleft()

    def match_once(self, subscription_id: int, change: Change) -> None:
        watched = self._watched.get(subscription_id)
        if watched is None or watched.matcher is None:
            return  # released meanwhile
        # Loaded with the first live subscription (`_add`): this import only looks it up.
        from syncer.engine.matching.activation import activation

        started = time.perf_counter()
        upsert = change.op is Op.UPSERT
        op = "upsert" if upsert else "delete"
        doc = change.doc if upsert else None
        result = watched.matcher.match(
            activation(doc, change.old, op, change.doc_id, change.version, watched.fields)
        )
        self.match_seconds.observe(time.perf_counter() - started)
        self.candidates.observe(result.candidates)
        self.matched += 1
        self.evaluation_errors += result.errors
        for live_id in result.ids:
            known = watched.known[live_id]
            event = MatchedEvent(
                live_subscription_id=live_id,
                gateway_id=known.gateway_id,
                subscription=watched.name,
                op="upsert" if upsert else "delete",
                key=change.doc_id,
                position=change.version,
                commit_time=change.commit_time,
                document=dict(doc) if doc is not None else None,
            )
            self._deliver(known, event)

    def _deliver(self, known: _Known, event: MatchedEvent) -> None:
        if known.delivery == "nats":
            offered = self.nats is not None and self.nats.offer(event)
            self.deliveries["nats", "offered" if offered else "dropped"] += 1
            return
        # Numbered before the queue: a socket sees the ones dropped here as a gap too.
        known.sent += 1
        try:
            self._websocket.put_nowait((event, known.sent))
        except asyncio.QueueFull:
            self.deliveries["websocket", "dropped"] += 1

    async def _send_websocket(self) -> None:
        while True:
            event, sequence = await self._websocket.get()
            try:
                self.deliveries["websocket", await self._send(event, sequence)] += 1
            finally:
                self._websocket.task_done()

    async def _send(self, event: MatchedEvent, sequence: int) -> str:
        if self.layer is None or self.clock() < self._quiet_until:
            return "failed"
        live_id = event.live_subscription_id
        message = live_message(event.to_json().decode(), live_id.hex, self.epoch, sequence)
        try:
            await asyncio.wait_for(
                self.layer.group_send(live_group(live_id), message),
                self.send_timeout,
            )
        except Exception as exc:  # Redis down or slow: these events are lost, counted
            if self._quiet_until < self.clock() - WEBSOCKET_RETRY_AFTER:
                log.warning(
                    "live_websocket_send_failed",
                    error=str(exc) or type(exc).__name__,
                    hint="websocket live subscriptions get nothing until the channel layer "
                    "(REDIS_URL) answers; the sync is not affected",
                )
            self._quiet_until = self.clock() + WEBSOCKET_RETRY_AFTER
            return "failed"
        return "sent"


_EMPTY: state.Fingerprint = (0, Decimal(0))
_CHUNK = 10_000
"""Live subscriptions read and compiled at once: the event loop runs between two chunks."""
_DRAIN = 1000
"""Changes matched in one go before the task lets the pipelines run (about 25 ms at most)."""
_FIELDS_EVERY = 60.0
"""Seconds between two questions about a sync subscription's field types."""


def _compile_all(
    rows: Sequence[tuple[uuid.UUID, state.LiveSubscriptionRow]],
    by_text: dict[str, Filter | FilterError],
) -> list[Filter | FilterError]:
    """Each row's compiled filter, or its FilterError (registration checked them first;
    this is the rare text a newer engine version refuses), in the rows' order. Each
    distinct text is compiled once (`by_text` holds them): many live subscriptions share
    a text, and even a cache hit of `compile_filter` hashes the text and its pins."""
    from syncer.engine.matching.filters import compile_filter  # CEL loads here, off the loop

    compiled: list[Filter | FilterError] = []
    for _, row in rows:
        result = by_text.get(row.filter)
        if result is None:
            try:
                result = compile_filter(row.filter)
            except FilterError as exc:
                result = exc
            by_text[row.filter] = result
        compiled.append(result)
    return compiled


class MatchingObserver:
    """One pipeline's observer for live subscriptions: queues each acknowledged change,
    and holds the checkpoint below what is not delivered yet (a `CheckpointHold`)."""

    def __init__(self, matching: LiveMatching, subscription_id: int) -> None:
        self.matching = matching
        self.subscription_id = subscription_id

    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        """Nothing: `batch_written` carries the changes."""

    def batch_written(self, report: BatchReport) -> None:
        self.matching.offer(self.subscription_id, report)

    def lowest_unsettled(self) -> int | None:
        return self.matching.lowest_unsettled(self.subscription_id)


class Observers:
    """Several observers as one (the live monitor's and the live subscriptions')."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = list(observers)

    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        for observer in self.observers:
            observer.acknowledged(batch, at)

    def batch_written(self, report: BatchReport) -> None:
        for observer in self.observers:
            if isinstance(observer, BatchObserver):
                observer.batch_written(report)
