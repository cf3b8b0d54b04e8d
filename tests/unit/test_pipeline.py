"""The pipeline against in-memory fakes: checkpoints, retries, failures, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

import pytest
import structlog

from syncer.engine.changes import Change, Op, RowChange, RowOp, Transaction, TxKind
from syncer.engine.interfaces import NoticeKind, Rejected, SourceNotice
from syncer.engine.outcomes import ItemResult, Outcome
from syncer.engine.pipeline import Pipeline, PipelineConfig, Status
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemoryHold,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    StoredDoc,
    eventually,
    permanent,
    run_until,
)
from syncer.errors import RequestTooLarge, SourceConfigError

FAST = PipelineConfig(
    name="t", batch_max_size=100, poll_interval=0.005, backoff_base=0.001, backoff_cap=0.01
)


def tx(position: int, *changes: RowChange, kind: TxKind = TxKind.CHANGES) -> Transaction:
    return Transaction(position, 0.0, list(changes), kind)


def ins(key: int, **row) -> RowChange:
    return RowChange(RowOp.INSERT, (key,), {"id": key, **row})


async def test_checkpoint_moves_only_after_sink_acknowledges():
    source = InMemorySource([tx(10, ins(1, v="a")), tx(20, ins(2, v="b"))])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    sink.outages = 3
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 20)
    assert sink.live == {"1": {"id": 1, "v": "a"}, "2": {"id": 2, "v": "b"}}
    assert source.acknowledged == 20
    assert any(status == Status.SINK_UNAVAILABLE for status, _ in store.statuses)
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
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert set(sink.live) == {"1", "2"}
    assert pipeline.stats.retries == 2


async def test_permanent_rejection_is_dead_lettered_and_the_batch_goes_on():
    source = InMemorySource([tx(10, ins(1), ins(2, bad=True), ins(3))])
    sink, store, dlq = InMemorySink(), InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    sink.reject = lambda c: permanent(reason="failed to parse") if c.doc_id == "2" else None
    pipeline = Pipeline(FAST, source, sink, store, dlq)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert set(sink.live) == {"1", "3"}
    entry = dlq.entries["2"]
    assert entry.change.doc == {"id": 2, "bad": True} and entry.change.version == 10
    assert entry.attempts == 1 and entry.result.reason == "failed to parse"
    assert pipeline.stats.dead_lettered == 1 and sink.requests == 1  # never retried
    assert "'2'" in store.last_error and "failed to parse" in store.last_error


async def test_a_document_transient_past_its_budget_is_dead_lettered():
    source = InMemorySource([tx(10, ins(1), ins(2))])
    sink, store, dlq = InMemorySink(), InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    poisoned = ItemResult(Outcome.TRANSIENT, 503, "unavailable_shards_exception", "shard down")
    sink.reject = lambda c: poisoned if c.doc_id == "2" else None
    pipeline = Pipeline(FAST, source, sink, store, dlq)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert set(sink.live) == {"1"}
    assert dlq.entries["2"].attempts == FAST.max_attempts == 3
    assert sink.requests == 3 and pipeline.stats.retries == 2


async def test_a_round_refused_as_a_whole_is_an_outage_not_dead_letters():
    source = InMemorySource([tx(10, ins(1), ins(2), ins(3))])
    sink, store, dlq = InMemorySink(), InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    refusals = [5]

    def overloaded(change):
        if refusals[0] > 0:
            if change.doc_id == "3":
                refusals[0] -= 1
            return ItemResult(Outcome.TRANSIENT, 429, "es_rejected_execution_exception", "queue")
        return None

    sink.reject = overloaded
    pipeline = Pipeline(FAST, source, sink, store, dlq)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert set(sink.live) == {"1", "2", "3"} and not dlq.entries
    assert sink.requests == 6 and pipeline.stats.outages == 1
    assert Status.SINK_UNAVAILABLE in [s for s, _ in store.statuses]


async def test_a_newer_successful_write_supersedes_the_dead_letter():
    source = InMemorySource([tx(10, ins(1, v="bad"))])
    sink, store, dlq = InMemorySink(), InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    sink.reject = lambda c: permanent() if c.doc and c.doc.get("v") == "bad" else None
    pipeline = Pipeline(FAST, source, sink, store, dlq)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    async with asyncio.timeout(5):
        while "1" not in dlq.entries:
            await asyncio.sleep(0.002)
        source.push(tx(20, RowChange(RowOp.UPDATE, (1,), {"id": 1, "v": "fixed"})))
        while store.checkpoint != 20:
            await asyncio.sleep(0.002)
    stop.set()
    await task
    assert not dlq.entries and pipeline.stats.superseded == 1
    assert sink.live["1"] == {"id": 1, "v": "fixed"}


async def test_a_stale_replay_of_a_dead_lettered_document_also_supersedes_it():
    dlq = InMemoryDeadLetters()
    sink = InMemorySink()
    sink.docs["1"] = StoredDoc(30, {"id": 1, "v": "newest"})
    await dlq.put([Rejected(Change(Op.UPSERT, "1", (1,), 20, 0.0, {"v": "bad"}), permanent(), 1)])
    source, store = InMemorySource([tx(25, ins(1, v="older"))]), InMemoryStore(snapshot_done=True)
    await run_until(Pipeline(FAST, source, sink, store, dlq), lambda: store.checkpoint == 25)
    assert not dlq.entries and sink.live["1"] == {"id": 1, "v": "newest"}


async def test_an_older_failure_does_not_replace_a_newer_dead_letter():
    dlq = InMemoryDeadLetters()
    newer = Rejected(Change(Op.UPSERT, "1", (1,), 20, 0.0, {"v": "b"}), permanent(), 1)
    older = Rejected(Change(Op.UPSERT, "1", (1,), 10, 0.0, {"v": "a"}), permanent(), 1)
    await dlq.put([newer])
    await dlq.put([older])
    assert dlq.entries["1"] is newer


class SlowSink(InMemorySink):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        await asyncio.sleep(self.delay)
        return await super().write(changes)


async def test_a_slow_sink_pauses_reading_at_pause_at_and_resumes_at_resume_at():
    config = PipelineConfig(
        name="bp", batch_max_size=10, pause_at=40, resume_at=20, poll_interval=0.001
    )
    source = InMemorySource([tx(p, ins(p)) for p in range(1, 301)])
    sink, store = SlowSink(0.005), InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(config, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 300, timeout=10)
    # Reading runs ahead of writing, but never past pause_at plus one read.
    assert config.pause_at <= pipeline.buffer_peak < config.pause_at + config.batch_max_size
    assert Status.BACKPRESSURE in [s for s, _ in store.statuses]
    assert len(sink.live) == 300


async def test_stopping_during_an_outage_dead_letters_nothing_and_keeps_the_checkpoint():
    source = InMemorySource([tx(10, ins(1)), tx(20, ins(2))])
    sink, store, dlq = InMemorySink(), InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    sink.outages = 10**6
    pipeline = Pipeline(FAST, source, sink, store, dlq)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    async with asyncio.timeout(5):
        while pipeline.status != Status.SINK_UNAVAILABLE:
            await asyncio.sleep(0.002)
    stop.set()
    await asyncio.sleep(0.05)  # the runner waits the shutdown timeout, then cancels
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.checkpoint is None and source.acknowledged is None and not dlq.entries
    assert not sink.live


async def test_reading_overlaps_writing():
    config = PipelineConfig(name="ov", batch_max_size=5, poll_interval=0.001)
    source = InMemorySource([tx(p, ins(p)) for p in range(1, 51)])
    sink, store = SlowSink(0.01), InMemoryStore(snapshot_done=True)
    reads_during_writes = [0]
    writing = [False]
    original_read, original_write = source.read, sink.write

    async def read(n: int) -> list[Transaction]:
        reads_during_writes[0] += writing[0]
        return await original_read(n)

    async def write(changes: Sequence[Change]) -> list[ItemResult]:
        writing[0] = True
        try:
            return await original_write(changes)
        finally:
            writing[0] = False

    source.read, sink.write = read, write  # type: ignore[method-assign,assignment]
    await run_until(
        Pipeline(config, source, sink, store, InMemoryDeadLetters()), lambda: store.checkpoint == 50
    )
    assert reads_during_writes[0] >= 5


async def test_source_failure_reconnects_and_replays_without_loss():
    source = InMemorySource([tx(10, ins(1))])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    source.fail_reads = 2
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert source.opened == 3 and set(sink.live) == {"1"}


async def test_replay_of_older_positions_never_regresses_a_document():
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    source = InMemorySource([tx(10, ins(1, v="old")), tx(20, ins(1, v="new"))])
    await run_until(
        Pipeline(FAST, source, sink, store, InMemoryDeadLetters()), lambda: store.checkpoint == 20
    )
    replay = InMemorySource([tx(10, ins(1, v="old"))])
    pipeline = Pipeline(
        FAST, replay, sink, InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    )
    await run_until(pipeline, lambda: replay.acknowledged == 10)
    assert sink.live["1"] == {"id": 1, "v": "new"} and pipeline.stats.stale == 1


async def test_config_error_sets_error_status_with_its_words_and_retries():
    class Broken(InMemorySource):
        async def open(self, resume):
            self.opened += 1
            raise SourceConfigError("relation public.nope does not exist; create it")

    source, store = Broken(), InMemoryStore()
    pipeline = Pipeline(FAST, source, InMemorySink(), store, InMemoryDeadLetters())
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

    async def spy(position, source_state=None):
        checkpoints.append(position)
        await original(position, source_state)

    store.save_checkpoint = spy  # type: ignore[method-assign]
    pipeline = Pipeline(
        PipelineConfig(name="s", batch_max_size=2, poll_interval=0.005),
        source,
        sink,
        store,
        InMemoryDeadLetters(),
    )
    await run_until(pipeline, lambda: store.checkpoint == 60)
    assert set(sink.live) == {"1", "3"}
    assert store.snapshot_done and checkpoints == [60]
    assert pipeline.stats.snapshot_rows == 3 and pipeline.stats.swept == 1
    assert any(s == Status.SNAPSHOTTING for s, _ in store.statuses)


async def test_missing_toast_values_come_from_index_then_source():
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    source = InMemorySource([tx(10, ins(1, body="kept"))])
    await run_until(
        Pipeline(FAST, source, sink, store, InMemoryDeadLetters()), lambda: store.checkpoint == 10
    )
    source.push(
        tx(20, RowChange(RowOp.UPDATE, (1,), {"id": 1, "v": 2}, unchanged=frozenset({"body"}))),
        tx(30, RowChange(RowOp.UPDATE, (9,), {"id": 9, "v": 3}, unchanged=frozenset({"body"}))),
    )
    source.rows[(9,)] = {"id": 9, "v": 3, "body": "from source"}
    await run_until(
        Pipeline(FAST, source, sink, store, InMemoryDeadLetters()), lambda: store.checkpoint == 30
    )
    assert sink.live["1"] == {"id": 1, "v": 2, "body": "kept"}
    assert sink.live["9"]["body"] == "from source"


@pytest.mark.parametrize("outages", [0, 2])
async def test_stop_flushes_what_was_read(outages):
    source = InMemorySource([tx(i, ins(i)) for i in range(1, 50)])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    sink.outages = outages
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: sink.requests >= 1)
    assert store.checkpoint == source.acknowledged
    assert len(sink.live) >= (store.checkpoint or 0)


async def test_a_trickle_of_changes_stays_caught_up_without_flapping():
    source = InMemorySource()
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await eventually(lambda: store.status == Status.CAUGHT_UP)
    for position in range(10, 60, 10):
        source.push(tx(position, ins(position)))
        await eventually(lambda: store.checkpoint == position)  # noqa: B023
    stop.set()
    await task
    after_start = [s for s, _ in store.statuses][
        store.statuses.index((Status.CAUGHT_UP, "caught up")) :
    ]
    assert after_start == [Status.CAUGHT_UP, Status.STOPPED]


class ArrivingWhileWriting(InMemorySink):
    """Each write lets the next change commit: a trickle that never leaves the buffer
    empty when a batch is done (300 changes/s against a sink that takes 3 ms)."""

    def __init__(self, source: InMemorySource, positions: list[int]) -> None:
        super().__init__()
        self.source, self.upcoming = source, positions

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        if self.upcoming:
            position = self.upcoming.pop(0)
            self.source.push(Transaction(position, time.time(), [ins(position)]))
            await asyncio.sleep(0.002)  # the request's time: the reader buffers it
        return await super().write(changes)


async def test_a_trickle_arriving_during_writes_stays_caught_up():
    source = InMemorySource()
    sink = ArrivingWhileWriting(source, list(range(20, 200, 10)))
    store = InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await eventually(lambda: store.status == Status.CAUGHT_UP)
    source.push(Transaction(10, time.time(), [ins(10)]))
    await eventually(lambda: store.checkpoint == 190)
    stop.set()
    await task
    assert sink.requests >= 10  # one change at a time, each written while the next waited
    after_start = [s for s, _ in store.statuses][
        store.statuses.index((Status.CAUGHT_UP, "caught up")) :
    ]
    assert after_start == [Status.CAUGHT_UP, Status.STOPPED]


async def test_a_backlog_is_streaming_until_the_source_runs_dry():
    config = PipelineConfig(name="t", batch_max_size=2, poll_interval=0.005)
    source = InMemorySource([tx(p, ins(p)) for p in range(1, 7)])
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    await run_until(
        Pipeline(config, source, sink, store, InMemoryDeadLetters()), lambda: store.checkpoint == 6
    )
    statuses = [s for s, _ in store.statuses]
    assert Status.STREAMING in statuses
    # Streaming while full batches came back; caught up once a read found the rest.
    assert statuses.index(Status.STREAMING) < statuses.index(Status.CAUGHT_UP)
    assert sink.live.keys() == {str(p) for p in range(1, 7)}


class SizeLimitedSink(InMemorySink):
    """Refuses a request of more than `limit` documents, or holding a `huge` one."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.sizes: list[int] = []

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        self.sizes.append(len(changes))
        if len(changes) > self.limit or any(c.doc and c.doc.get("huge") for c in changes):
            raise RequestTooLarge("writing to index t: OpenSearch refused the request as too large")
        return await super().write(changes)


