"""A helper of shared copies (`shared`): a worker's copier of one subscription's ranges.

It takes a free range, copies it a chunk at a time between watermarks of its own
stream (a TEMPORARY slot, dropped by PostgreSQL with the process), as the owner copies a
whole table (`copy.ChunkedCopy`), and once a chunk is settled removes those of its
documents whose rows its stream saw deleted meanwhile, if nothing wrote them since the
chunk (`shared` says why); then it takes the next range, until none is left.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import structlog
from psycopg import AsyncConnection

from syncer.engine.changes import DocKey, Position, RowChange, RowOp, Transaction, TxKind, doc_id
from syncer.engine.interfaces import ResumeState
from syncer.errors import SourceConfigError
from syncer.sources.postgres import pgoutput
from syncer.sources.postgres.catalog import describe_table
from syncer.sources.postgres.copy import (
    PREFIX,
    ChunkedCopy,
    CopyCursor,
    CopyOrder,
    Xids,
    copy_order,
)
from syncer.sources.postgres.queries import QUERIES
from syncer.sources.postgres.replication import temporary_slot_name
from syncer.sources.postgres.shared import Bound, Lease, RangeLeases
from syncer.sources.postgres.source import PostgresSource, PostgresSourceConfig
from syncer.sources.postgres.stream import ReplicationStream
from syncer.sources.sqlerrors import translated

log = structlog.get_logger(__name__)


RemoveStale = Callable[[list[str], Position], Awaitable[int]]
"""Delete these documents if their version is at most that position and nothing writes
them meanwhile (`OpenSearchSink.delete_unchanged`); return how many went."""


@dataclass
class _Written:
    """A chunk the helper sent out and has not settled."""

    position: Position
    keys: set[DocKey]
    cursor: Bound
    rows: int
    marker: int = 0
    """The settle marker emitted once the chunk was written; 0 before."""
    gone: set[DocKey] = field(default_factory=set)
    """Its keys that a transaction left deleted since the chunk was read."""


class CopyHelperSource(PostgresSource):
    """A helper of one subscription's shared copies: its ranges, one after another."""

    def __init__(
        self,
        config: PostgresSourceConfig,
        leases: RangeLeases,
        remove_stale: RemoveStale,
        first: Lease | None = None,
    ) -> None:
        super().__init__(config)
        self.leases = leases
        self._remove_stale = remove_stale
        self.finished = asyncio.Event()
        """Set once no range is left to take: the helper's pipeline may stop."""
        self.ranges_done = 0
        self._lease = first
        """The range being copied, as last recorded in its row."""
        self._opened = False
        self._index = None if first is None else first.index
        self._written: collections.deque[_Written] = collections.deque()
        self._markers = 0
        self._settled_upto = 0
        self._range_read = False
        self._before: Xids | None = None
        self._ranges: ChunkedCopy | None = None
        """The copy of this session's ranges, one after another (see `_start_range`)."""
        self._order: CopyOrder | None = None
        self._helper_slot = ""  # a new one each session (see `open`)

    async def open(self, resume: ResumeState) -> None:
        self._conninfo = self.config.resolve_dsn(self.config.dsn)
        self._new_session()
        with translated("connecting to the source"):
            self._conn = conn = await AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self.config.connect_timeout
            )
            self._table = table = await describe_table(
                conn, self.config.relation, self.config.key_columns
            )
            order = await copy_order(conn, table)
        if isinstance(order, str):
            raise SourceConfigError(f"cannot help copy {table.qualified}: {order}")
        self._order = order
        # A stream of its own, from a slot of its own: created now, gone with the session.
        self._helper_slot = temporary_slot_name(self.config.slot_name, "copy")
        self._log = log.bind(subscription=self.config.name, slot=self._helper_slot)
        stream = ReplicationStream(
            self._conninfo,
            self._helper_slot,
            self.publication,
            connect_timeout=self.config.connect_timeout,
            messages=True,
            temporary=True,
        )
        self._stream = stream
        await stream.start(0)
        self._acked = self._read_upto = stream.created_at
        self._before = Xids.parse(stream.created_snapshot)
        self._markers = self._settled_upto = 0
        self._written.clear()
        self._ranges = None
        if self._opened:
            # After a failure the lease may be gone with its connection: take one again
            # (this range, if still free), as its row says it stands.
            self._lease = await self.leases.take(self._index)
        self._opened = True
        await self._start_range()

    async def _start_range(self) -> None:
        lease = self._lease
        if lease is None:
            self.finished.set()
            return
        assert self._table is not None and self._order is not None
        self._range_read = False
        cursor = CopyCursor(lease.copy, 0, False, lease.cursor or lease.range.after, lease.rows)
        copy = self._ranges
        if copy is None:
            copy = self._ranges = ChunkedCopy(
                self._conninfo,
                self.config.connect_timeout,
                self._helper_slot,
                self._table,
                self._order,
                cursor,
                chunk_rows=self.config.copy_chunk_rows,
                upto=lease.range.upto,
                before=self._before,
            )
        else:
            # One copy for the stream's whole session: the transactions it has seen
            # since the slot began are what its race check needs, range after range.
            await copy.move_to(cursor, lease.range.upto)
        copy.recheck(list(lease.pending))
        self._copy = copy
        await copy.open()
        copy.advance()  # now: the stream may be quiet, and nothing else would wake a read
        self._log.info(
            "copy_range_taken",
            range=lease.seq,
            after=cursor.after,
            rows=lease.rows,
            rechecked=len(lease.pending),
        )

    async def read(self, max_changes: int) -> list[Transaction]:
        await self._settle()
        if self.finished.is_set():
            return []
        out: list[Transaction] = []
        for tx in await super().read(max_changes):
            if tx.kind is TxKind.COPY_CHUNK:
                state = (tx.source_state or {}).get("copy", {})
                keys = {change.key for change in tx.changes}
                self._written.append(
                    _Written(tx.position, keys, state.get("after"), int(state["rows"]))
                )
                await self._record()  # before it goes out: a successor must know of it
                gone = [c.key for c in tx.changes if c.op is RowOp.DELETE]
                if gone:
                    # A recheck's keys without a row at its high watermark: whatever
                    # wrote their documents before (a helper that died) is undone.
                    tx.changes = [c for c in tx.changes if c.op is not RowOp.DELETE]
                    await self._remove_stale([doc_id(k) for k in gone], tx.position)
                out.append(tx)
            elif tx.kind is TxKind.SNAPSHOT_END:
                self._range_read = True  # the range's end, not the copy's: the owner's
            else:
                self._note_deletes(tx.changes)
        await self._settle()  # a marker just read: the next range need not wait a poll
        return out

    def _note_deletes(self, changes: list[RowChange]) -> None:
        """Note the keys a transaction (its `changes`) left deleted in the chunks that
        copied them and are not settled (see `shared`). Only those it left deleted: one
        it deleted and inserted again ends with a row, which the owner writes."""
        written = self._written
        if not written:
            return
        gone: dict[DocKey, bool] = {}  # key -> deleted by its last change here
        for change in changes:
            if change.op is RowOp.DELETE:
                gone[change.key] = True
                continue
            if change.old_key is not None and change.old_key != change.key:
                gone[change.old_key] = True
            gone[change.key] = False
        for key, deleted in gone.items():
            if deleted:
                for chunk in written:
                    if key in chunk.keys:
                        chunk.gone.add(key)

    def _take(self, message: pgoutput.Message) -> Transaction | None:
        if (
            isinstance(message, pgoutput.LogicalMessage)
            and not message.transactional
            and message.prefix == PREFIX
        ):
            slot, _, seq = message.content.decode(errors="replace").partition(" settle ")
            if slot == self._helper_slot and seq.isdigit():
                self._settled_upto = max(self._settled_upto, int(seq))
            return None
        return super()._take(message)

    async def acknowledge(self, position: Position) -> None:
        await super().acknowledge(position)
        # Written: a marker after them, which the stream brings back (see above).
        written = [c for c in self._written if not c.marker and c.position <= position]
        if written:
            self._markers += 1
            for chunk in written:
                chunk.marker = self._markers
            content = f"{self._helper_slot} settle {self._markers}"
            with translated("marking the copied chunks"):
                await self._require_conn().execute(
                    QUERIES["emit_marker"], {"prefix": PREFIX, "content": content}
                )

    def _pending(self) -> list[DocKey]:
        return [key for chunk in self._written for key in chunk.keys]

    async def _record(self, cursor: Bound = None, rows: int | None = None) -> None:
        """Save the range's cursor (the last chunk settled) and the keys out unsettled."""
        lease = self._lease
        if lease is None:
            return
        if rows is not None:
            lease = replace(lease, cursor=cursor, rows=rows)
        lease = self._lease = replace(lease, pending=self._pending())
        if not await self.leases.progress(lease, lease.cursor, lease.rows, lease.pending):
            self._log.info("copy_range_gone", range=lease.seq)  # another copy began
            await self._next_range()

    async def _settle(self) -> None:
        """Record the chunks whose marker came back; finish the range, take the next."""
        written = self._written
        settled = None
        while written and written[0].marker and written[0].marker <= self._settled_upto:
            settled = written.popleft()
            if settled.gone:
                # Its documents whose rows went while it was out, if still the chunk's
                # own write: the owner's delete may have landed first and been undone.
                ids = [doc_id(k) for k in settled.gone]
                await self._remove_stale(ids, settled.position)
        if settled is not None:
            await self._record(settled.cursor, settled.rows)
        lease = self._lease
        if lease is None or not self._range_read or written:
            return
        await self.leases.finish(lease, lease.rows)
        self.ranges_done += 1
        self._log.info("copy_range_done", range=lease.seq, rows=lease.rows)
        await self._next_range()

    async def _copy_finished(self, copy: ChunkedCopy) -> None:
        """The range is read: its chunks are acknowledged to the copy all the same (which
        `_settle` waits for), and the next range goes on with it."""

    async def _next_range(self) -> None:
        self._copy = None
        self._written.clear()
        self._lease = await self.leases.take(self._index)
        await self._start_range()

    async def close(self) -> None:
        ranges, self._ranges = self._ranges, None
        if ranges is not None and ranges is not self._copy:
            await ranges.close()
        await super().close()

    async def warnings(self) -> list[str]:
        return []  # the owner's slot is the owner's to watch
