"""Which worker runs which subscription: PostgreSQL session-level advisory locks.

Each worker holds one dedicated connection to the console's database and takes
`pg_try_advisory_lock(NAMESPACE, subscription id)` on it for every subscription it
runs. The lock lives as long as that connection: when a worker dies, PostgreSQL
drops its session and the locks with it, and another worker's next try succeeds.
A worker whose lock connection fails no longer owns anything and must stop every
pipeline at once (`OwnershipLost`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import psycopg
import structlog

from syncer.dsn import console_conninfo
from syncer.errors import OwnershipLost
from syncer.text import redact

log = structlog.get_logger(__name__)

NAMESPACE = 0x53594E43
"""The first key of every lock ("SYNC"), so ours never collide with other advisory locks."""

_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
_UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
_PING = "SELECT 1"
_QUERY_TIMEOUT = 5.0


def lock_key(subscription_id: int) -> tuple[int, int]:
    """The two int4 keys of a subscription's lock (as shown in pg_locks: classid, objid)."""
    return NAMESPACE, subscription_id & 0x7FFFFFFF


class Ownership:
    """The subscriptions this worker holds, and the connection that holds them."""

    def __init__(self, worker_id: str, conninfo: str | None = None) -> None:
        self.worker_id = worker_id
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self.held: set[int] = set()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def connect(self) -> None:
        """Open the lock connection; raise OwnershipLost if the database is unreachable."""
        if self.connected:
            return
        self.held.clear()
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo or console_conninfo(),
                autocommit=True,
                connect_timeout=5,
                application_name=f"searchsync worker {self.worker_id}"[:63],
            )
        except psycopg.Error as exc:
            raise OwnershipLost(f"cannot open the lock connection: {redact(str(exc))}") from exc
        log.info("ownership_connected", worker=self.worker_id)

    async def check(self) -> None:
        """Prove the connection (and so every lock on it) is still alive."""
        await self._scalar(_PING)

    async def try_acquire(self, subscription_ids: Iterable[int]) -> list[int]:
        """Take the locks that are free; return the ids acquired now."""
        acquired = []
        for sub_id in subscription_ids:
            if sub_id in self.held:
                continue
            if await self._scalar(_TRY_LOCK, lock_key(sub_id)):
                self.held.add(sub_id)
                acquired.append(sub_id)
        return acquired

    async def release(self, subscription_id: int) -> None:
        if subscription_id not in self.held:
            return
        self.held.discard(subscription_id)
        await self._scalar(_UNLOCK, lock_key(subscription_id))

    async def close(self) -> None:
        """Close the connection: PostgreSQL releases every lock with it."""
        self.held.clear()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except psycopg.Error:
                pass

    async def _scalar(self, query: str, params: tuple[int, int] | None = None) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            self.held.clear()
            raise OwnershipLost("the lock connection is closed")
        try:
            # A connection that hangs (a network partition) is as lost as a closed one.
            row = await asyncio.wait_for(_fetch_one(conn, query, params), _QUERY_TIMEOUT)
        except (psycopg.Error, TimeoutError) as exc:
            await self.close()
            raise OwnershipLost(
                f"the lock connection failed: {redact(str(exc)) or 'timed out'}"
            ) from exc
        return None if row is None else row[0]


async def _fetch_one(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], query: str, params: tuple[int, int] | None
) -> tuple[Any, ...] | None:
    cursor = await conn.execute(query, params)
    return await cursor.fetchone()
