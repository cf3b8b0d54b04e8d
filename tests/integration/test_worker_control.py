"""A live worker applies what operators ask within 2 s, without a restart.

Real worker (the Runner `runsyncer` runs, following the whole subscriptions table),
real PostgreSQL, real osmem-server.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from syncer.models import Subscription, WorkerHeartbeat
from syncer.operations import control, subscriptions
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.materialize_double import MaterializeDouble

pytestmark = pytest.mark.usefixtures("fast_retries")

WITHIN = 2.0


def timed(predicate: Any, what: str, timeout: float = WITHIN) -> float:
    """Seconds until `predicate` holds, failing past `timeout`."""
    started = time.monotonic()
    wait_for(predicate, timeout=timeout + 3, interval=0.02, what=what)
    elapsed = time.monotonic() - started
    assert elapsed < timeout, f"{what} took {elapsed:.2f} s"
    return elapsed


@pytest.fixture
def table(source_conn, table_name):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    return table_name


def insert(conn, table: str, *ids: int) -> None:
    for i in ids:
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, f"v{i}"))


def test_pause_stops_reading_and_resume_goes_on_from_the_checkpoint(
    source_conn, table, make_subscription, search
):
    sub = make_subscription("orders", table)
    with WorkerThread(None) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        insert(source_conn, table, 1)
        wait_for(lambda: "1" in index_docs(search, "orders"), what="first row")

        control.pause(sub)
        timed(lambda: status_of("orders").status == "paused", "paused status")
        assert "orders" not in worker.runner.pipelines
        assert "checkpoint kept" in status_of("orders").status_message
        checkpoint = status_of("orders").checkpoint
        insert(source_conn, table, 2)
        time.sleep(1.5)
        assert set(index_docs(search, "orders")) == {"1"}
        assert status_of("orders").checkpoint == checkpoint

        control.resume(sub)
        timed(lambda: "2" in index_docs(search, "orders"), "row written while paused")
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up again")


def test_resync_in_place_copies_again_and_removes_what_the_copy_lacked(
    source_conn, table, make_subscription, search
):
    source_conn.execute(f"INSERT INTO {table} SELECT i, 'v' || i FROM generate_series(1, 50) i")
    sub = make_subscription("orders", table)
    with WorkerThread(None) as worker:
        wait_for(lambda: len(index_docs(search, "orders")) == 50, what="snapshot")
        before = worker.runner.pipelines["orders"]
        # Drift only a resync repairs: a document whose row is gone, a row whose
        # document is gone.
        search.index(index="orders", id="stray", body={"id": -1, "v": "gone"}, refresh=True)
        search.delete(index="orders", id="7", refresh=True)

        control.resync(sub)
        timed(lambda: worker.runner.pipelines.get("orders") not in (None, before), "resync start")
        wait_for(
            lambda: status_of("orders").resync_requested_at is None, timeout=30, what="resync done"
        )
        docs = index_docs(search, "orders")
        assert set(docs) == {str(i) for i in range(1, 51)}
        assert docs["7"] == {"id": 7, "v": "v7"}
        stats = worker.runner.pipelines["orders"].stats
        assert stats.snapshot_rows == 50 and stats.swept == 1
        assert status_of("orders").resync_mode == ""

        insert(source_conn, table, 51)  # streaming goes on after the resync
        wait_for(lambda: "51" in index_docs(search, "orders"), what="a change after the resync")


def test_resync_in_place_works_for_a_materialize_source_too(make_subscription, search):
    with MaterializeDouble("orders_mv", (("order_id", "int8"), ("total", "numeric"))) as mz:
        mz.insert((1, "1.00"), (2, "2.00"))
        sub = make_subscription(
            "orders",
            "orders_mv",
            source_kind="materialize",
            source_dsn=mz.dsn,
            key_columns=["order_id"],
            batch_max_age_ms=200,
        )
        with WorkerThread(None) as worker:
            wait_for(lambda: set(index_docs(search, "orders")) == {"1", "2"}, what="snapshot")
            before = worker.runner.pipelines["orders"]
            search.index(index="orders", id="stray", body={"order_id": -1}, refresh=True)
            control.resync(sub)
            timed(
                lambda: worker.runner.pipelines.get("orders") not in (None, before),
                "resync start",
            )
            wait_for(lambda: status_of("orders").resync_requested_at is None, what="resync")
            assert set(index_docs(search, "orders")) == {"1", "2"}
            mz.insert((3, "3.00"))
            wait_for(lambda: "3" in index_docs(search, "orders"), what="streaming after it")
        declares = [s for s in mz.statements if s.startswith("DECLARE")]
        assert len(declares) == 2 and "SNAPSHOT = false" not in declares[1]


def test_a_resync_request_outlives_a_worker_stopped_mid_copy(
    source_conn, table, make_subscription, search, settings
):
    settings.SYNCER_COPY_CHUNK_ROWS = 100  # chunks small enough to stop between
    source_conn.execute(f"INSERT INTO {table} SELECT i, 'v' FROM generate_series(1, 3000) i")
    sub = make_subscription(
        "orders", table, batch_max_size=500, backpressure_pause_at=1000, backpressure_resume_at=500
    )
    with WorkerThread(None):
        wait_for(lambda: status_of("orders").status == "caught_up", timeout=60, what="copy")
    search.index(index="orders", id="stray", body={"id": -1}, refresh=True)
    control.resync(sub)
    with WorkerThread(None) as worker:
        wait_for(lambda: worker.runner.pipelines["orders"].stats.snapshot_rows >= 500)
    assert status_of("orders").resync_requested_at is not None  # cut short: still asked for
    with WorkerThread(None):
        wait_for(lambda: status_of("orders").resync_requested_at is None, timeout=60, what="resync")
    assert "stray" not in index_docs(search, "orders")
    assert len(index_docs(search, "orders")) == 3000


def test_reset_drops_the_slot_so_the_next_start_is_a_first_start(
    source_conn, table, make_subscription, search
):
    sub = make_subscription("orders", table, snapshot_mode="discard")
    with WorkerThread(None):
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        insert(source_conn, table, 1)
        wait_for(lambda: "1" in index_docs(search, "orders"), what="first row")
        control.pause(sub)
        wait_for(lambda: status_of("orders").status == "paused", what="paused")
        insert(source_conn, table, 2)  # kept by the slot: a resume would stream it

        control.reset_checkpoint(sub)

        def reset_applied() -> bool:
            row = status_of("orders")
            return row.reset_requested_at is None and row.checkpoint is None

        timed(reset_applied, "reset applied")
        slots = source_conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (sub.slot_name,)
        ).fetchall()
        assert slots == []
        row = status_of("orders")
        assert row.checkpoint_at is None and row.snapshot_completed_at is None

        control.resume(sub)
        wait_for(lambda: status_of("orders").status == "caught_up", what="a first start")
        insert(source_conn, table, 3)
        wait_for(lambda: "3" in index_docs(search, "orders"), what="a change after the reset")
    # Discard mode starts from now: the row written before the reset never arrives.
    assert set(index_docs(search, "orders")) == {"1", "3"}


def test_a_new_subscription_starts_within_two_seconds(
    source_conn, table, make_subscription, search
):
    insert(source_conn, table, 1, 2)
    with WorkerThread(None) as worker:
        make_subscription("orders", table)
        timed(lambda: "orders" in worker.runner.pipelines, "new subscription running")
        assert status_of("orders").owner == worker.runner.worker_id
        wait_for(lambda: set(index_docs(search, "orders")) == {"1", "2"}, what="its snapshot")


def test_a_deleted_subscription_stops_within_two_seconds(
    source_conn, table, make_subscription, search
):
    sub = make_subscription("orders", table)
    with WorkerThread(None) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        assert subscriptions.delete_subscription(sub) is None
        timed(lambda: "orders" not in worker.runner.pipelines, "deleted subscription stopped")
        insert(source_conn, table, 1)
        time.sleep(1.5)
        assert "1" not in index_docs(search, "orders")
        assert worker.runner.supervisors == {}
    slots = source_conn.execute(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (sub.slot_name,)
    ).fetchall()
    assert slots == []  # the worker did not bring it back


def test_disable_stops_and_enable_starts_again(source_conn, table, make_subscription, search):
    sub = make_subscription("orders", table)
    with WorkerThread(None) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        sub.enabled = False
        sub.save()
        timed(
            lambda: status_of("orders").status_message.startswith("disabled"),
            "disabled subscription stopped",
        )
        assert status_of("orders").status == "stopped"
        assert "orders" not in worker.runner.pipelines
        wait_for(lambda: status_of("orders").owner == "", what="owner cleared")
        insert(source_conn, table, 1)

        sub.enabled = True
        sub.save()
        timed(lambda: "1" in index_docs(search, "orders"), "enabled again, row streamed")


def test_a_config_change_restarts_the_pipeline_with_the_new_config(
    source_conn, table, make_subscription, search
):
    sub = make_subscription("orders", table)
    with WorkerThread(None) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        before = worker.runner.pipelines["orders"]
        sub.index_name = "orders-v2"
        sub.batch_max_size = 50
        sub.backpressure_pause_at = 100
        sub.backpressure_resume_at = 50
        sub.save()

        def restarted() -> bool:
            pipeline = worker.runner.pipelines.get("orders")
            return pipeline is not None and pipeline is not before

        timed(restarted, "pipeline restarted")
        assert worker.runner.pipelines["orders"].config.batch_max_size == 50
        insert(source_conn, table, 1)
        wait_for(lambda: "1" in index_docs(search, "orders-v2"), what="a row in the new index")
    assert "1" not in index_docs(search, "orders")


def test_resync_into_a_new_index_builds_it_then_swaps_the_alias_to_it(
    source_conn, table, make_subscription, search
):
    source_conn.execute(f"INSERT INTO {table} SELECT i, 'v' || i FROM generate_series(1, 50) i")
    sub = make_subscription("orders", table)
    with WorkerThread(None) as worker:
        wait_for(lambda: len(index_docs(search, "orders")) == 50, what="snapshot")
        before = worker.runner.pipelines["orders"]
        search.index(index="orders", id="stray", body={"id": -1}, refresh=True)

        control.resync(sub, Subscription.ResyncMode.NEW_INDEX)
        timed(lambda: worker.runner.pipelines.get("orders") not in (None, before), "resync start")
        wait_for(lambda: status_of("orders").resync_requested_at is None, timeout=30)
        (first,) = search.indices.get_alias(name="orders")
        assert first.startswith("orders-")
        docs = index_docs(search, "orders")  # through the alias
        assert set(docs) == {str(i) for i in range(1, 51)}
        insert(source_conn, table, 51)
        wait_for(lambda: "51" in index_docs(search, "orders"), what="a change after the swap")

        # Again: the alias moves on and the index it named is deleted.
        control.resync(sub, Subscription.ResyncMode.NEW_INDEX)
        wait_for(
            lambda: (
                status_of("orders").resync_requested_at is None
                and list(search.indices.get_alias(name="orders")) != [first]
            ),
            timeout=30,
            what="second swap",
        )
        assert not search.indices.exists(index=first)
        assert len(index_docs(search, "orders")) == 51
    # A restarted worker writes through the alias.
    with WorkerThread(None):
        insert(source_conn, table, 52)
        wait_for(lambda: "52" in index_docs(search, "orders"), what="a write through the alias")
    assert len(index_docs(search, "orders")) == 52


def test_heartbeat_owner_and_published_figures_then_clean_exit_removes_them(
    source_conn, table, make_subscription, search, settings
):
    make_subscription("orders", table)
    with WorkerThread(None) as worker:
        worker_id = worker.runner.worker_id
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        for start in range(1, 1001, 100):
            source_conn.execute(
                f"INSERT INTO {table} SELECT i, 'v' FROM generate_series(%s::int, %s::int) i",
                (start, start + 99),
            )
        wait_for(lambda: len(index_docs(search, "orders")) == 1000, what="1,000 rows")

        def published() -> Subscription | None:
            row = status_of("orders")
            return row if row.throughput and row.stats_at else None

        row = wait_for(published, timeout=10, what="throughput published")
        assert row.owner == worker_id
        assert row.lag_seconds is not None and row.lag_seconds >= 0
        assert row.staleness_seconds is not None and row.staleness_seconds < 10
        assert 0 < row.throughput <= 1000
        beat = WorkerHeartbeat.objects.get(worker_id=worker_id)
        assert beat.subscriptions == ["orders"]
        seen = beat.last_seen_at
        wait_for(
            lambda: WorkerHeartbeat.objects.get(worker_id=worker_id).last_seen_at > seen,
            timeout=5,
            what="heartbeat refreshed",
        )
    assert not WorkerHeartbeat.objects.filter(worker_id=worker_id).exists()
    assert status_of("orders").owner == ""


def test_losing_the_lock_connection_stops_everything_then_takes_it_back(
    source_conn, table, make_subscription, search
):
    make_subscription("orders", table)
    with WorkerThread(None) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        before = worker.runner.pipelines["orders"]
        killed = source_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"searchsync worker {worker.runner.worker_id}"[:63],),
        ).fetchall()
        assert killed == [(True,)]

        def taken_back() -> bool:
            pipeline = worker.runner.pipelines.get("orders")
            return pipeline is not None and pipeline is not before

        timed(taken_back, "reacquired after the lock connection dropped", timeout=5)
        insert(source_conn, table, 1)
        wait_for(lambda: "1" in index_docs(search, "orders"), what="sync going on")


def test_published_figures_go_to_each_subscription_in_one_statement(table, make_subscription):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from syncer.worker import state

    a, b, c = (make_subscription(name, table) for name in ("fig_a", "fig_b", "fig_c"))
    with CaptureQueriesContext(connection) as queries:
        copy = {"rows": 10, "estimated_rows": None, "percent": None}
        state.publish_stats([(a.pk, 1.23456, None, 10.0, copy), (b.pk, 0.5, 2.25, None, None)])
    assert len(queries) == 1
    a, b, c = (Subscription.objects.get(pk=s.pk) for s in (a, b, c))
    assert (a.lag_seconds, a.staleness_seconds, a.throughput) == (1.235, None, 10.0)
    assert (b.lag_seconds, b.staleness_seconds, b.throughput) == (0.5, 2.25, None)
    assert (a.copy_progress, b.copy_progress) == (copy, None)
    assert a.stats_at is not None and a.stats_at == b.stats_at
    assert c.stats_at is None and c.lag_seconds is None
