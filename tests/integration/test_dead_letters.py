"""Rejected documents through the real worker: dead-lettered, superseded, retried.

Real PostgreSQL, real osmem-server; the faults OpenSearch produces come from its own
mapping checks, or from a fault-injecting proxy in front of it.
"""

from __future__ import annotations

import signal
import time
import urllib.request

import pytest
from django.urls import reverse

from syncer.models import DeadLetter
from syncer.operations import dead_letters
from tests.integration.test_dlq_admin import action_post, confirm_post
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.process import WorkerProcess, free_port, manage

STRICT = {
    "dynamic": "strict",
    "properties": {"id": {"type": "integer"}, "total": {"type": "integer"}},
}


def entry_of(name: str, doc_id: str) -> DeadLetter | None:
    return DeadLetter.objects.filter(subscription__name=name, doc_id=doc_id).first()


def dead_letter_a_row(source_conn, table_name, make_subscription, name: str) -> DeadLetter:
    """Run a worker until a row with a column its strict index lacks is dead-lettered."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, total int, note text)")
    sub = make_subscription(name, table_name, snapshot_mode="discard", index_mappings=STRICT)
    with WorkerThread([sub]):
        wait_for(lambda: status_of(name).status == "caught_up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 5, 'hello')")
        entry: DeadLetter = wait_for(lambda: entry_of(name, "1"), what="a dead letter")
    return entry


def test_a_rejected_row_is_dead_lettered_then_superseded_when_fixed_in_the_source(
    source_conn, table_name, make_subscription, search
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, total text)")
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1, '10')")
    sub = make_subscription(
        "orders", table_name, index_mappings={"properties": {"total": {"type": "integer"}}}
    )
    with WorkerThread([sub]):
        wait_for(lambda: status_of("orders").snapshot_completed_at, what="snapshot")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (2, 'twelve')")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (3, '30')")
        entry = wait_for(lambda: entry_of("orders", "2"), what="a dead letter")
        wait_for(lambda: "3" in index_docs(search, "orders"), what="the next row indexed")
        assert entry.action == "index" and entry.attempts == 1
        assert entry.payload == {"id": 2, "total": "twelve"}
        assert entry.error_status == 400 and entry.error_type == "mapper_parsing_exception"
        assert "failed to parse field [total]" in entry.error_reason
        # The checkpoint moved past the dead letter: it does not hold the subscription.
        wait_for(lambda: (status_of("orders").checkpoint or 0) >= entry.version)
        assert "'2'" in status_of("orders").last_error

        source_conn.execute(f"UPDATE {table_name} SET total = '12' WHERE id = 2")
        wait_for(lambda: entry_of("orders", "2") is None, what="the entry superseded")
        assert index_docs(search, "orders")["2"] == {"id": 2, "total": "12"}


@pytest.mark.usefixtures("fast_password_hashing")
def test_after_the_mapping_is_fixed_admin_retry_selected_succeeds_with_the_original_version(
    source_conn, table_name, make_subscription, search, admin_client
):
    entry = dead_letter_a_row(source_conn, table_name, make_subscription, "notes")
    assert entry.error_type == "strict_dynamic_mapping_exception"

    search.indices.put_mapping(index="notes", body={"properties": {"note": {"type": "text"}}})
    # The operator's way: Retry selected in the admin, then confirm.
    changelist = reverse("admin:syncer_deadletter_changelist")
    page = admin_client.post(changelist, action_post("retry_selected", entry))
    assert page.status_code == 200 and DeadLetter.objects.exists()  # only a confirmation
    done = admin_client.post(changelist, confirm_post("retry_selected", entry), follow=True)
    assert "1 retried: 1 succeeded, 0 superseded, 0 failed" in done.content.decode()
    assert not DeadLetter.objects.exists()
    doc = search.get(index="notes", id="1")
    assert doc["_source"] == {"id": 1, "total": 5, "note": "hello"}
    assert doc["_version"] == entry.version


def test_retrying_an_entry_older_than_the_indexed_document_is_superseded(
    source_conn, table_name, make_subscription, search
):
    entry = dead_letter_a_row(source_conn, table_name, make_subscription, "older")
    # A newer version reached the index by another way (another worker, a resync).
    search.indices.put_mapping(index="older", body={"properties": {"note": {"type": "text"}}})
    newer = {"id": 1, "total": 6, "note": "newer"}
    search.index(
        index="older", id="1", body=newer, version=entry.version + 1, version_type="external"
    )

    report = dead_letters.retry(dead_letters.Selection(subscription="older"))
    assert (report.succeeded, report.superseded, report.failed) == (0, 1, 0)
    assert not DeadLetter.objects.exists()
    assert search.get(index="older", id="1")["_source"] == newer


def test_a_deleted_document_is_never_resurrected_by_a_retry_after_gc_deletes(
    source_conn, table_name, make_subscription, search
):
    """OpenSearch forgets a delete's version after index.gc_deletes (here 0 s): an older
    write retried after that would bring the document back. The supersede rule removes
    the dead letter when the delete succeeds, so there is nothing left to retry."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, total int, note text)")
    sub = make_subscription(
        "gc",
        table_name,
        snapshot_mode="discard",
        index_mappings=STRICT,
        index_settings={"index": {"gc_deletes": "0s"}},
    )
    with WorkerThread([sub]):
        wait_for(lambda: status_of("gc").status == "caught_up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 5, 'hello')")
        entry = wait_for(lambda: entry_of("gc", "1"), what="a dead-lettered upsert")
        source_conn.execute(f"DELETE FROM {table_name} WHERE id = 1")
        wait_for(lambda: entry_of("gc", "1") is None, what="the entry superseded by the delete")
    search.indices.put_mapping(index="gc", body={"properties": {"note": {"type": "text"}}})
    time.sleep(1.5)  # past gc_deletes: the delete's tombstone is gone

    report = dead_letters.retry(dead_letters.Selection())
    assert report.retried == 0
    assert "1" not in index_docs(search, "gc")
    # What the rule prevented: the old version is accepted again once the tombstone is gone.
    search.index(
        index="gc", id="1", body=entry.payload, version=entry.version, version_type="external"
    )
    assert "1" in index_docs(search, "gc")


