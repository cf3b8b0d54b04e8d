"""Push source: one subscription's queue of posted operations, read in position order.

The API commits each accepted line to the queue (`queue.QueueWriter`) before it says
so; this source reads the rows after the checkpoint, one transaction per position, and
wakes on the queue's NOTIFY (a bounded poll, the pipeline's interval, if one is missed).
Rows are removed once a saved checkpoint covers them: `acknowledge` only notes that
there is something to remove, and the next `read` removes one bounded batch of rows at
or below the checkpoint as saved in the subscription's row, at most once a second (so a
crash between acknowledging and saving loses nothing: those rows are read again and
written again, which their versions make harmless).

Nothing is copied: a push subscription holds no documents elsewhere. A first start
(or a reset) in `index` mode says the copy is complete at once, at the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from syncer import jsonload
from syncer.engine.changes import DocKey, Document, Position, RowChange, RowOp, Transaction, TxKind
from syncer.engine.interfaces import ResumeState, SourceNotice
from syncer.sources.push.queue import QueueReader

log = structlog.get_logger(__name__)

REMOVE_BATCH = 10_000
"""Rows removed from the queue per DELETE: bounded, so a long backlog is removed in steps."""
REMOVE_EVERY = 1.0
"""Seconds at least between two removals while the checkpoint moves."""
WARN_AT = 0.8
"""The share of the queue limit past which the status warns that pushes may be refused."""


@dataclass(frozen=True)
class PushSourceConfig:
    name: str
    subscription_id: int
    conninfo: str
    """The console's database, where the queue is."""
    queue_limit: int


class PushSource:
    """Reads one push subscription's queue."""

    def __init__(self, config: PushSourceConfig) -> None:
        self.config = config
        self._queue: QueueReader | None = None
        self._read_upto: Position = 0
        self._acked: Position = 0
        self._removed: Position = 0
        self._removed_at = float("-inf")
        self._opening: list[Transaction] = []
        self._progressed_at: float | None = None
        self._log = log.bind(subscription=config.name)

    async def open(self, resume: ResumeState) -> None:
        self._queue = await QueueReader.open(self.config.conninfo, self.config.subscription_id)
        # jsonb documents as the other sources' json values are parsed (syncer.jsonload).
        self._queue.set_json_loads(jsonload.loads)
        start = resume.checkpoint or 0
        self._read_upto = self._acked = self._removed = start
        self._opening = []
        if not resume.snapshot_done and resume.snapshot_mode == "index":
            # Nothing to copy: the queue is the whole source.
            self._opening.append(Transaction(start, time.time(), kind=TxKind.SNAPSHOT_END))
        self._log.info("push_queue_opened", after=start)

    async def read(self, max_changes: int) -> list[Transaction]:
        if self._opening:
            opening, self._opening = self._opening, []
            return opening
        queue = self._require()
        await self._remove_checkpointed(queue)
        rows = await queue.read(self._read_upto, max(1, max_changes))
        now = time.time()
        if len(rows) < max_changes:
            self._progressed_at = now  # complete up to now: nothing else is queued
        if not rows:
            return []
        transactions = []
        for row in rows:
            key: DocKey = (row.doc_id,)
            if row.op == "delete":
                change = RowChange(RowOp.DELETE, key)
            else:
                change = RowChange(RowOp.UPDATE, key, row.document or {})
            transactions.append(Transaction(row.position, row.received_at, [change]))
        self._read_upto = rows[-1].position
        return transactions

    async def _remove_checkpointed(self, queue: QueueReader) -> None:
        now = time.monotonic()
        if self._acked <= self._removed or now - self._removed_at < REMOVE_EVERY:
            return
        self._removed_at = now
        count, highest = await queue.remove_checkpointed(REMOVE_BATCH)
        if highest is not None:
            # What is acknowledged beyond it goes once a later save covers it.
            self._removed = max(self._removed, highest)
        if count:
            self._log.debug("push_queue_removed", rows=count, upto=highest)

    async def wait(self, timeout: float) -> None:
        await self._require().wait(timeout)

    async def acknowledge(self, position: Position) -> None:
        self._acked = max(self._acked, position)

    async def fetch_rows(self, keys: Sequence[DocKey]) -> dict[DocKey, Document]:
        return {}  # an upsert carries its whole document

    async def warnings(self) -> list[str]:
        queued = await self._require().queued()
        limit = self.config.queue_limit
        if queued < WARN_AT * limit:
            return []
        return [
            f"the push queue holds {queued:,} operations, {queued / limit:.0%} of its limit "
            f"({limit:,}, SYNCER_PUSH_QUEUE_LIMIT): pushes are refused with 429 at the limit; "
            "check that OpenSearch keeps up"
        ]

    def take_notices(self) -> list[SourceNotice]:
        return []

    def progressed_at(self) -> float | None:
        return self._progressed_at

    async def close(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            await queue.close()

    def _require(self) -> QueueReader:
        if self._queue is None:
            raise RuntimeError("source is not open")
        return self._queue
