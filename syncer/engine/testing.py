"""In-memory fakes of the engine's interfaces, for unit tests of the engine.

They keep state you can assert on (documents and versions, checkpoints, statuses)
rather than recording calls, and let a test inject the failures real systems have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncer.engine.changes import Change, DocKey, Document, Op, Position, Transaction
from syncer.engine.interfaces import Rejected, ResumeState, SourceNotice
from syncer.engine.outcomes import ItemResult, Outcome, classify
from syncer.engine.verify import Indexed, KeyText, Row, present_by_lookup
from syncer.errors import SinkUnavailable, SourceUnavailable

if TYPE_CHECKING:
    from syncer.engine.pipeline import BatchReport, Pipeline


class InMemorySource:
    """Serves queued transactions; remembers what was acknowledged."""

    def __init__(self, transactions: Sequence[Transaction] = ()) -> None:
        self.queue: list[Transaction] = list(transactions)
        self.acknowledged: Position | None = None
        self.rows: dict[DocKey, Document] = {}
        self.fail_reads = 0
        self.opened = 0
        self.resume: ResumeState | None = None
        self.notices: list[SourceNotice] = []
        self.progressed: float | None = None
        self._read_upto = 0
        self._pushed = asyncio.Event()

    async def open(self, resume: ResumeState) -> None:
        self.opened += 1
        self.resume = resume
        # Like a replication slot: replay everything not yet acknowledged.
        self.queue = [
            tx for tx in self.queue if self.acknowledged is None or tx.position > self.acknowledged
        ]
        self._read_upto = 0

    async def read(self, max_changes: int) -> list[Transaction]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise SourceUnavailable("source connection lost (injected)")
        out: list[Transaction] = []
        count = 0
        while self._read_upto < len(self.queue) and count < max_changes:
            tx = self.queue[self._read_upto]
            out.append(tx)
            count += len(tx.changes)
            self._read_upto += 1
        return out

    async def wait(self, timeout: float) -> None:
        # Like a replication stream: wake as soon as something is pushed.
        try:
            await asyncio.wait_for(self._pushed.wait(), timeout)
        except TimeoutError:
            return
        self._pushed.clear()

    async def acknowledge(self, position: Position) -> None:
        self.acknowledged = position

    async def fetch_rows(self, keys: Sequence[DocKey]) -> dict[DocKey, Document]:
        return {key: self.rows[key] for key in keys if key in self.rows}

    async def warnings(self) -> list[str]:
        return []

    def take_notices(self) -> list[SourceNotice]:
        notices, self.notices = self.notices, []
        return notices

    def progressed_at(self) -> float | None:
        return self.progressed

    async def close(self) -> None:
        pass

    def push(self, *transactions: Transaction) -> None:
        self.queue.extend(transactions)
        self._pushed.set()


@dataclass
class StoredDoc:
    version: Position
    doc: Document | None  # None: a delete tombstone


class InMemorySink:
    """OpenSearch's external versioning in a dict, tombstones included."""

    def __init__(self) -> None:
        self.docs: dict[str, StoredDoc] = {}
        self.outages = 0
        self.reject: Callable[[Change], ItemResult | None] = lambda change: None
        self.requests = 0

    @property
    def live(self) -> dict[str, Document]:
        return {i: s.doc for i, s in self.docs.items() if s.doc is not None}

    async def open(self) -> None:
        pass

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        self.requests += 1
        if self.outages:
            self.outages -= 1
            raise SinkUnavailable("connection refused (injected)")
        results = []
        for change in changes:
            injected = self.reject(change)
            if injected is not None:
                results.append(injected)
                continue
            current = self.docs.get(change.doc_id)
            if current is not None and current.version >= change.version:
                status, error = 409, "version_conflict_engine_exception"
            else:
                found = current is not None and current.doc is not None
                self.docs[change.doc_id] = StoredDoc(
                    change.version, dict(change.doc or {}) if change.op is Op.UPSERT else None
                )
                status = 404 if change.op is Op.DELETE and not found else 200
                error = ""
            results.append(ItemResult(classify(change.op, status, error), status, error))
        return results

    async def fetch(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        live = self.live
        return {i: dict(live[i]) for i in doc_ids if i in live}

    # -- what a verification reads (syncer.engine.verify.Index) --------------------------

    async def count(self) -> int:
        return len(self.live)

    async def indexed(self, doc_ids: Sequence[str]) -> dict[str, Indexed]:
        docs = self.docs
        return {
            i: Indexed(docs[i].version, dict(docs[i].doc or {}))
            for i in doc_ids
            if i in docs and docs[i].doc is not None
        }

    async def pages(self, size: int) -> AsyncIterator[dict[str, Indexed]]:
        ids = sorted(self.live)
        for start in range(0, len(ids), size):
            yield await self.indexed(ids[start : start + size])

    async def delete_unchanged(self, doc_ids: Sequence[str], upto: Position) -> int:
        gone = 0
        for i in doc_ids:
            stored = self.docs.get(i)
            if stored is not None and stored.doc is not None and stored.version <= upto:
                self.docs[i] = StoredDoc(stored.version, None)
                gone += 1
        return gone

    async def sweep(self, below: Position) -> int:
        stale = [i for i, s in self.docs.items() if s.doc is not None and s.version < below]
        for doc_id in stale:
            self.docs[doc_id] = StoredDoc(below, None)
        return len(stale)

    async def close(self) -> None:
        pass


class InMemoryDeadLetters:
    """The dead-letter queue's rules in a dict keyed by document id."""

    def __init__(self) -> None:
        self.entries: dict[str, Rejected] = {}
        self.superseded = 0

    async def put(self, rejected: Sequence[Rejected]) -> None:
        for item in rejected:
            current = self.entries.get(item.change.doc_id)
            if current is None or current.change.version <= item.change.version:
                self.entries[item.change.doc_id] = item

    async def supersede(self, written: Sequence[Change]) -> int:
        removed = 0
        for change in written:
            current = self.entries.get(change.doc_id)
            if current is not None and current.change.version <= change.version:
                del self.entries[change.doc_id]
                removed += 1
        self.superseded += removed
        return removed


@dataclass
class InMemoryStore:
    checkpoint: Position | None = None
    snapshot_done: bool = False
    snapshot_mode: str = "index"
    statuses: list[tuple[str, str]] = field(default_factory=list)
    last_error: str = ""
    source_state: Any = None

    async def load(self) -> ResumeState:
        return ResumeState(
            self.checkpoint, self.snapshot_done, self.snapshot_mode, self.source_state
        )

    async def save_checkpoint(self, position: Position, source_state: Any = None) -> None:
        self.checkpoint = position
        if source_state is not None:
            self.source_state = source_state

    async def snapshot_completed(self, position: Position, source_state: Any = None) -> None:
        self.snapshot_done = True
        self.checkpoint = position
        if source_state is not None:
            self.source_state = source_state

    async def set_status(self, status: str, message: str = "", error: str | None = None) -> None:
        self.statuses.append((status, message))
        if error is not None:
            self.last_error = error

    @property
    def status(self) -> str:
        return self.statuses[-1][0] if self.statuses else ""


class InMemoryHold:
    """An observer and `CheckpointHold` like live subscriptions' matching: every change
    handed over is unsettled until the test settles it (NATS acknowledged its events)."""

    def __init__(self) -> None:
        self.unsettled: list[Position] = []
        self.checkpoints_seen: list[Position | None] = []
        """The store's checkpoint as each batch was handed over."""
        self.store: InMemoryStore | None = None

    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        """Nothing: `batch_written` carries the changes."""

    def batch_written(self, report: BatchReport) -> None:
        self.unsettled.extend(change.version for change, _ in report.applied)
        if self.store is not None:
            self.checkpoints_seen.append(self.store.checkpoint)

    def lowest_unsettled(self) -> Position | None:
        return min(self.unsettled) if self.unsettled else None

    def settle(self, upto: Position | None = None) -> None:
        """Settle every delivery, or those at or below `upto`."""
        self.unsettled = [p for p in self.unsettled if upto is not None and p > upto]


def permanent(error_type: str = "mapper_parsing_exception", reason: str = "bad") -> ItemResult:
    return ItemResult(Outcome.PERMANENT, 400, error_type, reason)


async def eventually(done: Callable[[], object], timeout: float = 5.0) -> None:
    """Return once `done()` is true; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.002)


async def run_until(pipeline: Pipeline, done: Callable[[], object], timeout: float = 5.0) -> None:
    """Run `pipeline` until `done()` is true, then stop it and wait for it to end."""
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await eventually(done, timeout)
    stop.set()
    await task


class InMemorySnapshot:
    """A table in a dict, read as a verification reads a snapshot: `rows` as they
    stood at `position`, `later` the ids changed since (a test adds to it as the
    source would change)."""

    def __init__(
        self,
        rows: dict[DocKey, Document],
        position: Position,
        key_columns: tuple[str, ...] = ("id",),
        *,
        knows_size: bool = True,
    ) -> None:
        self.table = dict(sorted(rows.items()))
        self.knows_size = knows_size
        """Whether `estimate` says the table's size (Materialize's does not)."""
        self.position = position
        self.key_columns = key_columns
        self.later: set[str] = set()
        self.on_read: Callable[[], None] = lambda: None
        """Runs at each `rows`: a test's change 'committed' meanwhile."""
        self._read = 0

    @property
    def estimate(self) -> int | None:
        return len(self.table) if self.knows_size else None

    @property
    def caught_up_at(self) -> Position:
        return self.position

    async def open(self) -> None:
        """The table is in memory: nothing to take."""

    async def close(self) -> None:
        """Nothing to let go."""

    async def written_upto(self) -> Position:
        return 0

    async def rows(self, limit: int) -> list[Row]:
        self.on_read()
        chunk = list(self.table.items())[self._read : self._read + limit]
        self._read += len(chunk)
        return chunk

    async def lookup(self, keys: Sequence[KeyText]) -> list[Row]:
        wanted = {tuple(str(v) for v in key) for key in keys}
        return [(k, r) for k, r in self.table.items() if tuple(str(v) for v in k) in wanted]

    async def present(self, documents: Mapping[str, Indexed]) -> Collection[str]:
        return await present_by_lookup(self.lookup, self.key_columns, documents)

    async def changed(self) -> Collection[str]:
        return self.later
