"""OpenSearch goes away mid-stream (a proxy in front of a real osmem-server) and comes back."""

from __future__ import annotations

import signal
import time
from urllib.parse import urlparse

import psutil
import pytest

from syncer.models import DeadLetter
from tests.support.harness import (
    WorkerThread,
    Writer,
    index_docs,
    index_rows,
    settled_checkpoint,
    status_of,
    table_rows,
    wait_for,
)
from tests.support.httpfaults import FaultProxy
from tests.support.process import WorkerProcess
from tests.support.tcpproxy import TcpProxy


@pytest.fixture
def proxy(opensearch_url, settings):
    target = urlparse(opensearch_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    proxy.start()
    settings.OPENSEARCH_URL = proxy.url()
    yield proxy
    proxy.stop()


@pytest.mark.usefixtures("fast_retries")
def test_opensearch_down_fifteen_seconds_mid_stream_loses_and_dead_letters_nothing(
    source_conn, source_dsn, table_name, make_subscription, search, proxy
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    source_conn.execute(f"INSERT INTO {table_name} SELECT i, 0 FROM generate_series(0, 999) i")
    sub = make_subscription("outage", table_name)
    writer = Writer(source_dsn, table_name)
    with WorkerThread([sub]):
        wait_for(lambda: status_of("outage").snapshot_completed_at, what="snapshot")
        writer.start()
        wait_for(lambda: writer.count > 100, what="writes flowing")
        with proxy.down():
            message = wait_for(
                lambda: (
                    status_of("outage").status == "sink_unavailable"
                    and status_of("outage").status_message
                ),
                what="reconnecting status",
            )
            checkpoint = settled_checkpoint("outage")
            time.sleep(14)
            # Nothing was acknowledged while OpenSearch was away.
            assert status_of("outage").checkpoint == checkpoint
        wait_for(lambda: status_of("outage").status in ("streaming", "caught_up"), what="recovery")
        writer.stop()
        expected = table_rows(source_conn, table_name)
        wait_for(
            lambda: index_rows(search, "outage") == expected,
            timeout=60,
            interval=1,
            what="index equal to table after the outage",
        )
    assert "OpenSearch unavailable" in message and "reading paused" in message
    assert writer.count > 1000
    assert not DeadLetter.objects.exists()


def test_sigterm_during_an_outage_dead_letters_nothing_and_replays_on_the_next_start(
    source_conn, table_name, make_subscription, search, proxy, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    make_subscription("term-out", table_name, snapshot_mode="discard")
    log = tmp_path / "w.log"
    worker = WorkerProcess(proxy.url(), log, "--shutdown-timeout", "2").process
    try:
        wait_for(lambda: status_of("term-out").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 1)")
        wait_for(lambda: "1" in index_docs(search, "term-out"), what="the first row")
        wait_for(lambda: status_of("term-out").checkpoint, what="a checkpoint")
        checkpoint = settled_checkpoint("term-out")
        with proxy.down():
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT i, i FROM generate_series(2, 100) i"
            )
            wait_for(lambda: status_of("term-out").status == "sink_unavailable", what="outage")
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(30)
        # It could not flush: it says so, and gives up nothing.
        assert code == 1, log.read_text()[-3000:]
        assert "did not flush within 2 s" in log.read_text()
        assert status_of("term-out").checkpoint == checkpoint
        assert not DeadLetter.objects.exists()
        worker = WorkerProcess(proxy.url(), log).process
        wait_for(lambda: len(index_docs(search, "term-out")) == 100, what="the held rows replayed")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    assert not DeadLetter.objects.exists()


def test_a_slow_sink_keeps_the_worker_process_memory_flat(
    source_conn, table_name, make_subscription, search, opensearch_url, tmp_path
):
    faults = FaultProxy(opensearch_url)
    faults.start()
    faults.delay(0.5, path_contains="_bulk")
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, body text)")
    make_subscription(
        "rss",
        table_name,
        snapshot_mode="discard",
        batch_max_size=500,
        backpressure_pause_at=2000,
        backpressure_resume_at=1000,
    )
    worker = WorkerProcess(faults.url, tmp_path / "w.log").process
    process = psutil.Process(worker.pid)
    try:
        wait_for(lambda: status_of("rss").status == "caught_up", what="caught up")
        baseline = process.memory_info().rss
        # 60,000 rows of 1 kB: about 60 MB of changes waiting for a sink that takes 500 ms a bulk.
        for start in range(0, 60000, 2000):
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT i, repeat('x', 1000) "
                f"FROM generate_series({start + 1}, {start + 2000}) i"
            )
        peak, seen = 0, set()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            peak = max(peak, process.memory_info().rss)
            seen.add(status_of("rss").status)
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        faults.stop()
    assert "backpressure" in seen
    # Held: about pause_at changes of 1 kB each, nowhere near the 60 MB backlog.
    assert peak - baseline < 30 * 2**20, (baseline, peak)
