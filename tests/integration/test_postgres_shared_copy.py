"""A copy shared by several workers (SYNCER_COPY_SHARED), through real worker processes,
real PostgreSQL and real osmem-server: ranges planned from a sample, exact under a
hostile writer while workers are killed, and the documents a helper's chunk brought back."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from syncer.dsn import console_conninfo
from syncer.leases import CopyPlans, LeaseHolder
from syncer.models import CopyLease, Subscription
from syncer.sources.postgres.catalog import describe_table
from syncer.sources.postgres.copy import CopyOrder, copy_order
from syncer.sources.postgres.shared import KeyRange, plan_ranges
from syncer.worker import state
from syncer.worker.copy_crew import CopyCrew
from tests.support.harness import (
    HostileWriter,
    index_docs,
    index_drift,
    index_rows,
    log_events,
    status_of,
    table_rows,
    wait_for,
)
from tests.support.httpfaults import FaultProxy
from tests.support.process import WorkerProcess

pytestmark = pytest.mark.usefixtures("fast_retries")


async def _plan(dsn: str, table: str, range_rows: int) -> tuple[list[KeyRange], CopyOrder]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        described = await describe_table(conn, table, ())
        order = await copy_order(conn, described)
        assert isinstance(order, CopyOrder)
        cursor = await conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (table,)
        )
        row = await cursor.fetchone()
        assert row is not None
        return await plan_ranges(conn, described, order, int(row[0]), range_rows), order


def _rows_in(conn: psycopg.Connection, table: str, order: CopyOrder, key: KeyRange) -> int:
    keys = sql.SQL(", ").join(sql.Identifier(c) for c in order.columns)
    values = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(t)) for t in order.types
    )
    bounds: list[sql.Composable] = [sql.SQL("true")]
    params: list[str] = []
    if key.after is not None:
        bounds.append(sql.SQL("({}) > ({})").format(keys, values))
        params += key.after
    if key.upto is not None:
        bounds.append(sql.SQL("({}) <= ({})").format(keys, values))
        params += key.upto
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        sql.Identifier(table), sql.SQL(" AND ").join(bounds)
    )
    return int(conn.execute(query, params).fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize(
    "columns, key, values",
    [
        ("id int PRIMARY KEY", "id", "i"),
        # Text sorts by the column's collation, not as Python would: the bounds are the
        # server's, in its order.
        (
            "region text, n int, PRIMARY KEY (region, n)",
            "region, n",
            "CASE i % 3 WHEN 0 THEN 'Zürich' WHEN 1 THEN 'abc' ELSE 'Ärhus' END, i",
        ),
    ],
)
def test_ranges_cover_the_table_once_each_about_the_size_asked(
    source_conn, source_dsn, table_name, columns, key, values
):
    source_conn.execute(f"CREATE TABLE {table_name} ({columns}, v int)")
    source_conn.execute(
        f"INSERT INTO {table_name} ({key}, v) SELECT {values}, 0 FROM generate_series(1, 20000) i"
    )
    source_conn.execute(f"ANALYZE {table_name}")
    ranges, order = asyncio.run(_plan(source_dsn, table_name, 2000))
    counts = [_rows_in(source_conn, table_name, order, r) for r in ranges]
    assert 6 <= len(ranges) <= 12, counts
    assert sum(counts) == 20000  # bounds are shared: no row in two ranges, none in none
    assert ranges[0].after is None and ranges[-1].upto is None
    assert all(a.upto == b.after for a, b in itertools.pairwise(ranges))
    assert max(counts) < 2000 * 3, counts  # a block sample, so only roughly even


def test_a_small_or_never_analysed_table_is_one_range_or_estimated_from_a_sample(
    source_conn, source_dsn, table_name
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 500) i")
    ranges, _ = asyncio.run(_plan(source_dsn, table_name, 2000))
    assert ranges == [KeyRange(None, None)]
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(501, 60000) i")
    ranges, _ = asyncio.run(_plan(source_dsn, table_name, 2000))  # reltuples: still none
    assert len(ranges) > 5


def _plan_copy(sub: Subscription, ranges: list[KeyRange]) -> None:
    """What an owner does as a shared copy begins: its ranges in the console database."""

    async def plan() -> None:
        try:
            await CopyPlans(sub.pk).plan("test@1", ranges, sub.index_name)
        finally:
            await state.close_connections()  # the ORM thread's, which the test DB outlives

    asyncio.run(plan())


def test_a_range_is_one_helpers_until_it_finishes_or_its_session_dies(
    source_conn, table_name, make_subscription
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    sub = make_subscription("leased", table_name)
    ranges = [KeyRange(None, ["10"]), KeyRange(["10"], None)]
    _plan_copy(sub, ranges)

    async def scenario() -> None:
        first, second, third = (LeaseHolder(sub.pk, n, console_conninfo()) for n in "abc")
        a, b = await first.take(), await second.take()
        assert a is not None and b is not None and {a.seq, b.seq} == {1, 2}
        assert a.range == ranges[a.seq - 1]
        assert await third.take() is None  # both held
        await first.close()  # as a kill -9 would: the session ends, the lock with it
        again = await third.take()
        assert again is not None and again.seq == a.seq
        assert await third.progress(again, ["5"], 5, [(6,), (7,)])
        await second.finish(b, 9)
        assert not await second.progress(b, ["20"], 20, [])  # done: no going back
        await second.close()
        await third.close()

    asyncio.run(scenario())
    done, taken_over = sorted(CopyLease.objects.filter(subscription=sub), key=lambda r: not r.done)
    assert (done.done, done.rows, done.holder) == (True, 9, "b")
    assert (taken_over.done, taken_over.holder) == (False, "c")
    assert (taken_over.cursor, taken_over.rows, taken_over.pending) == (["5"], 5, [[6], [7]])


class _Crew:
    """This process's CopyCrew in a thread of its own, as a helper-only worker."""

    def __init__(self, names: list[str]) -> None:
        self.crew = CopyCrew("test-helper", names)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                await self.crew.run(self._stop)
            finally:
                await state.close_connections()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> _Crew:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wait_for(lambda: self._loop is not None, timeout=10)
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive() and self.error is None, self.error