async def test_a_bulk_too_large_is_split_and_a_lone_huge_document_dead_lettered():
    source = InMemorySource([tx(10, *[ins(i) for i in range(1, 8)], ins(8, huge=True))])
    sink, store, dlq = (
        SizeLimitedSink(limit=3),
        InMemoryStore(snapshot_done=True),
        InMemoryDeadLetters(),
    )
    pipeline = Pipeline(FAST, source, sink, store, dlq)
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert set(sink.live) == {str(i) for i in range(1, 8)}
    assert list(dlq.entries) == ["8"]
    assert (
        dlq.entries["8"].result.status == 413
        and dlq.entries["8"].result.error_type == "request_too_large"
    )
    assert sink.sizes[0] == 8 and max(s for s in sink.sizes if s <= 3) <= 3


async def test_progress_moves_the_checkpoint_without_counting_a_transaction():
    # Materialize: data at 100, then "complete below 105", then a progress-only step.
    source = InMemorySource(
        [tx(100, ins(1)), tx(105, kind=TxKind.PROGRESS), tx(110, kind=TxKind.PROGRESS)]
    )
    source.progressed = 1_000.0
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters(), clock=lambda: 1_004.0)
    await run_until(pipeline, lambda: store.checkpoint == 110)
    assert set(sink.live) == {"1"}
    assert pipeline.stats.transactions == 1
    assert pipeline.staleness(1_004.0) == 4.0


