"""The resumable copy: a table read in key order, a chunk at a time, while it streams.

DBLog (Netflix, 2020), as Debezium's incremental snapshots do it. For each chunk:

1. a low watermark goes into the change stream (a transactional logical message,
   `pg_logical_emit_message`, which pgoutput sends with its `messages` option);
2. the chunk is read in key order, `WHERE (key) > (last) ORDER BY key LIMIT n`, in a
   REPEATABLE READ snapshot whose transaction ids are kept;
3. a high watermark follows.

The change stream goes on meanwhile, every change indexed as it comes. When the stream
reaches the high watermark, the chunk's rows whose keys a transaction between the two
watermarks changed are dropped (the stream has carried something at least as new), and
the rest go out at the high watermark's position, which is their version: a change
committed later has a higher one, so OpenSearch keeps it over the chunk's row, and the
chunk's row wins over every change its snapshot already saw. The chunk is then
acknowledged like any transaction, and its cursor (the last key copied) is saved with
that checkpoint: a restart goes on with the next chunk.

One case the watermarks alone would miss: a transaction whose commit record precedes the
low watermark but which was not yet visible when the chunk's snapshot was taken (commit
records and visibility are not ordered alike, e.g. while a commit waits for a
synchronous standby). Its change was streamed before the chunk, with a lower version, and
the chunk would overwrite it with the row before it. The stream keeps the ids of the
transactions that changed the table since the oldest one any snapshot could still miss
(the last snapshot's xmin); a chunk whose snapshot missed one of them that committed
before its low watermark is read again.

A chunk is read while the one before it is written, so one chunk waits in the buffer
at most: its size follows the sink's speed (`TARGET_SECONDS` of writing), so that a
live change waits behind at most about that much copying.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from psycopg import AsyncConnection, IsolationLevel, sql
from psycopg.adapt import Transformer
from psycopg.types.string import TextLoader

from syncer.engine.changes import (
    CopyProgress,
    DocKey,
    Position,
    RowChange,
    RowOp,
    Transaction,
    TxKind,
)
from syncer.sources.postgres.catalog import Table
from syncer.sources.postgres.queries import QUERIES
from syncer.sources.sqlerrors import translated
from syncer.sources.values import Decoder, make_decoder

log = structlog.get_logger(__name__)

PREFIX = "searchsync.copy"
"""The logical messages' prefix; the content names the slot, the session and the chunk."""

MIN_VERSION = 140000
"""pgoutput sends logical messages from PostgreSQL 14 on; before, the copy is one pass."""

INITIAL_ROWS = 200
MIN_ROWS = 100
MAX_ROWS = 2_000
"""Larger chunks were no faster on a sink that is never the bottleneck and held more
memory: 100,000 rows in chunks of 5,000 peaked at 104 MB, of 1,000 at 90 MB
(`SYNCER_COPY_CHUNK_ROWS=N bench/ceiling.py --sink fast --only backfill`)."""
TARGET_SECONDS = 0.25
"""How long the sink should take to write one chunk (see the module's docstring)."""

_HISTORY_LIMIT = 200_000
_XID_MASK = 0xFFFF_FFFF


@dataclass
class CopyCursor:
    """Where a copy stands; saved as the source state with each chunk's checkpoint."""

    request: str
    """The ResumeState.copy_request this copy answers."""
    since: Position
    """The stream's position when the copy began: every document it or the stream
    writes from then on has a newer version, so older ones are what the sweep removes."""
    sweep: bool
    after: list[str] | None = None
    """The key (in the copy index's column order, each value as the server's text) of
    the last row copied; None before the first chunk."""
    rows: int = 0
    resumes: int = 0

    def state(self) -> dict[str, Any]:
        return {"copy": asdict(self)}

    def chunk(
        self,
        position: Position,
        commit_time: float,
        rows: list[RowChange],
        estimate: int | None,
    ) -> Transaction:
        """Copied rows going out at `position`, with the cursor as it stands after them."""
        progress = CopyProgress(self.rows, estimate, self.resumes)
        return Transaction(
            position,
            commit_time,
            rows,
            TxKind.COPY_CHUNK,
            source_state=self.state(),
            copied=progress,
        )

    def end(self, position: Position, commit_time: float) -> Transaction:
        """The copy's end: the checkpoint loses the cursor; the sweep, if the copy has one."""
        return Transaction(
            position,
            commit_time,
            [],
            TxKind.SNAPSHOT_END,
            sweep_below=self.since if self.sweep else None,
            source_state={},
        )

    @classmethod
    def from_state(cls, state: Any) -> CopyCursor | None:
        """The cursor in a saved source state; None if there is none (or not one of ours)."""
        copy = state.get("copy") if isinstance(state, dict) else None
        if not isinstance(copy, dict):
            return None
        try:
            cursor = cls(**copy)
        except TypeError:
            return None
        if not isinstance(cursor.since, int) or not (
            cursor.after is None or all(isinstance(v, str) for v in cursor.after)
        ):
            return None
        return cursor


