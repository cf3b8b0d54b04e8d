"""Checkpoint saves at most once per interval (syncer.engine.checkpoints), in a pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from syncer.engine.changes import Position, RowChange, RowOp, Transaction
from syncer.engine.pipeline import Pipeline, PipelineConfig
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    eventually,
)

COALESCED = PipelineConfig(
    name="t", batch_max_size=100, poll_interval=0.005, checkpoint_interval=0.3
)


class CountingStore(InMemoryStore):
    """Records every checkpoint save; fails the ones asked to."""

    def __init__(self, fail: int = 0) -> None:
        super().__init__(snapshot_done=True)
        self.saves: list[tuple[Position, Any, float]] = []
        self.fail = fail
        self.takes = 0.0  # seconds each save takes (a round trip to the database)

    async def save_checkpoint(self, position: Position, source_state: Any = None) -> None:
        await asyncio.sleep(self.takes)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("console database unavailable")
        self.saves.append((position, source_state, time.monotonic()))
        await super().save_checkpoint(position, source_state)


def change(position: int, state: Any = None) -> Transaction:
    row = RowChange(RowOp.INSERT, (position,), {"id": position})
    return Transaction(position, time.time(), [row], source_state=state)


async def trickle(
    source: InMemorySource, positions: range, states: dict[int, Any], every: float = 0.0
) -> None:
    """One change at a time, each acknowledged before the next commits."""
    for position in positions:
        source.push(change(position, states.get(position)))
        await eventually(lambda: source.acknowledged == position)  # noqa: B023
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def running(
    interval: float = 0.3,
) -> AsyncIterator[tuple[InMemorySource, CountingStore, Pipeline]]:
    """A pipeline saving at most every `interval`, run until the block ends."""
    source, store = InMemorySource(), CountingStore()
    config = dataclasses.replace(COALESCED, checkpoint_interval=interval)
    pipeline = Pipeline(config, source, InMemorySink(), store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        yield source, store, pipeline
    finally:
        stop.set()
        await task


async def test_a_trickle_saves_the_checkpoint_once_per_interval_and_then_the_latest():
    async with running() as (source, store, pipeline):
        started = time.monotonic()
        await trickle(source, range(1, 41), {5: "s5", 30: "s30"}, every=0.02)
        took = time.monotonic() - started
        # The last position is saved within the interval, with no batch to carry it.
        await eventually(lambda: store.checkpoint == 40, timeout=2)
        assert pipeline.stats.checkpoint == 40
    positions = [p for p, _, _ in store.saves]
    assert positions == sorted(set(positions))  # only ever up
    assert 3 <= len(positions) <= took / 0.3 + 2  # coalesced, not one per batch
    gaps = [b - a for (_, _, a), (_, _, b) in zip(store.saves, store.saves[1:], strict=False)]
    assert min(gaps) >= 0.25
    # A source state goes with its position or a later one; the latest supersedes it.
    assert store.source_state == "s30"
    assert all(s is None for p, s, _ in store.saves if p < 5)


async def test_batches_acknowledged_during_a_slow_save_wait_for_the_next_round():
    async with running(interval=0.2) as (source, store, _):
        store.takes = 0.05
        started = time.monotonic()
        await trickle(source, range(1, 101), {}, every=0.005)
        took = time.monotonic() - started
        await eventually(lambda: store.checkpoint == 100, timeout=2)
    # One save a round: a batch during a save used to save again right after it.
    assert len(store.saves) <= took / 0.2 + 2


async def test_stopping_saves_the_checkpoint_not_saved_yet():
    async with running(interval=60.0) as (source, store, _):
        await trickle(source, range(1, 6), {})
        assert store.checkpoint == 1  # the first save; the rest wait for the interval
    assert store.checkpoint == 5


async def test_a_failed_trailing_save_is_tried_again():
    async with running() as (source, store, _):
        await trickle(source, range(1, 2), {})
        await eventually(lambda: store.checkpoint == 1)
        store.fail = 1  # the trailing save of what comes next
        await trickle(source, range(2, 4), {})
        await eventually(lambda: store.checkpoint == 3, timeout=3)
    assert [p for p, _, _ in store.saves] == [1, 3]


async def test_every_batch_saves_with_no_interval():
    async with running(interval=0.0) as (source, store, _):
        await trickle(source, range(1, 6), {})
        await eventually(lambda: store.checkpoint == 5)
    assert [p for p, _, _ in store.saves] == [1, 2, 3, 4, 5]
