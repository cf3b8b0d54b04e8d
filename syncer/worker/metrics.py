"""Prometheus metrics of a worker, read from its pipelines' counters at scrape time.

The engine keeps plain counters (`PipelineStats`, `Telemetry`); this collector turns
them into metric families when Prometheus asks, so the sync loop never touches the
client library. `runsyncer --metrics-port 9108` serves them at /metrics, beside
/health and /ready (`syncer.worker.http`). Every family is labelled by subscription;
docs/prometheus-alerts.yml and docs/grafana-dashboard.json use these names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Generic, TypeVar

import structlog
from django.db import DatabaseError, connection
from django.db.models import Count
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from syncer.engine.changes import Op
from syncer.engine.pipeline import Pipeline, PipelineStats
from syncer.engine.telemetry import BulkOutcome, ErrorKind, Histogram, Telemetry
from syncer.errors import QuotaExceeded
from syncer.live.delivery import Breaker, Delivery, DropReason
from syncer.models import DeadLetter, LiveSubscriptionCount
from syncer.operations import live_subscriptions, push, verify
from syncer.worker import http
from syncer.worker.live_subscriptions import LiveMatching

log = structlog.get_logger(__name__)
Pipelines = Callable[[], Mapping[str, Pipeline]]

_COUNTERS: list[tuple[str, str, Callable[[PipelineStats], float]]] = [
    ("transactions", "Source transactions acknowledged.", lambda s: s.transactions),
    ("documents_written", "Documents OpenSearch accepted.", lambda s: s.written),
    ("documents_stale", "Writes found already applied (409, older version).", lambda s: s.stale),
    ("dead_letters", "Documents sent to the dead-letter queue.", lambda s: s.dead_lettered),
    ("dead_letters_superseded", "Dead letters removed by a newer write.", lambda s: s.superseded),
    ("retries", "Bulk requests retried after a transient failure.", lambda s: s.retries),
    ("sink_outages", "Times the circuit breaker opened.", lambda s: s.outages),
    ("snapshot_rows", "Rows copied by initial snapshots.", lambda s: s.snapshot_rows),
    (
        "snapshot_resumes",
        "Times an interrupted copy went on from its saved cursor instead of its first row.",
        lambda s: s.snapshot_resumes,
    ),
    (
        "resnapshots",
        "Times the source could not resume from the checkpoint and copied everything again.",
        lambda s: s.resnapshots,
    ),
    (
        "source_data_errors",
        "Source data the sync cannot map cleanly (e.g. a key that is not unique).",
        lambda s: s.data_errors,
    ),
    (
        "checkpoint_hold_expired",
        "Times the checkpoint moved past live-subscription events NATS had not acknowledged "
        "(LIVE_CHECKPOINT_HOLD_SECONDS ran out): a crash then loses them.",
        lambda s: s.hold_expired,
    ),
    (
        "checkpoint_hold_expired_changes",
        "Changes the checkpoint moved past before their NATS events were acknowledged.",
        lambda s: s.hold_expired_changes,
    ),
]

_GAUGES: list[tuple[str, str, Callable[[Pipeline, float], float]]] = [
    ("buffer_changes", "Row changes read and not yet written.", lambda p, _: p.buffered),
    ("buffer_peak_changes", "Most row changes buffered this session.", lambda p, _: p.buffer_peak),
    (
        "backpressure_active",
        "1 while reading is paused because the buffer reached pause_at.",
        lambda p, _: float(p.backpressure),
    ),
    (
        "sink_available",
        "0 while OpenSearch refuses whole requests (circuit breaker open).",
        lambda p, _: float(p.stats.sink_available),
    ),
    (
        "source_connected",
        "1 while a session is connected to the source and OpenSearch.",
        lambda p, _: float(p.telemetry.connected_at is not None),
    ),
    (
        "lag_seconds",
        "Now minus the commit of the oldest unacknowledged change.",
        lambda p, now: p.stats.lag(now),
    ),
    (
        "checkpoint_held_seconds",
        "How long the oldest batch OpenSearch acknowledged has waited for its checkpoint, "
        "held until NATS acknowledges its live-subscription events (0: none waits).",
        lambda p, now: p.checkpoint_held_seconds(now),
    ),
]

_COPY_GAUGES = [
    ("copied_rows", "Rows the copy under way has copied, every session's (absent: no copy)."),
    ("estimated_rows", "The planner's estimate of the table's rows (absent: none, or no copy)."),
    ("progress_ratio", "Copied rows over the estimate, 0 to 1 (absent: no estimate or copy)."),
    ("rows_per_second", "Rows the copy writes per second over the last 30 s of this session."),
    ("eta_seconds", "Seconds the copy should still take at that rate (absent: not known)."),
]

_HISTOGRAMS: list[tuple[str, str, Callable[[Telemetry], Histogram]]] = [
    (
        "flush_duration_seconds",
        "Seconds to write one batch and save its checkpoint (retries and outages included).",
        lambda t: t.flush_seconds,
    ),
    (
        "commit_to_ack_seconds",
        "Seconds from a source transaction's commit to OpenSearch acknowledging it.",
        lambda t: t.commit_latency_seconds,
    ),
]

# Always exported (0 until they happen), so rate() and ratios work from the start.
_OPS = [str(op) for op in Op]
_BULK_OUTCOMES = [
    BulkOutcome.OK,
    BulkOutcome.PARTIAL,
    BulkOutcome.UNAVAILABLE,
    BulkOutcome.TOO_LARGE,
]
_ERROR_KINDS = [
    ErrorKind.BULK_REFUSED,
    ErrorKind.DOCUMENT_TRANSIENT,
    ErrorKind.DOCUMENT_REJECTED,
    ErrorKind.SOURCE_DATA,
]


class PipelineCollector(Collector):
    def __init__(self, pipelines: Pipelines) -> None:
        self._pipelines = pipelines

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        pipelines = dict(self._pipelines())
        yield from self._totals(pipelines)
        yield from self._labelled_counters(pipelines)
        yield from self._gauges(pipelines, now)
        yield from self._histograms(pipelines)
        workers = GaugeMetricFamily(
            "searchsync_worker_subscriptions", "Subscriptions this worker is running."
        )
        workers.add_metric([], len(pipelines))
        yield workers

    def _totals(self, pipelines: dict[str, Pipeline]) -> Iterator[Metric]:
        for name, help_text, read in _COUNTERS:
            counter = CounterMetricFamily(f"searchsync_{name}", help_text, labels=["subscription"])
            for sub, pipeline in pipelines.items():
                counter.add_metric([sub], read(pipeline.stats))
            yield counter
        reconnects = CounterMetricFamily(
            "searchsync_reconnects",
            "Sessions started again after a failure (source, OpenSearch or console database).",
            labels=["subscription"],
        )
        for sub, pipeline in pipelines.items():
            reconnects.add_metric([sub], pipeline.telemetry.reconnects)
        yield reconnects

    def _labelled_counters(self, pipelines: dict[str, Pipeline]) -> Iterator[Metric]:
        changes = CounterMetricFamily(
            "searchsync_changes",
            "Document changes OpenSearch accepted or found already applied, by op.",
            labels=["subscription", "op"],
        )
        bulks = CounterMetricFamily(
            "searchsync_bulk_requests",
            "Bulk requests sent to OpenSearch, by outcome: ok, partial (documents to retry "
            "or dead-lettered), unavailable (refused as a whole), too_large (413, split).",
            labels=["subscription", "outcome"],
        )
        errors = CounterMetricFamily(
            "searchsync_errors",
            "Failures by kind: bulk_refused, document_transient, document_rejected, "
            "source_data, or the error that ended a session (e.g. source_unavailable).",
            labels=["subscription", "kind"],
        )
        for sub, pipeline in pipelines.items():
            # Copies: the sync loop may add a key while this thread reads.
            by_op = dict(pipeline.telemetry.changes)
            by_outcome = dict(pipeline.telemetry.bulk_requests)
            by_kind = dict(pipeline.telemetry.errors)
            for op in _OPS:
                changes.add_metric([sub, op], by_op.get(op, 0))
            for outcome in sorted({*_BULK_OUTCOMES, *by_outcome}):
                bulks.add_metric([sub, outcome], by_outcome.get(outcome, 0))
            for kind in sorted({*_ERROR_KINDS, *by_kind}):
                errors.add_metric([sub, kind], by_kind.get(kind, 0))
        yield changes
        yield bulks
        yield errors

    def _gauges(self, pipelines: dict[str, Pipeline], now: float) -> Iterator[Metric]:
        for name, help_text, measure in _GAUGES:
            gauge = GaugeMetricFamily(f"searchsync_{name}", help_text, labels=["subscription"])
            for sub, pipeline in pipelines.items():
                gauge.add_metric([sub], measure(pipeline, now))
            yield gauge
        status = GaugeMetricFamily(
            "searchsync_status",
            "1 for the subscription's current status.",
            labels=["subscription", "status"],
        )
        for sub, pipeline in pipelines.items():
            status.add_metric([sub, pipeline.status], 1.0)
        yield status
        staleness = GaugeMetricFamily(
            "searchsync_staleness_seconds",
            "Now minus the last time the source said it is complete (absent until it has).",
            labels=["subscription"],
        )
        checkpoint = GaugeMetricFamily(
            "searchsync_last_checkpoint_timestamp_seconds",
            "When the checkpoint was last saved, in Unix seconds (absent until it has been).",
            labels=["subscription"],
        )
        for sub, pipeline in pipelines.items():
            seconds = pipeline.staleness(now)
            if seconds is not None:
                staleness.add_metric([sub], seconds)
            saved = pipeline.telemetry.last_checkpoint_at
            if saved is not None:
                checkpoint.add_metric([sub], saved)
        yield staleness
        yield checkpoint
        yield from self._copies(pipelines)

    def _copies(self, pipelines: dict[str, Pipeline]) -> Iterator[Metric]:
        """A resumable copy's progress, present while one runs."""
        families = {
            name: GaugeMetricFamily(
                f"searchsync_snapshot_{name}", help_text, labels=["subscription"]
            )
            for name, help_text in _COPY_GAUGES
        }
        for sub, pipeline in pipelines.items():
            figures = pipeline.copy_figures()
            if figures is None:
                continue
            values = {
                "copied_rows": figures.rows,
                "estimated_rows": figures.estimated_rows,
                "progress_ratio": None if figures.percent is None else figures.percent / 100,
                "rows_per_second": figures.rows_per_second,
                "eta_seconds": figures.eta_seconds,
            }
            for name, value in values.items():
                if value is not None:
                    families[name].add_metric([sub], value)
        yield from families.values()

    def _histograms(self, pipelines: dict[str, Pipeline]) -> Iterator[Metric]:
        for name, help_text, pick in _HISTOGRAMS:
            family = HistogramMetricFamily(f"searchsync_{name}", help_text, labels=["subscription"])
            for sub, pipeline in pipelines.items():
                snapshot = pick(pipeline.telemetry).snapshot()
                family.add_metric(
                    [sub],
                    [(_le(bound), count) for bound, count in snapshot.buckets],
                    snapshot.sum,
                )
            yield family