async def test_source_notices_are_counted_and_shown_as_the_last_error():
    source = InMemorySource([tx(10, ins(1))])
    source.notices = [
        SourceNotice(NoticeKind.DATA_ERROR, "key 7 of orders_mv has 2 distinct rows at 10"),
        SourceNotice(NoticeKind.RESNAPSHOT, "could not resume at 9: copying again"),
    ]
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert (pipeline.stats.data_errors, pipeline.stats.resnapshots) == (1, 1)
    assert store.last_error == "could not resume at 9: copying again"
    assert pipeline.staleness(0.0) is None  # the source never reported progress


async def test_source_state_is_saved_with_the_checkpoint_it_belongs_to():
    source = InMemorySource(
        [
            Transaction(10, 0.0, [ins(1)], source_state={"n": 1}),
            tx(20, ins(2)),  # no state: unchanged since 10
            Transaction(30, 0.0, [], TxKind.PROGRESS, source_state={"n": 2}),
        ]
    )
    saved: list[tuple[int, object]] = []
    store = InMemoryStore(snapshot_done=True)
    original = store.save_checkpoint

    async def spy(position, source_state=None):
        saved.append((position, source_state))
        await original(position, source_state)

    store.save_checkpoint = spy  # type: ignore[method-assign]
    config = PipelineConfig(name="t", batch_max_size=1, batch_max_age=0.0, poll_interval=0.005)
    pipeline = Pipeline(config, source, InMemorySink(), store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 30)
    assert store.source_state == {"n": 2}
    # Each checkpoint went out with the latest state at or below it, never a later one.
    for position, state in saved:
        if position < 30:
            assert state in (None, {"n": 1})
    assert (await store.load()).source_state == {"n": 2}


