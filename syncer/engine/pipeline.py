"""One subscription's loop: read from the source, write to the sink, move the checkpoint.

    source.read ─▶ Batcher ─▶ consolidate ─▶ fill unchanged values ─▶ sink.write
         ▲                                                               │
         └──── source.acknowledge + store.save_checkpoint ◀── all acked ─┘

Invariant: a position is acknowledged only after the sink has accepted (or found
stale, or permanently rejected) every change at or before it. Transient failures
are retried with backoff and hold the checkpoint back. Any failure of a source or
a sink ends the session: the pipeline reconnects with backoff and the source
replays from the checkpoint, which versioned writes make harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from syncer.engine.backoff import Backoff
from syncer.engine.batching import Batcher
from syncer.engine.changes import Change, Transaction, TxKind
from syncer.engine.consolidate import consolidate
from syncer.engine.interfaces import Sink, Source, StateStore
from syncer.engine.outcomes import ItemResult, Outcome
from syncer.errors import ConfigError, SinkUnavailable, UnavailableError

log = structlog.get_logger(__name__)


class Status:
    """Status names, as stored on the subscription."""

    STARTING = "starting"
    SNAPSHOTTING = "snapshotting"
    STREAMING = "streaming"
    CAUGHT_UP = "caught_up"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    batch_max_size: int = 1000
    batch_max_age: float = 5.0
    poll_interval: float = 0.1
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    warnings_every: float = 30.0


@dataclass
class PipelineStats:
    transactions: int = 0
    written: int = 0
    stale: int = 0
    rejected: int = 0
    retries: int = 0
    snapshot_rows: int = 0
    swept: int = 0
    last_ack_at: float | None = None
    oldest_unacked_commit: float | None = None
    errors: list[str] = field(default_factory=list)

    def lag(self, now: float) -> float:
        """Seconds since the commit of the oldest change not yet acknowledged."""
        if self.oldest_unacked_commit is None:
            return 0.0
        return max(0.0, now - self.oldest_unacked_commit)


class Observer(Protocol):
    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        """Called once a batch's checkpoint has been saved."""