@dataclass(frozen=True)
class CopyOrder:
    """A unique index whose order the copy reads the table in."""

    index: str
    columns: tuple[str, ...]
    """Its key columns, in index order."""
    types: tuple[str, ...]
    """Their types, as format_type writes them (the cursor's values are cast to them)."""


async def copy_order(conn: AsyncConnection[tuple[Any, ...]], table: Table) -> CopyOrder | str:
    """The index to copy `table` in order of, or why there is none (then it is copied in
    one pass, which a restart starts over)."""
    cursor = await conn.execute(QUERIES["copy_indexes"], {"oid": table.oid})
    wanted = set(table.key)
    for name, columns, types, not_null in await cursor.fetchall():
        if set(columns) == wanted and len(columns) == len(wanted) and not_null:
            return CopyOrder(str(name), tuple(columns), tuple(types))
    return (
        f"no unique index on ({', '.join(table.key)}) with every column NOT NULL, "
        "to read the table in chunks of that order"
    )


@dataclass(frozen=True, slots=True)
class Xids:
    """A snapshot's view of transaction ids, as 32-bit ids (what pgoutput's Begin sends)."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Xids:
        """From pg_snapshot's text, 'xmin:xmax:xip,...' (64-bit ids with their epoch)."""
        xmin, xmax, running = text.split(":")
        return cls(
            int(xmin) & _XID_MASK,
            int(xmax) & _XID_MASK,
            frozenset(int(x) & _XID_MASK for x in running.split(",") if x),
        )

    def sees(self, xid: int) -> bool:
        """Whether a transaction `xid` that committed is visible in the snapshot."""
        if precedes(xid, self.xmin):
            return True
        if not precedes(xid, self.xmax):
            return False
        return xid not in self.running


def precedes(a: int, b: int) -> bool:
    """Whether 32-bit xid `a` is older than `b` (modulo-2^32, as PostgreSQL compares)."""
    return ((a - b) & _XID_MASK) >= 0x8000_0000


@dataclass
class _Chunk:
    seq: int
    after: list[str] | None
    rows: list[RowChange] = field(default_factory=list)
    last: list[str] | None = None
    """The key of its last row (the cursor after it); None if it has none."""
    asked: int = 0
    full: bool = False
    """It read as many rows as it asked for: more may follow."""
    xids: Xids | None = None
    low: Position | None = None
    """Where the stream met its low watermark."""
    touched: set[DocKey] = field(default_factory=set)
    """Keys changed in the stream between its watermarks."""
    position: Position | None = None
    """Its high watermark's position, once the stream met it (then it is emitted)."""
    emitted_at: float = 0.0
    keys: list[DocKey] | None = None
    """A recheck: these keys, wherever they are, rather than the next ones in order."""


Clock = Callable[[], float]


