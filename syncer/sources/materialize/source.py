"""Materialize source: a SUBSCRIBE cursor with progress messages, resumed with AS OF.

One session per subscription:

    SET idle_in_transaction_session_timeout = 0
    SET CLUSTER = <cluster>                       (when configured)
    BEGIN
    DECLARE c CURSOR FOR SUBSCRIBE <relation | (query)> [ENVELOPE UPSERT (KEY (...))]
        WITH (PROGRESS[, SNAPSHOT = false]) [AS OF <t>]
    FETCH <n> c WITH (timeout = '1s')             (in a loop)

Updates are grouped by timestamp and handed out once a progress message closes
them (`syncer.engine.timestamps`); the checkpoint is that progress frontier. On a
restart the cursor is declared `WITH (PROGRESS, SNAPSHOT = false) AS OF <frontier - 1>`:
with SNAPSHOT = false, Materialize treats AS OF as exclusive, so this returns every
update at or after the frontier and nothing already acknowledged. If Materialize has
compacted past that time (the view's RETAIN HISTORY window is shorter than the
downtime), the source falls back to a full snapshot and the pipeline then removes
the documents the snapshot did not contain, so deletes during the gap are not missed.

FETCH asks for a bounded number of rows rather than ALL: a snapshot of millions of
rows then arrives in chunks that backpressure can hold back, instead of in one reply.
While backpressure holds the reader, the session sits idle in its transaction;
Materialize ends such a session after `idle_in_transaction_session_timeout` (two
minutes by default, src/sql/src/session/vars.rs), which would restart an unfinished
snapshot from scratch, so the session turns that timeout off.

Rows are decoded from the server's text by `syncer.sources.materialize.decoding`.
Errors are classified by `syncer.sources.materialize.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection, sql

from syncer.engine.changes import DocKey, Document, Position, Transaction
from syncer.engine.interfaces import NoticeKind, ResumeState, SourceNotice
from syncer.engine.timestamps import (
    Envelope,
    TimestampAssembler,
    Update,
    UpsertState,
    timestamp_seconds,
)
from syncer.errors import SourceConfigError, SyncError
from syncer.sources.dsn import DsnResolver, as_given
from syncer.sources.identifiers import is_query, split_name
from syncer.sources.materialize.decoding import RowDecoder
from syncer.sources.materialize.errors import compacted, translated
from syncer.sources.sqlerrors import describe

log = structlog.get_logger(__name__)

_BETWEEN_FETCHES = 0.1  # seconds

Conn = AsyncConnection[tuple[Any, ...]]

CURSOR = "searchsync_subscribe"
NEEDS_KEY = (
    "a Materialize source needs key columns (views have no primary key): "
    "set source.key, e.g. [order_id]"
)


@dataclass(frozen=True)
class MaterializeSourceConfig:
    name: str
    dsn: str
    """A literal DSN or `env:VAR`, resolved by `resolve_dsn` when the source opens."""
    relation: str
    """A view or table name, or a query (`SELECT ...`) to subscribe to."""
    key_columns: tuple[str, ...]
    cluster: str = ""
    envelope: str = "diff"
    fetch_timeout: float = 1.0
    connect_timeout: int = 10
    resolve_dsn: DsnResolver = field(default=as_given, repr=False)
    """`syncer.dsn.resolve` in the worker (see `syncer.sources.dsn`)."""


class MaterializeSource:
    """Reads one view's changes for one subscription."""

    def __init__(self, config: MaterializeSourceConfig) -> None:
        if not config.key_columns:
            raise SourceConfigError(NEEDS_KEY)
        self.config = config
        self._conn: Conn | None = None
        self._assembler = self._new_assembler(snapshot=False, sweep=False, skip_below=None)
        self._as_of: Position | None = None
        self._columns: tuple[str, ...] | None = None
        self._decoder: RowDecoder | None = None
        self._progressed_at: float | None = None
        self._notices: list[SourceNotice] = []
        self._log = log.bind(subscription=config.name)

    # -- lifecycle -------------------------------------------------------------------

    async def open(self, resume: ResumeState) -> None:
        conninfo = self.config.resolve_dsn(self.config.dsn)
        with translated("connecting to Materialize"):
            self._conn = await AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=self.config.connect_timeout
            )
        self._decoder = RowDecoder(self._conn)
        with translated("turning off the idle-in-transaction timeout"):
            # Backpressure may hold the session idle in its transaction for longer.
            await self._conn.execute("SET idle_in_transaction_session_timeout = 0")
        if resume.checkpoint is not None and (
            resume.snapshot_done or resume.snapshot_mode == "discard"
        ):
            await self._subscribe(
                as_of=resume.checkpoint - 1,
                skip_below=resume.checkpoint,
                state=resume.source_state,
            )
        elif resume.snapshot_mode == "index":
            # A first start, or a snapshot cut short: documents of an earlier attempt
            # whose rows are gone by now are swept once the snapshot is complete.
            await self._subscribe(snapshot=True, sweep=True)
        else:
            await self._subscribe()  # discard: stream from now on

    async def _subscribe(
        self,
        *,
        snapshot: bool = False,
        sweep: bool = False,
        as_of: Position | None = None,
        skip_below: Position | None = None,
        state: Any = None,
    ) -> None:
        conn = self._require_conn()
        self._assembler = self._new_assembler(snapshot, sweep, skip_below, state)
        self._as_of, self._columns = as_of, None
        if self.config.cluster:
            with translated(f"selecting cluster {self.config.cluster}"):
                await conn.execute(
                    sql.SQL("SET CLUSTER = {}").format(sql.Identifier(self.config.cluster))
                )
        statement = self._subscribe_statement(snapshot, as_of)
        try:
            with translated(f"subscribing to {self.config.relation}", planning=True):
                await conn.execute("BEGIN")
                await conn.execute(statement)
        except SyncError as exc:
            if as_of is None or not compacted(exc):
                raise
            await self._resnapshot(exc)
            return
        self._log.info(
            "subscribed",
            relation=self.config.relation,
            snapshot=snapshot,
            as_of=as_of,
            cluster=self.config.cluster or None,
        )

    def _subscribe_statement(self, snapshot: bool, as_of: Position | None) -> sql.Composed:
        options = [sql.SQL("PROGRESS")]
        if not snapshot:
            options.append(sql.SQL("SNAPSHOT = false"))
        parts: list[sql.Composable] = [
            sql.SQL("DECLARE {} CURSOR FOR SUBSCRIBE {}").format(
                sql.Identifier(CURSOR), target(self.config.relation)
            )
        ]
        if self.config.envelope == Envelope.UPSERT:
            parts.append(
                sql.SQL("ENVELOPE UPSERT (KEY ({}))").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in self.config.key_columns)
                )
            )
        parts.append(sql.SQL("WITH ({})").format(sql.SQL(", ").join(options)))
        if as_of is not None:
            parts.append(sql.SQL("AS OF {}").format(sql.Literal(as_of)))
        return sql.SQL(" ").join(parts)

    async def _resnapshot(self, exc: SyncError) -> None:
        """Materialize no longer holds the resume time: copy everything again."""
        reason = describe(exc.__cause__ or exc)
        message = (
            f"Materialize could not resume {self.config.relation} at {self._as_of} ({reason}); "
            "re-reading the whole view and then removing documents it no longer holds. "
            "Raise the view's RETAIN HISTORY window above the longest expected downtime."
        )
        self._log.warning("resume_refused_resnapshot", as_of=self._as_of, error=reason)
        self._notices.append(SourceNotice(NoticeKind.RESNAPSHOT, message))
        with translated("ending the refused subscription"):
            await self._require_conn().execute("ROLLBACK")
        await self._subscribe(snapshot=True, sweep=True)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except psycopg.Error:
                pass

    # -- reading ---------------------------------------------------------------------

    async def read(self, max_changes: int) -> list[Transaction]:
        ready = self._assembler.take(max_changes)
        if ready:
            return ready
        timeout = self.config.fetch_timeout
        while True:
            fetched = await self._fetch(max_changes, timeout)
            for error in self._assembler.take_errors():
                self._notices.append(SourceNotice(NoticeKind.DATA_ERROR, error))
            ready = self._assembler.take(max_changes)
            if ready or fetched < max_changes:
                return ready
            timeout = 0.0  # a timestamp larger than one fetch: read the rest now

    async def _fetch(self, count: int, timeout: float) -> int:
        conn = self._require_conn()
        query = sql.SQL("FETCH {} {} WITH (timeout = {})").format(
            sql.SQL(str(int(count))), sql.Identifier(CURSOR), sql.Literal(f"{timeout:g}s")
        )
        try:
            with translated(f"reading changes of {self.config.relation}"):
                cursor = await conn.execute(query)
                columns = tuple(d.name for d in cursor.description or ())
                rows = self._require_decoder().rows(cursor.pgresult)
        except SyncError as exc:
            # Materialize may refuse an AS OF only once the cursor is first read.
            if self._as_of is None or self._columns is not None or not compacted(exc):
                raise
            await self._resnapshot(exc)
            return count  # read again at once, from the new cursor
        if self._columns is None and columns:
            self._check_columns(columns)
            self._columns = columns
        self._apply(rows)
        return len(rows)

    def _apply(self, rows: Sequence[tuple[Any, ...]]) -> None:
        columns = self._columns
        if not rows or columns is None:
            return
        assembler = self._assembler
        data = columns[3:]
        upsert = self.config.envelope == Envelope.UPSERT
        for row in rows:
            timestamp = int(row[0])
            if row[1]:  # mz_progressed
                assembler.progress(timestamp)
                self._progressed_at = timestamp_seconds(timestamp)
                continue
            values = dict(zip(data, row[3:], strict=True))
            if upsert:
                assembler.add(Update(timestamp, values, state=UpsertState(row[2])))
            else:
                assembler.add(Update(timestamp, values, diff=int(row[2])))
        assembler.flush_snapshot()

    def _check_columns(self, columns: tuple[str, ...]) -> None:
        upsert = self.config.envelope == Envelope.UPSERT
        check_columns(self.config, columns, "mz_state" if upsert else "mz_diff")

    # -- the rest of the Source interface --------------------------------------------

    async def wait(self, timeout: float) -> None:
        # `read` already waits for rows (FETCH ... WITH (timeout)): between two reads only
        # a short pause, so that answers of progress alone do not spin the loop.
        await asyncio.sleep(min(timeout, _BETWEEN_FETCHES))

    async def acknowledge(self, position: Position) -> None:
        """Nothing to release: Materialize keeps no per-reader state for us."""

    async def fetch_rows(self, keys: Sequence[DocKey]) -> dict[DocKey, Document]:
        return {}  # SUBSCRIBE rows are always whole

    async def warnings(self) -> list[str]:
        ambiguous = self._assembler.ambiguous_keys
        if not ambiguous:
            return []
        example = ambiguous[0][0] if len(ambiguous[0]) == 1 else ambiguous[0]
        return [
            f"{len(ambiguous)} key(s) of {self.config.relation} map to more than one row, "
            f"e.g. {example!r}: the key ({', '.join(self.config.key_columns)}) is not unique"
        ]

    def take_notices(self) -> list[SourceNotice]:
        notices, self._notices = self._notices, []
        return notices

    def progressed_at(self) -> float | None:
        return self._progressed_at

    # -- helpers ---------------------------------------------------------------------

    def _new_assembler(
        self, snapshot: bool, sweep: bool, skip_below: Position | None, state: Any = None
    ) -> TimestampAssembler:
        return TimestampAssembler(
            self.config.key_columns,
            envelope=Envelope(self.config.envelope),
            snapshot=snapshot,
            sweep=sweep,
            skip_below=skip_below,
            relation=self.config.relation,
            state=state,
        )

    def _require_decoder(self) -> RowDecoder:
        if self._decoder is None:
            raise RuntimeError("source is not open")
        return self._decoder

    def _require_conn(self) -> Conn:
        if self._conn is None:
            raise RuntimeError("source is not open")
        return self._conn


