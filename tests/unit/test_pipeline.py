"""The pipeline against in-memory fakes: checkpoints, retries, failures, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from syncer.engine.changes import RowChange, RowOp, Transaction, TxKind
from syncer.engine.outcomes import ItemResult, Outcome
from syncer.engine.pipeline import Pipeline, PipelineConfig, Status
from syncer.engine.testing import (
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    StoredDoc,
    permanent,
)
from syncer.errors import SourceConfigError

FAST = PipelineConfig(
    name="t", batch_max_size=100, poll_interval=0.005, backoff_base=0.001, backoff_cap=0.01
)


def tx(position: int, *changes: RowChange, kind: TxKind = TxKind.CHANGES) -> Transaction:
    return Transaction(position, 0.0, list(changes), kind)


def ins(key: int, **row) -> RowChange:
    return RowChange(RowOp.INSERT, (key,), {"id": key, **row})


async def run_until(pipeline: Pipeline, done, timeout: float = 5.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.002)
    stop.set()
    await task


async def test_checkpoint_moves_only_after_sink_acknowledges():
    source = InMemorySource([tx(10, ins(1, v="a")), tx(20, ins(2, v="b"))])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    sink.outages = 3
    pipeline = Pipeline(FAST, source, sink, store)
    await run_until(pipeline, lambda: store.checkpoint == 20)
    assert sink.live == {"1": {"id": 1, "v": "a"}, "2": {"id": 2, "v": "b"}}
    assert source.acknowledged == 20
    assert any(status == Status.RECONNECTING for status, _ in store.statuses)
    assert store.status == Status.STOPPED


async def test_transient_items_are_retried_and_hold_the_checkpoint():
    source = InMemorySource([tx(10, ins(1), ins(2))])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    failures = {"2": 2}

    def flaky(change):
        if failures.get(change.doc_id):
            failures[change.doc_id] -= 1
            assert store.checkpoint is None  # nothing acknowledged while one is pending
            return ItemResult(Outcome.TRANSIENT, 429, "es_rejected_execution_exception")
        return None

    sink.reject = flaky
    pipeline = Pipeline(FAST, source, sink, store)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert set(sink.live) == {"1", "2"}
    assert pipeline.stats.retries == 2


async def test_permanent_rejection_is_reported_and_the_batch_goes_on():
    source = InMemorySource([tx(10, ins(1), ins(2, bad=True), ins(3))])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    sink.reject = lambda c: permanent(reason="failed to parse") if c.doc_id == "2" else None
    pipeline = Pipeline(FAST, source, sink, store)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert set(sink.live) == {"1", "3"}
    assert pipeline.stats.rejected == 1
    assert "'2'" in store.last_error and "failed to parse" in store.last_error


async def test_source_failure_reconnects_and_replays_without_loss():
    source = InMemorySource([tx(10, ins(1))])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    source.fail_reads = 2
    pipeline = Pipeline(FAST, source, sink, store)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert source.opened == 3 and set(sink.live) == {"1"}


async def test_replay_of_older_positions_never_regresses_a_document():
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    source = InMemorySource([tx(10, ins(1, v="old")), tx(20, ins(1, v="new"))])
    await run_until(Pipeline(FAST, source, sink, store), lambda: store.checkpoint == 20)
    replay = InMemorySource([tx(10, ins(1, v="old"))])
    pipeline = Pipeline(FAST, replay, sink, InMemoryStore(snapshot_done=True))
    await run_until(pipeline, lambda: replay.acknowledged == 10)
    assert sink.live["1"] == {"id": 1, "v": "new"} and pipeline.stats.stale == 1


async def test_config_error_sets_error_status_with_its_words_and_retries():
    class Broken(InMemorySource):
        async def open(self, resume):
            self.opened += 1
            raise SourceConfigError("relation public.nope does not exist; create it")

    source, store = Broken(), InMemoryStore()
    pipeline = Pipeline(FAST, source, InMemorySink(), store)
    await run_until(pipeline, lambda: source.opened >= 3)
    errors = [m for s, m in store.statuses if s == Status.ERROR]
    assert errors and "public.nope does not exist" in errors[0]
    assert "public.nope" in store.last_error


async def test_snapshot_chunks_hold_checkpoint_until_end_then_sweep():
    sink, store = InMemorySink(), InMemoryStore()
    sink.docs["gone"] = StoredDoc(5, {"x": 1})  # left by an interrupted earlier copy
    source = InMemorySource(
        [
            tx(50, ins(1), ins(2), kind=TxKind.SNAPSHOT_CHUNK),
            tx(50, ins(3), kind=TxKind.SNAPSHOT_CHUNK),
            Transaction(50, 0.0, [], TxKind.SNAPSHOT_END, sweep_below=50),
            tx(60, RowChange(RowOp.DELETE, (2,))),
        ]
    )
    checkpoints: list[int | None] = []
    original = store.save_checkpoint

    async def spy(position):
        checkpoints.append(position)
        await original(position)

    store.save_checkpoint = spy  # type: ignore[method-assign]
    pipeline = Pipeline(
        PipelineConfig(name="s", batch_max_size=2, poll_interval=0.005), source, sink, store
    )
    await run_until(pipeline, lambda: store.checkpoint == 60)
    assert set(sink.live) == {"1", "3"}
    assert store.snapshot_done and checkpoints == [60]
    assert pipeline.stats.snapshot_rows == 3 and pipeline.stats.swept == 1
    assert any(s == Status.SNAPSHOTTING for s, _ in store.statuses)


async def test_missing_toast_values_come_from_index_then_source():
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    source = InMemorySource([tx(10, ins(1, body="kept"))])
    await run_until(Pipeline(FAST, source, sink, store), lambda: store.checkpoint == 10)
    source.push(
        tx(20, RowChange(RowOp.UPDATE, (1,), {"id": 1, "v": 2}, unchanged=frozenset({"body"}))),
        tx(30, RowChange(RowOp.UPDATE, (9,), {"id": 9, "v": 3}, unchanged=frozenset({"body"}))),
    )
    source.rows[(9,)] = {"id": 9, "v": 3, "body": "from source"}
    await run_until(Pipeline(FAST, source, sink, store), lambda: store.checkpoint == 30)
    assert sink.live["1"] == {"id": 1, "v": 2, "body": "kept"}
    assert sink.live["9"]["body"] == "from source"


@pytest.mark.parametrize("outages", [0, 2])
async def test_stop_flushes_what_was_read(outages):
    source = InMemorySource([tx(i, ins(i)) for i in range(1, 50)])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    sink.outages = outages
    pipeline = Pipeline(FAST, source, sink, store)
    await run_until(pipeline, lambda: sink.requests >= 1)
    assert store.checkpoint == source.acknowledged
    assert len(sink.live) >= (store.checkpoint or 0)


async def test_a_trickle_of_changes_stays_caught_up_without_flapping():
    source = InMemorySource()
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(FAST, source, sink, store)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    async with asyncio.timeout(5):
        while store.status != Status.CAUGHT_UP:
            await asyncio.sleep(0.002)
        for position in range(10, 60, 10):
            source.push(tx(position, ins(position)))
            while store.checkpoint != position:
                await asyncio.sleep(0.002)
    stop.set()
    await task
    after_start = [s for s, _ in store.statuses][
        store.statuses.index((Status.CAUGHT_UP, "caught up")) :
    ]
    assert after_start == [Status.CAUGHT_UP, Status.STOPPED]


async def test_a_backlog_is_streaming_until_the_source_runs_dry():
    config = PipelineConfig(name="t", batch_max_size=2, poll_interval=0.005)
    source = InMemorySource([tx(p, ins(p)) for p in range(1, 7)])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    await run_until(Pipeline(config, source, sink, store), lambda: store.checkpoint == 6)
    statuses = [s for s, _ in store.statuses]
    assert Status.STREAMING in statuses
    # Streaming while full batches came back; caught up once a read found the rest.
    assert statuses.index(Status.STREAMING) < statuses.index(Status.CAUGHT_UP)
    assert sink.live.keys() == {str(p) for p in range(1, 7)}