@pytest.fixture
def faults(opensearch_faults, settings):
    settings.OPENSEARCH_URL = opensearch_faults.url
    return opensearch_faults


@pytest.mark.usefixtures("fast_retries")
def test_whole_requests_refused_with_429_and_503_are_retried_without_loss_or_dead_letters(
    source_conn, table_name, make_subscription, search, faults
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int)")
    sub = make_subscription("refused", table_name, snapshot_mode="discard")
    with WorkerThread([sub]):
        wait_for(lambda: status_of("refused").status == "caught_up")
        faults.fail_requests(status=503, count=3, path_contains="_bulk")
        source_conn.execute(f"INSERT INTO {table_name} SELECT i, i FROM generate_series(1, 50) i")
        wait_for(lambda: status_of("refused").status == "sink_unavailable", what="the breaker")
        wait_for(lambda: len(index_docs(search, "refused")) == 50, what="all 50 after 503s")
        faults.fail_requests(status=429, count=3, path_contains="_bulk")
        source_conn.execute(f"UPDATE {table_name} SET v = -v")
        wait_for(
            lambda: all(d["v"] < 0 for d in index_docs(search, "refused").values()),
            what="all 50 updated after 429s",
        )
    assert faults.stats.failed == 6
    assert not DeadLetter.objects.exists()
    assert "503" in status_of("refused").last_error or "429" in status_of("refused").last_error


@pytest.mark.usefixtures("fast_retries")
def test_documents_rejected_transiently_are_retried_then_dead_lettered_past_the_budget(
    source_conn, table_name, make_subscription, search, faults
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    sub = make_subscription("flaky", table_name, snapshot_mode="discard")
    faults.reject_items({"3"}, status=429, count=2)  # twice, then it goes through
    faults.reject_items({"7"}, status=429)  # always: a poisoned document
    with WorkerThread([sub]):
        wait_for(lambda: status_of("flaky").status == "caught_up")
        source_conn.execute(f"INSERT INTO {table_name} SELECT generate_series(1, 10)")
        entry = wait_for(lambda: entry_of("flaky", "7"), what="the poisoned document")
        wait_for(lambda: len(index_docs(search, "flaky")) == 9)
    assert set(index_docs(search, "flaky")) == {str(i) for i in range(1, 11)} - {"7"}
    assert entry.attempts == 3 and entry.error_status == 429
    assert entry.error_type == "es_rejected_execution_exception"
    assert DeadLetter.objects.count() == 1  # "3" made it on its third try


@pytest.mark.usefixtures("fast_retries")
def test_a_slow_sink_bounds_the_buffer_at_pause_at(
    source_conn, table_name, make_subscription, search, faults
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, body text)")
    sub = make_subscription(
        "slow",
        table_name,
        snapshot_mode="discard",
        batch_max_size=200,
        backpressure_pause_at=1000,
        backpressure_resume_at=500,
    )
    faults.delay(0.2, path_contains="_bulk")
    statuses = set()
    with WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("slow").status == "caught_up")
        for start in range(0, 8000, 100):  # transactions of 100 rows
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT i, repeat('x', 200) "
                f"FROM generate_series({start + 1}, {start + 100}) i"
            )

        def done() -> bool:
            statuses.add(status_of("slow").status)
            return worker.runner.pipelines["slow"].stats.written >= 8000

        wait_for(done, timeout=120, interval=0.1, what="8,000 rows through a slow sink")
        peak = worker.runner.pipelines["slow"].buffer_peak
    # Reading stopped at pause_at; one more read (a batch) may land before it notices.
    assert 1000 <= peak <= 1000 + 200
    assert "backpressure" in statuses
    assert len(index_docs(search, "slow")) == 8000


