"""Several bulks in flight (bulk_concurrency > 1) against the in-memory fakes: the
checkpoint never passes a batch still writing, and one document is never written twice
at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from syncer.engine.changes import Change, Position, RowChange, RowOp, Transaction, TxKind
from syncer.engine.outcomes import ItemResult, Outcome
from syncer.engine.pipeline import BatchReport, Pipeline, PipelineConfig
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemoryHold,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    permanent,
    run_until,
)

# One transaction of one change per batch, so each transaction is its own bulk.
CONCURRENT = PipelineConfig(
    name="t",
    batch_max_size=1,
    poll_interval=0.005,
    backoff_base=0.001,
    backoff_cap=0.01,
    bulk_concurrency=3,
)


def tx(position: int, key: int, **row: object) -> Transaction:
    change = RowChange(RowOp.INSERT, (key,), {"id": key, **row})
    return Transaction(position, 0.0, [change], TxKind.CHANGES)


class SlowSink(InMemorySink):
    """Answers a bulk after the longest delay of its documents; records what overlaps."""

    def __init__(self, delays: dict[str, float]) -> None:
        super().__init__()
        self.delays = delays
        self.in_flight: set[str] = set()
        self.clashes: list[str] = []
        """Documents sent while a write of the same document was in flight."""
        self.active = 0
        self.most_active = 0

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        ids = {c.doc_id for c in changes}
        self.clashes.extend(sorted(ids & self.in_flight))
        self.in_flight |= ids
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(max(self.delays.get(i, 0.0) for i in ids))
            return await super().write(changes)
        finally:
            self.in_flight -= ids
            self.active -= 1


@dataclasses.dataclass
class RecordingStore(InMemoryStore):
    """Remembers every checkpoint saved and which documents the sink held then."""

    sink: InMemorySink | None = None
    saved: list[tuple[Position, frozenset[str]]] = dataclasses.field(default_factory=list)

    async def save_checkpoint(self, position: Position, source_state: Any = None) -> None:
        assert self.sink is not None
        self.saved.append((position, frozenset(self.sink.docs)))
        await super().save_checkpoint(position, source_state)


class Reports:
    def __init__(self) -> None:
        self.reports: list[BatchReport] = []

    def acknowledged(self, batch: Sequence[Transaction], at: float) -> None:
        """Nothing: `batch_written` carries what is checked."""

    def batch_written(self, report: BatchReport) -> None:
        self.reports.append(report)


def store_for(sink: InMemorySink) -> RecordingStore:
    return RecordingStore(snapshot_done=True, sink=sink)


async def test_a_slow_first_bulk_holds_the_checkpoint_while_later_ones_finish():
    source = InMemorySource([tx(10, 1), tx(20, 2), tx(30, 3)])
    sink = SlowSink({"1": 0.2})
    store = store_for(sink)
    pipeline = Pipeline(CONCURRENT, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 30)
    assert sink.most_active >= 2  # the later bulks did run beside the slow one
    assert store.saved, "nothing was saved"
    for position, held in store.saved:
        assert "1" in held, f"checkpoint {position} saved before the slow bulk was written"
    assert [p for p, _ in store.saved] == sorted(p for p, _ in store.saved)
    assert source.acknowledged == 30


async def test_writes_of_one_document_never_overlap_in_flight():
    source = InMemorySource(
        [tx(10, 1, v=0), tx(20, 2), tx(30, 1, v=1), tx(40, 3), tx(50, 1, v=2), tx(60, 4)]
    )
    sink = SlowSink({"1": 0.05})
    store = store_for(sink)
    pipeline = Pipeline(CONCURRENT, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 60)
    assert sink.clashes == []
    assert sink.most_active >= 2
    assert sink.live["1"] == {"id": 1, "v": 2}
    assert set(sink.live) == {"1", "2", "3", "4"}


async def test_a_transient_failure_of_one_bulk_holds_the_checkpoint_until_retried():
    source = InMemorySource([tx(10, 1), tx(20, 2), tx(30, 3), tx(40, 4)])
    sink = SlowSink({})
    store = store_for(sink)
    failures = {"2": 3}

    def flaky(change: Change) -> ItemResult | None:
        if failures.get(change.doc_id):
            failures[change.doc_id] -= 1
            return ItemResult(Outcome.TRANSIENT, 429, "es_rejected_execution_exception")
        return None

    sink.reject = flaky
    config = dataclasses.replace(CONCURRENT, max_attempts=5, backoff_base=0.02)
    pipeline = Pipeline(config, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 40)
    for position, held in store.saved:
        assert position < 20 or "2" in held, f"checkpoint {position} passed the retried bulk"
    assert pipeline.stats.retries == 3
    assert set(sink.live) == {"1", "2", "3", "4"}


async def test_observers_get_each_batch_in_order_with_its_own_changes():
    source = InMemorySource([tx(10, 1), tx(20, 2, bad=True), tx(30, 3)])
    sink = SlowSink({"1": 0.1})
    sink.reject = lambda c: permanent() if c.doc_id == "2" else None
    store, dlq, observer = store_for(sink), InMemoryDeadLetters(), Reports()
    pipeline = Pipeline(CONCURRENT, source, sink, store, dlq, observer=observer)
    await run_until(pipeline, lambda: store.checkpoint == 30)
    assert [r.number for r in observer.reports] == [1, 2, 3]
    assert [[c.doc_id for c, _ in r.applied] for r in observer.reports] == [["1"], [], ["3"]]
    assert [[d.change.doc_id for d in r.dead_lettered] for r in observer.reports] == [
        [],
        ["2"],
        [],
    ]
    assert set(dlq.entries) == {"2"}
    assert pipeline.stats.written == 2 and pipeline.stats.dead_lettered == 1


async def test_an_outage_under_several_bulks_is_one_outage_and_no_dead_letters():
    source = InMemorySource([tx(10, 1), tx(20, 2), tx(30, 3)])
    sink = SlowSink({})
    sink.outages = 4
    store, dlq = store_for(sink), InMemoryDeadLetters()
    pipeline = Pipeline(CONCURRENT, source, sink, store, dlq)
    await run_until(pipeline, lambda: store.checkpoint == 30)
    assert pipeline.stats.outages == 1
    assert dlq.entries == {}
    assert set(sink.live) == {"1", "2", "3"}
    assert pipeline.stats.sink_available
    assert sum(pipeline.telemetry.flush_seconds.counts()[0]) == 3


async def test_the_checkpoint_hold_keeps_the_checkpoint_below_an_unsettled_delivery():
    source = InMemorySource([tx(10, 1), tx(20, 2), tx(30, 3)])
    sink = SlowSink({"1": 0.05})
    store = store_for(sink)
    hold = InMemoryHold()
    hold.store = store
    config = dataclasses.replace(CONCURRENT, hold_seconds=30.0, hold_recheck=0.01)
    pipeline = Pipeline(
        config, source, sink, store, InMemoryDeadLetters(), observer=hold, hold=hold
    )
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    async with asyncio.timeout(5):
        while sorted(hold.unsettled) != [10, 20, 30]:
            await asyncio.sleep(0.002)
        hold.settle(10)  # 20's delivery is not settled, 30's is
        hold.unsettled = [20]
        while store.checkpoint != 10:
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
        assert store.checkpoint == 10, "never at or past an unsettled position"
        hold.settle()
        while store.checkpoint != 30:
            await asyncio.sleep(0.002)
    assert hold.checkpoints_seen[0] is None  # handed over before any checkpoint was saved
    stop.set()
    await task
