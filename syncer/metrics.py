"""Prometheus metrics of a worker, read from its pipelines' stats at scrape time.

The engine keeps plain counters (`PipelineStats`); this collector turns them into
metrics when Prometheus asks, so the sync loop never touches the client library.
`runsyncer --metrics-port 9108` serves them at /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncer.engine.pipeline import Pipeline, PipelineStats

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
        "resnapshots",
        "Times the source could not resume from the checkpoint and copied everything again.",
        lambda s: s.resnapshots,
    ),
    (
        "source_data_errors",
        "Source data the sync cannot map cleanly (e.g. a key that is not unique).",
        lambda s: s.data_errors,
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
        "lag_seconds",
        "Now minus the commit of the oldest unacknowledged change.",
        lambda p, now: p.stats.lag(now),
    ),
]


class PipelineCollector(Collector):
    def __init__(self, pipelines: Callable[[], Mapping[str, Pipeline]]) -> None:
        self._pipelines = pipelines

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        pipelines = dict(self._pipelines())
        for name, help_text, read in _COUNTERS:
            counter = CounterMetricFamily(f"searchsync_{name}", help_text, labels=["subscription"])
            for sub, pipeline in pipelines.items():
                counter.add_metric([sub], read(pipeline.stats))
            yield counter
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
        for sub, pipeline in pipelines.items():
            seconds = pipeline.staleness(now)
            if seconds is not None:
                staleness.add_metric([sub], seconds)
        yield staleness


def registry_for(pipelines: Callable[[], Mapping[str, Pipeline]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(pipelines))
    return registry


def serve(port: int, pipelines: Callable[[], Mapping[str, Pipeline]]) -> Callable[[], None]:
    """Serve /metrics on `port` (all interfaces); return a function that stops it."""
    server, thread = start_http_server(port, registry=registry_for(pipelines))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
