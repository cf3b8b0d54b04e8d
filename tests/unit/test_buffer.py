"""The bounded buffer's rules: hysteresis, when a batch is ready, closing."""

from __future__ import annotations

import asyncio

import pytest

from syncer.engine.buffer import BufferClosed, ChangeBuffer
from syncer.engine.changes import RowChange, RowOp, Transaction


def tx(position: int, size: int = 1) -> Transaction:
    rows = [RowChange(RowOp.INSERT, (i,), {"id": i}) for i in range(size)]
    return Transaction(position, float(position), rows)


async def test_pauses_at_pause_at_and_resumes_only_at_resume_at():
    buffer = ChangeBuffer(pause_at=10, resume_at=4)
    await buffer.put([tx(1, 6)], source_idle=False, now=0)
    assert not buffer.paused
    await buffer.put([tx(2, 5)], source_idle=False, now=0)
    assert buffer.paused and buffer.size == 11  # a transaction is never split
    await buffer.take(6, max_age=5, clock=lambda: 0)
    assert buffer.paused and buffer.size == 5  # below pause_at, above resume_at: still paused
    await buffer.put([tx(3, 1)], source_idle=True, now=0)
    await buffer.take(2, max_age=5, clock=lambda: 0)
    assert not buffer.paused and buffer.size == 1


async def test_the_reader_waits_for_room_until_the_writer_drains():
    buffer = ChangeBuffer(pause_at=2, resume_at=1)
    await buffer.put([tx(1), tx(2)], source_idle=False, now=0)
    waiter = asyncio.create_task(buffer.wait_for_room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await buffer.take(1, max_age=5, clock=lambda: 0)
    await asyncio.wait_for(waiter, 1)


@pytest.mark.parametrize(
    ("size", "idle", "waited", "ready"),
    [
        (3, False, 0.0, True),  # full
        (1, True, 0.0, True),  # the source has nothing more: do not hold a single change
        (1, False, 0.0, False),  # more is coming and there is time
        (1, False, 4.9, False),
        (1, False, 5.0, True),  # the oldest has waited max_age
    ],
)
async def test_a_batch_is_ready_when_full_idle_or_old(size, idle, waited, ready):
    buffer = ChangeBuffer(pause_at=100, resume_at=50)
    await buffer.put([tx(1, size)], source_idle=idle, now=0)
    take = asyncio.create_task(buffer.take(3, max_age=5, clock=lambda: waited))
    await asyncio.sleep(0.01)
    assert take.done() is ready
    take.cancel()


async def test_closing_lets_the_writer_drain_then_raises_the_readers_error():
    buffer = ChangeBuffer(pause_at=100, resume_at=50)
    await buffer.put([tx(1)], source_idle=False, now=0)
    await buffer.close(ConnectionError("source lost"))
    assert [t.position for t in await buffer.take(3, max_age=5, clock=lambda: 0)] == [1]
    with pytest.raises(ConnectionError, match="source lost"):
        await buffer.take(3, max_age=5, clock=lambda: 0)
    stopped = ChangeBuffer(pause_at=100, resume_at=50)
    await stopped.close()
    with pytest.raises(BufferClosed):
        await stopped.take(3, max_age=5, clock=lambda: 0)


def test_resume_at_must_be_below_pause_at():
    with pytest.raises(ValueError, match="must be below pause_at"):
        ChangeBuffer(pause_at=10, resume_at=10)


async def test_a_batch_takes_whole_transactions_and_may_overshoot_its_size():
    buffer = ChangeBuffer(pause_at=100, resume_at=50)
    await buffer.put([tx(1, 4), tx(2, 7), tx(3, 1)], source_idle=False, now=0)
    batch = await buffer.take(10, max_age=5, clock=lambda: 0)
    assert [t.position for t in batch] == [1, 2]  # 11 changes: the second is not split
    assert buffer.size == 1


async def test_several_batches_taken_are_in_flight_until_each_is_acknowledged():
    buffer = ChangeBuffer(pause_at=100, resume_at=50)
    await buffer.put([tx(1), tx(2)], source_idle=True, now=0)
    await buffer.take(1, max_age=5, clock=lambda: 0)
    await buffer.take(1, max_age=5, clock=lambda: 0)
    assert buffer.flights == 2
    await buffer.acknowledged()
    assert buffer.in_flight
    await buffer.acknowledged()
    assert not buffer.in_flight