# -- the checkpoint hold (live subscriptions' NATS deliveries) ---------------------------

HELD = dataclasses.replace(FAST, hold_recheck=0.01)


def held_pipeline(
    source: InMemorySource, store: InMemoryStore, config: PipelineConfig = HELD
) -> tuple[Pipeline, InMemoryHold]:
    hold = InMemoryHold()
    hold.store = store
    pipeline = Pipeline(
        config, source, InMemorySink(), store, InMemoryDeadLetters(), observer=hold, hold=hold
    )
    return pipeline, hold


async def until(done: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.002)


async def test_the_checkpoint_stays_below_an_unsettled_delivery_and_follows_it():
    source, store = InMemorySource([tx(10, ins(1))]), InMemoryStore(snapshot_done=True)
    pipeline, hold = held_pipeline(source, store)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await until(lambda: hold.unsettled == [10])
    await asyncio.sleep(0.1)  # ten re-checks
    assert store.checkpoint is None and source.acknowledged is None, "the source keeps it too"
    assert hold.checkpoints_seen == [None], "handed over before the checkpoint is decided"
    assert pipeline.checkpoint_held_seconds(time.time()) > 0.05
    hold.settle()
    # No new change comes: the re-check moves it.
    await until(lambda: store.checkpoint == 10 and source.acknowledged == 10)
    assert pipeline.checkpoint_held_seconds(time.time()) == 0.0
    source.push(tx(20, ins(2)))
    await until(lambda: 20 in hold.unsettled)
    hold.settle(20)
    await until(lambda: store.checkpoint == 20)
    source.push(tx(30, ins(3)))
    await until(lambda: 30 in hold.unsettled)
    source.push(tx(40, ins(4)))
    await until(lambda: 40 in hold.unsettled)
    hold.settle(40)  # but 30, delivered before it, is not
    hold.unsettled.append(30)
    await asyncio.sleep(0.1)
    assert store.checkpoint == 20, "never at or past an unsettled position"
    hold.settle()
    await until(lambda: store.checkpoint == 40 and source.acknowledged == 40)
    assert pipeline.stats.checkpoint == 40 and pipeline.stats.hold_expired == 0
    stop.set()
    await task


