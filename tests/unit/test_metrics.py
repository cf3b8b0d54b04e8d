"""The worker's metrics and readiness from pipelines run against in-memory fakes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from syncer.engine.changes import Change, RowChange, RowOp, Transaction
from syncer.engine.outcomes import ItemResult
from syncer.engine.pipeline import Pipeline, PipelineConfig, Status
from syncer.engine.telemetry import Histogram, error_kind
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    permanent,
    run_until,
)
from syncer.errors import RequestTooLarge, SinkUnavailable, SourceConfigError
from syncer.live.publisher import LivePublisher
from syncer.worker.http import ReadinessCheck, subscription_problem
from syncer.worker.metrics import PushQueueCollector, VerificationCollector, registry_for

FAST = PipelineConfig(
    name="m", batch_max_size=100, poll_interval=0.005, backoff_base=0.001, backoff_cap=0.01
)


def tx(position: int, *changes: RowChange, committed: float | None = None) -> Transaction:
    return Transaction(position, time.time() if committed is None else committed, list(changes))


def ins(key: int) -> RowChange:
    return RowChange(RowOp.INSERT, (key,), {"id": key})


def delete(key: int) -> RowChange:
    return RowChange(RowOp.DELETE, (key,))


Scraped = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(pipelines: dict[str, Pipeline]) -> Scraped:
    """Every sample of a scrape, by name and labels, parsed as Prometheus parses it."""
    registry = registry_for(
        lambda: pipelines,
        lambda names: {},
        verifications=lambda names: {},
        push_queues=lambda names: {},
    )
    return scrape_text(generate_latest(registry).decode())


def scrape_text(text: str) -> Scraped:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: Scraped, name: str, **labels: str) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


class TooLargeForTwo(InMemorySink):
    """Refuses any bulk of more than one document as too large (413)."""

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        if len(changes) > 1:
            self.requests += 1
            raise RequestTooLarge("creating a bulk: too large (injected)")
        return await super().write(changes)


async def test_changes_by_op_bulk_outcomes_and_histograms_move_as_batches_flow():
    committed = time.time() - 2.0  # two seconds before the worker sees it
    source = InMemorySource([tx(10, ins(1), ins(2), ins(3), committed=committed)])
    sink, store, dlq = InMemorySink(), InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    sink.outages = 2
    sink.reject = lambda c: permanent() if c.doc_id == "3" else None
    pipeline = Pipeline(FAST, source, sink, store, dlq)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    source.push(tx(20, delete(1)))
    await run_until(pipeline, lambda: store.checkpoint == 20)

    scraped = samples({"orders": pipeline})
    sub = {"subscription": "orders"}
    assert value(scraped, "searchsync_changes_total", op="upsert", **sub) == 2
    assert value(scraped, "searchsync_changes_total", op="delete", **sub) == 1
    assert value(scraped, "searchsync_bulk_requests_total", outcome="unavailable", **sub) == 2
    assert value(scraped, "searchsync_bulk_requests_total", outcome="partial", **sub) == 1
    assert value(scraped, "searchsync_bulk_requests_total", outcome="ok", **sub) == 1
    assert value(scraped, "searchsync_bulk_requests_total", outcome="too_large", **sub) == 0
    assert value(scraped, "searchsync_errors_total", kind="bulk_refused", **sub) == 2
    assert value(scraped, "searchsync_errors_total", kind="document_rejected", **sub) == 1
    assert value(scraped, "searchsync_dead_letters_total", **sub) == 1
    assert value(scraped, "searchsync_sink_outages_total", **sub) == 1
    assert value(scraped, "searchsync_flush_duration_seconds_count", **sub) == 2
    assert value(scraped, "searchsync_commit_to_ack_seconds_count", **sub) == 2
    # The first transaction waited two seconds: it lands in the 5 s bucket, not the 1 s one.
    assert value(scraped, "searchsync_commit_to_ack_seconds_bucket", le="1.0", **sub) == 1
    assert value(scraped, "searchsync_commit_to_ack_seconds_bucket", le="5.0", **sub) == 2
    assert (value(scraped, "searchsync_commit_to_ack_seconds_sum", **sub) or 0) >= 2.0
    saved = value(scraped, "searchsync_last_checkpoint_timestamp_seconds", **sub)
    assert saved is not None and time.time() - 5 < saved <= time.time()
    assert value(scraped, "searchsync_reconnects_total", **sub) == 0
    assert value(scraped, "searchsync_worker_subscriptions") == 1


async def test_a_bulk_too_large_is_counted_and_split():
    source = InMemorySource([tx(10, ins(1), ins(2))])
    sink, store = TooLargeForTwo(), InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 10)
    scraped = samples({"big": pipeline})
    sub = {"subscription": "big"}
    assert value(scraped, "searchsync_bulk_requests_total", outcome="too_large", **sub) == 1
    assert value(scraped, "searchsync_bulk_requests_total", outcome="ok", **sub) == 2
    assert value(scraped, "searchsync_errors_total", kind="request_too_large", **sub) == 1


async def test_a_session_failure_counts_a_reconnect_and_an_error_of_its_kind():
    source = InMemorySource([tx(10, ins(1))])
    source.fail_reads = 1
    store = InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(FAST, source, InMemorySink(), store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 10)
    scraped = samples({"flaky": pipeline})
    assert value(scraped, "searchsync_reconnects_total", subscription="flaky") == 1
    assert value(
        scraped, "searchsync_errors_total", subscription="flaky", kind="source_unavailable"
    )
    assert source.opened == 2


def test_error_kinds_are_our_exception_names_and_internal_for_the_rest():
    assert error_kind(SinkUnavailable("down")) == "sink_unavailable"
    assert error_kind(SourceConfigError("no table")) == "source_config_error"
    assert error_kind(KeyError("bug")) == "internal"


def test_a_histogram_counts_cumulatively_up_to_inf():
    histogram = Histogram([0.1, 1.0])
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(seconds)
    snapshot = histogram.snapshot()
    assert snapshot.buckets == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert snapshot.count == 4 and snapshot.sum == 3.65


def test_a_histogram_adds_another_processes_counts_of_the_same_buckets():
    theirs, ours = Histogram([0.1, 1.0]), Histogram([0.1, 1.0])
    for seconds in (0.05, 3.0):
        theirs.observe(seconds)
    ours.observe(0.5)
    ours.add(*theirs.counts())
    assert ours.snapshot().buckets == [(0.1, 1), (1.0, 2), (float("inf"), 3)]
    assert ours.snapshot().sum == 3.55
    with pytest.raises(ValueError, match="2 bucket counts for 3 buckets"):
        ours.add([1, 2], 1.0)


def idle_pipeline(name: str = "orders") -> tuple[Pipeline, InMemorySource, InMemoryStore]:
    source = InMemorySource()
    store = InMemoryStore(snapshot_done=True)
    return Pipeline(FAST, source, InMemorySink(), store, InMemoryDeadLetters()), source, store


async def test_a_connected_subscription_making_progress_is_ready():
    pipeline, source, _ = idle_pipeline()
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        async with asyncio.timeout(5):
            while pipeline.status != Status.CAUGHT_UP:
                await asyncio.sleep(0.002)
        source.progressed = time.time()
        assert subscription_problem(pipeline, time.time(), stall_after=60) is None
        # No progress from the source nor the sink for longer than the limit: stalled.
        later = time.time() + 120
        problem = subscription_problem(pipeline, later, stall_after=60)
        assert problem is not None and problem.startswith("stalled: no progress for 120 s")
        readiness = ReadinessCheck(lambda: {"orders": pipeline}, 60, lambda: None)()
        assert readiness.ready and readiness.subscriptions["orders"]["status"] == "caught_up"
        down = ReadinessCheck(
            lambda: {"orders": pipeline}, 60, lambda: "OpenSearch unavailable: refused"
        )()
        assert not down.ready
        assert down.reasons == ["orders: OpenSearch unavailable: refused"]
    finally:
        stop.set()
        await task


async def test_a_subscription_whose_sink_is_down_is_not_ready_and_says_why():
    pipeline, source, _ = idle_pipeline()
    source.push(tx(10, ins(1)))
    pipeline.sink.outages = 10**6  # type: ignore[attr-defined]
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        async with asyncio.timeout(5):
            while pipeline.status != Status.SINK_UNAVAILABLE:
                await asyncio.sleep(0.002)
        readiness = ReadinessCheck(lambda: {"orders": pipeline}, 60, lambda: None)()
        assert not readiness.ready
        assert readiness.reasons[0].startswith("orders: OpenSearch unavailable: connection refused")
        assert readiness.subscriptions["orders"]["ready"] is False
    finally:
        stop.set()
        await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_subscription_not_connected_is_not_ready_and_a_worker_problem_is_named():
    pipeline, _, _ = idle_pipeline("billing")
    readiness = ReadinessCheck(
        lambda: {"billing": pipeline}, 60, lambda: None, lambda: "console database unreachable"
    )()
    assert not readiness.ready
    assert readiness.reasons == ["worker: console database unreachable", "billing: stopped"]


def test_a_worker_without_subscriptions_is_ready_without_asking_opensearch():
    asked: list[bool] = []

    def probe() -> str | None:
        asked.append(True)
        return "OpenSearch unavailable"

    readiness = ReadinessCheck(lambda: {}, 60, probe)()
    assert readiness.ready and readiness.reasons == [] and not asked


def test_the_live_publishers_counters_are_exported_once_it_runs():
    publisher: object | None = None

    def scraped_live() -> Scraped:
        registry = registry_for(lambda: {}, lambda names: {}, live=lambda: publisher)
        return scrape_text(generate_latest(registry).decode())

    assert value(scraped_live(), "searchsync_live_events_published_total") is None
    publisher = LivePublisher("w1", events_per_second=10, queue_size=10)
    publisher.published, publisher.dropped, publisher.lost = 7, 3, 2
    scraped = scraped_live()
    assert value(scraped, "searchsync_live_events_published_total") == 7
    assert value(scraped, "searchsync_live_events_dropped_total") == 3
    assert value(scraped, "searchsync_live_events_send_failures_total") == 0
    assert value(scraped, "searchsync_live_events_lost_total") == 2


def test_each_subscription_s_last_verification_is_a_gauge() -> None:
    last = {"finished_at": 1_700_000_000.0, "failed": False, "checked": 90, "drifted": 3}
    verified: dict[str, dict[str, Any]] = {
        "orders": {**last, "repaired": 2, "running": False},
        "users": {"running": True},
    }
    registry = CollectorRegistry()
    owned: dict[str, Any] = {"orders": object(), "users": object()}  # only their names count
    registry.register(VerificationCollector(lambda: owned, lambda names: verified))
    scraped = scrape_text(generate_latest(registry).decode())

    def gauge(name: str, subscription: str) -> float | None:
        return scraped.get((name, frozenset({("subscription", subscription)})))

    assert gauge("searchsync_verify_drifted", "orders") == 3
    assert gauge("searchsync_verify_repaired", "orders") == 2
    assert gauge("searchsync_verify_checked", "orders") == 90
    assert gauge("searchsync_verify_failed", "orders") == 0
    assert gauge("searchsync_verify_last_finished_timestamp_seconds", "orders") == 1.7e9
    assert gauge("searchsync_verify_running", "users") == 1
    assert gauge("searchsync_verify_running", "orders") == 0
    assert gauge("searchsync_verify_drifted", "users") is None  # never ended: no figure


def test_each_push_subscription_s_queue_is_a_gauge() -> None:
    registry = CollectorRegistry()
    owned: dict[str, Any] = {"pushed": object(), "orders": object()}
    registry.register(PushQueueCollector(lambda: owned, lambda names: {"pushed": 42}))
    scraped = scrape_text(generate_latest(registry).decode())
    labels = frozenset({("subscription", "pushed")})
    assert scraped[("searchsync_push_queue_operations", labels)] == 42
    # Not a push subscription: no sample rather than a misleading 0.
    assert ("searchsync_push_queue_operations", frozenset({("subscription", "orders")})) not in (
        scraped
    )