class Pipeline:
    """Run one subscription until `stop` is set; survive every failure but a bug in us."""

    def __init__(
        self,
        config: PipelineConfig,
        source: Source,
        sink: Sink,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
    ) -> None:
        self.config = config
        self.source, self.sink, self.store = source, sink, store
        self.clock = clock
        self.observer = observer
        self.stats = PipelineStats()
        self.status = Status.STOPPED
        self._message = ""
        self._batcher = Batcher(config.batch_max_size, config.batch_max_age)
        self._backoff = Backoff(config.backoff_base, config.backoff_cap)
        self._log = log.bind(subscription=config.name)
        self._snapshotting = False
        self._progress_at = 0.0
        self._warnings: list[str] = []
        self._warnings_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until `stop` is set, reconnecting with backoff after any failure."""
        while not stop.is_set():
            try:
                await self._set_status(
                    Status.STARTING,
                    "connecting to the source and OpenSearch (a first start creates a "
                    "replication slot, which waits for transactions open on the source)",
                )
                await self._session(stop)
            except ConfigError as exc:
                await self._failed(Status.ERROR, str(exc), stop)
            except UnavailableError as exc:
                await self._failed(Status.RECONNECTING, str(exc), stop)
            except Exception as exc:  # a bug must not take the other subscriptions down
                self._log.exception("pipeline_crashed")
                await self._failed(Status.ERROR, f"internal error: {exc!r}", stop)
            finally:
                await self._close()
        await self._set_status(Status.STOPPED, "stopped")

    async def _failed(self, status: str, message: str, stop: asyncio.Event) -> None:
        self._batcher.drain()  # the source replays them from the checkpoint
        self.stats.oldest_unacked_commit = None
        delay = self._backoff.next_delay()
        self._log.warning(
            "pipeline_failed",
            status=status,
            error=message,
            retry_in_s=round(delay, 2),
            attempt=self._backoff.attempts,
        )
        await self._set_status(status, f"{message} (retrying in {delay:.0f} s)", error=message)
        await _sleep(stop, delay)

    async def _session(self, stop: asyncio.Event) -> None:
        await self.sink.open()
        resume = await self.store.load()
        await self.source.open(resume)
        self._snapshotting = not resume.snapshot_done and resume.snapshot_mode == "index"
        if self._snapshotting:
            await self._set_status(Status.SNAPSHOTTING, "copying existing rows")
        else:
            await self._set_status(Status.STREAMING, "streaming changes")
        while not stop.is_set():
            transactions = await self.source.read(self.config.batch_max_size)
            now = self.clock()
            read = 0
            for tx in transactions:
                self._batcher.add(tx, now)
                read += len(tx.changes)
                if tx.kind is TxKind.SNAPSHOT_CHUNK and not self._snapshotting:
                    # A source that lost its resume point copies the table again.
                    self._snapshotting = True
                    await self._set_status(Status.SNAPSHOTTING, "copying existing rows")
                if tx.kind is TxKind.CHANGES and self.stats.oldest_unacked_commit is None:
                    self.stats.oldest_unacked_commit = tx.commit_time
            source_idle = read < self.config.batch_max_size
            if self._batcher and (source_idle or self._batcher.full or self._batcher.due(now)):
                await self._flush(caught_up=source_idle)
            if not transactions:
                await self._idle(now)
                await _sleep(stop, self.config.poll_interval)
        if self._batcher:
            await self._flush()

    async def _idle(self, now: float) -> None:
        if now - self._warnings_at >= self.config.warnings_every:
            self._warnings_at = now
            self._warnings = await self.source.warnings()
        if not self._snapshotting:
            await self._set_status(Status.CAUGHT_UP, "caught up")

    async def _flush(self, caught_up: bool = False) -> None:
        """Write the buffered transactions and move the checkpoint past them.

        `caught_up`: the source had nothing more pending when this batch was read, so
        once it is acknowledged the subscription is caught up rather than streaming a
        backlog. Deciding it here keeps a trickle of changes from flipping the status
        (and a log line, and a database write) on every batch.
        """
        batch = self._batcher.drain()
        started = self.clock()
        changes = consolidate(batch)
        await self._fill_missing(changes)
        size = self.config.batch_max_size
        for offset in range(0, len(changes), size):
            await self._write(changes[offset : offset + size])
        await self._acknowledge(batch, caught_up)
        self._backoff.reset()
        self._log.debug(
            "batch_flushed",
            transactions=len(batch),
            changes=len(changes),
            ms=round((self.clock() - started) * 1000, 1),
        )

    async def _write(self, changes: Sequence[Change]) -> None:
        """Write until nothing in `changes` is transient; outages are waited out."""
        pending = list(changes)
        backoff = Backoff(self.config.backoff_base, self.config.backoff_cap)
        while pending:
            try:
                results = await self.sink.write(pending)
            except SinkUnavailable as exc:
                delay = backoff.next_delay()
                self.stats.retries += 1
                self._log.warning("sink_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                await self._set_status(
                    Status.RECONNECTING,
                    f"OpenSearch unavailable: {exc} (retrying in {delay:.0f} s)",
                    error=str(exc),
                )
                await asyncio.sleep(delay)
                continue
            retry: list[Change] = []
            for change, result in zip(pending, results, strict=True):
                if result.outcome is Outcome.OK:
                    self.stats.written += 1
                elif result.outcome is Outcome.STALE:
                    self.stats.stale += 1
                elif result.outcome is Outcome.TRANSIENT:
                    retry.append(change)
                else:
                    await self._rejected(change, result)
            if self.status == Status.RECONNECTING:
                await self._set_status(self._running_status(), "OpenSearch is reachable again")
            pending = retry
            if pending:
                delay = backoff.next_delay()
                self.stats.retries += 1
                self._log.warning(
                    "documents_retrying", count=len(pending), retry_in_s=round(delay, 2)
                )
                await asyncio.sleep(delay)

    async def _rejected(self, change: Change, result: ItemResult) -> None:
        self.stats.rejected += 1
        message = (
            f"document {change.doc_id!r} rejected by OpenSearch ({result.status} "
            f"{result.error_type}): {result.reason}"
        )
        self._log.error(
            "document_rejected",
            doc_id=change.doc_id,
            op=str(change.op),
            version=change.version,
            status=result.status,
            error_type=result.error_type,
            reason=result.reason,
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
            rows = await self.source.fetch_rows([c.fill_key or c.key for c in still])
            for change in still:
                _fill(change, rows.get(change.fill_key or change.key))
                if change.missing:
                    self._log.warning(
                        "unchanged_values_not_found",
                        doc_id=change.doc_id,
                        fields=sorted(change.missing),
                    )
                    change.missing = frozenset()

    async def _acknowledge(self, batch: Sequence[Transaction], caught_up: bool) -> None:
        position = None
        for tx in batch:
            if tx.kind is TxKind.SNAPSHOT_CHUNK:
                self.stats.snapshot_rows += len(tx.changes)
            elif tx.kind is TxKind.SNAPSHOT_END:
                await self._finish_snapshot(tx)
                position = tx.position
            else:
                self.stats.transactions += 1
                position = tx.position if position is None else max(position, tx.position)
        if position is not None:
            await self.source.acknowledge(position)
            await self.store.save_checkpoint(position)
        now = self.clock()
        self.stats.last_ack_at = now
        self.stats.oldest_unacked_commit = None
        if self.observer is not None:
            self.observer.acknowledged(batch, now)
        if self._snapshotting and now - self._progress_at >= 1.0:
            self._progress_at = now
            await self._set_status(
                Status.SNAPSHOTTING, f"copying existing rows: {self.stats.snapshot_rows:,} done"
            )
        elif not self._snapshotting and caught_up:
            await self._set_status(Status.CAUGHT_UP, "caught up")
        elif not self._snapshotting:
            await self._set_status(Status.STREAMING, "streaming changes")

    async def _finish_snapshot(self, end: Transaction) -> None:
        if end.sweep_below is not None:
            self.stats.swept = await self.sink.sweep(end.sweep_below)
            self._log.info("snapshot_swept", removed=self.stats.swept)
        await self.store.snapshot_completed(end.position)
        self._snapshotting = False
        self._log.info("snapshot_completed", rows=self.stats.snapshot_rows, position=end.position)
        await self._set_status(
            Status.STREAMING,
            f"snapshot complete ({self.stats.snapshot_rows:,} rows); streaming changes",
        )

    def _running_status(self) -> str:
        return Status.SNAPSHOTTING if self._snapshotting else Status.STREAMING

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


def _fill(change: Change, previous: dict[str, object] | None) -> None:
    if previous is None or change.doc is None:
        return
    found = {column for column in change.missing if column in previous}
    for column in found:
        change.doc[column] = previous[column]
    change.missing = change.missing - found


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking at once when `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