def test_the_worker_retries_dead_letters_periodically_when_asked(
    source_conn, table_name, make_subscription, search
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, total int, note text)")
    sub = make_subscription("periodic", table_name, snapshot_mode="discard", index_mappings=STRICT)
    with WorkerThread([sub], dlq_retry_every=0.5):
        wait_for(lambda: status_of("periodic").status == "caught_up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 5, 'hello')")
        entry = wait_for(lambda: entry_of("periodic", "1"), what="a dead letter")
        # Still refused: each round counts one more attempt.
        wait_for(
            lambda: DeadLetter.objects.filter(doc_id="1", attempts__gte=2).exists(),
            what="a retry round",
        )
        search.indices.put_mapping(
            index="periodic", body={"properties": {"note": {"type": "text"}}}
        )
        wait_for(lambda: entry_of("periodic", "1") is None, what="the entry retried away")
    doc = search.get(index="periodic", id="1")
    assert doc["_version"] == entry.version and doc["_source"]["note"] == "hello"


def test_a_malformed_retry_interval_is_refused_before_anything_runs():
    result = manage("runsyncer", "--dlq-retry-every", "5 minutes")
    assert result.returncode == 2
    assert "'5 minutes' is not an age" in result.stderr and "e.g. 30m" in result.stderr


@pytest.mark.usefixtures("fast_retries")
def test_a_bulk_refused_as_too_large_is_split_without_loss(
    source_conn, table_name, make_subscription, search, faults
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    sub = make_subscription("split", table_name, snapshot_mode="discard")
    with WorkerThread([sub]):
        wait_for(lambda: status_of("split").status == "caught_up")
        faults.fail_requests(status=413, count=1, path_contains="_bulk")
        source_conn.execute(f"INSERT INTO {table_name} SELECT generate_series(1, 40)")
        wait_for(lambda: len(index_docs(search, "split")) == 40, what="all 40 after a 413")
    assert faults.stats.failed == 1 and faults.stats.forwarded >= 2
    assert not DeadLetter.objects.exists()


def _metric(text: str, name: str, subscription: str) -> float | None:
    prefix = f'{name}{{subscription="{subscription}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def test_backpressure_and_throughput_are_exported_as_prometheus_metrics(
    source_conn, table_name, make_subscription, faults, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    make_subscription(
        "metered",
        table_name,
        snapshot_mode="discard",
        batch_max_size=100,
        backpressure_pause_at=300,
        backpressure_resume_at=100,
    )
    faults.delay(0.3, path_contains="_bulk")
    port = free_port()
    worker = WorkerProcess(faults.url, tmp_path / "w.log", metrics_port=port).process
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: status_of("metered").status == "caught_up", what="caught up")
        for start in range(0, 3000, 100):
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT generate_series({start + 1}, {start + 100})"
            )
        paused = wait_for(
            lambda: _metric(_scrape(url), "searchsync_backpressure_active", "metered") == 1,
            what="backpressure_active 1",
        )
        text = _scrape(url)
        faults.clear()
        wait_for(
            lambda: _metric(_scrape(url), "searchsync_documents_written_total", "metered") == 3000,
            what="3,000 written",
        )
        done = _scrape(url)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    # Paused at 300 and stays paused while the writer drains to 100: never above one
    # read (100) past the pause.
    assert paused and 100 < (_metric(text, "searchsync_buffer_changes", "metered") or 0) <= 400
    assert _metric(done, "searchsync_backpressure_active", "metered") == 0
    assert _metric(done, "searchsync_sink_available", "metered") == 1
    assert 'searchsync_status{status="caught_up",subscription="metered"} 1.0' in done


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
