"""PostgreSQL source: a publication and a logical slot per subscription.

Changes arrive over the streaming replication protocol (`stream.ReplicationStream`):
the server pushes each transaction as it commits, and a position is confirmed to the
slot only once OpenSearch has acknowledged it and its checkpoint is saved, so the slot
replays from there after any failure. Catalog queries, the first copy and `fetch_rows`
run on an ordinary psycopg 3 connection.

The copy of the table's rows is chunked and resumable (`copy.ChunkedCopy`) on
PostgreSQL 14 and later when a unique index over the key's columns (all NOT NULL) gives
it an order: it runs while the table's changes stream, its cursor is saved with the
checkpoint, and a restart, a resync or a lost slot goes on from there or starts one
without stopping the stream. Otherwise the copy is one pass, exact under concurrent
writes: the slot is created on a `replication=database` connection with an exported
snapshot, and the table is read in that very snapshot, through a server-side cursor, a
FETCH per read, each value the server's text (its output function's, as pgoutput sends
it). Rows copied carry the slot's consistent point as their version; every streamed
transaction commits after it, so it always wins. A restart starts that copy over.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import AsyncClientCursor, AsyncConnection, AsyncServerCursor, sql
from psycopg.adapt import Transformer
from psycopg.types.string import TextLoader

from syncer.engine.changes import DocKey, Document, Position, RowChange, RowOp, Transaction, TxKind
from syncer.engine.interfaces import NoticeKind, ResumeState, SourceNotice
from syncer.errors import SourceConfigError
from syncer.sources.dsn import DsnResolver, as_given
from syncer.sources.positions import format_lsn, parse_lsn
from syncer.sources.postgres import pgoutput
from syncer.sources.postgres.catalog import Table, describe_table
from syncer.sources.postgres.copy import (
    MIN_VERSION,
    PREFIX,
    ChunkedCopy,
    CopyCursor,
    CopyOrder,
    copy_order,
)
from syncer.sources.postgres.queries import QUERIES
from syncer.sources.postgres.shared import RANGE_ROWS, CopyBoard, SharedCopy
from syncer.sources.postgres.stream import ReplicationStream
from syncer.sources.sqlerrors import translated
from syncer.sources.values import Decoder, make_decoder

log = structlog.get_logger(__name__)

_NOTHING_UNCHANGED: frozenset[str] = frozenset()
_RESNAPSHOT = "resnapshot"
"""The copy request of a copy the source began itself, its slot being lost."""
_SNAPSHOT_CURSOR = "searchsync_snapshot"

Conn = AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True)
class PostgresSourceConfig:
    name: str
    dsn: str
    """A literal DSN or `env:VAR`, resolved by `resolve_dsn` when the source opens."""
    relation: str
    key_columns: tuple[str, ...]
    slot_name: str
    wal_warn_bytes: int = 1 << 30
    connect_timeout: int = 10
    copy_chunk_rows: int = 0
    """Rows per chunk of a resumable copy; 0: sized to the sink's speed."""
    copy_board: CopyBoard | None = field(default=None, repr=False)
    """Where a shared copy's ranges are leased (SYNCER_COPY_SHARED); None: this
    source copies its table itself."""
    copy_index: str = ""
    """The index a shared copy's helpers write to (the sink's)."""
    copy_range_rows: int = RANGE_ROWS
    """Rows per range of a shared copy, as the planner estimates them."""
    resolve_dsn: DsnResolver = field(default=as_given, repr=False)
    """`syncer.dsn.resolve` in the worker (see `syncer.sources.dsn`)."""


@dataclass
class _Stream:
    """How to turn one relation's pgoutput tuples into row changes."""

    columns: tuple[str, ...]
    decoders: tuple[Decoder, ...]
    key_index: tuple[int, ...]
    no_old: tuple[pgoutput.Value, ...] = ()
    """One UNCHANGED per column: the old row of a message that has none."""
    key_names: tuple[str, ...] = ()
    """The key columns' names, in key order."""

    def __post_init__(self) -> None:
        self.no_old = (pgoutput.UNCHANGED,) * len(self.columns)
        self.key_names = tuple(self.columns[i] for i in self.key_index)

    def key_of(self, row: Document) -> DocKey:
        """The key of a decoded row (None for a key column it lacks)."""
        return tuple([row.get(name) for name in self.key_names])


