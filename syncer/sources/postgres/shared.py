"""A shared copy: one table's copy cut into key ranges that every worker helps with.

With `SYNCER_COPY_SHARED` on, a subscription's owner does not read its table itself.
It cuts the key order into ranges (`plan_ranges`), one lease row each in the console
database (`CopyBoard`), streams the table's changes as always, and ends the copy, with
its sweep, once every range is done (`SharedCopy`). Each worker, the owner's included,
runs a helper (`helper.CopyHelperSource`) that takes a free range (`RangeLeases`: picked with
`FOR UPDATE SKIP LOCKED`, held with a session advisory lock that PostgreSQL releases
when the helper's process dies) and copies it as the owner copies a whole table
(`copy.ChunkedCopy`), between watermarks of its own stream: a TEMPORARY slot, which
PostgreSQL also drops with the process.

Why that is exact though the owner's stream and the helper write the same documents:

- a chunk's rows go out at their high watermark's position; a change committed later
  has a higher version and wins, whoever writes first; the chunk's row wins over what
  its snapshot saw; the changes between the watermarks drop their keys from the chunk.
- A delete is the one write whose version OpenSearch cannot keep: once the document is
  gone nothing remembers it (OpenSearch keeps a tombstone for `index.gc_deletes`, 60 s
  by default; osmem-server none), so a chunk row written after the owner's delete of
  that row would bring it back. The helper therefore notes the keys of a chunk that its
  own stream shows deleted (and not inserted again by the same transaction) until a
  marker it emits once the chunk is written comes back through that stream; then it
  deletes those documents that are still the chunk's own write, each delete conditional
  on the `_seq_no` it read, so a write landing in between wins. (A plain versioned
  delete would not do: osmem-server applies a delete whatever its version.) A delete
  that commits after the marker commits after the chunk was in the index, and the owner
  writes it later still.
- The helper's stream begins when its slot is created: transactions that committed
  before are not in its history, so a chunk whose snapshot did not yet see one of
  them (visible in the slot's exported snapshot) is read again (`ChunkedCopy(before=)`).

A helper that dies leaves its range with the cursor of its last settled chunk; the
next helper goes on from there.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from psycopg import AsyncConnection, sql

from syncer.engine.changes import DocKey, Position, Transaction
from syncer.sources.postgres.catalog import Table
from syncer.sources.postgres.copy import CopyCursor, CopyOrder
from syncer.sources.postgres.queries import QUERIES
from syncer.sources.sqlerrors import translated

log = structlog.get_logger(__name__)

RANGE_ROWS = 50_000
"""Rows per range, as the planner estimates them: a helper that dies loses at most a
chunk of one, and a table of 1,000,000 rows gives 20 to share."""
MAX_RANGES = 1_000
_PAGES_PER_RANGE = 10
"""Pages sampled per range wanted: the sample is of whole pages (`TABLESAMPLE SYSTEM`),
so a range's bounds need rows from several of them to fall anywhere near its size."""
POLL_SECONDS = 1.0
"""How often the owner reads the ranges' progress."""

Bound = list[str] | None
"""A key as its columns' text (the copy index's order); None: no bound on that side."""


@dataclass(frozen=True)
class KeyRange:
    after: Bound
    """Keys above this one (None: from the first)."""
    upto: Bound
    """Up to this one, included (None: to the last, rows inserted meanwhile too)."""


@dataclass(frozen=True)
class Lease:
    """A range taken by this helper."""

    id: int
    copy: str
    seq: int
    range: KeyRange
    index: str
    """Where the copy writes (the owner's index, or the new one of a resync)."""
    cursor: Bound
    """The last key copied and settled; None before the first chunk."""
    rows: int
    pending: list[DocKey]
    """Keys of chunks a helper sent out and had not settled: if it died, some may be
    in the index though their rows are gone (its successor rechecks them)."""


@dataclass(frozen=True)
class RangesDone:
    ranges: int
    done: int
    rows: int


class CopyBoard(Protocol):
    """The owner's view of its shared copies' lease rows (`syncer.leases.CopyPlans`)."""

    async def planned(self, copy: str) -> bool: ...

    async def plan(self, copy: str, ranges: Sequence[KeyRange], index: str) -> None:
        """Write the ranges of `copy`, removing those of any other copy."""

    async def progress(self, copy: str) -> RangesDone: ...


class RangeLeases(Protocol):
    """A helper's leases (`syncer.leases.LeaseHolder`), on a session of its own."""

    async def take(self, index: str | None = None) -> Lease | None:
        """A free range of a shared copy of this subscription (one of `index`'s)."""

    async def progress(
        self, lease: Lease, cursor: Bound, rows: int, pending: Sequence[DocKey]
    ) -> bool:
        """Record the range's cursor and the keys sent out but not settled; False if the
        lease is gone (another copy began)."""

    async def finish(self, lease: Lease, rows: int) -> None:
        """The range is copied: mark it done and let it go."""

    async def close(self) -> None: ...


