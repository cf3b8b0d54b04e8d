"""Checkpoint saves at most once per interval (syncer.engine.checkpoints), in a pipeline."""

from __future__ import annotations

import asyncio
import dataclasses
import time
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

    async def save_checkpoint(self, position: Position, source_state: Any = None) -> None:
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


async def test_a_trickle_saves_the_checkpoint_once_per_interval_and_then_the_latest():
    source, store = InMemorySource(), CountingStore()
    pipeline = Pipeline(COALESCED, source, InMemorySink(), store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        started = time.monotonic()
        await trickle(source, range(1, 41), {5: "s5", 30: "s30"}, every=0.02)
        took = time.monotonic() - started
        # The last position is saved within the interval, with no batch to carry it.
        await eventually(lambda: store.checkpoint == 40, timeout=2)
        assert pipeline.stats.checkpoint == 40
    finally:
        stop.set()
        await task
    positions = [p for p, _, _ in store.saves]
    assert positions == sorted(set(positions))  # only ever up
    assert 3 <= len(positions) <= took / 0.3 + 2  # coalesced, not one per batch
    gaps = [b - a for (_, _, a), (_, _, b) in zip(store.saves, store.saves[1:], strict=False)]
    assert min(gaps) >= 0.25
    # A source state goes with its position or a later one; the latest supersedes it.
    assert store.source_state == "s30"
    assert all(s is None for p, s, _ in store.saves if p < 5)


async def test_stopping_saves_the_checkpoint_not_saved_yet():
    source, store = InMemorySource(), CountingStore()
    config = dataclasses.replace(COALESCED, checkpoint_interval=60.0)
    pipeline = Pipeline(config, source, InMemorySink(), store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await trickle(source, range(1, 6), {})
    assert store.checkpoint == 1  # the first save; the rest wait for the interval
    stop.set()
    await task
    assert store.checkpoint == 5


async def test_a_failed_trailing_save_is_tried_again():
    source, store = InMemorySource(), CountingStore()
    pipeline = Pipeline(COALESCED, source, InMemorySink(), store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await trickle(source, range(1, 2), {})
        await eventually(lambda: store.checkpoint == 1)
        store.fail = 1  # the trailing save of what comes next
        await trickle(source, range(2, 4), {})
        await eventually(lambda: store.checkpoint == 3, timeout=3)
    finally:
        stop.set()
        await task
    assert [p for p, _, _ in store.saves] == [1, 3]


async def test_every_batch_saves_with_no_interval():
    source, store = InMemorySource(), CountingStore()
    config = dataclasses.replace(COALESCED, checkpoint_interval=0.0)
    pipeline = Pipeline(config, source, InMemorySink(), store, InMemoryDeadLetters())
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await trickle(source, range(1, 6), {})
        await eventually(lambda: store.checkpoint == 5)
    finally:
        stop.set()
        await task
    assert [p for p, _, _ in store.saves] == [1, 2, 3, 4, 5]
