"""Plain counters and histograms a pipeline keeps for its metrics.

The engine counts; `syncer.worker.metrics` turns the counts into Prometheus families at
scrape time. Scrapes run on another thread than the sync loop, so a histogram
copies itself under a lock: a scrape never sees a count without its bucket.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from syncer.errors import SyncError

FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds one batch takes from consolidation to its saved checkpoint."""
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
"""Seconds from a source commit to OpenSearch acknowledging it (the SLO is about 1 s)."""


class BulkOutcome:
    """What became of one bulk request, as counted by `bulk_requests`."""

    OK = "ok"  # every document written or found already applied
    PARTIAL = "partial"  # some documents to retry or dead-lettered
    UNAVAILABLE = "unavailable"  # refused as a whole (down, 5xx, 429): circuit breaker
    TOO_LARGE = "too_large"  # 413: split in halves


class ErrorKind:
    """Kinds of `errors` that are not a session failure (those use the exception name)."""

    BULK_REFUSED = "bulk_refused"
    DOCUMENT_TRANSIENT = "document_transient"
    DOCUMENT_REJECTED = "document_rejected"
    SOURCE_DATA = "source_data"
    INTERNAL = "internal"


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def error_kind(exc: BaseException) -> str:
    """A bounded label for a failure: ours by class (`SinkUnavailable`: `sink_unavailable`),
    anything else `internal`."""
    if not isinstance(exc, SyncError):
        return ErrorKind.INTERNAL
    return _CAMEL.sub("_", type(exc).__name__).lower()


@dataclass(frozen=True)
class HistogramSnapshot:
    buckets: list[tuple[float, int]]
    """Cumulative counts per upper bound, ending with +Inf (which equals `count`)."""
    sum: float
    count: int


class Histogram:
    """Observations counted per bucket, with their sum: what a Prometheus histogram needs."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_all((value,))

    def observe_all(self, values: Sequence[float]) -> None:
        """`observe` each of `values` under one lock (a batch's commit latencies)."""
        bounds = self.bounds
        with self._lock:
            counts, total = self._counts, self._sum
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1
                total += value
            self._sum = total

    def counts(self) -> tuple[list[int], float]:
        """The count per bucket (not cumulative, +Inf last) and the sum: what `add` takes."""
        with self._lock:
            return list(self._counts), self._sum

    def add(self, counts: Sequence[int], total: float) -> None:
        """Add another histogram's `counts()` (of the same bounds), e.g. another process's."""
        if len(counts) != len(self._counts):
            raise ValueError(f"{len(counts)} bucket counts for {len(self._counts)} buckets")
        with self._lock:
            for index, count in enumerate(counts):
                self._counts[index] += count
            self._sum += total

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramSnapshot(cumulative, total, running)


class Telemetry:
    """What a pipeline counts for metrics beyond `PipelineStats`' totals."""

    def __init__(self) -> None:
        self.changes: Counter[str] = Counter()
        """Document changes OpenSearch accepted or found already applied, by op."""
        self.bulk_requests: Counter[str] = Counter()
        """Bulk requests sent, by `BulkOutcome`."""
        self.errors: Counter[str] = Counter()
        """Failures by kind: session failures by exception, documents, whole requests."""
        self.reconnects = 0
        """Sessions started again after a failure."""
        self.flush_seconds = Histogram(FLUSH_BUCKETS)
        self.commit_latency_seconds = Histogram(LATENCY_BUCKETS)
        self.last_checkpoint_at: float | None = None
        """When a checkpoint was last saved (epoch seconds)."""
        self.connected_at: float | None = None
        """When the running session connected to the source and OpenSearch; None between."""


class ProgressWindow:
    """Flushes since the last `sync_progress` log line: counts and durations."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.flushes = 0
        self.transactions = 0
        self.changes = 0
        self.seconds = 0.0
        self.slowest = 0.0

    def add(self, transactions: int, changes: int, seconds: float) -> None:
        self.flushes += 1
        self.transactions += transactions
        self.changes += changes
        self.seconds += seconds
        self.slowest = max(self.slowest, seconds)

    def fields(self, now: float) -> dict[str, float | int]:
        """The log line's fields: what was flushed over how long, and how fast."""
        return {
            "interval_s": round(now - self.started, 1),
            "flushes": self.flushes,
            "transactions": self.transactions,
            "changes": self.changes,
            "flush_ms_avg": round(self.seconds / self.flushes * 1000, 1) if self.flushes else 0.0,
            "flush_ms_max": round(self.slowest * 1000, 1),
        }