def copy_id(cursor: CopyCursor) -> str:
    """The leases' name for a copy: its request and where the stream stood."""
    return f"{cursor.request}@{cursor.since}"


async def plan_ranges(
    conn: AsyncConnection[tuple[Any, ...]],
    table: Table,
    order: CopyOrder,
    estimate: int | None,
    range_rows: int = RANGE_ROWS,
) -> list[KeyRange]:
    """Cut the table's key order into ranges of about `range_rows` rows each, from a
    sample of its pages (`TABLESAMPLE SYSTEM`: ten pages a range, not the table)."""
    with translated(f"planning the ranges of {table.qualified}"):
        row = await (await conn.execute(QUERIES["relation_pages"], {"oid": table.oid})).fetchone()
        pages = int(row[0]) if row and row[0] else 0
        if (estimate is None or estimate <= 0) and pages:
            # Never analysed (a table just loaded): the rows of twenty pages or so, counted.
            percent = min(100.0, 2000 / pages)
            query = sql.SQL("SELECT count(*) FROM {} TABLESAMPLE SYSTEM ({})").format(
                table.identifier, sql.Literal(percent)
            )
            row = await (await conn.execute(query)).fetchone()
            estimate = int(int(row[0]) * 100 / percent) if row else 0
        estimate = estimate or 0
        wanted = min(MAX_RANGES, math.ceil(estimate / range_rows))
        if wanted <= 1 or pages <= 1:
            return [KeyRange(None, None)]
        percent = min(100.0, 100.0 * wanted * _PAGES_PER_RANGE / pages)
        keys = [sql.Identifier(c) for c in order.columns]
        # Aliased apart from the columns, so that ORDER BY sorts the typed values.
        texts = sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(k, sql.Identifier(f"searchsync_k{i}"))
            for i, k in enumerate(keys)
        )
        query = sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) ORDER BY {}").format(
            texts, table.identifier, sql.Literal(percent), sql.SQL(", ").join(keys)
        )
        sample = await (await conn.execute(query)).fetchall()
    bounds: list[list[str]] = []
    for i in range(1, wanted):  # the sample's quantiles
        if not sample:
            break
        bound = [str(v) for v in sample[i * len(sample) // wanted]]
        if not bounds or bound != bounds[-1]:
            bounds.append(bound)
    edges: list[Bound] = [None, *bounds, None]
    return [KeyRange(a, b) for a, b in itertools.pairwise(edges)]


class SharedCopy:
    """The owner's side of a shared copy: plan once, then watch the ranges get done."""

    def __init__(
        self, board: CopyBoard, cursor: CopyCursor, estimate: int | None, index: str
    ) -> None:
        self.board = board
        self.cursor = cursor
        self.copy = copy_id(cursor)
        self.estimate = estimate
        self.index = index
        self.done = False
        self._polled_at = 0.0
        self._reported = -1
        self._planner: tuple[AsyncConnection[tuple[Any, ...]], Table, CopyOrder, int]

    async def start(
        self,
        conn: AsyncConnection[tuple[Any, ...]],
        table: Table,
        order: CopyOrder,
        range_rows: int = RANGE_ROWS,
    ) -> int:
        """Write the plan unless it is there (a resumed copy); return its ranges."""
        self._planner = conn, table, order, range_rows
        if await self.board.planned(self.copy):
            return (await self.board.progress(self.copy)).ranges
        return await self._plan()

    async def _plan(self) -> int:
        conn, table, order, range_rows = self._planner
        ranges = await plan_ranges(conn, table, order, self.estimate, range_rows)
        await self.board.plan(self.copy, ranges, self.index)
        return len(ranges)

    async def poll(self, position: Position, commit_time: float) -> list[Transaction]:
        """At most every POLL_SECONDS: the progress (its cursor, saved with the
        checkpoint), then the copy's end once every range is done."""
        now = time.monotonic()
        if self.done or now - self._polled_at < POLL_SECONDS:
            return []
        self._polled_at = now
        figures = await self.board.progress(self.copy)
        if not figures.ranges:
            # Deleted behind the worker's back (by hand, or a reset of the subscription):
            # the copy goes on over ranges planned again, and rewrites what was copied.
            log.warning("copy_ranges_missing", copy=self.copy)
            await self._plan()
            return []
        cursor = self.cursor
        out = []
        if figures.rows != self._reported:
            self._reported = cursor.rows = figures.rows
            out.append(cursor.chunk(position, commit_time, [], self.estimate))
        if figures.done == figures.ranges:
            self.done = True
            out.append(cursor.end(position, commit_time))
        return out
