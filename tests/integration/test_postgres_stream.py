"""The PostgreSQL source's replication stream against a real PostgreSQL: what the slot
confirms, when, and what survives a lost walsender.

The source is driven directly, as the pipeline drives it (read, wait, acknowledge), so
each test can hold back an acknowledgement or stop reading and look at the slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from syncer.engine.changes import Position, Transaction
from syncer.engine.interfaces import ResumeState
from syncer.errors import SourceUnavailable
from syncer.sources.postgres.source import PostgresSource, PostgresSourceConfig
from tests.support.harness import WorkerThread, status_of, wait_for

STREAMING = ResumeState(checkpoint=None, snapshot_done=True, snapshot_mode="discard")


@pytest.fixture
def table(source_conn: psycopg.Connection, table_name: str) -> Iterator[str]:
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    yield table_name
    source_conn.execute(f"DROP TABLE IF EXISTS {table_name}")


def make_source(dsn: str, table: str) -> PostgresSource:
    return PostgresSource(PostgresSourceConfig(table, dsn, table, ("id",), f"s_{table}"))


def confirmed(conn: psycopg.Connection, source: PostgresSource) -> Position:
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (source.config.slot_name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def walsender_pid(conn: psycopg.Connection, source: PostgresSource) -> int | None:
    row = conn.execute(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
        (source.config.slot_name,),
    ).fetchone()
    return None if row is None else row[0]


async def read_until(source: PostgresSource, count: int, timeout: float = 10) -> list[Transaction]:
    """Read as the pipeline does (read, then wait on the stream) until `count` arrived."""
    got: list[Transaction] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} transactions arrived"
        got.extend(await source.read(1000))
        if len(got) < count:
            await source.wait(0.5)
    return got


async def until(condition: Callable[[], bool], what: str, source: PostgresSource) -> None:
    """Keep the source's loop going (as the idle pipeline does) until `condition`."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert await source.read(1000) == []
        await source.wait(0.2)


async def test_the_slot_confirms_only_acknowledged_positions(source_conn, source_dsn, table):
    source = make_source(source_dsn, table)
    await source.open(STREAMING)
    try:
        created = confirmed(source_conn, source)
        for i in range(3):
            source_conn.execute(f"INSERT INTO {table} VALUES ({i}, 'x')")
        first, _, third = await read_until(source, 3)
        # Several status intervals: what was read but not acknowledged stays in the slot.
        await asyncio.sleep(2.5)
        assert confirmed(source_conn, source) == created
        await source.acknowledge(first.position)
        await until(lambda: confirmed(source_conn, source) > created, "first confirm", source)
        await asyncio.sleep(2.5)
        assert confirmed(source_conn, source) == first.position
        await source.acknowledge(third.position)
        await until(
            lambda: confirmed(source_conn, source) >= third.position, "last confirm", source
        )
    finally:
        await source.close()


async def test_an_idle_slot_moves_past_other_tables_wal(source_conn, source_dsn, table):
    source = make_source(source_dsn, table)
    source_conn.execute(f"CREATE TABLE {table}_other (id int PRIMARY KEY, pad text)")
    await source.open(STREAMING)
    try:
        source_conn.execute(f"INSERT INTO {table} VALUES (1, 'mine')")
        [mine] = await read_until(source, 1)
        await source.acknowledge(mine.position)
        for i in range(20):  # WAL the publication does not cover
            source_conn.execute(
                f"INSERT INTO {table}_other SELECT g, repeat('x', 200) "
                f"FROM generate_series({i * 500}, {i * 500 + 499}) g"
            )
        row = source_conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
        ).fetchone()
        assert row is not None
        await until(
            lambda: confirmed(source_conn, source) >= row[0], "the slot past that WAL", source
        )
        assert confirmed(source_conn, source) - mine.position > 1_000_000
    finally:
        await source.close()
        source_conn.execute(f"DROP TABLE {table}_other")


async def test_a_source_that_stops_reading_still_keeps_its_walsender(
    source_conn, source_dsn, table
):
    # The walsender ends a client silent for wal_sender_timeout: under backpressure the
    # worker reads nothing for a long time, and its status updates must keep going.
    dsn = make_conninfo(source_dsn, options="-c wal_sender_timeout=2s")
    source = make_source(dsn, table)
    await source.open(STREAMING)
    try:
        source_conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        await read_until(source, 1)
        pid = walsender_pid(source_conn, source)
        assert pid is not None
        named = "SELECT application_name FROM pg_stat_replication WHERE pid = %s"
        assert source_conn.execute(named, (pid,)).fetchone() == (f"searchsync s_{table}",)
        await asyncio.sleep(7)  # the event loop runs; the source is not read
        source_conn.execute(f"INSERT INTO {table} VALUES (2, 'b')")
        [second] = await read_until(source, 1)
        assert [c.key for c in second.changes] == [(2,)]
        assert walsender_pid(source_conn, source) == pid
    finally:
        await source.close()


