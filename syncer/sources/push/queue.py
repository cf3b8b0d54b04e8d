"""The push queue in the console's database: appended to by the API, read by the worker.

Two tables (the models `PushedChange` and `PushSequence` name them from here):

- `syncer_pushedchange`: one row per accepted operation, (subscription, position) unique;
- `syncer_pushsequence`: one row per push subscription, its last position given out.

Positions must grow in commit order, or the worker could read position 8, checkpoint
it, and never read a position 7 that committed after. So an append takes the
subscription's sequence row `FOR UPDATE`, numbers its operations after it and inserts
them in the same transaction: the next append of that subscription waits for the commit
before it numbers anything. Appends of one subscription are serialized for the length
of a commit; others' run side by side. The same statement counts what the queue holds
(positions are consecutive and only a prefix is ever removed, so that is the last
position minus the lowest one left, plus one: an index lookup, not a count) and takes
only what fits under the limit. `NOTIFY` in the transaction wakes the worker at commit.

A sequence starts at the time it was created, in microseconds since the epoch, not at
0: a subscription deleted and created again under the same index then writes versions
above the old documents' (a restart at 1 would make every write of the new one stale).

Driver errors leave this module as ConsoleDatabaseUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg.types.json
from psycopg import sql

from syncer.errors import ConsoleDatabaseUnavailable
from syncer.sources.push.lines import Operation
from syncer.text import redact

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

QUEUE_TABLE = "syncer_pushedchange"
SEQUENCE_TABLE = "syncer_pushsequence"
SUBSCRIPTION_TABLE = "syncer_subscription"
"""The tables as Django names them (the models use these names; a test keeps them equal)."""

CHANNEL_PREFIX = "searchsync_push_"

_CONNECT_TIMEOUT = 5
_QUERY_TIMEOUT = 30.0


def channel(subscription_id: int) -> str:
    """The LISTEN/NOTIFY channel of one subscription's queue."""
    return f"{CHANNEL_PREFIX}{subscription_id}"


def format_position(position: int | None) -> str:
    """A push position as people see it: the number itself ("-" before the first)."""
    return "-" if position is None else str(position)


@dataclass(frozen=True, slots=True)
class Appended:
    """What an append committed: positions `first` .. `first + taken - 1`."""

    first: int
    taken: int
    queued: int
    """Rows in the queue after it, not yet removed."""


_START = (
    "INSERT INTO {sequence} (subscription_id, last_position) "
    "VALUES (%(sub)s, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) "
    "ON CONFLICT (subscription_id) DO NOTHING"
)

# One statement per append: lock the sequence row, see how much fits, number, insert.
_APPEND = """
WITH head AS (
    SELECT last_position FROM {sequence} WHERE subscription_id = %(sub)s FOR UPDATE
), room AS (
    SELECT head.last_position AS last,
           head.last_position - COALESCE(
               (SELECT min(position) - 1 FROM {queue} WHERE subscription_id = %(sub)s),
               head.last_position) AS queued
    FROM head
), took AS (
    SELECT last, queued, GREATEST(0, LEAST(%(n)s, %(limit)s - queued)) AS taken FROM room
), bumped AS (
    UPDATE {sequence} SET last_position = took.last + took.taken
    FROM took WHERE subscription_id = %(sub)s
), inserted AS (
    INSERT INTO {queue} (subscription_id, position, op, doc_id, document, received_at)
    SELECT %(sub)s, took.last + line.n, line.v->>0, line.v->>1,
           NULLIF(line.v->2, 'null'::jsonb), now()
    FROM took, jsonb_array_elements(%(lines)s::jsonb) WITH ORDINALITY AS line(v, n)
    WHERE line.n <= took.taken
)
SELECT last, queued, taken FROM took
"""

_QUEUED = """
SELECT s.last_position - COALESCE(
    (SELECT min(position) - 1 FROM {queue} WHERE subscription_id = %(sub)s), s.last_position)
FROM {sequence} AS s WHERE s.subscription_id = %(sub)s
"""

_READ = (
    "SELECT position, op, doc_id, document, extract(epoch FROM received_at)::float8 "
    "FROM {queue} WHERE subscription_id = %(sub)s AND position > %(after)s "
    "ORDER BY position LIMIT %(limit)s"
)

# Only what a saved checkpoint covers (NULL, no checkpoint: nothing), lowest first, bounded.
_REMOVE = """
WITH gone AS (
    DELETE FROM {queue} WHERE subscription_id = %(sub)s AND position IN (
        SELECT position FROM {queue}
        WHERE subscription_id = %(sub)s
          AND position <= (SELECT checkpoint FROM {subscription} WHERE id = %(sub)s)
        ORDER BY position LIMIT %(limit)s)
    RETURNING position
)
SELECT count(*), max(position) FROM gone
"""


def _sql(query: str) -> sql.Composed:
    return sql.SQL(query).format(
        queue=sql.Identifier(QUEUE_TABLE),
        sequence=sql.Identifier(SEQUENCE_TABLE),
        subscription=sql.Identifier(SUBSCRIPTION_TABLE),
    )


def _dumps(operations: Sequence[Operation]) -> str:
    lines = [[o.op, o.doc_id, o.doc] for o in operations]
    try:
        return orjson.dumps(lines).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library keeps it exact
        import json

        return json.dumps(lines, ensure_ascii=False, allow_nan=False)


