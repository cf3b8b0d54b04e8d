"""`runsyncer --metrics-port` as a real process: /health, /ready, /metrics, and its logs.

Real PostgreSQL, a real osmem-server (behind a TCP proxy to take it away), a real
worker process whose stderr is the log an operator reads.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncer.engine.pipeline import Pipeline, PipelineConfig
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
)
from syncer.worker.metrics import DeadLetterQueueCollector
from tests.support import factories
from tests.support.harness import index_docs, status_of, wait_for
from tests.support.process import WorkerProcess, free_port
from tests.support.users import operator, token_client

SECRET = "Sup3r-Secret-Pw"
URL = "/api/live-subscriptions"
JSON = "application/json"


class MeteredWorker(WorkerProcess):
    """A worker process serving its HTTP endpoints on a free port."""

    def __init__(self, opensearch_url: str, log: Path, *args: str) -> None:
        super().__init__(opensearch_url, log, *args, metrics_port=free_port())
        self.base = f"http://127.0.0.1:{self.metrics_port}"
        wait_for(lambda: self.get("/health")[0] == 200 or self._died(), what="/health")

    def _died(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited: {self.output()}")
        return False

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def ready(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/ready")
        return status, json.loads(body) if body else {}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def metric(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def test_metrics_parse_and_their_counters_and_histograms_move_as_changes_flow(
    source_conn, table_name, make_subscription, opensearch_url, search, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    make_subscription("observed", table_name, snapshot_mode="discard")
    worker = MeteredWorker(opensearch_url, tmp_path / "w.log")
    sub = {"subscription": "observed"}
    try:
        wait_for(lambda: status_of("observed").status == "caught_up", what="caught up")
        before = worker.scrape()
        source_conn.execute(f"INSERT INTO {table_name} SELECT i, 'x' FROM generate_series(1, 20) i")
        wait_for(lambda: len(index_docs(search, "observed")) == 20, what="20 indexed")
        source_conn.execute(f"DELETE FROM {table_name} WHERE id <= 3")
        wait_for(
            lambda: metric(worker.scrape(), "searchsync_changes_total", op="delete", **sub) == 3,
            what="3 deletes counted",
        )
        after = worker.scrape()
    finally:
        worker.stop()

    assert metric(after, "searchsync_changes_total", op="upsert", **sub) == 20
    assert metric(before, "searchsync_changes_total", op="upsert", **sub) == 0
    ok_bulks = metric(after, "searchsync_bulk_requests_total", outcome="ok", **sub)
    assert ok_bulks >= 2 > metric(before, "searchsync_bulk_requests_total", outcome="ok", **sub)
    for histogram in ("searchsync_flush_duration_seconds", "searchsync_commit_to_ack_seconds"):
        assert metric(after, f"{histogram}_count", **sub) >= 2 + metric(
            before, f"{histogram}_count", **sub
        )
        assert metric(after, f"{histogram}_bucket", le="+Inf", **sub) == metric(
            after, f"{histogram}_count", **sub
        )
        assert metric(after, f"{histogram}_sum", **sub) > 0
    assert metric(after, "searchsync_transactions_total", **sub) >= 2
    assert metric(after, "searchsync_documents_written_total", **sub) == 23
    checkpoint = metric(after, "searchsync_last_checkpoint_timestamp_seconds", **sub)
    assert time.time() - 60 < checkpoint <= time.time()
    assert checkpoint > metric(before, "searchsync_last_checkpoint_timestamp_seconds", **sub)
    assert metric(after, "searchsync_source_connected", **sub) == 1
    assert metric(after, "searchsync_buffer_changes", **sub) == 0
    assert ("searchsync_lag_seconds", frozenset(sub.items())) in after
    assert ("searchsync_staleness_seconds", frozenset(sub.items())) in after
    assert metric(after, "searchsync_errors_total", kind="document_rejected", **sub) == 0
    assert metric(after, "process_resident_memory_bytes") > 0
    assert ("searchsync_dead_letter_queue_entries", frozenset(sub.items())) in after


@pytest.mark.usefixtures("fast_retries")
def test_ready_is_503_naming_the_subscription_while_opensearch_is_down_and_200_after(
    source_conn, table_name, make_subscription, opensearch_proxy, search, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    make_subscription("watched", table_name, snapshot_mode="discard")
    worker = MeteredWorker(opensearch_proxy.url(), tmp_path / "w.log")
    try:
        status, body = wait_for(lambda: _when(worker.ready(), 200), what="/ready 200")
        assert body["ready"] is True and body["subscriptions"]["watched"]["ready"] is True
        with opensearch_proxy.down():
            status, body = wait_for(lambda: _when(worker.ready(), 503), what="/ready 503")
            assert any(r.startswith("watched: OpenSearch unavailable") for r in body["reasons"])
            assert body["subscriptions"]["watched"]["ready"] is False
            # A change waiting for OpenSearch: the pipeline itself finds it down.
            source_conn.execute(f"INSERT INTO {table_name} VALUES (1)")
            wait_for(
                lambda: (
                    metric(worker.scrape(), "searchsync_sink_available", subscription="watched")
                    == 0
                ),
                what="sink_available 0",
            )
            status, body = worker.ready()
            assert status == 503
            assert body["subscriptions"]["watched"]["status"] == "sink_unavailable"
            assert worker.get("/health")[0] == 200  # alive, only not ready
        status, body = wait_for(lambda: _when(worker.ready(), 200), what="/ready 200 again")
        assert body["reasons"] == []
        wait_for(lambda: "1" in index_docs(search, "watched"), what="the row indexed after")
        scraped = worker.scrape()
    finally:
        worker.stop()
    watched = {"subscription": "watched"}
    assert metric(scraped, "searchsync_bulk_requests_total", outcome="unavailable", **watched) >= 1
    assert metric(scraped, "searchsync_errors_total", kind="bulk_refused", **watched) >= 1
    assert metric(scraped, "searchsync_sink_outages_total", **watched) == 1
    assert metric(scraped, "searchsync_sink_available", **watched) == 1


def test_unknown_paths_are_404_and_health_says_alive(
    source_conn, table_name, make_subscription, opensearch_url, tmp_path
):
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    make_subscription("probed", table_name, snapshot_mode="discard")
    worker = MeteredWorker(opensearch_url, tmp_path / "w.log")
    try:
        status, body = worker.get("/health")
        missing, hint = worker.get("/nothing-here")
    finally:
        worker.stop()
    assert status == 200 and json.loads(body)["status"] == "alive"
    assert missing == 404 and "/ready" in json.loads(hint)["error"]


def _when(result: tuple[int, dict[str, Any]], status: int) -> tuple[int, dict[str, Any]] | None:
    """`result` once it has `status` and the worker runs its subscriptions."""
    return result if result[0] == status and result[1].get("subscriptions") else None


def test_worker_logs_are_one_json_object_per_line_without_passwords(
    source_conn, source_dsn, table_name, make_subscription, opensearch_url, tmp_path, monkeypatch
):
    # Trust authentication ignores the password, so the DSN works with one in it.
    with_password = source_dsn.replace("postgres@", f"postgres:{SECRET}@")
    assert SECRET in with_password
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    make_subscription("logged", table_name, snapshot_mode="discard", source_dsn=with_password)
    # A second one that cannot connect: its errors are logged with its DSN's details.
    broken = with_password.rsplit("/", 1)[0] + "/no_such_database"
    make_subscription("broken", table_name, validate=False, source_dsn=broken)
    monkeypatch.setenv("OPENSEARCH_PASSWORD", "Opensearch-Secret-9")
    log = tmp_path / "w.log"
    worker = WorkerProcess(opensearch_url, log)
    try:
        wait_for(lambda: status_of("logged").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {table_name} SELECT generate_series(1, 5)")
        wait_for(lambda: "sync_progress" in log.read_text(), what="a sync_progress line")
        wait_for(lambda: "pipeline_failed" in log.read_text(), what="the broken one's failure")
    finally:
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(30)
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and all(isinstance(line, dict) and line.get("event") for line in lines)
    assert SECRET not in text and "Opensearch-Secret-9" not in text
    progress = next(line for line in lines if line["event"] == "sync_progress")
    assert progress["subscription"] == "logged" and progress["changes"] == 5
    assert progress["flush_ms_avg"] > 0 and "lag_s" in progress
    failed = next(line for line in lines if line["event"] == "pipeline_failed")
    assert failed["subscription"] == "broken" and "no_such_database" in failed["error"]
    assert {"timestamp", "level"} <= set(failed)


def test_log_format_console_writes_readable_lines_not_json(
    transactional_db, opensearch_url, tmp_path, monkeypatch
):
    monkeypatch.setenv("LOG_FORMAT", "console")
    log = tmp_path / "w.log"
    worker = WorkerProcess(opensearch_url, log)
    try:
        wait_for(lambda: "worker_started" in log.read_text(), what="worker_started")
    finally:
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    started = next(line for line in lines if "worker_started" in line)
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert "[info" in started


def _pipeline(name: str) -> Pipeline:
    config = PipelineConfig(name=name)
    return Pipeline(
        config, InMemorySource(), InMemorySink(), InMemoryStore(), InMemoryDeadLetters()
    )


def test_dead_letter_queue_entries_are_counted_per_subscription_from_the_database(db):
    orders, _ = factories.subscription("orders"), factories.subscription("billing")
    for doc_id in ("1", "2", "3"):
        factories.entry(orders, doc_id)
    factories.entry(factories.subscription("not-mine"), "9")  # another worker's subscription
    pipelines = {"orders": _pipeline("orders"), "billing": _pipeline("billing")}
    collector = DeadLetterQueueCollector(lambda: pipelines, every=60)

    def entries() -> dict[str, float]:
        (family,) = list(collector.collect())
        return {s.labels["subscription"]: s.value for s in family.samples}

    assert entries() == {"orders": 3, "billing": 0}
    factories.entry(orders, "4")
    assert entries() == {"orders": 3, "billing": 0}  # counted at most once a minute here
    fresh = DeadLetterQueueCollector(lambda: pipelines, every=0)
    assert {s.value for s in next(iter(fresh.collect())).samples} == {4, 0}


def test_metrics_count_registrations_and_refusals_made_by_the_console(
    source_conn, table_name, make_subscription, opensearch_url, search, tmp_path, settings
):
    """The console (this process, through the REST API) registers; the worker, another
    process, exports the database's totals."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    make_subscription("observed", table_name, snapshot_mode="discard")
    gateway = token_client(operator("gateway"))
    worker = MeteredWorker(opensearch_url, tmp_path / "w.log")

    def entry(text: str) -> dict[str, str]:
        return {"gateway_id": "gw", "subscription": "observed", "filter": text, "delivery": "nats"}

    def registered_and_refused() -> tuple[float, ...]:
        scraped = worker.scrape()
        return (
            metric(scraped, "searchsync_live_subscriptions_registered_total"),
            *(
                metric(scraped, "searchsync_live_subscriptions_refused_total", limit=limit)
                for limit in ("owner", "global", "unpinned")
            ),
        )

    try:
        assert registered_and_refused() == (0, 0, 0, 0)
        batch = {"subscriptions": [entry(f"doc.id == {n}") for n in range(3)]}
        assert gateway.post(URL, batch, content_type=JSON).status_code == 201
        settings.LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION = 0
        assert gateway.post(URL, entry("true"), content_type=JSON).status_code == 429
        # Scrapes read the database at most every 5 s: wait for the next read.
        wait_for(lambda: registered_and_refused() == (3, 0, 0, 1), timeout=15, what="counted")
    finally:
        worker.stop()