async def test_a_terminated_walsender_resumes_from_the_checkpoint_without_loss(
    source_conn, source_dsn, table
):
    source = make_source(dsn=source_dsn, table=table)
    await source.open(STREAMING)
    for i in (1, 2):
        source_conn.execute(f"INSERT INTO {table} VALUES ({i}, 'v')")
    first, _ = await read_until(source, 2)
    await source.acknowledge(first.position)
    source_conn.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
        (source.config.slot_name,),
    )
    with pytest.raises(SourceUnavailable, match=r"terminating connection|closed the connection"):
        await read_until(source, 1)
    await source.close()
    source_conn.execute(f"INSERT INTO {table} VALUES (3, 'v')")

    # The pipeline's next session: open from the saved checkpoint.
    resumed = make_source(source_dsn, table)
    await resumed.open(ResumeState(first.position, True, "discard"))
    try:
        again = await read_until(resumed, 2)
        assert [[c.key for c in tx.changes] for tx in again] == [[(2,)], [(3,)]]
        assert again[0].position > first.position
    finally:
        await resumed.close()


def test_deleting_a_streaming_subscription_ends_its_walsender_and_drops_the_slot(
    source_conn, table, make_subscription, search
):
    from syncer.operations.subscriptions import delete_subscription

    sub = make_subscription("streamdrop", table)
    exists = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s"
    with WorkerThread([sub]):
        source_conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        wait_for(lambda: status_of("streamdrop").checkpoint, what="a streamed change")
        active = "SELECT active FROM pg_replication_slots WHERE slot_name = %s"
        assert source_conn.execute(active, (sub.slot_name,)).fetchone() == (True,)
        assert delete_subscription(status_of("streamdrop")) is None
        assert source_conn.execute(exists, (sub.slot_name,)).fetchone() == (0,)
        time.sleep(3)  # the worker lost its stream: it must not make the slot again
        assert source_conn.execute(exists, (sub.slot_name,)).fetchone() == (0,)


async def test_an_idle_stream_stays_fresh_while_the_pipeline_sleeps(source_conn, source_dsn, table):
    # Staleness is now minus progressed_at: the server's keepalives, answered while the
    # reader waits, must keep it current without waking the pipeline. The stream pings
    # a quiet server every quarter of its wal_sender_timeout (here 1 s), at most 10 s.
    source = make_source(make_conninfo(source_dsn, options="-c wal_sender_timeout=4s"), table)
    await source.open(STREAMING)
    try:
        source_conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        await read_until(source, 1)
        assert await source.read(1000) == []
        await source.wait(4.0)  # one long sleep: nothing but keepalives arrives
        progressed = source.progressed_at()
        assert progressed is not None and time.time() - progressed < 2.0
    finally:
        await source.close()


class CountedSends:
    """A stream's real replication cursor, counting the status updates the stream sends."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.sends: list[dict[str, Any]] = []

    def send_feedback(self, **kwargs: Any) -> None:
        self.sends.append(kwargs)
        self.cursor.send_feedback(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cursor, name)


async def test_an_idle_stream_sends_no_status_update_until_it_has_something_to_say(
    source_conn, source_dsn, table
):
    # A status update a second, answered by the server, was a fifth of an idle worker's
    # CPU with 100 subscriptions: the timer sends a confirmed position within a second,
    # and otherwise pings every keepalive interval (10 s under the default 60 s timeout).
    source = make_source(source_dsn, table)
    await source.open(STREAMING)
    try:
        source_conn.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        [tx] = await read_until(source, 1)
        stream = source._stream
        assert stream is not None and stream.keepalive_interval == 10.0
        stream._cursor = counted = CountedSends(stream._cursor)
        await asyncio.sleep(3.5)  # the timer runs every second; the loop is free
        assert [s for s in counted.sends if s.get("force")] == []
        await source.acknowledge(tx.position)
        counted.sends.clear()
        await asyncio.sleep(1.5)
        assert [s for s in counted.sends if s.get("force")] == [{"force": True}]
        await until(lambda: confirmed(source_conn, source) >= tx.position, "confirmed", source)
    finally:
        await source.close()
