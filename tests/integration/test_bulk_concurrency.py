"""Several bulks in flight (SYNCER_BULK_CONCURRENCY=3) through the real worker, real
PostgreSQL and real osmem-server: the index converges exactly on the table while the same
rows are updated over and over."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from syncer.wiring import build_pipeline
from tests.support.harness import WorkerThread, index_rows, status_of, table_rows, wait_for

pytestmark = pytest.mark.usefixtures("fast_retries")

ROWS = 5000
HOT = 20
"""Rows every writer keeps updating: their changes land in many batches in flight."""


def test_three_bulks_in_flight_converge_exactly_under_a_concurrent_writer(
    source_conn, source_dsn, table_name, make_subscription, search, settings
):
    settings.SYNCER_BULK_CONCURRENCY = 3
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(1, {ROWS}) i")
    stop = threading.Event()
    writes = [0]

    def writer(seed: int) -> None:
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute(
                    f"UPDATE {table_name} SET v = v + 1 WHERE id = %s", ((n + seed) % HOT + 1,)
                )
                conn.execute(
                    f"UPDATE {table_name} SET v = v + 1 WHERE id = %s",
                    ((n * 7919 + seed) % ROWS + 1,),
                )
                writes[0] += 2

    sub = make_subscription("bulks", table_name, batch_max_size=50)
    assert build_pipeline(sub).config.bulk_concurrency == 3
    threads = [threading.Thread(target=writer, args=(s,)) for s in (0, 1)]
    with WorkerThread([sub]):
        for t in threads:
            t.start()
        wait_for(lambda: status_of("bulks").snapshot_completed_at, timeout=120, interval=1)
        time.sleep(2)  # the stream, many small batches touching the hot rows
        stop.set()
        for t in threads:
            t.join()
        expected = table_rows(source_conn, table_name)
        wait_for(
            lambda: index_rows(search, "bulks") == expected,
            timeout=90,
            interval=1,
            what="index equal to table",
        )
    assert writes[0] > 200
    assert status_of("bulks").checkpoint
