"""OpenSearch goes away mid-stream (a proxy in front of a real osmem-server) and comes back."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest

from syncer.models import DeadLetter
from tests.integration.test_worker_process import Writer, index_rows, table_rows
from tests.support.harness import WorkerThread, status_of, wait_for
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
            checkpoint = status_of("outage").checkpoint
            time.sleep(15)
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