def dead_letter_counts(names: Collection[str]) -> dict[str, int]:
    """Entries in the dead-letter queue per subscription, in one grouped query."""
    try:
        rows = (
            DeadLetter.objects.filter(subscription__name__in=list(names))
            .values("subscription__name")
            .annotate(n=Count("pk"))
        )
        return {row["subscription__name"]: row["n"] for row in rows}
    finally:
        _leave_no_connection()


def push_queue_depths(names: Collection[str]) -> dict[str, int]:
    """Each push subscription's queue length, in two grouped queries."""
    try:
        return push.queued_by_name(list(names))
    finally:
        _leave_no_connection()


def latest_verifications(names: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each subscription's last verification, in two queries."""
    try:
        return verify.latest_by_subscription(list(names))
    finally:
        _leave_no_connection()


def live_subscription_counts() -> dict[tuple[str, str], int]:
    """The console's running totals of registrations, as (event, quota) -> total."""
    try:
        return live_subscriptions.counts()
    finally:
        _leave_no_connection()


def _leave_no_connection() -> None:
    if not connection.in_atomic_block:
        connection.close()  # scrapes come on short-lived threads: leave no connection


K = TypeVar("K")
V = TypeVar("V")


class _Throttled(Generic[K, V]):
    """A database read done at most every `every` seconds for the same `key`: frequent
    scrapes cost one query. None, logged as `event`, when the database cannot be read."""

    def __init__(self, read: Callable[[K], V], every: float, event: str) -> None:
        self._read = read
        self._every = every
        self._event = event
        self._lock = threading.Lock()
        self._done: tuple[float, K, V] | None = None

    def get(self, key: K) -> V | None:
        with self._lock:
            now = time.monotonic()
            if self._done and self._done[1] == key and now - self._done[0] < self._every:
                return self._done[2]
            try:
                value = self._read(key)
            except DatabaseError as exc:
                log.warning(self._event, error=str(exc))
                return None
            self._done = (now, key, value)
            return value


class DeadLetterQueueCollector(Collector):
    """The dead-letter queue's size per subscription this worker runs, from the database.

    Counted at most every `every` seconds, so frequent scrapes cost one query; when the
    database cannot be read the samples are left out rather than reported as 0.
    """

    def __init__(
        self,
        pipelines: Pipelines,
        count: Callable[[Collection[str]], dict[str, int]] = dead_letter_counts,
        every: float = 15.0,
    ) -> None:
        self._pipelines = pipelines
        self._counts = _Throttled[tuple[str, ...], dict[str, int]](
            count, every, "dead_letter_count_failed"
        )

    def collect(self) -> Iterator[Metric]:
        names = tuple(sorted(self._pipelines()))
        gauge = GaugeMetricFamily(
            "searchsync_dead_letter_queue_entries",
            "Entries waiting in the dead-letter queue (retry or purge them).",
            labels=["subscription"],
        )
        counts = self._counts.get(names) if names else {}
        if counts is not None:
            for name in names:
                gauge.add_metric([name], counts.get(name, 0))
        yield gauge


class PushQueueCollector(Collector):
    """Each push subscription's queue: operations accepted and not yet removed, from the
    database, at most every `every` seconds (the API answers 429 at SYNCER_PUSH_QUEUE_LIMIT)."""

    def __init__(
        self,
        pipelines: Pipelines,
        count: Callable[[Collection[str]], dict[str, int]] = push_queue_depths,
        every: float = 15.0,
    ) -> None:
        self._pipelines = pipelines
        self._counts = _Throttled[tuple[str, ...], dict[str, int]](
            count, every, "push_queue_count_failed"
        )

    def collect(self) -> Iterator[Metric]:
        names = tuple(sorted(self._pipelines()))
        gauge = GaugeMetricFamily(
            "searchsync_push_queue_operations",
            "Operations a push subscription's queue holds: accepted, not yet checkpointed "
            "and removed.",
            labels=["subscription"],
        )
        counts = self._counts.get(names) if names else {}
        for name, count in sorted((counts or {}).items()):
            gauge.add_metric([name], float(count))
        yield gauge


class VerificationCollector(Collector):
    """Each subscription's last verification (`manage.py verify`, the admin, the API,
    `runsyncer --verify-every`), from the database, at most every `every` seconds."""

    _GAUGES = (
        ("last_finished_timestamp_seconds", "When the last verification ended.", "finished_at"),
        ("checked", "Rows and documents the last verification compared.", "checked"),
        (
            "drifted",
            "Documents the last verification found missing, extra or differing.",
            "drifted",
        ),
        ("repaired", "Documents the last verification repaired.", "repaired"),
        ("failed", "1 if the last verification failed (it says why), else 0.", "failed"),
    )

    def __init__(
        self,
        pipelines: Pipelines,
        latest: Callable[[Collection[str]], dict[str, dict[str, Any]]] = latest_verifications,
        every: float = 15.0,
    ) -> None:
        self._pipelines = pipelines
        self._latest = _Throttled[tuple[str, ...], dict[str, dict[str, Any]]](
            latest, every, "verification_metrics_failed"
        )

    def collect(self) -> Iterator[Metric]:
        names = tuple(sorted(self._pipelines()))
        latest = self._latest.get(names) if names else {}
        if latest is None:
            return
        for name, help_text, key in self._GAUGES:
            gauge = GaugeMetricFamily(
                f"searchsync_verify_{name}", help_text, labels=["subscription"]
            )
            for subscription, figures in sorted(latest.items()):
                if key in figures:
                    gauge.add_metric([subscription], float(figures[key]))
            yield gauge
        running = GaugeMetricFamily(
            "searchsync_verify_running",
            "1 while a verification of the subscription runs, else 0.",
            labels=["subscription"],
        )
        for name in names:
            running.add_metric([name], 1.0 if latest.get(name, {}).get("running") else 0.0)
        yield running


def _le(bound: float) -> str:
    """A bucket's bound as Prometheus writes it: 0.5, 1.0, +Inf."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class LiveCollector(Collector):
    """The live monitor's publisher: what it sent, summarised and lost (best effort)."""

    _COUNTERS = (
        ("published", "Live events sent to the monitor one by one."),
        ("dropped", "Live events summarised instead (rate limit or full queue)."),
        ("send_failures", "Sends to the Channels layer (Redis) that failed or timed out."),
        ("lost", "Live events not sent because the Channels layer was unreachable."),
    )

    def __init__(self, publisher: Callable[[], Any]) -> None:
        self._publisher = publisher

    def collect(self) -> Iterator[Metric]:
        publisher = self._publisher()
        if publisher is None:
            return
        for name, help_text in self._COUNTERS:
            family = CounterMetricFamily(f"searchsync_live_events_{name}", help_text)
            family.add_metric([], float(getattr(publisher, name)))
            yield family


class NatsDeliveryCollector(Collector):
    """NATS JetStream delivery of matched live-subscription events (a `Delivery`: in the
    worker's process or from its publisher process)."""

    _COUNTERS: tuple[tuple[str, str, Callable[[Delivery], float]], ...] = (
        ("published", "Matched events JetStream acknowledged.", lambda d: d.published),
        (
            "duplicates",
            "Acknowledged events JetStream already held (same Nats-Msg-Id), stored once.",
            lambda d: d.duplicates,
        ),
        ("retried", "Events sent again after a failed publish.", lambda d: d.retried),
        ("outages", "Times the NATS circuit breaker opened.", lambda d: d.outages),
        (
            "publisher_restarts",
            "Times the NATS publisher process ended unasked and was started again (its "
            "unsettled events sent again, stored once).",
            lambda d: d.restarts,
        ),
    )
    _GAUGES: tuple[tuple[str, str, Callable[[Delivery], float]], ...] = (
        (
            "breaker_open",
            "1 while NATS does not acknowledge (events wait in the buffer, then drop).",
            lambda d: float(d.breaker is Breaker.OPEN),
        ),
        ("connected", "1 while connected to a NATS server.", lambda d: float(d.connected)),
        ("buffered_events", "Events offered and not yet acknowledged.", lambda d: d.buffered),
    )
    _HISTOGRAMS: tuple[tuple[str, str, Callable[[Delivery], Histogram]], ...] = (
        (
            "publish_seconds",
            "Seconds from a publish to JetStream's acknowledgement.",
            lambda d: d.publish_seconds,
        ),
        (
            "delivery_seconds",
            "Seconds from a matched event's offer to its acknowledgement (buffer wait included).",
            lambda d: d.delivery_seconds,
        ),
    )

    def __init__(self, delivery: Callable[[], Delivery | None]) -> None:
        self._delivery = delivery

    def collect(self) -> Iterator[Metric]:
        delivery = self._delivery()
        if delivery is None:
            return
        prefix = "searchsync_live_nats"
        for name, help_text, read in self._COUNTERS:
            counter = CounterMetricFamily(f"{prefix}_{name}", help_text)
            counter.add_metric([], float(read(delivery)))
            yield counter
        dropped = CounterMetricFamily(
            f"{prefix}_dropped",
            "Matched events never delivered, by reason: buffer_full (NATS too slow), "
            "breaker_open (an outage longer than the buffer), too_large, unencodable, stopped.",
            labels=["reason"],
        )
        counts = dict(delivery.dropped)  # a copy: the loop may add a reason meanwhile
        for reason in sorted({*(str(r) for r in DropReason), *counts}):
            dropped.add_metric([reason], float(counts.get(reason, 0)))
        yield dropped
        for name, help_text, measure in self._GAUGES:
            gauge = GaugeMetricFamily(f"{prefix}_{name}", help_text)
            gauge.add_metric([], float(measure(delivery)))
            yield gauge
        for name, help_text, pick in self._HISTOGRAMS:
            snapshot = pick(delivery).snapshot()
            family = HistogramMetricFamily(f"{prefix}_{name}", help_text)
            family.add_metric(
                [], [(_le(bound), count) for bound, count in snapshot.buckets], snapshot.sum
            )
            yield family


class LiveMatchingCollector(Collector):
    """Live subscriptions: how many are matched, what matching costs, what is delivered."""

    def __init__(self, matching: Callable[[], LiveMatching | None]) -> None:
        self._matching = matching

    def collect(self) -> Iterator[Metric]:
        matching = self._matching()
        if matching is None:
            return
        active = GaugeMetricFamily(
            "searchsync_live_subscriptions_active",
            "Unexpired live subscriptions this worker matches, by sync subscription.",
            labels=["subscription"],
        )
        for name, count in sorted(matching.active().items()):
            active.add_metric([name], count)
        yield active
        refresh = GaugeMetricFamily(
            "searchsync_live_subscriptions_refresh_seconds",
            "How long the last load of the owned subscriptions' live subscriptions took.",
        )
        refresh.add_metric([], matching.refresh_seconds)
        yield refresh
        for name, help_text, value in (
            (
                "searchsync_live_subscriptions_expired",
                "Live subscriptions this worker's expiry loop removed.",
                matching.expired,
            ),
            (
                "searchsync_live_evaluation_errors",
                "Filters that could not be evaluated on a change (type mismatch, missing "
                "field): counted as no match.",
                matching.evaluation_errors,
            ),
            (
                "searchsync_live_matching_dropped",
                "Acknowledged changes not matched because the matching queue was full.",
                matching.dropped,
            ),
            (
                "searchsync_live_matched_changes",
                "Acknowledged changes matched against their sync subscription's live "
                "subscriptions.",
                matching.matched,
            ),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], float(value))
            yield counter
        deliveries = CounterMetricFamily(
            "searchsync_live_deliveries",
            "Matched events by channel and outcome: nats offered|dropped (to the NATS "
            "buffer; searchsync_live_nats_* says what JetStream acknowledged), websocket "
            "sent|dropped|failed (to the Channels group of the live subscription).",
            labels=["channel", "outcome"],
        )
        counts = dict(matching.deliveries)
        known = {("nats", "offered"), ("nats", "dropped"), ("websocket", "sent")}
        known |= {("websocket", "dropped"), ("websocket", "failed")}
        for channel, outcome in sorted(known | set(counts)):
            deliveries.add_metric([channel, outcome], float(counts.get((channel, outcome), 0)))
        yield deliveries
        for name, help_text, histogram in (
            (
                "searchsync_live_match_candidates",
                "Filters evaluated per change (index candidates plus unpinned live subscriptions).",
                matching.candidates,
            ),
            (
                "searchsync_live_match_seconds",
                "Seconds one change's matching takes (activation, index and CEL).",
                matching.match_seconds,
            ),
        ):
            snapshot = histogram.snapshot()
            family = HistogramMetricFamily(name, help_text)
            family.add_metric(
                [], [(_le(bound), count) for bound, count in snapshot.buckets], snapshot.sum
            )
            yield family