@pytest.fixture
def slow_bulk(osmem_clone: Any, settings: Any) -> Iterator[FaultProxy]:
    """A proxy in front of osmem-server that holds every _bulk request a while."""
    proxy = FaultProxy(str(osmem_clone.url))
    proxy.start()
    settings.OPENSEARCH_URL = proxy.url
    yield proxy
    proxy.stop()


def test_a_helper_removes_a_document_its_chunk_brought_back_after_the_owners_delete(
    source_conn, table_name, make_subscription, search, slow_bulk, settings
):
    """The owner's delete of a row lands first; the helper's chunk, read before the
    delete, lands after it and brings the document back (osmem-server keeps no
    tombstone; OpenSearch keeps one for 60 s). The helper's stream showed the delete
    while the chunk was out: once it settles, the document goes for good."""
    settings.SYNCER_COPY_CHUNK_ROWS = 1000
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 300) i")
    sub = make_subscription("resent", table_name)
    # What the owner, not running here, would have made: the publication and the plan.
    source_conn.execute(f"CREATE PUBLICATION {sub.slot_name} FOR TABLE {table_name}")
    _plan_copy(sub, [KeyRange(None, None)])
    slow_bulk.delay(1.5, path_contains="_bulk")
    with _Crew(["resent"]):
        wait_for(lambda: slow_bulk.stats.delayed >= 1, timeout=30, what="the chunk's bulk")
        # The chunk is on its way: the row goes, and its delete (the owner's) lands first.
        source_conn.execute(f"DELETE FROM {table_name} WHERE id = 7")
        search.index(index="resent", id="7", body={"id": 7, "v": 0})  # as if copied before
        search.delete(index="resent", id="7", refresh=True)
        # Deleted and inserted again in one transaction: it ends with a row, which the
        # owner writes at that transaction's version; the helper must not delete it.
        with source_conn.transaction():
            source_conn.execute(f"DELETE FROM {table_name} WHERE id = 8")
            source_conn.execute(f"INSERT INTO {table_name} VALUES (8, 5)")
        wait_for(lambda: CopyLease.objects.get(subscription=sub).done, timeout=30)
    docs = index_docs(search, "resent")
    assert "7" not in docs
    assert "8" in docs  # (as the chunk read it: the owner, not running here, would write v 5)
    assert len(docs) == 299
    lease = CopyLease.objects.get(subscription=sub)
    assert lease.rows == 300  # as read: the row went after the chunk's snapshot
    assert lease.holder == "test-helper"


