"""A verification's view of a PostgreSQL table: one snapshot, and what changed since.

A TEMPORARY logical slot is created on a `replication=database` session with an
exported snapshot; a REPEATABLE READ transaction imports it, so its rows are exactly
those committed up to the slot's consistent point, the verification's position. The
rows are read from it in key order through a server-side cursor, `chunk` at a time.

The slot then holds every change committed since. `changed` decodes them (the same
session asks `pg_logical_slot_get_binary_changes` up to the present WAL position:
every transaction committed before the call) and keeps the ids of the documents they
touch; that is how a row deleted after the snapshot, whose document the subscription
has already removed, is told from a missing document. Both connections and the slot
end with `close` (and with the process: the slot is temporary).

The snapshot is held for the whole verification: like pg_dump's, it keeps VACUUM from
removing rows deleted meanwhile, and the slot keeps the WAL written meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import psycopg
import structlog
from psycopg import AsyncClientCursor, AsyncConnection, AsyncServerCursor, sql
from psycopg.adapt import Transformer
from psycopg.types.string import TextLoader

from syncer.engine.changes import Position, doc_id
from syncer.engine.interfaces import ResumeState
from syncer.engine.verify import Indexed, KeyText, Row, present_by_lookup
from syncer.errors import SourceConfigError
from syncer.sources.positions import parse_lsn
from syncer.sources.postgres import pgoutput
from syncer.sources.postgres.catalog import describe_table
from syncer.sources.postgres.queries import QUERIES
from syncer.sources.postgres.replication import temporary_slot_name
from syncer.sources.postgres.source import PostgresSource, PostgresSourceConfig
from syncer.sources.sqlerrors import translated
from syncer.sources.values import Decoder, from_written, make_decoder

log = structlog.get_logger(__name__)

_CURSOR = "searchsync_verify"
_DECODE_BATCH = 10_000
"""Changes decoded per call of pg_logical_slot_get_binary_changes (whole transactions)."""


class PostgresSnapshot(PostgresSource):
    """One verification's snapshot of a subscription's table (see the module's
    docstring). `PostgresSource` lends it the decoding of pgoutput into row changes."""

    def __init__(self, config: PostgresSourceConfig, sample: int | None = None) -> None:
        super().__init__(config)
        self.sample = sample
        self._position: Position = 0
        self._estimate: int | None = None
        self._replication: AsyncConnection[tuple[Any, ...]] | None = None
        self._snap: AsyncConnection[tuple[Any, ...]] | None = None
        self._cursor: AsyncServerCursor[tuple[Any, ...]] | None = None
        self._decoders: tuple[Decoder, ...] = ()
        self._key_types: tuple[str, ...] = ()
        self._verify_slot = ""
        self._changed: set[str] = set()

    @property
    def position(self) -> Position:
        return self._position

    @property
    def caught_up_at(self) -> Position:
        return self._position  # a checkpoint counts the commits that end up to it

    @property
    def estimate(self) -> int | None:
        if self.sample is not None and self._estimate is not None:
            return min(self.sample, self._estimate)
        return self._estimate

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self._require_table().key

    async def open(self, resume: ResumeState | None = None) -> None:
        """Take the snapshot (`resume` is not used: a verification starts afresh)."""
        self._conninfo = self.config.resolve_dsn(self.config.dsn)
        timeout = self.config.connect_timeout
        with translated("connecting to the source"):
            self._conn = conn = await AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=timeout
            )
            table = self._table = await describe_table(
                conn, self.config.relation, self.config.key_columns
            )
            found = await (
                await conn.execute(QUERIES["publication_exists"], {"publication": self.publication})
            ).fetchone()
            if found is None:
                raise SourceConfigError(
                    f"publication {self.publication} does not exist yet: the worker creates "
                    f"it when subscription {self.config.name} first starts; verify after that"
                )
            row = await (
                await conn.execute(QUERIES["estimated_rows"], {"oid": table.oid})
            ).fetchone()
            estimate = int(row[0]) if row and row[0] is not None else 0
            self._estimate = estimate if estimate > 0 else None
            types = await (
                await conn.execute(QUERIES["column_types"], {"oid": table.oid})
            ).fetchall()
            by_name = {str(name): str(type_) for name, type_ in types}
            self._key_types = tuple(by_name[column] for column in table.key)
        self._verify_slot = temporary_slot_name(self.config.slot_name, "verify")
        with translated(f"taking a snapshot of {table.qualified}"):
            self._replication = replication = await AsyncConnection.connect(
                self._conninfo,
                replication="database",
                autocommit=True,
                cursor_factory=AsyncClientCursor,
                connect_timeout=timeout,
                application_name=f"searchsync verify {self.config.name}",
            )
            command = sql.SQL(QUERIES["export_temporary_slot"]).format(
                slot=sql.Identifier(self._verify_slot)
            )
            created = await (await replication.execute(command)).fetchone()
            assert created is not None
            _, consistent_point, snapshot_name, _ = created
            self._position = self._read_upto = parse_lsn(str(consistent_point))
            self._snap = snap = await AsyncConnection.connect(
                self._conninfo, connect_timeout=timeout
            )
            await snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            await snap.execute(
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name))
            )
            if self.sample is not None and self._estimate is None:
                # Never analysed: a sample needs the table's size, counted in the snapshot.
                count = sql.SQL("SELECT count(*) FROM {}").format(table.identifier)
                counted = await (await snap.execute(count)).fetchone()
                self._estimate = int(counted[0]) if counted else None
            cursor = self._cursor = snap.cursor(_CURSOR)
            for oid in {oid for _, oid in table.columns}:
                cursor.adapters.register_loader(oid, TextLoader)
            await cursor.execute(self._rows_query())
        transformer = Transformer(snap)
        self._decoders = tuple(make_decoder(transformer, oid) for _, oid in table.columns)
        self._log = log.bind(subscription=self.config.name, slot=self._verify_slot)
        self._log.info("verify_snapshot_taken", position=self._position, sample=self.sample)

    def _rows_query(self) -> sql.Composed:
        table = self._require_table()
        columns = sql.SQL(", ").join(sql.Identifier(c) for c, _ in table.columns)
        keys = sql.SQL(", ").join(sql.Identifier(c) for c in table.key)
        sample: sql.Composable = sql.SQL("")
        if self.sample is not None and self._estimate:
            percent = min(100.0, 100.0 * self.sample / self._estimate)
            sample = sql.SQL(" TABLESAMPLE BERNOULLI ({})").format(sql.Literal(percent))
        return sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(
            columns, table.identifier, sample, keys
        )

    async def rows(self, limit: int) -> list[Row]:
        cursor = self._cursor
        assert cursor is not None
        with translated(f"reading {self._require_table().qualified}"):
            values = await cursor.fetchmany(limit)
        return [self._row(v) for v in values]

    def _row(self, values: tuple[Any, ...]) -> Row:
        table = self._require_table()
        row = {
            name: None if value is None else decode(value.encode())
            for (name, _), decode, value in zip(table.columns, self._decoders, values, strict=True)
        }
        return tuple([row[k] for k in table.key]), row

    async def lookup(self, keys: Sequence[KeyText]) -> list[Row]:
        if not keys:
            return []
        try:
            return await self._lookup(keys)
        except psycopg.DataError:
            # A value that is not of its column's type (a hand-written key, a document's
            # field) has no row: the others are looked up one by one.
            found: list[Row] = []
            for key in keys:
                try:
                    found += await self._lookup([key])
                except psycopg.DataError:
                    continue
            return found

    async def present(self, documents: Mapping[str, Indexed]) -> Collection[str]:
        return await present_by_lookup(self.lookup, self.key_columns, documents)

    async def _lookup(self, keys: Sequence[KeyText]) -> list[Row]:
        snap = self._snap
        assert snap is not None
        table = self._require_table()
        columns = sql.SQL(", ").join(sql.Identifier(c) for c, _ in table.columns)
        names = [sql.Identifier(f"k{i}") for i in range(len(table.key))]
        query = sql.SQL(
            "SELECT {columns} FROM {table} WHERE ({keys}) IN "
            "(SELECT {casts} FROM unnest({arrays}) AS u({names}))"
        ).format(
            columns=columns,
            table=table.identifier,
            keys=sql.SQL(", ").join(sql.Identifier(c) for c in table.key),
            casts=sql.SQL(", ").join(
                from_written(name, table.type_oid(column) or 0, type_)
                for name, column, type_ in zip(names, table.key, self._key_types, strict=True)
            ),
            arrays=sql.SQL(", ").join(
                sql.SQL("{}::text[]").format(sql.Placeholder()) for _ in names
            ),
            names=sql.SQL(", ").join(names),
        )
        params = [[key[i] for key in keys] for i in range(len(table.key))]
        with translated(f"looking up rows of {table.qualified}"):
            # A savepoint: an error must not end the transaction that holds the snapshot.
            async with snap.transaction():
                cursor = snap.cursor()
                for oid in {oid for _, oid in table.columns}:
                    cursor.adapters.register_loader(oid, TextLoader)
                await cursor.execute(query, params)
                found = await cursor.fetchall()
        return [self._row(values) for values in found]

    async def changed(self) -> Collection[str]:
        conn, replication = self._require_conn(), self._replication
        assert replication is not None
        with translated("reading the changes since the snapshot"):
            row = await (await conn.execute("SELECT pg_current_wal_lsn()::text")).fetchone()
            assert row is not None
            upto = str(row[0])
            while True:
                cursor = await replication.execute(
                    QUERIES["slot_changes"],
                    {
                        "slot": self._verify_slot,
                        "upto": upto,
                        "limit": _DECODE_BATCH,
                        "publication": self.publication,
                    },
                )
                messages = await cursor.fetchall()
                if not messages:
                    break
                for (data,) in messages:
                    self._note(self._take(pgoutput.decode(bytes(data))))
        return self._changed

    def _note(self, transaction: Any) -> None:
        if transaction is None or transaction.position <= self._position:
            return
        for change in transaction.changes:
            self._changed.add(doc_id(change.key))
            if change.old_key is not None:
                self._changed.add(doc_id(change.old_key))

    async def written_upto(self) -> Position:
        """How far the subscription's own slot has confirmed what it streamed: every
        change up to there is written (its client moves the confirmed position past
        other tables' WAL only once it has confirmed all it received)."""
        with translated("checking the subscription's replication slot"):
            slot = await self._slot_info()
        return 0 if slot is None else int(slot["confirmed_flush"])

    async def close(self) -> None:
        if self._cursor is not None:
            with contextlib.suppress(psycopg.Error):
                await self._cursor.close()
        for conn in (self._snap, self._replication):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):  # closing: how it ends does not matter
                    await conn.close()
        self._snap = self._replication = self._cursor = None
        await super().close()