class LiveRegistrationsCollector(Collector):
    """Live subscriptions registered and refused by a quota, console-wide.

    Registrations happen in the console's processes, so the totals are the database's
    (`LiveSubscriptionCount`), read at most every `every` seconds; every worker that
    matches live subscriptions exports the same totals (aggregate them with max, not
    sum). Left out when the database cannot be read.
    """

    _QUOTAS = tuple(QuotaExceeded.SETTINGS)

    def __init__(
        self,
        matching: Callable[[], LiveMatching | None],
        count: Callable[[], dict[tuple[str, str], int]] = live_subscription_counts,
        every: float = 5.0,
    ) -> None:
        self._matching = matching
        self._counts = _Throttled[None, dict[tuple[str, str], int]](
            lambda _: count(), every, "live_subscription_count_failed"
        )

    def collect(self) -> Iterator[Metric]:
        if self._matching() is None:
            return
        counts = self._counts.get(None)
        if counts is None:
            return
        registered = CounterMetricFamily(
            "searchsync_live_subscriptions_registered",
            "Live subscriptions registered (REST API and websocket), over all console processes.",
        )
        registered.add_metric(
            [], float(counts.get((LiveSubscriptionCount.Event.REGISTERED, ""), 0))
        )
        yield registered
        refused = CounterMetricFamily(
            "searchsync_live_subscriptions_refused",
            "Registration requests refused (429) by a quota: owner (per owner), global (all "
            "owners), unpinned (a sync subscription's filters that pin no value).",
            labels=["limit"],
        )
        found = {
            quota: total
            for (event, quota), total in counts.items()
            if event == LiveSubscriptionCount.Event.REFUSED
        }
        for quota in sorted({*self._QUOTAS, *found}):
            refused.add_metric([quota], float(found.get(quota, 0)))
        yield refused