async def test_a_held_checkpoint_saves_the_source_state_of_its_own_position():
    source = InMemorySource([Transaction(10, 0.0, [ins(1)], source_state={"at": 10})])
    store = InMemoryStore(snapshot_done=True)
    pipeline, hold = held_pipeline(source, store)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await until(lambda: hold.unsettled == [10])
    source.push(tx(20, ins(2)))  # no state of its own: the one at 10 still holds
    await until(lambda: 20 in hold.unsettled)
    hold.settle()
    await until(lambda: store.checkpoint == 20)
    assert store.source_state == {"at": 10}
    stop.set()
    await task


async def test_past_the_hold_bound_the_checkpoint_moves_on_counted_once_per_episode():
    source, store = InMemorySource([tx(10, ins(1))]), InMemoryStore(snapshot_done=True)
    config = dataclasses.replace(HELD, hold_seconds=0.15)
    pipeline, hold = held_pipeline(source, store, config)
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(pipeline.run(stop))
        await until(lambda: hold.unsettled == [10])
        started = time.monotonic()
        await until(lambda: store.checkpoint == 10)  # NATS never acknowledged it
        assert time.monotonic() - started >= 0.1
        assert source.acknowledged == 10, "the source's WAL is let go too"
        assert pipeline.stats.hold_expired == 1 and pipeline.stats.hold_expired_changes == 1
        source.push(tx(20, ins(2), ins(3)))
        started = time.monotonic()
        await until(lambda: store.checkpoint == 20)
        assert time.monotonic() - started < 0.1, "not held again until all is settled"
        assert pipeline.stats.hold_expired == 1, "the same episode"
        assert pipeline.stats.hold_expired_changes == 3
        hold.settle()  # NATS is back: every delivery settled, the episode ends
        await asyncio.sleep(0.05)
        source.push(tx(30, ins(4)))
        await until(lambda: 30 in hold.unsettled)
        await asyncio.sleep(0.05)
        assert store.checkpoint == 20, "held again, within the bound"
        await until(lambda: store.checkpoint == 30)
        assert pipeline.stats.hold_expired == 2
        stop.set()
        await task
    released = [e for e in logs if e["event"] == "live_checkpoint_released"]
    assert [e["changes_at_risk"] for e in released] == [1, 1]
    assert all("LIVE_CHECKPOINT_HOLD_SECONDS" in e["next"] for e in released)
    assert [e["event"] for e in logs].count("live_checkpoint_hold_recovered") == 1