def test_a_helper_taking_over_a_range_rechecks_what_its_predecessor_left_unsettled(
    source_conn, table_name, make_subscription, search, settings
):
    """A helper killed with chunks out: its row says where it stood (cursor 10) and
    which keys it had sent but not settled. Its successor reads those keys again first:
    a row still there is written, one gone (its document a ghost the dead helper's
    chunk brought back) is deleted; then it goes on after the cursor."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 300) i")
    source_conn.execute(f"DELETE FROM {table_name} WHERE id = 7")
    sub = make_subscription("taken_over", table_name)
    source_conn.execute(f"CREATE PUBLICATION {sub.slot_name} FOR TABLE {table_name}")
    _plan_copy(sub, [KeyRange(None, None)])
    CopyLease.objects.filter(subscription=sub).update(
        cursor=["10"], rows=10, pending=[[5], [7]], holder="dead"
    )
    search.index(
        index="taken_over", id="7", body={"id": 7, "v": 0}, version=1, version_type="external"
    )
    with _Crew(["taken_over"]):
        wait_for(lambda: CopyLease.objects.get(subscription=sub).done, timeout=30)
    assert sorted(int(i) for i in index_docs(search, "taken_over")) == [5, *range(11, 301)]
    lease = CopyLease.objects.get(subscription=sub)
    assert lease.rows == 10 + 290 and lease.pending == [] and lease.holder == "test-helper"


class _Near:
    """Where the copy is: a key inside an open range, looked up at most every 0.2 s."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._at, self._value, self._lock = 0.0, 1, threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            if time.monotonic() - self._at > 0.2:
                self._at = time.monotonic()
                open_ranges = CopyLease.objects.filter(subscription__name=self.name, done=False)
                keys = [int((r.cursor or r.after or ["1"])[0]) for r in open_ranges[:4]]
                connection.close()  # the writer's thread's own: it would outlive the test
                if keys:
                    self._value = keys[int(self._at * 10) % len(keys)]
            return self._value


def test_workers_share_a_copy_exactly_under_a_hostile_writer_though_each_is_killed(
    source_conn, source_dsn, table_name, make_subscription, search, opensearch_url, tmp_path
):
    rows = 20_000
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int, pad text)")
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT i, 0, 'x' FROM generate_series(1, %s) i", (rows,)
    )
    source_conn.execute(f"ANALYZE {table_name}")
    make_subscription("shared", table_name)
    logs = [tmp_path / f"worker{i}.log" for i in range(4)]

    def worker(i: int) -> WorkerProcess:
        return WorkerProcess(
            opensearch_url,
            logs[i],
            SYNCER_COPY_SHARED="1",
            SYNCER_COPY_RANGE_ROWS="1000",
            SYNCER_COPY_CHUNK_ROWS="300",
        )

    workers = [worker(0), worker(1)]
    writer = HostileWriter(source_dsn, table_name, _Near("shared"), rows + 1000, pause=0.01)

    def done() -> int:
        return CopyLease.objects.filter(subscription__name="shared", done=True).count()

    try:
        wait_for(lambda: CopyLease.objects.filter(subscription__name="shared").exists())
        ranges = CopyLease.objects.filter(subscription__name="shared").count()
        writer.start()
        # Kill each of the first two (the owner among them) once a few more ranges are done.
        for victim, spare in ((0, 2), (1, 3)):
            reached = done() + 3
            wait_for(lambda: done() >= reached, timeout=90, what="ranges done")  # noqa: B023
            workers[victim].kill()
            workers.append(worker(spare))
        wait_for(lambda: status_of("shared").snapshot_completed_at, timeout=120)
        writer.stop()
        expected = table_rows(source_conn, table_name)
        try:
            wait_for(lambda: index_rows(search, "shared") == expected, timeout=60, what="index")
        except AssertionError:
            raise AssertionError(index_drift(search, "shared", source_conn, table_name)) from None
    finally:
        writer.stopping.set()
        codes = [w.terminate() for w in workers[2:]]
    assert codes == [0, 0], [w.output() for w in workers[2:]]
    assert writer.count > 200 and writer.keys_changed > 20, writer.count
    leases = list(CopyLease.objects.filter(subscription__name="shared"))
    assert len(leases) == ranges >= 15 and all(lease.done for lease in leases)
    assert sum(lease.rows for lease in leases) >= rows * 0.9
    # Every worker helped, and the copy began once: the owners after it went on with it.
    helped = [len(log_events(log, "copy_range_done")) for log in logs]
    assert sum(helped) >= ranges - 2, helped  # a kill may come between a range and its line
    assert sum(1 for n in helped if n) >= 3, helped
    assert len({lease.holder for lease in leases}) >= 3
    started = [e for log in logs for e in log_events(log, "copy_started")]
    assert len(started) >= 2 and all(e["shared_ranges"] == ranges for e in started), started
    assert sum(len(log_events(log, "copy_resumed")) for log in logs) == len(started) - 1
    assert sum(len(log_events(log, "snapshot_completed")) for log in logs) == 1
    # The helpers' temporary slots went with their processes, killed or not.
    slots = source_conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s",
        (f"{status_of('shared').slot_name}_copy_%",),
    ).fetchall()
    assert slots == []