def registry_for(
    pipelines: Pipelines,
    count_dead_letters: Callable[[Collection[str]], dict[str, int]] = dead_letter_counts,
    live: Callable[[], Any] | None = None,
    nats: Callable[[], Delivery | None] | None = None,
    matching: Callable[[], LiveMatching | None] | None = None,
    count_live_subscriptions: Callable[[], dict[tuple[str, str], int]] = live_subscription_counts,
    verifications: Callable[[Collection[str]], dict[str, dict[str, Any]]] = latest_verifications,
    push_queues: Callable[[Collection[str]], dict[str, int]] = push_queue_depths,
) -> CollectorRegistry:
    """A registry of the pipelines' metrics, their dead-letter queues' sizes, the live
    publisher's counters, the NATS delivery's, live subscriptions' matching and
    registrations, the last verifications, and the worker process's own (CPU, memory,
    start time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(pipelines))
    registry.register(DeadLetterQueueCollector(pipelines, count_dead_letters))
    registry.register(VerificationCollector(pipelines, verifications))
    registry.register(PushQueueCollector(pipelines, push_queues))
    if live is not None:
        registry.register(LiveCollector(live))
    if nats is not None:
        registry.register(NatsDeliveryCollector(nats))
    if matching is not None:
        registry.register(LiveMatchingCollector(matching))
        registry.register(LiveRegistrationsCollector(matching, count_live_subscriptions))
    ProcessCollector(registry=registry)
    return registry


def serve(
    port: int,
    pipelines: Pipelines,
    *,
    host: str = http.DEFAULT_HOST,
    stall_after: float | None = None,
    worker_ready: Callable[[], str | None] | None = None,
    live: Callable[[], Any] | None = None,
    nats: Callable[[], Delivery | None] | None = None,
    matching: Callable[[], LiveMatching | None] | None = None,
) -> Callable[[], None]:
    """Serve /health, /ready and /metrics on `host:port` (127.0.0.1); return a stopper.

    `stall_after`: seconds without progress after which a subscription is not ready
    (default SYNCER_STALL_AFTER, 60). `worker_ready`: a worker-wide check that returns
    why the worker is not ready, or None. `live` and `nats`: the live monitor's publisher
    and the NATS delivery, when the worker runs them.
    """
    return http.serve(
        port,
        pipelines,
        registry_for(pipelines, live=live, nats=nats, matching=matching),
        host=host,
        stall_after=stall_after,
        worker_ready=worker_ready,
    )
