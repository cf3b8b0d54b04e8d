"""A verification's view of a Materialize view: one SUBSCRIBE AS OF a timestamp, and
what changed since.

Three sessions on the subscription's cluster, the two that hold a cursor with
`idle_in_transaction_session_timeout` off (a cursor waits while the index is read):

    rows     BEGIN; DECLARE searchsync_verify CURSOR FOR
               SUBSCRIBE <relation | (query)> WITH (PROGRESS)
    changes  BEGIN; DECLARE searchsync_verify_changes CURSOR FOR
               SUBSCRIBE <relation | (query)> WITH (PROGRESS, SNAPSHOT = false) AS OF <t>
    clock    SELECT mz_now()

Materialize chooses the timestamp t of the first SUBSCRIBE: its first progress row
names it, and its snapshot's rows all carry it. The snapshot is exactly what `SELECT
... AS OF t` returns, but streamed FETCH by FETCH, where a SELECT's result is collected
whole by environmentd (and bounded by `max_result_size`). The second SUBSCRIBE sends
every update after t (with SNAPSHOT = false, AS OF is exclusive): that is `changed`.

Rows come in the order Materialize sends them, not in key order (ordering a snapshot,
`WITHIN TIMESTAMP ORDER BY`, would make Materialize hold it whole). What key order gives
PostgreSQL, telling which documents have a row without holding the rows, comes here
from the ids of the rows read, kept in a temporary SQLite database on disk (`present`):
memory stays flat whatever the view's size. With a sample, the first rows are compared
and the rest of the snapshot is still read, for their ids only.

Positions are Materialize timestamps. The snapshot holds every update at or before t;
a subscription's checkpoint is its progress frontier, the first timestamp not yet
written, so it has written the snapshot once its checkpoint is past t (`caught_up_at`).
A repair writes at version t + 1, and a change may carry t + 1 too: `changed` therefore
reads the changes until their progress passes both the present (`mz_now()`, which a
strict serializable read puts after every write committed before it) and t + 1. Every
change at t + 1 is then known, and skipped, before anything is repaired, and a change
not yet read carries a later timestamp than the repair's.

The changes are also read without waiting at each chunk of rows and each page of
documents: Materialize holds a cursor's unread rows in environmentd's memory, and a
verification that finds no drift would otherwise leave them all there. The ids they
name are what grows with the verification's length, as on PostgreSQL.

`lookup` (`verify --keys`) reads the snapshot's cursor, keeping the rows of the keys
asked (the verifier asks for them all at once: one pass). Asked again, it declares a
new one AS OF t, which Materialize refuses once it has compacted past t.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import AsyncConnection, sql

from syncer.engine.changes import Position, doc_id, key_text
from syncer.engine.verify import Indexed, KeyText, Row
from syncer.errors import SourceConfigError, SourceUnavailable
from syncer.sources.materialize.decoding import RowDecoder
from syncer.sources.materialize.errors import translated
from syncer.sources.materialize.source import (
    NEEDS_KEY,
    MaterializeSourceConfig,
    check_columns,
    target,
)

log = structlog.get_logger(__name__)

Conn = AsyncConnection[tuple[Any, ...]]
T = TypeVar("T")

ROWS_CURSOR = "searchsync_verify"
CHANGES_CURSOR = "searchsync_verify_changes"
PATIENCE = 300.0
"""Seconds a SUBSCRIBE may send nothing at all before the verification gives up."""
_FETCH_TIMEOUT = "1s"
_SCAN_FETCH = 1_000
"""Rows per FETCH where none is compared (the changes, the ids of a sample's rest, a
lookup): each is decoded whole, so this bounds what one FETCH holds."""
_SQLITE_BATCH = 500
"""Ids per `IN (...)` (SQLite allows 32,766 parameters; smaller keeps each step short)."""
_CACHE_KIB = 32 * 1024
"""SQLite's page cache for the ids (its default is 2 MiB: a large view's ids then
thrash it)."""


class MaterializeSnapshot:
    """One verification's snapshot of a subscription's view (see the module's docstring)."""

    def __init__(
        self,
        config: MaterializeSourceConfig,
        sample: int | None = None,
        *,
        patience: float = PATIENCE,
    ) -> None:
        if not config.key_columns:
            raise SourceConfigError(NEEDS_KEY)
        self.config = config
        self.sample = sample
        self.patience = patience
        self._rows: Conn | None = None
        self._changes: Conn | None = None
        self._clock: Conn | None = None
        self._rows_decoder: RowDecoder | None = None
        self._changes_decoder: RowDecoder | None = None
        self._position: Position = 0
        self._columns: tuple[str, ...] = ()
        self._buffered: list[tuple[Any, ...]] = []
        self._rows_done = False
        self._compared = 0
        self._changes_frontier: Position = 0
        self._changed: set[str] = set()
        self._seen = _SeenIds()
        self._log = log.bind(subscription=config.name)

    # -- the Snapshot interface ------------------------------------------------------

    @property
    def position(self) -> Position:
        return self._position

    @property
    def caught_up_at(self) -> Position:
        return self._position + 1  # a checkpoint is a frontier: everything below it

    @property
    def estimate(self) -> int | None:
        return None  # Materialize keeps no row count to ask cheaply: the index's is used

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.config.key_columns

    async def open(self) -> None:
        conninfo = self.config.resolve_dsn(self.config.dsn)
        relation = self.config.relation
        self._rows = rows = await self._connect(conninfo)
        self._rows_decoder = RowDecoder(rows)
        await self._declare(rows, ROWS_CURSOR, snapshot=True, as_of=None)
        with translated(f"taking a snapshot of {relation}"):
            first = await self._fetch_rows(wanted=1)
        if not first:
            raise SourceUnavailable(
                f"Materialize sent nothing for {relation} within {self.patience:.0f} s: "
                "is its cluster running?"
            )
        self._position = int(first[0][0])  # the first progress row, or a snapshot row
        self._buffered = first
        self._changes = changes = await self._connect(conninfo)
        self._changes_decoder = RowDecoder(changes)
        await self._declare(changes, CHANGES_CURSOR, snapshot=False, as_of=self._position)
        self._clock = await self._connect(conninfo, in_transactions=False)
        self._log.info("verify_snapshot_taken", position=self._position, sample=self.sample)

    async def rows(self, limit: int) -> list[Row]:
        found: list[Row] = []
        while len(found) < limit and not self._rows_done:
            if self.sample is not None and self._compared >= self.sample:
                await self._read_ids_only()
                break
            wanted = limit - len(found)
            if self.sample is not None:
                wanted = min(wanted, self.sample - self._compared)
            chunk = self._snapshot_rows(await self._next_rows(wanted))
            self._compared += len(chunk)
            found += chunk
        await self._seen.add(doc_id(key) for key, _ in found)
        if self._rows_done:
            await self._end_rows()
        await self._drain_changes()
        return found

    async def lookup(self, keys: Sequence[KeyText]) -> list[Row]:
        wanted = set(keys)
        if not wanted:
            return []
        if self._compared or self._rows_done:
            # The snapshot's cursor has been read: a new one at the same timestamp (which
            # Materialize refuses once it has compacted past it).
            await self._end_rows()
            await self._declare(
                _opened(self._rows), ROWS_CURSOR, snapshot=True, as_of=self._position
            )
            self._rows_done, self._buffered = False, []
        found = []
        while not self._rows_done:
            for key, row in self._snapshot_rows(await self._next_rows(_SCAN_FETCH)):
                if tuple(key_text(v) for v in key) in wanted:
                    found.append((key, row))
        await self._end_rows()
        return found

    async def present(self, documents: Mapping[str, Indexed]) -> Collection[str]:
        await self._drain_changes()
        return await self._seen.among(documents)

    async def changed(self) -> Collection[str]:
        clock = _opened(self._clock)
        with translated("asking Materialize for the present timestamp"):
            row = await (await clock.execute("SELECT mz_now()")).fetchone()
        assert row is not None
        upto = max(int(row[0]), self._position + 1)
        deadline = time.monotonic() + self.patience
        while self._changes_frontier <= upto:
            if await self._read_changes(_FETCH_TIMEOUT):
                deadline = time.monotonic() + self.patience
            elif time.monotonic() > deadline:
                raise SourceUnavailable(
                    f"the changes of {self.config.relation} have not reached timestamp "
                    f"{upto} within {self.patience:.0f} s: is its cluster keeping up?"
                )
        return self._changed

    async def _drain_changes(self) -> None:
        """Read the changes that have arrived, waiting for none: Materialize holds a
        cursor's unread rows in environmentd's memory, and a verification that finds no
        drift would otherwise never read them."""
        fetched = _SCAN_FETCH
        while fetched == _SCAN_FETCH:  # a full FETCH: more may be there already
            fetched = await self._read_changes("0s")

    async def _read_changes(self, timeout: str) -> int:
        """One FETCH of the changes cursor, noted; how many rows it brought."""
        changes = _opened(self._changes)
        with translated(f"reading the changes of {self.config.relation} since the snapshot"):
            cursor = await changes.execute(_fetch(CHANGES_CURSOR, _SCAN_FETCH, timeout))
            updates = _opened(self._changes_decoder).rows(cursor.pgresult)
        self._note_changes(cursor, updates)
        return len(updates)

    async def written_upto(self) -> Position:
        return 0  # only the subscription's checkpoint says how far it has written

    async def close(self) -> None:
        for conn in (self._rows, self._changes, self._clock):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):  # closing: how it ends does not matter
                    await conn.close()
        self._rows = self._changes = self._clock = None
        self._seen.close()

    # -- the sessions ----------------------------------------------------------------

    async def _connect(self, conninfo: str, *, in_transactions: bool = True) -> Conn:
        with translated("connecting to Materialize"):
            conn = await AsyncConnection.connect(
                conninfo,
                autocommit=True,
                connect_timeout=self.config.connect_timeout,
                application_name=f"searchsync verify {self.config.name}",
            )
        with translated("setting the session up"):
            if in_transactions:
                await conn.execute("SET idle_in_transaction_session_timeout = 0")
            else:  # mz_now() after every write committed before it (the default, made sure)
                await conn.execute("SET transaction_isolation = 'strict serializable'")
            if self.config.cluster:
                await conn.execute(
                    sql.SQL("SET CLUSTER = {}").format(sql.Identifier(self.config.cluster))
                )
        return conn

    async def _declare(
        self, conn: Conn, cursor: str, *, snapshot: bool, as_of: Position | None
    ) -> None:
        options = [sql.SQL("PROGRESS")]
        if not snapshot:
            options.append(sql.SQL("SNAPSHOT = false"))
        statement = sql.SQL("DECLARE {} CURSOR FOR SUBSCRIBE {} WITH ({})").format(
            sql.Identifier(cursor), target(self.config.relation), sql.SQL(", ").join(options)
        )
        if as_of is not None:
            statement = sql.SQL("{} AS OF {}").format(statement, sql.Literal(as_of))
        with translated(f"subscribing to {self.config.relation}", planning=True):
            await conn.execute("BEGIN")
            await conn.execute(statement)

    async def _end_rows(self) -> None:
        conn = _opened(self._rows)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with translated("ending the snapshot's SUBSCRIBE"):
                await conn.execute("ROLLBACK")

    # -- reading ---------------------------------------------------------------------

    async def _next_rows(self, wanted: int) -> list[tuple[Any, ...]]:
        """Up to `wanted` rows of the rows cursor, buffered ones first."""
        if self._buffered:
            taken, self._buffered = self._buffered[:wanted], self._buffered[wanted:]
            return taken
        with translated(f"reading {self.config.relation}"):
            return await self._fetch_rows(wanted)

    async def _fetch_rows(self, wanted: int) -> list[tuple[Any, ...]]:
        """At least one row of the rows cursor (waiting up to `patience`), at most `wanted`."""
        conn = _opened(self._rows)
        query = _fetch(ROWS_CURSOR, wanted)
        deadline = time.monotonic() + self.patience
        while True:
            cursor = await conn.execute(query)
            rows = _opened(self._rows_decoder).rows(cursor.pgresult)
            if rows:
                self._check_columns(tuple(d.name for d in cursor.description or ()))
                return rows
            if time.monotonic() > deadline:
                return []

    def _snapshot_rows(self, fetched: Iterable[tuple[Any, ...]]) -> list[Row]:
        """The snapshot's rows among those fetched; the first beyond it ends the snapshot."""
        found: list[Row] = []
        data, key_columns = self._columns[3:], self.config.key_columns
        for values in fetched:
            if self._rows_done:
                break
            if int(values[0]) > self._position:
                self._rows_done = True  # a progress row past t, or an update after it
            elif not values[1] and int(values[2]) > 0:
                row = dict(zip(data, values[3:], strict=True))
                found.append((tuple(row[k] for k in key_columns), row))
        if not self._rows_done and not found and not fetched:
            raise SourceUnavailable(
                f"Materialize sent nothing more of {self.config.relation}'s snapshot "
                f"within {self.patience:.0f} s: is its cluster running?"
            )
        return found

    async def _read_ids_only(self) -> None:
        """The rest of a sampled snapshot, for which documents should exist."""
        while not self._rows_done:
            rows = self._snapshot_rows(await self._next_rows(_SCAN_FETCH))
            await self._seen.add(doc_id(key) for key, _ in rows)

    def _note_changes(self, cursor: Any, updates: list[tuple[Any, ...]]) -> None:
        if not updates:
            return
        names = tuple(d.name for d in cursor.description or ())
        self._check_columns(names)
        positions = [names.index(k) for k in self.config.key_columns]
        for values in updates:
            if values[1]:  # mz_progressed
                self._changes_frontier = max(self._changes_frontier, int(values[0]))
            else:
                self._changed.add(doc_id(tuple(values[i] for i in positions)))

    def _check_columns(self, columns: tuple[str, ...]) -> None:
        if columns != self._columns:
            check_columns(self.config, columns)
            self._columns = columns