async def guarded(action: str, work: Awaitable[T], timeout: float = _QUERY_TIMEOUT) -> T:
    """Await `work`; a driver error or a timeout is ConsoleDatabaseUnavailable."""
    try:
        return await asyncio.wait_for(work, timeout)
    except (psycopg.Error, TimeoutError) as exc:
        raise ConsoleDatabaseUnavailable(
            f"console database, {action}: {redact(str(exc)) or 'timed out'}"
        ) from exc


async def connect(conninfo: str, purpose: str) -> Conn:
    """A connection of its own to the console database, autocommit."""
    return await guarded(
        f"connecting for {purpose}",
        psycopg.AsyncConnection.connect(
            conninfo,
            autocommit=True,
            connect_timeout=_CONNECT_TIMEOUT,
            application_name=f"searchsync {purpose}"[:63],
        ),
    )


async def close_quietly(conn: Conn | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):  # broken already: closed all the same
            await conn.close()


class QueueWriter:
    """Appends one subscription's accepted lines, each group in one committed transaction."""

    def __init__(self, conn: Conn, subscription_id: int, limit: int) -> None:
        self._conn = conn
        self.subscription_id = subscription_id
        self.limit = limit

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(
        cls, conninfo: str, subscription_id: int, limit: int
    ) -> AsyncIterator[QueueWriter]:
        conn = await connect(conninfo, "push")
        try:
            await guarded(
                "starting the push queue",
                conn.execute(_sql(_START), {"sub": subscription_id}),
            )
            yield cls(conn, subscription_id, limit)
        finally:
            await close_quietly(conn)

    async def append(self, operations: Sequence[Operation]) -> Appended:
        """Commit as many of `operations` as fit under the limit, in order; say which.

        Returns only once they are committed: what it counts as taken is durable."""
        params = {
            "sub": self.subscription_id,
            "n": len(operations),
            "limit": self.limit,
            "lines": _dumps(operations),
        }
        name = channel(self.subscription_id)

        async def append() -> Appended:
            async with self._conn.transaction():
                cursor = await self._conn.execute(_sql(_APPEND), params)
                row = await cursor.fetchone()
                if row is None:
                    raise ConsoleDatabaseUnavailable(
                        "console database: the push subscription's sequence row is gone "
                        "(was the subscription deleted?)"
                    )
                last, queued, taken = (int(v) for v in row)
                if taken:
                    await self._conn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(name)))
            return Appended(last + 1, taken, queued + taken)

        return await guarded("appending to the push queue", append())


@dataclass(frozen=True, slots=True)
class Queued:
    """A row of the queue as the worker reads it."""

    position: int
    op: str
    doc_id: str
    document: dict[str, Any] | None
    received_at: float


class QueueReader:
    """The worker's side of one subscription's queue, on a connection of its own."""

    def __init__(self, conn: Conn, subscription_id: int) -> None:
        self._conn = conn
        self.subscription_id = subscription_id

    @classmethod
    async def open(cls, conninfo: str, subscription_id: int) -> QueueReader:
        conn = await connect(conninfo, f"push reader {subscription_id}")
        try:
            await guarded(
                "listening to the push queue",
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(subscription_id)))),
            )
        except BaseException:
            await close_quietly(conn)
            raise
        return cls(conn, subscription_id)

    def set_json_loads(self, loads: Callable[[bytes | str], Any]) -> None:
        """Parse the documents' jsonb with `loads`."""
        psycopg.types.json.set_json_loads(loads, self._conn)

    async def read(self, after: int, limit: int) -> list[Queued]:
        """Rows after position `after`, in order, `limit` at most."""

        async def read() -> list[Queued]:
            cursor = await self._conn.execute(
                _sql(_READ), {"sub": self.subscription_id, "after": after, "limit": limit}
            )
            rows = await cursor.fetchall()
            return [Queued(int(p), str(o), str(d), doc, float(at)) for p, o, d, doc, at in rows]

        return await guarded("reading the push queue", read())

    async def wait(self, timeout: float) -> None:
        """Return once a NOTIFY came (perhaps during the last read), or after `timeout`."""

        # psycopg keeps what arrives during a query and yields it first, all of it, so a
        # commit between a read and this wait is not missed, and a backlog is drained at
        # once. Ended by itself (stop_after, timeout): a generator left open would keep
        # the connection's lock.
        async def drain() -> None:
            async for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                pass  # a NOTIFY only wakes the reader: the queue's rows say what came

        await guarded("waiting for the push queue", drain(), timeout + _QUERY_TIMEOUT)

    async def remove_checkpointed(self, limit: int) -> tuple[int, int | None]:
        """Delete up to `limit` rows at or below the saved checkpoint, lowest first;
        return how many and the highest position removed."""

        async def remove() -> tuple[int, int | None]:
            cursor = await self._conn.execute(
                _sql(_REMOVE), {"sub": self.subscription_id, "limit": limit}
            )
            row = await cursor.fetchone()
            if row is None:
                return 0, None
            return int(row[0]), None if row[1] is None else int(row[1])

        return await guarded("removing checkpointed rows from the push queue", remove())

    async def queued(self) -> int:
        async def queued() -> int:
            cursor = await self._conn.execute(_sql(_QUEUED), {"sub": self.subscription_id})
            row = await cursor.fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return await guarded("counting the push queue", queued())

    async def close(self) -> None:
        await close_quietly(self._conn)
