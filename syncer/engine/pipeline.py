"""One subscription's loop: read from the source, write to the sink, move the checkpoint.

    reader task: source.read ─▶ ChangeBuffer (bounded: pauses at pause_at)
                                     │
    writer:      take a batch ◀──────┘ ─▶ consolidate ─▶ fill unchanged values
                 ─▶ sink.write ─▶ per document: done | retry | dead letter
                 ─▶ dead letters saved ─▶ observers (the live monitor, live subscriptions)
                 ─▶ source.acknowledge + the checkpoint saved (below the hold's floor,
                    at most every `checkpoint_interval`: syncer.engine.checkpoints)

Reading and writing overlap: the next chunk is read while a bulk request is in
flight, and the buffer between them is what backpressure bounds. With
`bulk_concurrency` N > 1, up to N batches are written at once (`_write_concurrently`):
a batch touching a document of one still in flight waits for it, so two writes of one
document never race, and batches are acknowledged strictly in the order they were
taken, so a later bulk finishing first never moves the checkpoint past an earlier one.

Invariant: a position is acknowledged only after the sink has accepted (or found
stale) every change at or before it, or the change is safely in the dead-letter
queue. Transient failures are retried with backoff and hold the checkpoint back.
A whole request refused (OpenSearch down, 5xx, 429) opens the circuit breaker: the
reader stops, the batch is held and retried until OpenSearch is back, and nothing
is dead-lettered for it. Any failure of the source ends the session: the pipeline
reconnects with backoff and the source replays from the checkpoint, which versioned
writes make harmless.

A `CheckpointHold` (live subscriptions delivered over NATS) extends "acknowledged" to
deliveries that start after OpenSearch: each batch is handed to the observers first, and
the checkpoint then moves only to the highest batch end below the lowest position whose
delivery is unsettled. Held batches are released by later acknowledgements and by a
re-check every `hold_recheck` seconds, so the checkpoint catches up without new changes.
A batch held longer than `hold_seconds` is released anyway (counted, logged once per
episode), and so is every later one until all deliveries have settled: a long NATS
outage must neither keep the source's WAL forever nor slow the sync for all its length.
Snapshot completion is never held: `snapshot_completed` saves its position at once (the
copied rows are documents, not events a client waits for in order).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from syncer.engine.backoff import Backoff
from syncer.engine.buffer import BufferClosed, ChangeBuffer
from syncer.engine.changes import Change, Op, Position, Transaction, TxKind
from syncer.engine.checkpoints import CheckpointSaver
from syncer.engine.consolidate import consolidate
from syncer.engine.interfaces import (
    CheckpointHold,
    DeadLetterQueue,
    NoticeKind,
    Rejected,
    Sink,
    Source,
    StateStore,
)
from syncer.engine.outcomes import ItemResult, Outcome, unwritable
from syncer.engine.progress import CopyFigures, CopyMeter
from syncer.engine.retry import Decision, RetryPolicy
from syncer.engine.telemetry import BulkOutcome, ErrorKind, ProgressWindow, Telemetry, error_kind
from syncer.errors import ConfigError, RequestTooLarge, SinkUnavailable, UnavailableError

_COPIES = (TxKind.SNAPSHOT_CHUNK, TxKind.COPY_CHUNK)

log = structlog.get_logger(__name__)


class Status:
    """Status names, as stored on the subscription."""

    STARTING = "starting"
    SNAPSHOTTING = "snapshotting"
    STREAMING = "streaming"
    CAUGHT_UP = "caught_up"
    BACKPRESSURE = "backpressure"
    SINK_UNAVAILABLE = "sink_unavailable"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    STOPPED = "stopped"
    PAUSED = "paused"


CAUGHT_UP_LAG = 1.0
"""Seconds of lag a caught-up subscription may gather before it shows as streaming."""


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    batch_max_size: int = 1000
    batch_max_age: float = 5.0
    pause_at: int = 5000
    resume_at: int = 2500
    max_attempts: int = 3
    """Transient failures of one document before it is dead-lettered."""
    bulk_concurrency: int = 1
    """Batches written at once. Above 1, a batch touching a document of one still in
    flight waits for it, and batches are acknowledged in order (see `_write_concurrently`)."""
    poll_interval: float = 1.0
    """The longest the reader waits on an idle source before looking again (a streaming
    source wakes it as soon as a change arrives)."""
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    warnings_every: float = 30.0
    progress_log_every: float = 60.0
    """Seconds between `sync_progress` log lines (the first comes with the first flush)."""
    hold_seconds: float = 30.0
    """Longest a batch's checkpoint waits for the hold's deliveries; past it, the
    checkpoint moves on anyway (0: it never waits)."""
    hold_recheck: float = 0.2
    """Seconds between looks at a held checkpoint when no new batch comes to move it."""
    checkpoint_interval: float = 0.0
    """Seconds at most between checkpoint saves; batches in between move it in memory
    and the latest is saved (0: every batch's; see syncer.engine.checkpoints)."""


@dataclass
class PipelineStats:
    transactions: int = 0
    written: int = 0
    stale: int = 0
    dead_lettered: int = 0
    superseded: int = 0
    retries: int = 0
    outages: int = 0
    snapshot_rows: int = 0
    swept: int = 0
    resnapshots: int = 0
    snapshot_resumes: int = 0
    """Times an interrupted copy went on from its cursor instead of the first row."""
    data_errors: int = 0
    sink_available: bool = True
    checkpoint: int | None = None
    """The position saved last (or resumed from): where a restart would go on."""
    last_ack_at: float | None = None
    oldest_unacked_commit: float | None = None
    hold_expired: int = 0
    """Times the checkpoint moved past unsettled deliveries: the hold bound ran out."""
    hold_expired_changes: int = 0
    """Changes the checkpoint moved past while their delivery was unsettled (lost if the
    worker crashes before they are delivered)."""

    def lag(self, now: float) -> float:
        """Seconds since the commit of the oldest change not yet acknowledged."""
        if self.oldest_unacked_commit is None:
            return 0.0
        return max(0.0, now - self.oldest_unacked_commit)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one acknowledged batch did to the index, for observers (the live monitor)."""

    number: int
    """The pipeline's batch number: 1, 2, ... from its start."""
    applied: Sequence[tuple[Change, Outcome]]
    """Changes OpenSearch acknowledged, with their outcome: OK or STALE."""
    dead_lettered: Sequence[Rejected]
    """Changes rejected for good, now in the dead-letter queue."""
    at: float
    """When OpenSearch acknowledged the batch (its checkpoint is saved or held next)."""


class Observer(Protocol):
    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        """Called once OpenSearch acknowledged a batch, just before its checkpoint is
        saved (or held, see `CheckpointHold`)."""


@runtime_checkable
class BatchObserver(Observer, Protocol):
    """An observer that also wants each batch's written and dead-lettered changes."""

    def batch_written(self, report: BatchReport) -> None:
        """Called right after `acknowledged`; must not block (the sync waits for it)."""


class Pipeline:
    """Run one subscription until `stop` is set; survive every failure but a bug in us."""

    def __init__(
        self,
        config: PipelineConfig,
        source: Source,
        sink: Sink,
        store: StateStore,
        dead_letters: DeadLetterQueue,
        *,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        hold: CheckpointHold | None = None,
    ) -> None:
        self.config = config
        self.source, self.sink, self.store = source, sink, store
        self.dead_letters = dead_letters
        self.clock = clock
        self.observer = observer
        self.hold = hold
        """Deliveries the checkpoint waits for (None: it moves as soon as OpenSearch acks)."""
        self._held: collections.deque[_Held] = collections.deque()
        """Batches acknowledged by OpenSearch whose checkpoint the hold keeps, in order."""
        self._saving = asyncio.Lock()
        """One checkpoint decision at a time: a batch's and the re-check's."""
        self._holding = asyncio.Event()
        """Set when a checkpoint is held: the recheck sleeps on it while none is."""
        self._hold_ran_out_at: float | None = None
        """When the current episode of releases past the hold began; None: none."""
        # Only a BatchObserver makes the writer keep what each batch did.
        self._reporter = observer if isinstance(observer, BatchObserver) else None
        self._batches = 0
        self._applied: list[tuple[Change, Outcome]] = []
        self._rejected: list[Rejected] = []
        self.stats = PipelineStats()
        self.telemetry = Telemetry()
        self.status = Status.STOPPED
        self.policy = RetryPolicy(config.max_attempts)
        self._message = ""
        self._buffer = ChangeBuffer(config.pause_at, config.resume_at)
        self._backoff = Backoff(config.backoff_base, config.backoff_cap)
        self._log = log.bind(subscription=config.name)
        self._checkpoints = CheckpointSaver(
            store, config.checkpoint_interval, clock, self._checkpoint_saved, self._log
        )
        self._snapshotting = False
        self._copy = CopyMeter()
        self._one_pass = ""
        """Why the copy under way is one pass, if it is."""
        self._down_since = 0.0
        """When OpenSearch last became unavailable (the clock's time)."""
        self._progress_at = 0.0
        self._warnings: list[str] = []
        self._warnings_at = 0.0
        self._window = ProgressWindow(clock())
        self._window_logged_at = float("-inf")

    @property
    def message(self) -> str:
        """The status message, as stored on the subscription."""
        return self._message

    @property
    def buffered(self) -> int:
        """Row changes read and not yet taken by the writer."""
        return self._buffer.size

    @property
    def buffer_peak(self) -> int:
        """The most row changes buffered in this session."""
        return self._buffer.peak

    @property
    def backpressure(self) -> bool:
        """Reading is paused until the writer drains the buffer to resume_at."""
        return self._buffer.paused

    def checkpoint_held_seconds(self, now: float) -> float:
        """How long the oldest batch acknowledged by OpenSearch has waited for its
        checkpoint (the hold's deliveries); 0 when none waits."""
        held = self._held
        return max(0.0, now - held[0].since) if held else 0.0

    def copy_figures(self) -> CopyFigures | None:
        """A resumable copy's progress while it runs; None otherwise."""
        return self._copy.figures() if self._snapshotting else None

    def staleness(self, now: float) -> float | None:
        """Seconds since the source last said it is complete; None before it has."""
        progressed = self.source.progressed_at()
        return None if progressed is None else max(0.0, now - progressed)

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until `stop` is set, reconnecting with backoff after any failure."""
        while not stop.is_set():
            halted: str | None = None
            try:
                await self._set_status(Status.STARTING, "connecting to the source and OpenSearch")
                await self._session(stop)
            except ConfigError as exc:
                self.telemetry.errors[error_kind(exc)] += 1
                if exc.retry:
                    await self._failed(Status.ERROR, str(exc), stop)
                else:
                    halted = str(exc)
            except UnavailableError as exc:
                self.telemetry.errors[error_kind(exc)] += 1
                await self._failed(Status.RECONNECTING, str(exc), stop)
            except Exception as exc:  # a bug must not take the other subscriptions down
                self.telemetry.errors[error_kind(exc)] += 1
                self._log.exception("pipeline_crashed")
                await self._failed(Status.ERROR, f"internal error: {exc!r}", stop)
            finally:
                self.telemetry.connected_at = None
                await self._close()
            if halted is not None:
                await self._halted(halted, stop)  # closed: nothing held on the source
        await self._set_status(Status.STOPPED, "stopped")

    async def _failed(self, status: str, message: str, stop: asyncio.Event) -> None:
        self.stats.oldest_unacked_commit = None
        self.telemetry.reconnects += 1
        delay = self._backoff.next_delay()
        self._log.warning(
            "pipeline_failed",
            status=status,
            error=message,
            retry_in_s=round(delay, 2),
            attempt=self._backoff.attempts,
        )
        await self._set_status(status, f"{message} (retrying in {delay:.0f} s)", error=message)
        await sleep_unless_stopped(stop, delay)

    async def _halted(self, message: str, stop: asyncio.Event) -> None:
        """Show an error only a change of the subscription can fix; wait for `stop`.

        Trying again would repeat the work that led to it (a whole snapshot copy) and fail
        the same way; the worker restarts the pipeline when the subscription changes.
        """
        self.stats.oldest_unacked_commit = None
        self._log.error("pipeline_halted", error=message)
        await self._set_status(
            Status.ERROR,
            f"{message} (not retried: waiting for the subscription to change)",
            error=message,
        )
        await stop.wait()

    # -- a session: from connecting to the first failure or the stop ----------------

    async def _session(self, stop: asyncio.Event) -> None:
        # What was buffered is replayed by the source from the checkpoint.
        self._buffer = ChangeBuffer(self.config.pause_at, self.config.resume_at)
        self._held.clear()  # replayed too, and acknowledged again
        await self.sink.open()
        resume = await self.store.load()
        self.stats.checkpoint = resume.checkpoint
        self._checkpoints.resumed(resume.checkpoint)
        await self.source.open(resume)
        self.telemetry.connected_at = self.clock()
        self._snapshotting = not resume.snapshot_done and resume.snapshot_mode == "index"
        self._copy.reset()  # the rate is this session's
        self._one_pass = ""
        if self._snapshotting:
            await self._set_status(Status.SNAPSHOTTING, "copying existing rows")
        else:
            await self._set_status(Status.STREAMING, "streaming changes")
        reader = asyncio.create_task(self._read(stop), name=f"read {self.config.name}")
        recheck = None
        if self.hold is not None:
            recheck = asyncio.create_task(self._recheck_hold(), name=f"hold {self.config.name}")
        try:
            await self._write_all()
            await self._checkpoints.flush()  # stopping: the last positions written
        finally:
            self._checkpoints.cancel()
            if recheck is not None:
                recheck.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recheck
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, BufferClosed):
                await reader

    async def _read(self, stop: asyncio.Event) -> None:
        """Fill the buffer until `stop`; wait while it is full or the sink is down."""
        buffer = self._buffer
        try:
            while not stop.is_set():
                if buffer.paused or buffer.held:
                    await self._update_running_status()
                    await _until(stop, buffer.wait_for_room())
                    continue
                if self._held:
                    # Let go first of what was delivered, so the source may release it
                    # before it reads on.
                    await self._release_held(self.clock())
                transactions = await self.source.read(self.config.batch_max_size)
                read = sum(len(tx.changes) for tx in transactions)
                now = self.clock()
                await self._take_notices()
                if now - self._warnings_at >= self.config.warnings_every:
                    self._warnings_at = now
                    self._warnings = await self.source.warnings()
                for tx in transactions:
                    if tx.kind in _COPIES and not self._snapshotting:
                        # A source that lost its resume point copies the table again.
                        self._snapshotting = True
                        await self._set_status(
                            Status.SNAPSHOTTING,
                            "copying existing rows again: the source could not resume "
                            "from the checkpoint",
                        )
                    if tx.kind is TxKind.CHANGES and self.stats.oldest_unacked_commit is None:
                        self.stats.oldest_unacked_commit = tx.commit_time
                await buffer.put(transactions, read < self.config.batch_max_size, now)
                if not transactions:
                    if not buffer:
                        await self._idle(now)
                    # A streaming source wakes this as a change arrives; the interval
                    # bounds how long the loop stays away (warnings, status).
                    await _until(stop, self.source.wait(self.config.poll_interval))
        except BaseException as exc:
            await buffer.close(exc)
            raise
        await buffer.close()

    async def _take_notices(self) -> None:
        """Count, log and show what the source reported since the last read."""
        for notice in self.source.take_notices():
            if notice.kind is NoticeKind.DATA_ERROR:
                self.stats.data_errors += 1
                self.telemetry.errors[ErrorKind.SOURCE_DATA] += 1
                self._warnings_at = float("-inf")  # show the condition in the status now
            elif notice.kind is NoticeKind.COPY_RESUMED:
                self.stats.snapshot_resumes += 1
                continue  # the copy goes on, nothing is wrong (the source logged it)
            elif notice.kind is NoticeKind.COPY_ONE_PASS:
                self._one_pass = notice.message
                self._log.info("snapshot_one_pass", reason=notice.message)
                await self._set_status(Status.SNAPSHOTTING, self._copying())
                continue
            else:
                self.stats.resnapshots += 1
            self._log.warning("source_notice", kind=str(notice.kind), message=notice.message)
            await self._set_status(self.status, self._message, error=notice.message)

    async def _idle(self, now: float) -> None:
        if not self._snapshotting and self.stats.sink_available and not self._buffer.in_flight:
            await self._set_status(Status.CAUGHT_UP, "caught up")

    async def _write_all(self) -> None:
        """Take batches from the buffer and flush them until the reader closes it."""
        if self.config.bulk_concurrency > 1:
            await self._write_concurrently(self.config.bulk_concurrency)
            return
        while True:
            try:
                batch = await self._buffer.take(
                    self.config.batch_max_size, self.config.batch_max_age, self.clock
                )
            except BufferClosed:
                return  # stopped, and everything read is written
            await self._flush(batch)
            await self._buffer.acknowledged()

    async def _write_concurrently(self, limit: int) -> None:
        """Keep up to `limit` batches writing; acknowledge them in the order taken.

        A finished batch waits at the head of the line behind any earlier one still
        writing (or retrying, or waiting out an outage): its position is only
        acknowledged once all before it are. A batch whose documents overlap a batch in
        flight starts writing only after that one has finished writing.
        """
        flights: collections.deque[_Flight] = collections.deque()
        taking: asyncio.Future[list[Transaction]] | None = None
        closed = False
        try:
            while flights or not closed:
                if taking is None and not closed and len(flights) < limit:
                    taking = asyncio.ensure_future(
                        self._buffer.take(
                            self.config.batch_max_size, self.config.batch_max_age, self.clock
                        )
                    )
                waiting: set[asyncio.Future[Any]] = {flights[0].task} if flights else set()
                if taking is not None:
                    waiting.add(taking)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                while flights and flights[0].task.done():
                    flight = flights.popleft()
                    await self._acknowledge_flight(flight)
                if taking is not None and taking.done():
                    took, taking = taking, None
                    try:
                        batch = took.result()
                    except BufferClosed:
                        closed = True  # stopped: what is in flight is written, then we end
                        continue
                    flights.append(self._launch(batch, flights))
        finally:
            pending = [f.task for f in flights] + ([taking] if taking is not None else [])
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, BufferClosed, Exception):
                    await task

    def _launch(self, batch: list[Transaction], flights: Sequence[_Flight]) -> _Flight:
        changes = consolidate(batch)
        documents = {c.doc_id for c in changes} | {c.fill_from for c in changes if c.fill_from}
        after = [f.task for f in flights if not f.documents.isdisjoint(documents)]
        flight = _Flight(batch, documents, self.clock())
        context = contextvars.copy_context()
        context.run(_batch_report.set, flight)  # what this batch applied and dead-lettered
        flight.task = asyncio.get_running_loop().create_task(
            self._write_batch(changes, after), context=context
        )
        return flight

    async def _write_batch(
        self, changes: list[Change], after: Sequence[asyncio.Future[Any]]
    ) -> int:
        """One batch's writes, once the batches in flight with its documents are done."""
        if after:
            await asyncio.wait(after)
        await self._fill_missing(changes)
        changes = await self._refuse_unwritable(changes)
        size = self.config.batch_max_size
        for offset in range(0, len(changes), size):
            await self._write_sized(changes[offset : offset + size])
        return len(changes)

    async def _acknowledge_flight(self, flight: _Flight) -> None:
        written = flight.task.result()  # a failure ends the session, as with one at a time
        self._applied, self._rejected = flight.applied, flight.rejected
        await self._finish(flight.batch, written, flight.started)
        await self._buffer.acknowledged()

    # -- writing one batch -------------------------------------------------------------

    async def _flush(self, batch: list[Transaction]) -> None:
        started = self.clock()
        if self._reporter is not None:
            self._applied, self._rejected = [], []
        written = await self._write_batch(consolidate(batch), ())
        await self._finish(batch, written, started)

    async def _finish(self, batch: list[Transaction], written: int, started: float) -> None:
        """A batch is written: acknowledge it, then count, time and log it."""
        self._batches += 1
        await self._acknowledge(batch)
        self._backoff.reset()
        now = self.clock()
        seconds = max(0.0, now - started)
        self.telemetry.flush_seconds.observe(seconds)
        self._log.debug(
            "batch_flushed",
            transactions=len(batch),
            changes=written,
            ms=round(seconds * 1000, 1),
        )
        self._log_progress(len(batch), written, seconds, now)

    def _log_progress(self, transactions: int, changes: int, seconds: float, now: float) -> None:
        """Log what was flushed lately, once per `progress_log_every` seconds."""
        self._window.add(transactions, changes, seconds)
        if now - self._window_logged_at < self.config.progress_log_every:
            return
        self._log.info(
            "sync_progress",
            **self._window.fields(now),
            written=self.stats.written,
            stale=self.stats.stale,
            dead_lettered=self.stats.dead_lettered,
            lag_s=round(self.stats.lag(now), 3),
            buffer=self.buffered,
            status=self.status,
        )
        self._window = ProgressWindow(now)
        self._window_logged_at = now

    async def _write_sized(self, changes: Sequence[Change]) -> None:
        """Write `changes`, halving the request while OpenSearch finds it too large."""
        try:
            await self._write(changes)
        except RequestTooLarge as exc:
            if len(changes) == 1:
                result = ItemResult(Outcome.PERMANENT, 413, "request_too_large", str(exc))
                await self._dead_letter([Rejected(changes[0], result, 1)])
                return
            half = len(changes) // 2
            self._log.warning("bulk_too_large", changes=len(changes), split_into=half)
            await self._write_sized(changes[:half])
            await self._write_sized(changes[half:])

    async def _write(self, changes: Sequence[Change]) -> None:
        """Write until every change is done or dead-lettered; outages are waited out."""
        pending = list(changes)
        attempts = [0] * len(pending)
        backoff = Backoff(self.config.backoff_base, self.config.backoff_cap)
        while pending:
            try:
                results = await self.sink.write(pending)
            except SinkUnavailable as exc:
                self._count_bulk(BulkOutcome.UNAVAILABLE)
                await self._sink_down(str(exc), len(pending), backoff)
                continue
            except RequestTooLarge as exc:
                self._count_bulk(BulkOutcome.TOO_LARGE)
                self.telemetry.errors[error_kind(exc)] += 1
                raise
            outcomes = [r.outcome for r in results]
            if self.policy.is_outage(outcomes):
                self._count_bulk(BulkOutcome.UNAVAILABLE)
                reason = _first_reason(results)
                await self._sink_down(
                    f"OpenSearch refused every document of the request: {reason}",
                    len(pending),
                    backoff,
                )
                continue
            await self._sink_up()
            retry: list[Change] = []
            retry_attempts: list[int] = []
            rejected: list[Rejected] = []
            written: list[Change] = []
            applied = self._report().applied if self._reporter is not None else None
            for change, result, tries in zip(pending, results, attempts, strict=True):
                decision = self.policy.decide(result.outcome, tries + 1)
                if decision is Decision.DONE:
                    written.append(change)
                    if applied is not None:
                        applied.append((change, result.outcome))
                    self.telemetry.changes[str(change.op)] += 1
                    if result.outcome is Outcome.OK:
                        self.stats.written += 1
                    else:
                        self.stats.stale += 1
                elif decision is Decision.RETRY:
                    retry.append(change)
                    retry_attempts.append(tries + 1)
                else:
                    rejected.append(Rejected(change, result, tries + 1))
            self._count_bulk(BulkOutcome.PARTIAL if retry or rejected else BulkOutcome.OK)
            self.telemetry.errors[ErrorKind.DOCUMENT_TRANSIENT] += len(retry)
            if rejected:
                await self._dead_letter(rejected)
            if written:
                self.stats.superseded += await self.dead_letters.supersede(written)
            pending, attempts = retry, retry_attempts
            if pending:
                delay = backoff.next_delay()
                self.stats.retries += 1
                self._log.warning(
                    "documents_retrying",
                    count=len(pending),
                    retry_in_s=round(delay, 2),
                    error=_first_reason([r for r in results if r.outcome is Outcome.TRANSIENT]),
                )
                await asyncio.sleep(delay)

    def _report(self) -> _Report:
        """Where the batch being written keeps what it did: its own when several are in
        flight (set per task), else the pipeline's lists."""
        return _batch_report.get(None) or _Report(self._applied, self._rejected)

    def _count_bulk(self, outcome: str) -> None:
        self.telemetry.bulk_requests[outcome] += 1
        if outcome == BulkOutcome.UNAVAILABLE:
            self.telemetry.errors[ErrorKind.BULK_REFUSED] += 1

    async def _sink_down(self, error: str, holding: int, backoff: Backoff) -> None:
        """Open the circuit breaker: stop reading, hold the batch, wait, try again."""
        checkpoint = self.stats.checkpoint
        held = f"checkpoint held at {'none yet' if checkpoint is None else checkpoint}"
        if self.stats.sink_available:
            self.stats.outages += 1
            self._down_since = self.clock()
            self._log.warning(
                "sink_unavailable",
                error=error,
                holding=holding,
                checkpoint=checkpoint,
                next=f"reading paused, {holding:,} changes held and retried with backoff "
                f"until OpenSearch answers; {held}",
            )
        self.stats.sink_available = False
        await self._buffer.hold(True)
        delay = backoff.next_delay()
        self.stats.retries += 1
        # Each line says what is wrong too: the first one may be far up the log by now.
        self._log.info(
            "sink_retrying",
            error=error,
            retry_in_s=round(delay, 2),
            attempt=backoff.attempts,
            holding=holding,
            checkpoint=checkpoint,
            next=f"retrying in {delay:.1f} s; {held}",
        )
        await self._set_status(
            Status.SINK_UNAVAILABLE,
            f"OpenSearch unavailable: {error}; reading paused, holding {holding:,} changes "
            f"(retrying in {delay:.0f} s)",
            error=error,
        )
        await asyncio.sleep(delay)

    async def _sink_up(self) -> None:
        if self.stats.sink_available:
            return
        self.stats.sink_available = True
        await self._buffer.hold(False)
        self._log.info(
            "sink_available",
            down_s=round(self.clock() - self._down_since, 1),
            next="writing the held changes; reading resumes",
        )
        if self._snapshotting:
            await self._set_status(
                Status.SNAPSHOTTING, f"{self._copying()} (OpenSearch is reachable again)"
            )
        else:
            await self._update_running_status()

    async def _dead_letter(self, rejected: list[Rejected]) -> None:
        # Saved before the checkpoint moves past them: a crash in between replays them.
        await self.dead_letters.put(rejected)
        self.stats.dead_lettered += len(rejected)
        if self._reporter is not None:
            self._report().rejected.extend(rejected)
        self.telemetry.errors[ErrorKind.DOCUMENT_REJECTED] += len(rejected)
        for item in rejected:
            self._log.error(
                "document_dead_lettered",
                doc_id=item.change.doc_id,
                op=str(item.change.op),
                version=item.change.version,
                attempts=item.attempts,
                status=item.result.status,
                error_type=item.result.error_type,
                reason=item.result.reason,
            )
        last = rejected[-1]
        message = (
            f"{len(rejected)} document(s) dead-lettered, last {last.change.doc_id!r}: "
            f"{last.result.status} {last.result.error_type}: {last.result.reason}"
        )
        await self._set_status(self.status, self._message, error=message)

    async def _fill_missing(self, changes: list[Change]) -> None:
        """Carry unchanged TOAST values over from the indexed document, else the source."""
        needy = [c for c in changes if c.missing]
        if not needy:
            return
        indexed = await self.sink.fetch(sorted({c.fill_from or c.doc_id for c in needy}))
        for change in needy:
            _fill(change, indexed.get(change.fill_from or change.doc_id))
        still = [c for c in needy if c.missing]
        if still:
            # The row as it is now, under the document's own key (after a key change the
            # old key's row is gone), else under the key the values came from.
            keys = {c.key for c in still} | {c.fill_key for c in still if c.fill_key}
            rows = await self.source.fetch_rows(sorted(keys, key=repr))
            for change in still:
                _fill(change, rows.get(change.key))
                if change.missing and change.fill_key:
                    _fill(change, rows.get(change.fill_key))
        # What is still missing makes the change unwritable: _refuse_unwritable.

    async def _refuse_unwritable(self, changes: list[Change]) -> list[Change]:
        """Dead-letter the changes OpenSearch must never be sent; return the others.

        A delete of an id too long for OpenSearch is done already: no such document can
        be in the index. It still supersedes the dead letter of that document's upsert.
        """
        sendable: list[Change] = []
        refused: list[Rejected] = []
        gone: list[Change] = []
        for change in changes:
            result = unwritable(change)
            if result is None:
                sendable.append(change)
            elif change.op is Op.DELETE:
                gone.append(change)
            else:
                refused.append(Rejected(change, result, 1))
        if refused:
            await self._dead_letter(refused)
        if gone:
            self.stats.superseded += await self.dead_letters.supersede(gone)
        return sendable

    async def _acknowledge(self, batch: Sequence[Transaction]) -> None:
        position = None
        source_state = None  # the latest in the batch goes with its highest position
        changes = 0
        commits: list[float] = []  # of the source transactions: one per change, often
        for tx in batch:
            if tx.source_state is not None:
                source_state = tx.source_state
            kind = tx.kind
            if kind is TxKind.CHANGES:
                commits.append(tx.commit_time)
                changes += len(tx.changes)
                position = tx.position if position is None else max(position, tx.position)
            elif kind is TxKind.COPY_CHUNK:
                self.stats.snapshot_rows += len(tx.changes)
                position = tx.position if position is None else max(position, tx.position)
                if tx.copied is not None:
                    self._copy.update(tx.copied, self.clock())
            elif kind is TxKind.SNAPSHOT_CHUNK:
                self.stats.snapshot_rows += len(tx.changes)
            elif kind is TxKind.SNAPSHOT_END:
                await self._finish_snapshot(tx)
                position = tx.position
            else:
                position = tx.position if position is None else max(position, tx.position)
        self.stats.transactions += len(commits)
        now = self.clock()
        self.telemetry.commit_latency_seconds.observe_all([max(0.0, now - c) for c in commits])
        self.stats.last_ack_at = now
        self.stats.oldest_unacked_commit = self._buffer.oldest_commit
        # The observers first: the hold must know of this batch's changes (queued for
        # matching) before the checkpoint is decided.
        if self.observer is not None:
            self.observer.acknowledged(batch, now)
        if self._reporter is not None:
            report = BatchReport(self._batches, self._applied, self._rejected, now)
            self._applied, self._rejected = [], []
            self._reporter.batch_written(report)
        if position is not None:
            if self.hold is None:
                await self._save_checkpoint(position, source_state, now)
            else:
                self._held.append(_Held(position, source_state, changes, now))
                self._holding.set()
                await self._release_held(now)
        if self._snapshotting and now - self._progress_at >= 1.0:
            self._progress_at = now
            await self._set_status(Status.SNAPSHOTTING, self._copying())
        elif not self._snapshotting:
            await self._update_running_status()

    def _copying(self) -> str:
        """The status message of a copy under way."""
        figures = self._copy.figures()
        if self._one_pass:
            return (
                f"copying existing rows in one pass ({self._one_pass}; a restart starts it "
                f"over): {self.stats.snapshot_rows:,} done"
            )
        if figures is None:
            return f"copying existing rows: {self.stats.snapshot_rows:,} done"
        return f"copying existing rows, streaming changes meanwhile: {figures.describe()}"

    async def _finish_snapshot(self, end: Transaction) -> None:
        # A save under way or due would otherwise land after the completion, with the
        # copy's cursor in the source state.
        await self._checkpoints.flush()
        if end.sweep_below is not None:
            self.stats.swept = await self.sink.sweep(end.sweep_below)
            self._log.info("snapshot_swept", removed=self.stats.swept)
        await self.store.snapshot_completed(end.position, end.source_state)
        self._checkpoints.saved_elsewhere(end.position)
        self.stats.checkpoint = end.position  # saved with it, never held
        while self._held and self._held[0].position <= end.position:
            self._held.popleft()
        self._snapshotting = False
        self._one_pass = ""
        figures = self._copy.figures()
        self._copy.reset()
        self._log.info(
            "snapshot_completed",
            rows=self.stats.snapshot_rows,
            position=end.position,
            copied_rows=None if figures is None else figures.rows,
            resumes=None if figures is None else figures.resumes,
        )
        await self._set_status(
            Status.STREAMING,
            f"snapshot complete ({self.stats.snapshot_rows:,} rows); streaming changes",
        )

    # -- the checkpoint ------------------------------------------------------------------

    async def _save_checkpoint(self, position: Position, source_state: Any, now: float) -> None:
        await self.source.acknowledge(position)
        await self._checkpoints.save(position, source_state, now)

    def _checkpoint_saved(self, position: Position, now: float) -> None:
        self.stats.checkpoint = position
        self.telemetry.last_checkpoint_at = now

    async def _release_held(self, now: float) -> None:
        """Save the last held batch end below the hold's floor, or past it once held
        longer than `hold_seconds`. Cheap when nothing moves: one call to the hold."""
        assert self.hold is not None
        async with self._saving:
            held = self._held
            floor = self.hold.lowest_unsettled() if held or self._hold_ran_out_at else None
            if floor is None and self._hold_ran_out_at is not None:
                self._hold_recovered(now)
            count = at_risk = 0
            source_state = None
            # Once the bound ran out, nothing is held until every delivery settles: a
            # checkpoint trailing the outage would make a PostgreSQL source decode the
            # held WAL again on every read, for as long as the outage lasts.
            expired = self._hold_ran_out_at is not None
            for entry in held:
                if floor is not None and entry.position >= floor:
                    if not expired and now - entry.since < self.config.hold_seconds:
                        break
                    expired = True
                    at_risk += entry.changes
                count += 1
                if entry.source_state is not None:
                    source_state = entry.source_state
            if not count:
                return
            if at_risk:
                self._hold_ran_out(at_risk, held[0].since, floor, now)
            await self._save_checkpoint(held[count - 1].position, source_state, now)
            for _ in range(count):  # after the save: a failed one keeps their source state
                held.popleft()

    def _hold_ran_out(self, at_risk: int, since: float, floor: Position | None, now: float) -> None:
        self.stats.hold_expired_changes += at_risk
        if self._hold_ran_out_at is not None:
            return
        self._hold_ran_out_at = now
        self.stats.hold_expired += 1
        self._log.warning(
            "live_checkpoint_released",
            changes_at_risk=at_risk,
            held_s=round(now - since, 1),
            unsettled_from=floor,
            next=f"the checkpoint moves on after {self.config.hold_seconds:g} s "
            "(LIVE_CHECKPOINT_HOLD_SECONDS) although these changes' NATS events are not "
            "acknowledged yet: they are still delivered, but lost if the worker crashes "
            "first; until NATS has acknowledged everything, newer changes are not held "
            "either",
        )

    def _hold_recovered(self, now: float) -> None:
        assert self._hold_ran_out_at is not None
        self._log.info(
            "live_checkpoint_hold_recovered",
            released_s=round(now - self._hold_ran_out_at, 1),
            next="every delivery is settled: the checkpoint waits for them again",
        )
        self._hold_ran_out_at = None

    async def _recheck_hold(self) -> None:
        """Release held checkpoints as deliveries settle, when no batch comes to do it."""
        failing = False
        while True:
            if not self._held and self._hold_ran_out_at is None:
                # Nothing to release: wait for a held batch, not a timer (a timer per
                # pipeline, 5 times a second, was a visible part of an idle worker's CPU).
                self._holding.clear()
                await self._holding.wait()
            await asyncio.sleep(self.config.hold_recheck)
            try:
                await self._release_held(self.clock())
            except Exception as exc:  # the next batch saves it, or its failure ends the session
                if not failing:
                    self._log.warning("checkpoint_recheck_failed", error=str(exc))
                failing = True
            else:
                failing = False

    # -- status ------------------------------------------------------------------------

    def _running_status(self) -> str:
        """What a working session is doing, from the state of its buffer and sink."""
        if self._snapshotting:
            return Status.SNAPSHOTTING
        if not self.stats.sink_available:
            return Status.SINK_UNAVAILABLE
        if self._buffer.paused:
            return Status.BACKPRESSURE
        # Caught up: the source had nothing more pending and all of it is written.
        # Deciding it from the backlog keeps a trickle of changes from flipping the
        # status (and a log line, and a database write) on every batch; so does staying
        # caught up while what waits is younger than CAUGHT_UP_LAG: at 300 changes/s,
        # one arrives while the last is written (44 status writes a second, else).
        if self._buffer.source_idle and not self._buffer:
            return Status.CAUGHT_UP
        if self.status == Status.CAUGHT_UP and self.stats.lag(self.clock()) < CAUGHT_UP_LAG:
            return Status.CAUGHT_UP
        return Status.STREAMING

    async def _update_running_status(self) -> None:
        status = self._running_status()
        if status == Status.SNAPSHOTTING or status == Status.SINK_UNAVAILABLE:
            return  # their messages are set where they start
        messages = {
            Status.BACKPRESSURE: (
                f"buffer full ({self._buffer.size:,} changes): reading paused until "
                f"OpenSearch drains it to {self.config.resume_at:,}"
            ),
            Status.CAUGHT_UP: "caught up",
            Status.STREAMING: "streaming changes",
        }
        await self._set_status(status, messages[status])

    async def _set_status(self, status: str, message: str, error: str | None = None) -> None:
        if self._warnings and status in (Status.STREAMING, Status.CAUGHT_UP):
            message = f"{message}; warning: {'; '.join(self._warnings)}"
        if status == self.status and message == self._message and error is None:
            return
        if status != self.status:
            self._log.info("status_changed", status=status, message=message)
        self.status, self._message = status, message
        await self.store.set_status(status, message, error)

    async def _close(self) -> None:
        for closer in (self.source.close, self.sink.close):
            try:
                await closer()
            except Exception:
                self._log.exception("close_failed")


@dataclass(slots=True)
class _Report:
    """What one batch applied and dead-lettered, for its `BatchReport`."""

    applied: list[tuple[Change, Outcome]]
    rejected: list[Rejected]


class _Flight(_Report):
    """A batch being written while others are (bulk_concurrency > 1)."""

    task: asyncio.Task[int]

    def __init__(self, batch: list[Transaction], documents: set[str], started: float) -> None:
        super().__init__([], [])
        self.batch, self.started = batch, started
        self.documents = documents
        """Its documents' ids: a later batch touching one waits for this one's writes."""


_batch_report: contextvars.ContextVar[_Report] = contextvars.ContextVar("batch_report")


@dataclass(slots=True)
class _Held:
    """A batch OpenSearch acknowledged, its checkpoint kept back by the hold."""

    position: Position
    source_state: Any
    """The batch's latest source state (None: unchanged), saved with `position`."""
    changes: int
    since: float


def _fill(change: Change, previous: dict[str, object] | None) -> None:
    if previous is None or change.doc is None:
        return
    found = {column for column in change.missing if column in previous}
    for column in found:
        change.doc[column] = previous[column]
    change.missing = change.missing - found


def _first_reason(results: Sequence[ItemResult]) -> str:
    for result in results:
        if result.reason or result.error_type:
            return f"{result.status} {result.error_type}: {result.reason}".strip()
    return f"status {results[0].status}" if results else ""


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, waking at once when `stop` is set; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def _until(stop: asyncio.Event, waiting: Coroutine[Any, Any, None]) -> None:
    """Await `waiting`, or return early once `stop` is set."""
    task = asyncio.ensure_future(waiting)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopper):
            if not pending.done():
                pending.cancel()