class ChunkedCopy:
    """One copy of a table, driven by the source as its stream reaches the watermarks."""

    def __init__(
        self,
        conninfo: str,
        connect_timeout: int,
        slot: str,
        table: Table,
        order: CopyOrder,
        cursor: CopyCursor,
        *,
        chunk_rows: int = 0,
        upto: list[str] | None = None,
        before: Xids | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """`upto` ends the copy at that key (included), a shared copy's range; `before`
        is the snapshot of a stream that began after the copy's table was written to
        (a helper's temporary slot): the transactions it shows committed are not in the
        stream's history, and a chunk that did not see one of them is read again."""
        self.cursor = cursor
        self.table = table
        self.order = order
        self.done = False
        """The last chunk went out (with the copy's end)."""
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._slot = slot
        self._clock = clock
        self._session = secrets.token_hex(4)  # marks of an earlier session are not ours
        self._seq = 0
        self._conn: AsyncConnection[tuple[Any, ...]] | None = None
        self._decoders: tuple[Decoder, ...] = ()
        self._columns = tuple(name for name, _ in table.columns)
        self._order_index = tuple(self._columns.index(c) for c in order.columns)
        self._key_types = dict(zip(order.columns, order.types, strict=True))
        self._chunks: collections.deque[_Chunk] = collections.deque()
        """Read or being read, then emitted and not yet acknowledged; in order."""
        self._next_after = cursor.after
        self._upto = upto
        self._before = before
        self._recheck: list[DocKey] | None = None
        self._exhausted = False  # a chunk came back short: no more to read
        self._task: asyncio.Task[None] | None = None
        self._fixed = chunk_rows > 0
        """The operator set the chunk size (SYNCER_COPY_CHUNK_ROWS): it does not adapt."""
        self._size = chunk_rows if self._fixed else INITIAL_ROWS
        self._acked_at = 0.0
        self._history: dict[int, Position] = {}
        """Ids of transactions that changed the table, with their positions."""
        self._history_full = False
        self._estimate: int | None = None
        self.rereads = 0
        self._log = log.bind(slot=slot)

    async def open(self) -> None:
        """Connect (again, after `close`); nothing if connected."""
        if self._conn is not None and not self._conn.closed:
            return
        with translated(f"opening the copy of {self.table.qualified}"):
            self._conn = conn = await AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
            await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
            row = await (
                await conn.execute(QUERIES["estimated_rows"], {"oid": self.table.oid})
            ).fetchone()
        estimate = int(row[0]) if row and row[0] is not None else 0
        self._estimate = estimate if estimate > 0 else None
        transformer = Transformer(conn)
        self._decoders = tuple(make_decoder(transformer, oid) for _, oid in self.table.columns)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # the copy is being closed: how it ended does not matter
                pass
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # -- reading chunks --------------------------------------------------------------------

    def check(self) -> None:
        """Raise what reading the last chunk raised (SourceUnavailable and the like)."""
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            self._task = None
            task.result()

    def advance(self) -> None:
        """Start reading the next chunk unless one is being read, one already waits
        to be written, or every row is read."""
        if self.done or self._exhausted or (self._task is not None and not self._task.done()):
            return
        self.check()
        # Those read but not yet met in the stream, or emitted and not acknowledged.
        if len(self._chunks) >= 2:
            return
        self._seq += 1
        chunk = _Chunk(self._seq, self._next_after, keys=self._recheck)
        self._recheck = None
        self._chunks.append(chunk)
        self._task = asyncio.create_task(self._read(chunk), name=f"copy {self._slot}")

    async def _read(self, chunk: _Chunk) -> None:
        conn = self._conn
        assert conn is not None
        limit = self._size
        with translated(f"copying {self.table.qualified}"):
            await self._mark(conn, chunk.seq, "low")
            async with conn.transaction():
                row = await (await conn.execute("SELECT pg_current_snapshot()::text")).fetchone()
                assert row is not None
                chunk.xids = Xids.parse(str(row[0]))
                # Every column loaded as its text, which the decoders turn into values as
                # they do pgoutput's (the connection's own loaders stay the decoders').
                cursor = conn.cursor()
                for oid in {oid for _, oid in self.table.columns}:
                    cursor.adapters.register_loader(oid, TextLoader)
                if chunk.keys is not None:
                    params: list[Any] = [value for key in chunk.keys for value in key]
                    await cursor.execute(self._keys_query(len(chunk.keys)), params)
                else:
                    params = [*(chunk.after or ()), *(self._upto or ())]
                    await cursor.execute(self._query(chunk.after), params)
                rows = await cursor.fetchall()
            # Decoded before the high watermark is written: the stream may meet it at once.
            self._take_rows(chunk, rows, limit)
            await self._mark(conn, chunk.seq, "high")

    def _query(self, after: list[str] | None) -> sql.Composed:
        table, order = self.table, self.order
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in self._columns)
        keys = sql.SQL(", ").join(sql.Identifier(c) for c in order.columns)
        values = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(t)) for t in order.types
        )
        # Row comparisons, which the index answers from where the last chunk ended.
        bounds: list[sql.Composable] = []
        if after is not None:
            bounds.append(sql.SQL("({}) > ({})").format(keys, values))
        if self._upto is not None:
            bounds.append(sql.SQL("({}) <= ({})").format(keys, values))
        where = (
            sql.SQL("WHERE {} ").format(sql.SQL(" AND ").join(bounds)) if bounds else sql.SQL("")
        )
        return sql.SQL("SELECT {} FROM {} {}ORDER BY {} LIMIT {}").format(
            columns, table.identifier, where, keys, sql.Literal(self._size)
        )

    def _keys_query(self, count: int) -> sql.Composed:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in self._columns)
        keys = sql.SQL(", ").join(sql.Identifier(c) for c in self.table.key)
        key = sql.SQL("({})").format(
            sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(self._key_types[c]))
                for c in self.table.key
            )
        )
        return sql.SQL("SELECT {} FROM {} WHERE ({}) IN ({})").format(
            columns, self.table.identifier, keys, sql.SQL(", ").join([key] * count)
        )

    async def move_to(self, cursor: CopyCursor, upto: list[str] | None) -> None:
        """Go on with another range (a shared copy's helper's next lease) once `open`ed
        again, keeping what this stream taught it: the history and the chunk size.
        Chunks still out are forgotten (their range's helper no longer cares)."""
        if self._task is not None and not self._task.done():
            await self.close()  # a read cut short may leave its session mid-transaction
        self._task = None
        self._chunks.clear()
        self.cursor, self._next_after, self._upto = cursor, cursor.after, upto
        self.done = self._exhausted = False
        self._recheck = None

    def recheck(self, keys: list[DocKey]) -> None:
        """Read these keys first, a chunk of their own: those there go out as rows, those
        gone as deletes (a shared copy's helper that died may have written them)."""
        self._recheck = keys or None

    def _take_rows(self, chunk: _Chunk, rows: list[tuple[Any, ...]], limit: int) -> None:
        columns, decoders, keys = self._columns, self._decoders, self.table.key
        changes = chunk.rows
        for values in rows:
            document = {
                name: None if value is None else decode(value.encode())
                for name, decode, value in zip(columns, decoders, values, strict=True)
            }
            changes.append(RowChange(RowOp.INSERT, tuple([document[k] for k in keys]), document))
        if chunk.keys is not None:
            chunk.full = True  # the copy goes on where it stood
            return
        chunk.asked = limit
        chunk.full = len(rows) >= limit
        if rows:
            chunk.last = [str(rows[-1][i]) for i in self._order_index]
            self._next_after = chunk.last
        if not chunk.full:
            self._exhausted = True

    async def _mark(self, conn: AsyncConnection[tuple[Any, ...]], seq: int, kind: str) -> None:
        content = f"{self._slot} {self._session} {seq} {kind}"
        await conn.execute(QUERIES["emit_watermark"], {"prefix": PREFIX, "content": content})

    # -- the stream ------------------------------------------------------------------------

    def committed(self, xid: int, position: Position, changes: list[RowChange]) -> None:
        """A transaction that changed the table reached the stream."""
        history = self._history
        if len(history) >= _HISTORY_LIMIT:
            # A transaction left open for long keeps every snapshot's xmin back: forget
            # the oldest (see the module's docstring: visibility lags commit by moments).
            if not self._history_full:
                self._history_full = True
                self._log.warning("copy_history_full", kept=_HISTORY_LIMIT)
            del history[next(iter(history))]
        history[xid] = position
        for chunk in self._chunks:
            if chunk.low is not None and chunk.position is None:  # between its watermarks
                touched = chunk.touched
                for change in changes:
                    touched.add(change.key)
                    if change.old_key is not None:
                        touched.add(change.old_key)
                break

    def marked(self, content: bytes, position: Position, commit_time: float) -> list[Transaction]:
        """A watermark reached the stream at `position`; return what goes out with it."""
        try:
            slot, session, seq_text, kind = content.decode().split(" ")
            seq = int(seq_text)
        except ValueError:
            return []
        if slot != self._slot or session != self._session:
            return []  # another subscription's, or an earlier session's
        chunk = next((c for c in self._chunks if c.seq == seq), None)
        if chunk is None:
            return []  # dropped (read again)
        if kind == "low":
            chunk.low = position
            return []
        if kind != "high" or chunk.low is None:
            return []
        return self._emit(chunk, position, commit_time)

    def _emit(self, chunk: _Chunk, position: Position, commit_time: float) -> list[Transaction]:
        assert chunk.xids is not None and chunk.low is not None
        low, xids = chunk.low, chunk.xids
        missed = [x for x, at in self._history.items() if at <= low and not xids.sees(x)]
        if self._before is not None:
            missed += [x for x in xids.running if self._before.sees(x)]
        self._forget_before(xids.xmin)
        if missed:
            self._read_again(chunk, missed)
            return []
        touched = chunk.touched
        rows = [r for r in chunk.rows if r.key not in touched] if touched else chunk.rows
        chunk.position = position
        chunk.emitted_at = self._clock()
        chunk.rows = []
        cursor = self.cursor
        if chunk.keys is not None:
            found = {r.key for r in rows} | touched
            rows += [RowChange(RowOp.DELETE, k) for k in chunk.keys if k not in found]
        else:
            cursor.rows += len(rows)
        if chunk.last is not None:
            cursor.after = chunk.last
        out = [cursor.chunk(position, commit_time, rows, self._estimate)]
        if not chunk.full:
            self.done = True
            out.append(cursor.end(position, commit_time))
        return out

    def _read_again(self, chunk: _Chunk, missed: list[int]) -> None:
        """Drop `chunk` and those read after it; read again from where it began."""
        self.rereads += 1
        self._log.warning(
            "copy_chunk_read_again",
            chunk=chunk.seq,
            transactions=missed[:5],
            reason="a transaction that committed before the chunk's low watermark was not "
            "yet visible to its snapshot",
        )
        while self._chunks and self._chunks[-1] is not chunk:
            self._chunks.pop()
        self._chunks.pop()
        if chunk.keys is not None:
            self._recheck = chunk.keys
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self._next_after = chunk.after
        self._exhausted = False
        self.advance()

    def _forget_before(self, xmin: int) -> None:
        """Every snapshot from now on sees what precedes `xmin`."""
        history = self._history
        if history and any(precedes(x, xmin) for x in history):
            self._history = {x: at for x, at in history.items() if not precedes(x, xmin)}

    def acknowledged(self, position: Position) -> None:
        """Everything at or before `position` is written: size the next chunk by how
        long the sink took over those just written, and read on."""
        chunks = self._chunks
        now = self._clock()
        written: list[_Chunk] = []
        while chunks and chunks[0].position is not None and chunks[0].position <= position:
            written.append(chunks.popleft())
        if written:
            # Chunks written in one batch are measured together, from when the first
            # could start (each alone would seem to have taken no time).
            took = now - max(written[0].emitted_at, self._acked_at)
            self._acked_at = now
            rows = sum(chunk.asked for chunk in written if chunk.full)
            if took > 0 and rows and not self._fixed:
                wanted = rows / took * TARGET_SECONDS
                # At most twice as large at a time: one fast batch is not yet a trend.
                self._size = int(max(MIN_ROWS, min(MAX_ROWS, 2 * self._size, wanted)))
        self.advance()

    @property
    def chunk_rows(self) -> int:
        """How many rows the next chunk asks for."""
        return self._size
