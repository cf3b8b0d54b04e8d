"""PostgreSQL → OpenSearch through the real worker, real PostgreSQL and real osmem-server."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.support.harness import (
    WorkerThread,
    index_docs,
    index_rows,
    status_of,
    table_rows,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("fast_retries")


def test_insert_update_delete_reach_the_index(source_conn, table_name, make_subscription, search):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, title text)")
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    sub = make_subscription("crud", f"public.{table_name}")
    with WorkerThread([sub]):
        wait_for(lambda: len(index_docs(search, "crud")) == 3, what="snapshot")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (4, 'four')")
        source_conn.execute(f"UPDATE {table_name} SET title = 'TWO' WHERE id = 2")
        source_conn.execute(f"DELETE FROM {table_name} WHERE id = 3")
        wait_for(
            lambda: (
                index_docs(search, "crud")
                == {
                    "1": {"id": 1, "title": "one"},
                    "2": {"id": 2, "title": "TWO"},
                    "4": {"id": 4, "title": "four"},
                }
            ),
            what="changes",
        )
    sub = status_of("crud")
    assert sub.status == "stopped" and sub.snapshot_completed_at is not None
    assert sub.checkpoint and sub.checkpoint > 0


def test_composite_key_and_key_change(source_conn, table_name, make_subscription, search):
    source_conn.execute(
        f"CREATE TABLE {table_name} (tenant text, id int, v text, PRIMARY KEY (tenant, id))"
    )
    source_conn.execute(f"INSERT INTO {table_name} VALUES ('a|b', 1, 'x'), ('a', 1, 'y')")
    sub = make_subscription("composite", table_name)
    with WorkerThread([sub]):
        wait_for(lambda: set(index_docs(search, "composite")) == {"a\\|b|1", "a|1"})
        source_conn.execute(f"UPDATE {table_name} SET id = 2 WHERE tenant = 'a' AND id = 1")
        source_conn.execute(f"UPDATE {table_name} SET tenant = 'c' WHERE tenant = 'a|b'")
        wait_for(lambda: set(index_docs(search, "composite")) == {"a|2", "c|1"}, what="key change")
    docs = index_docs(search, "composite")
    assert docs["a|2"] == {"tenant": "a", "id": 2, "v": "y"}
    assert docs["c|1"] == {"tenant": "c", "id": 1, "v": "x"}


TYPES_DDL = """
CREATE TABLE {t} (
  id bigint PRIMARY KEY, small smallint, i int, n numeric, n_big numeric(40, 10), flag boolean,
  label text, code varchar(10), uid uuid, day date, at timestamp, at_tz timestamptz,
  doc jsonb, raw json, tags text[], matrix int[], nothing text, price real, far date,
  addr inet, pad char(4), multi text
)
"""
TYPES_ROW = """
INSERT INTO {t} VALUES (
  1, -32768, 2147483647, 0.1, 123456789012345678901234567890.0123456789, true,
  'héllo "quoted" \\ back', 'v', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
  '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.5+02',
  '{{"a": {{"b": [1, null, 3], "c": "x"}}}}',
  '[1, 2]', ARRAY['x', NULL, 'z,w'], ARRAY[[1, 2], [3, 4]], NULL, 1.5, 'infinity',
  '10.0.0.1', 'ab', E'tab\\there\\nnew line\\r \\\\N'
)
"""
EXPECTED = {
    "id": 1,
    "small": -32768,
    "i": 2147483647,
    "n": "0.1",
    "n_big": "123456789012345678901234567890.0123456789",
    "flag": True,
    "label": 'héllo "quoted" \\ back',
    "code": "v",
    "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "day": "2024-02-29",
    "at": "2024-02-29T13:14:15.123456",
    "at_tz": "2024-02-29T11:14:15.500000+00:00",
    "doc": {"a": {"b": [1, None, 3], "c": "x"}},
    "raw": [1, 2],
    "tags": ["x", None, "z,w"],
    "matrix": [[1, 2], [3, 4]],
    "nothing": None,
    "price": 1.5,
    "far": "infinity",
    # The server's output text, neither a cast to text (10.0.0.1/32, "ab") nor escaped.
    "addr": "10.0.0.1",
    "pad": "ab  ",
    "multi": "tab\there\nnew line\r \\N",
}


def test_every_type_decodes_the_same_in_snapshot_and_stream(
    source_conn, table_name, make_subscription, search
):
    source_conn.execute("SET TIME ZONE 'UTC'")
    source_conn.execute(TYPES_DDL.format(t=table_name))
    source_conn.execute(TYPES_ROW.format(t=table_name))
    sub = make_subscription("types", table_name)
    with WorkerThread([sub]):
        wait_for(lambda: "1" in index_docs(search, "types"), what="snapshot")
        source_conn.execute(
            f"INSERT INTO {table_name} SELECT 2, small, i, n, n_big, flag, label, code, uid, day,"
            f" at, at_tz, doc, raw, tags, matrix, nothing, price, far, addr, pad, multi"
            f" FROM {table_name}"
        )
        wait_for(lambda: "2" in index_docs(search, "types"), what="streamed row")
    docs = index_docs(search, "types")
    assert docs["1"] == EXPECTED
    assert docs["2"] == {**EXPECTED, "id": 2}


def test_unchanged_toast_value_is_kept(source_conn, table_name, make_subscription, search):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int, body text)")
    # Random text does not compress, so it is stored out of line (TOASTed).
    big = "".join(f"{i:x}" for i in range(40_000))
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 0, %s)", (big,))
    sub = make_subscription("toast", table_name, snapshot_mode="discard")
    with WorkerThread([sub]):
        wait_for(lambda: status_of("toast").status == "caught_up", what="caught up")
        # Not in the index yet (discard): the value comes from the source.
        source_conn.execute(f"UPDATE {table_name} SET v = 1 WHERE id = 1")
        wait_for(lambda: index_docs(search, "toast").get("1", {}).get("v") == 1)
        # In the index now: the value comes from the indexed document.
        source_conn.execute(f"UPDATE {table_name} SET v = 2 WHERE id = 1")
        source_conn.execute(f"UPDATE {table_name} SET id = 5 WHERE id = 1")
        wait_for(lambda: index_docs(search, "toast").get("5", {}).get("v") == 2)
    docs = index_docs(search, "toast")
    assert set(docs) == {"5"} and docs["5"]["body"] == big


def test_transaction_of_ten_thousand_changes(source_conn, table_name, make_subscription, search):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    sub = make_subscription("bigtx", table_name)
    with WorkerThread([sub]):
        wait_for(lambda: status_of("bigtx").status == "caught_up")
        with source_conn.transaction():
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT i, 'v' || i FROM generate_series(1, 7000) i"
            )
            source_conn.execute(f"UPDATE {table_name} SET v = 'u' WHERE id <= 2000")
            source_conn.execute(f"DELETE FROM {table_name} WHERE id > 6000")
        wait_for(lambda: len(index_docs(search, "bigtx")) == 6000, timeout=60, interval=1)
    docs = index_docs(search, "bigtx")
    assert docs["1"]["v"] == "u" and docs["2001"]["v"] == "v2001" and "6001" not in docs


def test_snapshot_with_concurrent_writers_converges_exactly(
    source_conn, source_dsn, table_name, make_subscription, search
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 50000) i")
    stop = threading.Event()
    writes = [0]

    def writer(seed: int) -> None:
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute(
                    f"UPDATE {table_name} SET v = v + 1 WHERE id = %s",
                    ((n * 7919 + seed) % 50000 + 1,),
                )
                conn.execute(
                    f"DELETE FROM {table_name} WHERE id = %s", ((n * 104729 + seed) % 50000 + 1,)
                )
                conn.execute(
                    f"INSERT INTO {table_name} VALUES (%s, 0) ON CONFLICT DO NOTHING",
                    (50000 + n * 2 + seed,),
                )
                writes[0] += 3

    sub = make_subscription("snap", table_name)
    threads = [threading.Thread(target=writer, args=(s,)) for s in (0, 1)]
    with WorkerThread([sub]):
        for t in threads:
            t.start()
        wait_for(lambda: status_of("snap").snapshot_completed_at, timeout=120, interval=1)
        time.sleep(1)  # keep writing after the copy too
        stop.set()
        for t in threads:
            t.join()
        expected = table_rows(source_conn, table_name)
        wait_for(
            lambda: index_rows(search, "snap") == expected,
            timeout=90,
            interval=2,
            what="index equal to table",
        )
    assert writes[0] > 100


def test_restart_resumes_from_checkpoint_without_loss(
    source_conn, table_name, make_subscription, search
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    sub = make_subscription("restart", table_name)
    with WorkerThread([sub]):
        source_conn.execute(f"INSERT INTO {table_name} SELECT i, 1 FROM generate_series(1, 100) i")
        wait_for(lambda: len(index_docs(search, "restart")) == 100)
    checkpoint = status_of("restart").checkpoint
    # Written while no worker runs: the slot keeps them.
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 2 FROM generate_series(101, 200) i")
    source_conn.execute(f"DELETE FROM {table_name} WHERE id <= 50")
    with WorkerThread([status_of("restart")]):
        wait_for(lambda: len(index_docs(search, "restart")) == 150)
    assert checkpoint is not None
    assert (status_of("restart").checkpoint or 0) > checkpoint
    docs = index_docs(search, "restart")
    assert set(docs) == {str(i) for i in range(51, 201)}


def test_discard_mode_streams_only_new_changes(source_conn, table_name, make_subscription, search):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1), (2)")
    sub = make_subscription("discard", table_name, snapshot_mode="discard")
    with WorkerThread([sub]):
        wait_for(lambda: status_of("discard").status == "caught_up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (3)")
        wait_for(lambda: index_docs(search, "discard"))
    assert set(index_docs(search, "discard")) == {"3"}


def test_idle_wake_up_is_well_under_a_second(source_conn, table_name, make_subscription, search):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    sub = make_subscription("idle", table_name)
    latencies = []
    with WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("idle").status == "caught_up")
        pipeline = worker.runner.pipelines["idle"]
        for i in range(5):
            time.sleep(1.0)  # idle
            before = pipeline.stats.transactions
            started = time.monotonic()
            source_conn.execute(f"INSERT INTO {table_name} VALUES ({i})")
            wait_for(lambda: pipeline.stats.transactions > before, interval=0.01)  # noqa: B023
            latencies.append(time.monotonic() - started)
    assert max(latencies) < 0.6, latencies


def test_interrupted_one_pass_copy_is_redone_and_sweeps_rows_deleted_meanwhile(
    source_conn, table_name, make_subscription, search
):
    # No unique index to read it in chunks of: the copy is one pass, which a restart
    # starts over (a chunked copy goes on instead: tests/integration/test_postgres_copy.py).
    source_conn.execute(f"CREATE TABLE {table_name} (id int NOT NULL)")
    source_conn.execute(f"ALTER TABLE {table_name} REPLICA IDENTITY FULL")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i FROM generate_series(1, 3000) i")
    # A small buffer: a stop flushes what was read ahead, and the copy must be cut short.
    sub = make_subscription(
        "resnap",
        table_name,
        key_columns=["id"],
        batch_max_size=500,
        backpressure_pause_at=1000,
        backpressure_resume_at=500,
    )
    with WorkerThread([sub]) as worker:
        wait_for(
            lambda: worker.runner.pipelines["resnap"].stats.snapshot_rows >= 500, interval=0.05
        )
    assert status_of("resnap").snapshot_completed_at is None  # stopped mid-copy
    partial = set(index_docs(search, "resnap"))
    assert "1" in partial
    source_conn.execute(f"DELETE FROM {table_name} WHERE id <= 10")
    with WorkerThread([status_of("resnap")]):
        wait_for(lambda: status_of("resnap").snapshot_completed_at, timeout=60)
    assert set(index_docs(search, "resnap")) == {str(i) for i in range(11, 3001)}


def test_slot_retaining_too_much_wal_warns_in_status(
    source_conn, table_name, make_subscription, search, settings
):
    settings.SYNCER_SLOT_WAL_WARN_BYTES = 1
    settings.SYNCER_SLOT_CHECK_INTERVAL = 0.2
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    sub = make_subscription("walwarn", table_name, snapshot_mode="discard")
    with WorkerThread([sub]):
        message = wait_for(
            lambda: (
                "retains" in status_of("walwarn").status_message
                and status_of("walwarn").status_message
            ),
            what="WAL warning",
        )
    assert "replication slot" in message and "of WAL (warning above 0 MiB)" in message


def test_source_connection_killed_mid_stream_reconnects_without_loss(
    source_conn, source_dsn, table_name, make_subscription, search
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    sub = make_subscription("pgdrop", table_name)
    with WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("pgdrop").status == "caught_up")
        for batch in range(6):
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT i, %s FROM generate_series(%s::int, %s::int) i",
                (batch, batch * 100, batch * 100 + 99),
            )
            # Kill every session of the worker on the source, as a failover would.
            source_conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        wait_for(lambda: len(index_docs(search, "pgdrop")) == 600, what="all rows after reconnects")
        # Streamed, not copied again: the documents are visible once the bulk is done,
        # the transactions are counted when their checkpoint is saved, just after.
        pipeline = worker.runner.pipelines["pgdrop"]
        wait_for(lambda: pipeline.stats.transactions >= 1, what="acknowledged transactions")
        assert pipeline.stats.snapshot_rows == 0
    # The lost connection is recorded for the operator, and the worker got past it.
    last_error = status_of("pgdrop").last_error
    assert "terminating connection" in last_error or "connection" in last_error.lower()


def test_deleting_a_subscription_drops_its_slot_and_publication(
    source_conn, table_name, make_subscription, search
):
    from syncer.operations.subscriptions import delete_subscription

    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    sub = make_subscription("dropme", table_name)
    with WorkerThread([sub]):
        wait_for(lambda: status_of("dropme").status == "caught_up")
    slot = sub.slot_name
    exists = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s"
    assert source_conn.execute(exists, (slot,)).fetchone() == (1,)
    assert delete_subscription(status_of("dropme")) is None
    assert source_conn.execute(exists, (slot,)).fetchone() == (0,)
    assert source_conn.execute(
        "SELECT count(*) FROM pg_publication WHERE pubname = %s", (slot,)
    ).fetchone() == (0,)
    assert index_docs(search, "dropme") == {} and search.indices.exists(index="dropme")