@dataclass
class _Snapshot:
    position: Position
    sweep: bool
    started: float
    cursor: AsyncServerCursor[tuple[Any, ...]]
    stack: AsyncExitStack
    decoders: tuple[Decoder, ...]
    key: tuple[str, ...]
    """The key columns' names, in key order."""
    columns: tuple[str, ...]


class PostgresSource:
    """Reads one table's changes for one subscription."""

    def __init__(self, config: PostgresSourceConfig) -> None:
        self.config = config
        self._conn: Conn | None = None
        self._table: Table | None = None
        self._streams: dict[int, _Stream] = {}
        self._snapshot: _Snapshot | None = None
        self._stream: ReplicationStream | None = None
        self._current: Transaction | None = None  # begun in the stream, not yet committed
        self._xid = 0  # the current transaction's
        self._mark: bytes | None = None  # the current transaction's watermark, if ours
        self._copy: ChunkedCopy | None = None
        self._shared: SharedCopy | None = None  # a shared copy this source watches
        self._copied: list[Transaction] = []  # what the copy emitted, not yet read out
        self.one_pass_reason = ""
        """Why the copy, if any, is one pass rather than chunked (for the status)."""
        self._read_upto: Position = 0  # end of the last transaction handed out
        self._acked: Position = 0
        self._progressed_at: float | None = None  # when a read last drained the stream
        self._notices: list[SourceNotice] = []
        self._log = log.bind(subscription=config.name)
        self._conninfo = ""

    @property
    def publication(self) -> str:
        return self.config.slot_name

    # -- lifecycle -------------------------------------------------------------------

    async def open(self, resume: ResumeState) -> None:
        self._conninfo = self.config.resolve_dsn(self.config.dsn)
        self._new_session()
        with translated("connecting to the source"):
            self._conn = await AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self.config.connect_timeout
            )
        conn = self._conn
        with translated(f"checking relation {self.config.relation}"):
            settings = await (await conn.execute(QUERIES["server_settings"])).fetchone()
            assert settings is not None
            if settings[0] != "logical":
                raise SourceConfigError(
                    f"the source server has wal_level={settings[0]}; logical decoding needs "
                    "wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart "
                    "PostgreSQL; scripts/ensure-postgres.sh does both)"
                )
            self._table = await describe_table(conn, self.config.relation, self.config.key_columns)
            await self._ensure_publication(self._table)
            slot = await self._slot_info()
            order = await self._copy_order(self._table, int(settings[1]))
        want_snapshot = resume.snapshot_mode == "index" and not resume.snapshot_done
        lost_slot = slot is None and resume.checkpoint is not None
        if lost_slot:
            self._slot_lost(copying=resume.snapshot_mode == "index")
        if isinstance(order, CopyOrder) and resume.snapshot_mode == "index":
            saved = CopyCursor.from_state(resume.source_state)
            if lost_slot or want_snapshot or (saved is not None and saved.request == _RESNAPSHOT):
                await self._open_copy(self._table, order, resume, slot, saved)
                return
        if want_snapshot or (lost_slot and resume.snapshot_mode == "index"):
            # An interrupted copy or a lost slot may have left documents whose rows are gone.
            sweep = slot is not None or resume.checkpoint is not None
            if slot is not None:
                await self._drop_slot()
            await self._start_snapshot(self._table, sweep)
        elif slot is None:
            await self._create_slot()
        else:
            self._resume_at(slot, resume)

    def _new_session(self) -> None:
        """Forget what the last session read: the stream starts again where it is told."""
        self._read_upto = self._acked = 0
        self._current = self._mark = None
        self._copy, self._copied, self._shared = None, [], None
        self._streams.clear()

    def _slot_lost(self, copying: bool) -> None:
        self._log.warning("replication_slot_missing", slot=self.config.slot_name)
        if copying:
            self._notices.append(
                SourceNotice(
                    NoticeKind.RESNAPSHOT,
                    f"replication slot {self.config.slot_name} was missing: copying the "
                    "table again, then removing documents whose rows are gone",
                )
            )

    async def _create_slot(self) -> None:
        """A new slot (without an exported snapshot): the stream starts where it does."""
        with translated(f"creating replication slot {self.config.slot_name}"):
            row = await (
                await self._require_conn().execute(
                    QUERIES["create_slot"], {"slot": self.config.slot_name}
                )
            ).fetchone()
        assert row is not None
        self._acked = self._read_upto = int(row[0])
        self._log.info("replication_slot_created", slot=self.config.slot_name)

    def _resume_at(self, slot: dict[str, Any], resume: ResumeState) -> None:
        # The checkpoint may be past the slot: the worker stopped before its status
        # update confirmed it. The server skips what commits before the start.
        self._acked = self._read_upto = max(int(slot["confirmed_flush"]), resume.checkpoint or 0)

    async def _copy_order(self, table: Table, version: int) -> CopyOrder | str:
        if version < MIN_VERSION:
            self.one_pass_reason = (
                f"PostgreSQL {version // 10000} sends no logical messages (14 does) "
                "to place a chunked copy in the change stream"
            )
            return self.one_pass_reason
        order = await copy_order(self._require_conn(), table)
        self.one_pass_reason = order if isinstance(order, str) else ""
        return order

    async def _open_copy(
        self,
        table: Table,
        order: CopyOrder,
        resume: ResumeState,
        slot: dict[str, Any] | None,
        saved: CopyCursor | None,
    ) -> None:
        """Stream from the checkpoint (or a new slot) and copy the table meanwhile:
        going on from `saved` when it answers the same request on the same slot."""
        if slot is None:
            await self._create_slot()
            lost = resume.checkpoint is not None
            request = _RESNAPSHOT if lost else resume.copy_request
            cursor = CopyCursor(request, self._acked, sweep=lost)
        else:
            self._resume_at(slot, resume)
            wanted = resume.copy_request if not resume.snapshot_done else _RESNAPSHOT
            if saved is not None and saved.request == wanted:
                cursor = saved
                cursor.resumes += 1
                if self.config.copy_board is not None:
                    after = "its ranges' cursors"
                elif cursor.after is None:
                    after = "the first row"
                else:
                    after = f"key {tuple(cursor.after)}"
                message = (
                    f"copy of {table.qualified} resumed after {cursor.rows:,} rows, from "
                    f"{after} (resume {cursor.resumes})"
                )
                self._log.info("copy_resumed", rows=cursor.rows, resumes=cursor.resumes)
                self._notices.append(SourceNotice(NoticeKind.COPY_RESUMED, message))
            else:
                # A resync in place, or a first copy interrupted before any chunk:
                # documents may be in the index that the table no longer has.
                cursor = CopyCursor(wanted, self._acked, sweep=True)
        shared: dict[str, int] = {}
        if self.config.copy_board is not None:
            shared["shared_ranges"] = await self._share_copy(table, order, cursor)
        else:
            copy = ChunkedCopy(
                self._conninfo,
                self.config.connect_timeout,
                self.config.slot_name,
                table,
                order,
                cursor,
                chunk_rows=self.config.copy_chunk_rows,
            )
            self._copy = copy  # closed with the source, also if opening it fails
            await copy.open()
        self._log.info(
            "copy_started",
            index=order.index,
            since=format_lsn(cursor.since),
            rows=cursor.rows,
            sweep=cursor.sweep,
            **shared,
        )

    async def _share_copy(self, table: Table, order: CopyOrder, cursor: CopyCursor) -> int:
        """Plan the copy's ranges (unless resumed) for every worker's helper to copy;
        return how many there are."""
        assert self.config.copy_board is not None
        conn = self._require_conn()
        with translated(f"planning the copy of {table.qualified}"):
            row = await (
                await conn.execute(QUERIES["estimated_rows"], {"oid": table.oid})
            ).fetchone()
            estimate = int(row[0]) if row and row[0] is not None and row[0] > 0 else None
            shared = SharedCopy(self.config.copy_board, cursor, estimate, self.config.copy_index)
            ranges = await shared.start(conn, table, order, self.config.copy_range_rows)
        self._shared = shared
        return ranges

    async def close(self) -> None:
        if self._copy is not None:
            copy, self._copy = self._copy, None
            try:
                await copy.close()
            except psycopg.Error:
                pass
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()
        if self._snapshot is not None:
            snapshot, self._snapshot = self._snapshot, None
            try:
                await snapshot.stack.aclose()
            except psycopg.Error:
                pass
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    # -- reading ---------------------------------------------------------------------

    async def read(self, max_changes: int) -> list[Transaction]:
        if self._snapshot is not None:
            return await self._read_snapshot(max_changes)
        stream = self._stream or await self._start_stream()
        copy = self._copy
        if copy is not None:
            copy.check()
            copy.advance()
        transactions: list[Transaction] = []
        count = 0
        # Whole transactions, as many as are already received, up to about max_changes
        # (a transaction left open is finished by the next read).
        while count < max_changes:
            limit = max_changes - count
            payloads = stream.read(limit)
            for payload in payloads:
                transaction = self._take(pgoutput.decode(payload))
                if transaction is not None:
                    transactions.append(transaction)
                    count += len(transaction.changes)
                elif self._copied:  # a chunk met its high watermark
                    for copied in self._copied:
                        transactions.append(copied)
                        count += len(copied.changes)
                    self._copied = []
            if len(payloads) < limit:  # all that was received
                if self._current is None:
                    self._progressed_at = stream.heard_at
                break
        shared = self._shared
        if shared is not None:
            at = transactions[-1].position if transactions else self._read_upto
            transactions += await shared.poll(at, time.time())
            if shared.done:
                self._shared = None
        if transactions:
            self._read_upto = transactions[-1].position
        if copy is not None and copy.done:
            await self._copy_finished(copy)
        return transactions

    async def _copy_finished(self, copy: ChunkedCopy) -> None:
        """The copy's last chunk went out: it is done with."""
        self._copy = None
        await copy.close()

    async def wait(self, timeout: float) -> None:
        if self._stream is not None:
            await self._stream.wait(timeout)

    async def _start_stream(self) -> ReplicationStream:
        stream = ReplicationStream(
            self._conninfo,
            self.config.slot_name,
            self.publication,
            connect_timeout=self.config.connect_timeout,
            messages=self._copy is not None,
        )
        await stream.start(self._acked)
        self._stream = stream
        self._log.info(
            "replication_started", slot=self.config.slot_name, position=format_lsn(self._acked)
        )
        return stream

    def _take(self, message: pgoutput.Message) -> Transaction | None:
        """Add one pgoutput message to the transaction it belongs to; return that
        transaction when the message commits it."""
        if isinstance(message, pgoutput.Begin):
            self._current = Transaction(0, message.commit_time)
            self._xid = message.xid
        elif isinstance(message, pgoutput.Commit):
            current, self._current = self._current, None
            mark, self._mark = self._mark, None
            # After a reconnect the server may send again what was read before.
            if current is not None and message.end_lsn > self._read_upto:
                current.position = end = message.end_lsn
                copy = self._copy
                if copy is not None:
                    if mark is not None:
                        self._copied = copy.marked(mark, end, current.commit_time)
                        if self._copied:
                            return None
                    elif current.changes:
                        copy.committed(self._xid, end, current.changes)
                return current
        elif isinstance(message, pgoutput.Relation):
            self._streams[message.oid] = self._stream_for(message)
        elif isinstance(message, (pgoutput.Insert, pgoutput.Update, pgoutput.Delete)):
            stream = self._streams.get(message.relation_oid)
            if self._current is not None and stream is not None:
                change = self._row_change(stream, message)
                if change is not None:
                    self._current.changes.append(change)
        elif isinstance(message, pgoutput.LogicalMessage):
            if message.transactional and message.prefix == PREFIX and self._copy is not None:
                self._mark = message.content
        return None

    def _stream_for(self, relation: pgoutput.Relation) -> _Stream:
        table = self._require_table()
        transformer = Transformer(self._require_conn())
        names = tuple(c.name for c in relation.columns)
        decoders = tuple(
            make_decoder(transformer, table.type_oid(c.name) or c.type_oid)
            for c in relation.columns
        )
        missing = [k for k in table.key if k not in names]
        if missing:
            raise SourceConfigError(
                f"key column(s) {', '.join(missing)} no longer exist in {table.qualified}"
            )
        return _Stream(names, decoders, tuple(names.index(k) for k in table.key))

    def _row_change(
        self,
        stream: _Stream,
        message: pgoutput.Insert | pgoutput.Update | pgoutput.Delete,
    ) -> RowChange | None:
        if isinstance(message, pgoutput.Delete):
            deleted = _old_document(stream, message.old, None, {}) if message.old_is_row else None
            return RowChange(RowOp.DELETE, self._key(stream, message.old), old=deleted)
        new = message.new
        if pgoutput.UNCHANGED not in new:
            # Every value sent (no TOASTed value left out): the common case, in one pass.
            row: Document = {
                name: None if value is None else decode(value)  # type: ignore[arg-type]
                for name, decode, value in zip(stream.columns, stream.decoders, new, strict=True)
            }
            if isinstance(message, pgoutput.Insert):
                return RowChange(RowOp.INSERT, stream.key_of(row), row)
            return self._update(stream, message, row, _NOTHING_UNCHANGED)
        # REPLICA IDENTITY FULL: the old row comes whole (TOASTed values inlined).
        full_old = (
            message.old if isinstance(message, pgoutput.Update) and message.old_is_row else None
        )
        row = {}
        unchanged: set[str] = set()
        for name, decode, value, prior in zip(
            stream.columns, stream.decoders, new, full_old or stream.no_old, strict=True
        ):
            if value is pgoutput.UNCHANGED:
                if prior is pgoutput.UNCHANGED:
                    unchanged.add(name)
                    continue
                value = prior  # unchanged: the old row holds the very value
            row[name] = None if value is None else decode(value)  # type: ignore[arg-type]
        if isinstance(message, pgoutput.Insert):
            return RowChange(RowOp.INSERT, stream.key_of(row), row)
        return self._update(stream, message, row, frozenset(unchanged))

    def _update(
        self, stream: _Stream, message: pgoutput.Update, row: Document, unchanged: frozenset[str]
    ) -> RowChange | None:
        """The update of `message`, whose new row (without `unchanged`) is `row`."""
        key = stream.key_of(row)
        full_old = message.old if message.old_is_row else None
        before = _old_document(stream, full_old, message.new, row) if full_old else None
        if before is not None:  # the old key, already decoded
            old_key: DocKey | None = stream.key_of(before)
        else:
            old_key = self._key(stream, message.old) if message.old is not None else None
        if unchanged and not unchanged.isdisjoint(stream.key_names):
            if old_key is None:
                self._log.error("update_without_key", relation=self._require_table().qualified)
                return None
            key = old_key
        return RowChange(RowOp.UPDATE, key, row, old_key, unchanged, before)

    @staticmethod
    def _key(stream: _Stream, values: tuple[pgoutput.Value, ...]) -> DocKey:
        key = []
        for i in stream.key_index:
            value = values[i]
            key.append(None if not isinstance(value, bytes) else stream.decoders[i](value))
        return tuple(key)

    # -- acknowledging ---------------------------------------------------------------

    async def acknowledge(self, position: Position) -> None:
        if position <= self._acked:
            return
        self._acked = position
        if self._copy is not None:
            self._copy.acknowledged(position)
        if self._stream is not None:
            self._stream.confirm(position, self._read_upto)

    # -- snapshot --------------------------------------------------------------------

    async def _start_snapshot(self, table: Table, sweep: bool) -> None:
        stack = AsyncExitStack()
        with translated(f"exporting a snapshot for {table.qualified}"):
            replication = await AsyncConnection.connect(
                self._conninfo,
                replication="database",
                autocommit=True,
                cursor_factory=AsyncClientCursor,
                connect_timeout=self.config.connect_timeout,
            )
            try:
                command = sql.SQL(QUERIES["export_snapshot_slot"]).format(
                    slot=sql.Identifier(self.config.slot_name)
                )
                cursor = await replication.execute(command)
                row = await cursor.fetchone()
                assert row is not None
                _, consistent_point, snapshot_name, _ = row
                position = parse_lsn(str(consistent_point))
                snap_conn = await AsyncConnection.connect(
                    self._conninfo, connect_timeout=self.config.connect_timeout
                )
                stack.push_async_callback(snap_conn.close)
                await snap_conn.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
                await snap_conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
                )
            finally:
                # The snapshot is imported: the exporting session may end.
                await replication.close()
            columns = tuple(name for name, _ in table.columns)
            query = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in columns), table.identifier
            )
            # A FETCH of a batch loads its rows in psycopg's C code, where COPY cost an
            # await per row (1.5x the CPU per row); every column is loaded as its text,
            # which the decoders below turn into values as they do pgoutput's.
            cursor = snap_conn.cursor(_SNAPSHOT_CURSOR)
            for oid in {oid for _, oid in table.columns}:
                cursor.adapters.register_loader(oid, TextLoader)
            await cursor.execute(query)
            stack.push_async_callback(cursor.close)
        transformer = Transformer(snap_conn)
        decoders = tuple(make_decoder(transformer, oid) for _, oid in table.columns)
        self._snapshot = _Snapshot(
            position,
            sweep,
            time.time(),
            cursor,
            stack,
            decoders,
            table.key,
            columns,
        )
        self._acked = self._read_upto = position
        if self.one_pass_reason:
            self._notices.append(SourceNotice(NoticeKind.COPY_ONE_PASS, self.one_pass_reason))
        self._log.info(
            "snapshot_started",
            slot=self.config.slot_name,
            position=format_lsn(position),
            sweep=sweep,
        )

    async def _read_snapshot(self, max_changes: int) -> list[Transaction]:
        snapshot = self._snapshot
        assert snapshot is not None
        changes: list[RowChange] = []
        with translated("copying the table"):
            rows = await snapshot.cursor.fetchmany(max_changes)
        done = len(rows) < max_changes  # the last FETCH: the copy is complete
        columns, decoders, keys = snapshot.columns, snapshot.decoders, snapshot.key
        for values in rows:
            row = {
                name: None if value is None else decode(value.encode())
                for name, decode, value in zip(columns, decoders, values, strict=True)
            }
            changes.append(RowChange(RowOp.INSERT, tuple([row[k] for k in keys]), row))
        out = []
        if changes:
            out.append(
                Transaction(snapshot.position, snapshot.started, changes, TxKind.SNAPSHOT_CHUNK)
            )
        if done:
            self._snapshot = None
            await snapshot.stack.aclose()
            out.append(
                Transaction(
                    snapshot.position,
                    snapshot.started,
                    [],
                    TxKind.SNAPSHOT_END,
                    sweep_below=snapshot.position if snapshot.sweep else None,
                )
            )
        return out

    # -- the rest of the Source interface --------------------------------------------

    async def fetch_rows(self, keys: Sequence[DocKey]) -> dict[DocKey, Document]:
        table = self._require_table()
        conn = self._require_conn()
        transformer = Transformer(conn)
        decoders = [make_decoder(transformer, oid) for _, oid in table.columns]
        columns = [name for name, _ in table.columns]
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
            table.identifier,
            sql.SQL(" AND ").join(
                sql.SQL("{}::text = {}").format(sql.Identifier(k), sql.Placeholder())
                for k in table.key
            ),
        )
        found: dict[DocKey, Document] = {}
        with translated("reading current rows"):
            for key in keys:
                params = [None if v is None else _key_text(v) for v in key]
                row = await (await conn.execute(query, params)).fetchone()
                if row is not None:
                    found[key] = {
                        name: None if value is None else decode(str(value).encode())
                        for name, decode, value in zip(columns, decoders, row, strict=True)
                    }
        return found

    async def warnings(self) -> list[str]:
        with translated("checking the replication slot"):
            slot = await self._slot_info()
        if slot is None:
            return [f"replication slot {self.config.slot_name} is missing"]
        retained = int(slot["retained_bytes"] or 0)
        if retained > self.config.wal_warn_bytes:
            return [
                f"replication slot {self.config.slot_name} retains {retained / 2**20:,.0f} MiB "
                f"of WAL (warning above {self.config.wal_warn_bytes / 2**20:,.0f} MiB)"
            ]
        return []

    def take_notices(self) -> list[SourceNotice]:
        notices, self._notices = self._notices, []
        return notices

    def progressed_at(self) -> float | None:
        stream = self._stream
        if stream is not None and self._current is None and not stream.pending:
            # Caught up with whatever the server last said, keepalives included: an
            # idle pipeline need not wake for its staleness to stay current.
            return stream.heard_at
        return self._progressed_at

    # -- helpers ---------------------------------------------------------------------

    async def _ensure_publication(self, table: Table) -> None:
        conn = self._require_conn()
        pub = sql.Identifier(self.publication)
        exists = await (
            await conn.execute(QUERIES["publication_exists"], {"publication": self.publication})
        ).fetchone()
        if exists is None:
            await conn.execute(
                sql.SQL(
                    "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')"
                ).format(pub, table.identifier)
            )
            self._log.info("publication_created", publication=self.publication)
            return
        has = await (
            await conn.execute(
                QUERIES["publication_has_relation"],
                {"publication": self.publication, "oid": table.oid},
            )
        ).fetchone()
        if has is None:
            await conn.execute(
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, table.identifier)
            )

    async def _slot_info(self) -> dict[str, Any] | None:
        conn = self._require_conn()
        cursor = await conn.execute(QUERIES["slot_info"], {"slot": self.config.slot_name})
        row = await cursor.fetchone()
        if row is None:
            return None
        names = [d.name for d in cursor.description or []]
        return dict(zip(names, row, strict=True))

    async def _drop_slot(self) -> None:
        with translated(f"dropping replication slot {self.config.slot_name}"):
            await self._require_conn().execute(
                QUERIES["drop_slot"], {"slot": self.config.slot_name}
            )

    def _require_conn(self) -> Conn:
        if self._conn is None:
            raise RuntimeError("source is not open")
        return self._conn

    def _require_table(self) -> Table:
        if self._table is None:
            raise RuntimeError("source is not open")
        return self._table


def _old_document(
    stream: _Stream,
    old: tuple[pgoutput.Value, ...],
    new: tuple[pgoutput.Value, ...] | None,
    row: Document,
) -> Document | None:
    """The old row ('O' tuple) decoded as the new row is, so `old` has `doc`'s shape.

    A value the update did not change is taken from `row` (already decoded, the same
    value), so identity FULL costs a decode only for the columns that changed. An old
    value marked unchanged ('u', which PostgreSQL does not send in an old row since it
    inlines TOASTed values there) is the new row's; if the new row lacks it too, the old
    document is unknown (None) rather than partial."""
    document: Document = {}
    for i, (name, decode, value) in enumerate(
        zip(stream.columns, stream.decoders, old, strict=True)
    ):
        if new is not None and (new[i] is pgoutput.UNCHANGED or new[i] == value):
            if name not in row:
                return None
            document[name] = row[name]
        elif value is pgoutput.UNCHANGED:
            if name not in row:
                return None
            document[name] = row[name]
        else:
            document[name] = None if value is None else decode(value)  # type: ignore[arg-type]
    return document


def _key_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