def _opened(value: T | None) -> T:
    if value is None:
        raise RuntimeError("the snapshot is not open")
    return value


def _fetch(cursor: str, count: int, timeout: str = _FETCH_TIMEOUT) -> sql.Composed:
    return sql.SQL("FETCH {} {} WITH (timeout = {})").format(
        sql.SQL(str(int(count))), sql.Identifier(cursor), sql.Literal(timeout)
    )


class _SeenIds:
    """The ids of the snapshot's rows, in a private temporary SQLite database: SQLite
    keeps at most `_CACHE_KIB` of it in memory and the rest in a file it deletes on
    close. Nothing in it needs to survive a crash, so it is written without a journal
    or fsync (some 450,000 ids/s in random order here, against 170,000 with SQLite's
    defaults). Calls run in a thread, one at a time, off the worker's event loop."""

    def __init__(self) -> None:
        # "": a temporary database on disk, not in memory.
        self._db = sqlite3.connect("", check_same_thread=False)
        for pragma in (f"cache_size = -{_CACHE_KIB}", "journal_mode = OFF", "synchronous = OFF"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID")

    async def add(self, ids: Iterable[str]) -> None:
        rows = [(i,) for i in ids]
        if rows:
            await asyncio.to_thread(self._add, rows)

    def _add(self, rows: list[tuple[str]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", rows)

    async def among(self, ids: Iterable[str]) -> set[str]:
        return await asyncio.to_thread(self._among, list(ids))

    def _among(self, wanted: list[str]) -> set[str]:
        found = set[str]()
        for start in range(0, len(wanted), _SQLITE_BATCH):
            batch = wanted[start : start + _SQLITE_BATCH]
            marks = ", ".join(["?"] * len(batch))
            query = f"SELECT id FROM ids WHERE id IN ({marks})"
            found.update(i for (i,) in self._db.execute(query, batch))
        return found

    def close(self) -> None:
        self._db.close()
