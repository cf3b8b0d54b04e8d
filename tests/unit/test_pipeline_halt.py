"""An error waiting cannot fix (ForeignIndex) halts the pipeline instead of retrying it."""

from __future__ import annotations

import asyncio

from syncer.engine.changes import Position, RowChange, RowOp, Transaction, TxKind
from syncer.engine.pipeline import Pipeline, PipelineConfig, Status
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    eventually,
)
from syncer.errors import ForeignIndex

FAST = PipelineConfig(name="t", poll_interval=0.005, backoff_base=0.001, backoff_cap=0.01)


class ForeignSink(InMemorySink):
    """An index another application made: sweeping it is refused."""

    async def sweep(self, below: Position) -> int:
        raise ForeignIndex("refusing to sweep index orders (injected)")


class ClosingSource(InMemorySource):
    def __init__(self, transactions: list[Transaction]) -> None:
        super().__init__(transactions)
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


async def test_a_refused_sweep_halts_with_the_source_closed_until_stopped() -> None:
    source = ClosingSource(
        [
            Transaction(50, 0.0, [RowChange(RowOp.INSERT, (1,), {"id": 1})], TxKind.SNAPSHOT_CHUNK),
            Transaction(50, 0.0, [], TxKind.SNAPSHOT_END, sweep_below=50),
        ]
    )
    sink, store = ForeignSink(), InMemoryStore()
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await eventually(lambda: store.status == Status.ERROR)

    await asyncio.sleep(0.2)  # a retry would come after 1 to 10 ms

    assert (source.opened, source.closed) == (1, 1)  # closed while it waits
    assert store.statuses[-1] == (
        Status.ERROR,
        "refusing to sweep index orders (injected) (not retried: waiting for the subscription "
        "to change)",
    )
    assert store.last_error == "refusing to sweep index orders (injected)"
    assert not store.snapshot_done and set(sink.live) == {"1"}
    assert pipeline.telemetry.errors["foreign_index"] == 1
    stop.set()
    await task
    assert store.status == Status.STOPPED
