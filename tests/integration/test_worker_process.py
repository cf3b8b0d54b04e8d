"""`manage.py runsyncer` as a real process: crashes, signals, and bad subscriptions."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.harness import (
    WorkerThread,
    Writer,
    index_docs,
    index_rows,
    status_of,
    table_rows,
    wait_for,
)
from tests.support.process import WorkerProcess


@pytest.mark.usefixtures("fast_retries")
def test_kill_9_mid_stream_then_restart_converges(
    source_conn, source_dsn, table_name, make_subscription, search, opensearch_url, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(0, 999) i")
    make_subscription("crash", table_name)
    writer = Writer(source_dsn, table_name)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(opensearch_url, log).process
    try:
        wait_for(lambda: status_of("crash").snapshot_completed_at, what="snapshot")
        writer.start()
        wait_for(lambda: writer.count > 300 and status_of("crash").checkpoint, what="streaming")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        time.sleep(0.5)  # writes go on while no worker runs
        worker = WorkerProcess(opensearch_url, log).process
        time.sleep(1)
        writer.stop()
        expected = table_rows(source_conn, table_name)
        wait_for(
            lambda: index_rows(search, "crash") == expected,
            timeout=60,
            interval=1,
            what="index equal to table after kill -9",
        )
    finally:
        writer.stopping.set()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(40)
    assert code == 0, log.read_text()[-3000:]


def test_sigterm_mid_stream_exits_zero_with_checkpoint_matching_the_index(
    source_conn, table_name, make_subscription, search, opensearch_url, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    make_subscription("term", table_name, batch_max_size=200)
    log = tmp_path / "w.log"
    worker = WorkerProcess(opensearch_url, log, "--subscription", "term").process
    try:
        wait_for(lambda: status_of("term").status == "caught_up", what="caught up")
        for start in range(1, 5001, 500):  # ten transactions, streaming when the stop comes
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT i, 1 FROM generate_series(%s::int, %s::int) i",
                (start, start + 499),
            )
        commits = [
            int(lsn)
            for (lsn,) in source_conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
            ).fetchall()
        ]
        wait_for(lambda: index_docs(search, "term"), interval=0.05, what="first writes")
    finally:
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(40)
    assert code == 0, log.read_text()[-3000:]
    assert time.monotonic() - started < 30
    sub = status_of("term")
    assert sub.status == "stopped" and sub.checkpoint
    indexed = len(index_docs(search, "term"))
    # Whatever was read before the stop was flushed: whole transactions, none half done.
    assert indexed % 500 == 0 and indexed > 0, indexed
    if sub.checkpoint >= commits[-1]:
        assert indexed == 5000
    worker = WorkerProcess(opensearch_url, log, "--subscription", "term").process
    try:
        wait_for(lambda: len(index_docs(search, "term")) == 5000, what="the rest after restart")
        # The index may have been whole already: stop the new worker once it runs, not
        # while it starts (before its SIGTERM handler exists).
        wait_for(lambda: status_of("term").status == "caught_up", what="the restart caught up")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(40) == 0


def test_unknown_subscription_name_is_a_clear_command_error(
    transactional_db, opensearch_url, tmp_path
):
    worker = WorkerProcess(opensearch_url, tmp_path / "w.log", "--subscription", "nope")
    code = worker.process.wait(30)
    assert code == 1 and "no subscription named nope" in worker.output()


@pytest.mark.usefixtures("fast_retries")
def test_each_bad_subscription_gets_a_clear_status_while_a_good_one_syncs(
    source_conn, source_dsn, table_name, make_subscription, search, monkeypatch
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    source_conn.execute(f"CREATE TABLE {table_name}_nopk (id int, v text)")
    source_conn.execute(f"CREATE VIEW {table_name}_view AS SELECT * FROM {table_name}")
    monkeypatch.delenv("UNSET_SOURCE_DSN", raising=False)
    bad = {
        "missing-table": dict(relation="public.no_such_table"),
        "unknown-key": dict(relation=table_name, key_columns=["nope"]),
        "no-pk": dict(relation=f"{table_name}_nopk"),
        "a-view": dict(relation=f"{table_name}_view"),
        "bad-dsn": dict(relation=table_name, source_dsn=source_dsn + "_missing_db"),
        "unset-env": dict(relation=table_name, source_dsn="env:UNSET_SOURCE_DSN"),
        "bad-index": dict(relation=table_name, index_name="Bad*Index", validate=False),
    }
    expected_words = {
        "missing-table": "no_such_table does not exist",
        "unknown-key": "key column(s) nope not in",
        "no-pk": "has no primary key",
        "a-view": "is a view",
        "bad-dsn": "does not exist; check the source DSN",
        "unset-env": "UNSET_SOURCE_DSN, which is not set",
        "bad-index": "invalid_index_name_exception",
    }
    subs = [make_subscription(name, **fields) for name, fields in bad.items()]
    subs.append(make_subscription("good", table_name))
    with WorkerThread(subs):
        for name, words in expected_words.items():
            wait_for(
                lambda: (
                    status_of(name).status == "error"  # noqa: B023
                    and words in status_of(name).status_message  # noqa: B023
                ),
                what=f"{name} error status",
            )
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 'ok')")
        wait_for(lambda: "1" in index_docs(search, "good"), what="the good subscription")
        time.sleep(1)
        assert status_of("bad-dsn").last_error  # kept for the operator
        assert "password" not in status_of("bad-dsn").status_message.lower()
    assert index_docs(search, "good") == {"1": {"id": 1, "v": "ok"}}
