"""The resumable, chunked copy of a PostgreSQL table, through the real worker, real
PostgreSQL and real osmem-server: exact under hostile writers, resumed after a stop,
resynced in place without a new slot, and one pass where no index gives an order."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest

from syncer.models import DeadLetter
from syncer.operations import control
from tests.support.harness import (
    HostileWriter,
    WorkerThread,
    index_docs,
    index_rows,
    log_events,
    status_of,
    table_rows,
    wait_for,
)
from tests.support.process import WorkerProcess

pytestmark = pytest.mark.usefixtures("fast_retries")


def test_copy_is_exact_while_writers_change_keys_in_and_around_the_chunk_being_read(
    source_conn, source_dsn, table_name, make_subscription, search, settings
):
    settings.SYNCER_COPY_CHUNK_ROWS = 40
    rows = 4000
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int, pad text)")
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT i, 0, repeat('x', 20) FROM generate_series(1, %s) i",
        (rows,),
    )
    sub = make_subscription("hostile", table_name, batch_max_size=200)
    with WorkerThread([sub]) as worker:
        stats = worker.runner.pipelines["hostile"].stats
        writer = HostileWriter(source_dsn, table_name, lambda: stats.snapshot_rows, rows + 200)
        writer.start()
        try:
            wait_for(lambda: status_of("hostile").snapshot_completed_at, timeout=120)
            time.sleep(0.5)  # and a little after the copy
        finally:
            writer.stop()
        expected = table_rows(source_conn, table_name)
        wait_for(lambda: index_rows(search, "hostile") == expected, timeout=60, what="index")
    assert writer.count > 200 and writer.keys_changed > 20, writer.count
    # It was copied in chunks while it streamed: the copy took more than a hundred rounds.
    assert stats.snapshot_rows >= rows * 0.8
    assert stats.transactions > 100
    sub = status_of("hostile")
    assert sub.source_state == {}  # the cursor is gone with the copy
    assert not DeadLetter.objects.filter(subscription=sub).exists()


def test_a_copy_stopped_midway_goes_on_from_its_cursor(
    source_conn, table_name, make_subscription, search, settings
):
    settings.SYNCER_COPY_CHUNK_ROWS = 100
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 3000) i")
    # A slow sink would do; a small buffer is enough to stop the copy midway.
    sub = make_subscription(
        "resume",
        table_name,
        batch_max_size=100,
        backpressure_pause_at=200,
        backpressure_resume_at=100,
    )
    with WorkerThread([sub]) as worker:
        wait_for(
            lambda: (status_of("resume").source_state or {}).get("copy", {}).get("rows", 0) >= 500,
            interval=0.02,
        )
    first = status_of("resume")
    assert first.snapshot_completed_at is None  # stopped midway
    cursor = (first.source_state or {})["copy"]
    copied = cursor["rows"]
    assert copied < 3000 and cursor["after"] == [str(copied)]
    # While no worker runs: rows already copied change, go, and come; new rows come.
    source_conn.execute(f"DELETE FROM {table_name} WHERE id <= 10")
    source_conn.execute(f"UPDATE {table_name} SET v = 7 WHERE id BETWEEN 11 AND 20")
    source_conn.execute(f"INSERT INTO {table_name} VALUES (5000, 1)")
    with WorkerThread([status_of("resume")]) as worker:
        wait_for(lambda: status_of("resume").snapshot_completed_at, timeout=60)
        second = worker.runner.pipelines["resume"].stats
        expected = table_rows(source_conn, table_name)
        wait_for(lambda: index_rows(search, "resume") == expected, what="index equal to table")
    assert second.snapshot_resumes == 1
    # Only the rest was copied this time (not from the first row again).
    assert second.snapshot_rows <= 3000 - copied + 1
    assert index_docs(search, "resume")["15"] == {"id": 15, "v": 7}


def test_resync_in_place_keeps_the_slot_streams_meanwhile_and_sweeps_strays(
    source_conn, table_name, make_subscription, search, settings, caplog
):
    settings.SYNCER_COPY_CHUNK_ROWS = 50
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 2000) i")
    make_subscription("inplace", table_name, batch_max_size=50)
    with WorkerThread(None):
        wait_for(lambda: status_of("inplace").status == "caught_up", timeout=60)
        # A document the table never had, as an older version of the index would hold.
        search.index(
            index="inplace", id="stray", body={"id": -1}, version=1, version_type="external"
        )
        caplog.clear()
        control.resync(status_of("inplace"))
        wait_for(lambda: status_of("inplace").status == "snapshotting", what="resync starts")
        source_conn.execute(f"UPDATE {table_name} SET v = 99 WHERE id = 1999")
        # Streamed during the copy: it is in the index before the copy reaches its row.
        wait_for(lambda: index_docs(search, "inplace").get("1999", {}).get("v") == 99)
        still_copying = status_of("inplace")
        wait_for(lambda: status_of("inplace").resync_requested_at is None, timeout=60)
    assert still_copying.snapshot_completed_at is not None  # (from the first copy)
    assert "replication_slot_created" not in caplog.text
    assert "replication_slot_missing" not in caplog.text
    assert "copy_started" in caplog.text
    docs = index_docs(search, "inplace")
    assert "stray" not in docs and len(docs) == 2000
    assert status_of("inplace").source_state == {}


def test_table_without_a_unique_index_is_copied_in_one_pass_and_says_so(
    source_conn, table_name, make_subscription, search, caplog
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int NOT NULL, v int)")
    source_conn.execute(f"ALTER TABLE {table_name} REPLICA IDENTITY FULL")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 300) i")
    sub = make_subscription("onepass", table_name, key_columns=["id"])
    with WorkerThread([sub]):
        wait_for(lambda: status_of("onepass").snapshot_completed_at, timeout=60)
        wait_for(lambda: len(index_docs(search, "onepass")) == 300)
    assert "snapshot_one_pass" in caplog.text
    assert "no unique index on (id)" in caplog.text


def _copied_more(copied: Callable[[], int], rows: int, seconds: float) -> Callable[[], bool]:
    """True once the copy ended, copied `rows` more, or `seconds` passed."""
    start, began = copied(), time.monotonic()
    return lambda: bool(
        status_of("killed").snapshot_completed_at
        or copied() >= start + rows
        or time.monotonic() - began > seconds
    )


def test_kill_9_every_few_seconds_during_the_copy_never_starts_it_over(
    source_conn, source_dsn, table_name, make_subscription, search, opensearch_url, tmp_path
):
    rows = 30_000
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int, pad text)")
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT i, 0, 'x' FROM generate_series(1, %s) i", (rows,)
    )
    make_subscription("killed", table_name)
    progress = [0]  # rows copied, as last read: the writer works around there
    writer = HostileWriter(source_dsn, table_name, lambda: progress[0], rows + 1000, pause=0.005)
    log = tmp_path / "worker.log"

    def copied() -> int:
        state = status_of("killed").source_state or {}
        progress[0] = int(state.get("copy", {}).get("rows", 0))
        return progress[0]

    kills = 0
    worker = WorkerProcess(opensearch_url, log, SYNCER_COPY_CHUNK_ROWS="300")
    writer.start()
    try:
        while True:
            # A few seconds of copying (or its end), then kill -9.
            wait_for(_copied_more(copied, 2000, 6), timeout=60, interval=0.1)
            if status_of("killed").snapshot_completed_at:
                break
            worker.kill()
            kills += 1
            worker = WorkerProcess(opensearch_url, log, SYNCER_COPY_CHUNK_ROWS="300")
        writer.stop()
        expected = table_rows(source_conn, table_name)
        wait_for(
            lambda: index_rows(search, "killed") == expected,
            timeout=60,
            interval=1,
            what="index equal to table",
        )
    finally:
        writer.stopping.set()
        code = worker.terminate()
    assert code == 0, worker.output()
    assert kills >= 3, f"the copy ended after {kills} kills: make the table larger"
    started = [event["rows"] for event in log_events(log, "copy_started")]
    resumed = [(event["rows"], event["resumes"]) for event in log_events(log, "copy_resumed")]
    # One copy, begun once; every later start went on from its cursor, further each time.
    assert started[0] == 0 and all(r > 0 for r in started[1:]), started
    assert len(resumed) == len(started) - 1 >= 3, resumed
    assert resumed[0][1] == 1, resumed
    # A start counts once it checkpoints a chunk: one killed before that (a slow
    # machine) leaves the cursor, and the count, where they were.
    for (rows_before, n_before), (rows_after, n_after) in itertools.pairwise(resumed):
        assert rows_after >= rows_before, resumed
        assert n_after == n_before + (rows_after > rows_before), resumed
    assert len(log_events(log, "snapshot_completed")) == 1


def test_a_second_worker_taking_over_a_killed_one_goes_on_with_its_copy(
    source_conn, table_name, make_subscription, search, opensearch_url, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 20000) i")
    make_subscription("takeover", table_name)
    first = WorkerProcess(opensearch_url, tmp_path / "first.log", SYNCER_COPY_CHUNK_ROWS="200")
    wait_for(lambda: status_of("takeover").owner, what="an owner")
    second = WorkerProcess(opensearch_url, tmp_path / "second.log", SYNCER_COPY_CHUNK_ROWS="200")
    try:
        wait_for(
            lambda: (
                (status_of("takeover").source_state or {}).get("copy", {}).get("rows", 0) >= 2000
            ),
            timeout=60,
            interval=0.1,
        )
        owner_pid = int(status_of("takeover").owner.split(":")[-2])  # host:pid:random
        victim, survivor = (first, second) if owner_pid == first.pid else (second, first)
        victim.kill()
        wait_for(lambda: status_of("takeover").snapshot_completed_at, timeout=90)
        wait_for(lambda: len(index_docs(search, "takeover")) == 20000, timeout=30)
    finally:
        codes = [worker.terminate() for worker in (first, second)]
    assert codes[[first, second].index(survivor)] == 0, survivor.output()
    [resumed] = log_events(survivor.log, "copy_resumed")
    assert resumed["rows"] >= 2000 and resumed["resumes"] == 1
    assert len(log_events(survivor.log, "copy_started")) == 1


def test_a_lost_slot_is_recreated_and_the_table_copied_again_while_streaming(
    source_conn, table_name, make_subscription, search, settings
):
    settings.SYNCER_COPY_CHUNK_ROWS = 100
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 1000) i")
    sub = make_subscription("lostslot", table_name)
    with WorkerThread([sub]):
        wait_for(lambda: status_of("lostslot").status == "caught_up", timeout=60)
    source_conn.execute("SELECT pg_drop_replication_slot(%s)", (status_of("lostslot").slot_name,))
    # Changes the lost slot would have carried: only a new copy and its sweep find them.
    source_conn.execute(f"DELETE FROM {table_name} WHERE id <= 100")
    source_conn.execute(f"UPDATE {table_name} SET v = 5 WHERE id > 900")
    with WorkerThread([status_of("lostslot")]) as worker:
        stats = worker.runner.pipelines["lostslot"].stats
        wait_for(lambda: stats.resnapshots == 1 and stats.snapshot_rows >= 900, timeout=60)
        expected = table_rows(source_conn, table_name)
        wait_for(lambda: index_rows(search, "lostslot") == expected, what="index equal to table")
        wait_for(lambda: status_of("lostslot").source_state == {}, what="the copy's end")
    assert stats.swept == 100
    assert "was missing" in status_of("lostslot").last_error


def test_a_composite_text_key_is_copied_in_chunks_that_split_its_first_column(
    source_conn, table_name, make_subscription, search, settings
):
    settings.SYNCER_COPY_CHUNK_ROWS = 7
    source_conn.execute(
        f"CREATE TABLE {table_name} (tenant text, n bigint, label text, PRIMARY KEY (tenant, n))"
    )
    tenants = ["a", "a b", "O'Brien", 'qu"ote', "ünï", "a|b", "back\\slash", "zz"]
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT t, n, t || n FROM unnest(%s::text[]) t, "
        "generate_series(-5, 5) n",
        (tenants,),
    )
    sub = make_subscription("composite", table_name)
    with WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("composite").snapshot_completed_at, timeout=60)
        stats = worker.runner.pipelines["composite"].stats
    docs = index_docs(search, "composite")
    rows = source_conn.execute(f"SELECT tenant, n, label FROM {table_name}").fetchall()
    assert len(docs) == len(rows) == 88
    assert sorted((d["tenant"], d["n"], d["label"]) for d in docs.values()) == sorted(rows)
    assert stats.snapshot_rows == 88  # each row once: no chunk overlapped another


def test_the_copys_progress_reaches_the_row_the_api_and_the_admin(
    source_conn, table_name, make_subscription, search, settings
):
    from console.api.schemas import subscription_out
    from syncer.admin.subscriptions import SubscriptionAdmin

    settings.SYNCER_COPY_CHUNK_ROWS = 50
    settings.SYNCER_STATS_INTERVAL = 0.1
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    # Enough rows that the copy outlasts the status message's pace (one a second), with
    # its rate known, on a fast machine too.
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, 20000) i")
    source_conn.execute(f"ANALYZE {table_name}")  # the planner's estimate: 20,000 rows
    sub = make_subscription("progress", table_name, batch_max_size=50)
    with WorkerThread([sub]):
        progress = wait_for(
            lambda: (
                (status_of("progress").copy_progress or {}).get("rows_per_second")
                and status_of("progress").copy_progress
            ),
            what="copy progress published",
        )
        during = status_of("progress")
        message = wait_for(
            lambda: (
                "of about" in status_of("progress").status_message
                and status_of("progress").status_message
            ),
            what="progress in the status message",
        )
        wait_for(lambda: status_of("progress").snapshot_completed_at, timeout=120)
        wait_for(lambda: status_of("progress").copy_progress is None, what="progress cleared")
    assert progress["estimated_rows"] == 20000 and 0 < progress["rows"] < 20000
    assert 0 < progress["percent"] < 100 and progress["eta_seconds"] is not None
    assert subscription_out(during, 0)["copy_progress"] == during.copy_progress
    shown = SubscriptionAdmin.copy_progress_text(None, during)  # type: ignore[arg-type]
    assert "% (" in shown and "of about 20,000 rows" in shown and "rows/s" in shown
    assert "of about 20,000 rows" in message and "streaming changes meanwhile" in message