def check_columns(
    config: MaterializeSourceConfig, columns: tuple[str, ...], third: str = "mz_diff"
) -> None:
    """A SUBSCRIBE WITH (PROGRESS) answers `mz_timestamp, mz_progressed, <third>`, then
    the relation's columns, the key columns among them; else a SourceConfigError."""
    if columns[:3] != ("mz_timestamp", "mz_progressed", third):
        raise SourceConfigError(
            f"SUBSCRIBE to {config.relation} returned columns {', '.join(columns[:3])}; "
            f"expected mz_timestamp, mz_progressed, {third} (is this a Materialize server?)"
        )
    missing = [c for c in config.key_columns if c not in columns[3:]]
    if missing:
        raise SourceConfigError(
            f"key column(s) {', '.join(missing)} are not columns of {config.relation} "
            f"(it has: {', '.join(columns[3:])}); fix source.key"
        )


def target(relation: str) -> sql.Composable:
    """What follows SUBSCRIBE: `(query)` or a possibly qualified, quoted name."""
    if is_query(relation):
        return sql.SQL("({})").format(sql.SQL(relation.strip()))
    parts = split_name(relation, 3)
    if parts is None:
        raise SourceConfigError(f"{relation!r} is not a view name or a query; fix source.relation")
    return sql.Identifier(*parts)