async def test_snapshot_completion_is_not_held():
    source = InMemorySource(
        [
            tx(50, ins(1), ins(2), kind=TxKind.SNAPSHOT_CHUNK),
            Transaction(50, 0.0, [], TxKind.SNAPSHOT_END),
        ]
    )
    store = InMemoryStore()
    pipeline, hold = held_pipeline(source, store)
    await run_until(pipeline, lambda: store.snapshot_done)
    assert store.checkpoint == 50 and hold.unsettled == [50, 50]


async def test_an_idle_reader_wakes_when_the_source_has_something_not_after_its_interval():
    # A streaming source says when a change arrives: the interval only bounds the sleep.
    config = dataclasses.replace(FAST, poll_interval=30.0)
    source, sink, store = InMemorySource(), InMemorySink(), InMemoryStore(snapshot_done=True)
    pipeline = Pipeline(config, source, sink, store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await eventually(lambda: store.status == Status.CAUGHT_UP)
    await asyncio.sleep(0.05)  # the reader is asleep on the source now
    source.push(tx(10, ins(1)))
    started = time.monotonic()
    await eventually(lambda: store.checkpoint == 10)
    assert time.monotonic() - started < 1.0
    stop.set()
    async with asyncio.timeout(5):  # and a stop does not wait out the interval either
        await task
