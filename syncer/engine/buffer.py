"""The bounded buffer between a subscription's reader and its writer.

The reader puts whole source transactions in; the writer takes batches out. The
buffer counts row changes, not transactions, and applies backpressure with
hysteresis: reading pauses when `pause_at` changes are buffered and resumes only
once the writer has drained it to `resume_at`, so a slow sink holds memory flat
instead of letting the source run ahead. A transaction is never split, so the
buffer may exceed `pause_at` by the rest of the transaction that crossed it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from syncer.engine.changes import Transaction


class BufferClosed(Exception):
    """The reader stopped; nothing more will arrive."""


class ChangeBuffer:
    def __init__(self, pause_at: int, resume_at: int) -> None:
        if not 0 <= resume_at < pause_at:
            raise ValueError(f"resume_at ({resume_at}) must be below pause_at ({pause_at})")
        self.pause_at, self.resume_at = pause_at, resume_at
        self.size = 0
        """Row changes buffered."""
        self.paused = False
        """Backpressure: the reader waits until the writer drains the buffer."""
        self.held = False
        """The circuit breaker is open: the reader waits until the sink is back."""
        self.source_idle = False
        """The reader's last read found nothing more pending at the source."""
        self.peak = 0
        self.flights = 0
        """Batches the writer took and has not acknowledged yet (several with
        SYNCER_BULK_CONCURRENCY above 1)."""
        self._transactions: deque[Transaction] = deque()
        self._first_put_at: float | None = None
        self._closed: BaseException | None = None
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return self.size

    @property
    def in_flight(self) -> bool:
        """The writer holds a batch it has not acknowledged yet."""
        return self.flights > 0

    @property
    def oldest_commit(self) -> float | None:
        """Commit time of the oldest buffered source transaction, for lag."""
        return self._transactions[0].commit_time if self._transactions else None

    # -- the reader's side -----------------------------------------------------------

    async def put(self, transactions: list[Transaction], source_idle: bool, now: float) -> None:
        async with self._changed:
            for tx in transactions:
                self._transactions.append(tx)
                self.size += len(tx.changes)
            if transactions and self._first_put_at is None:
                self._first_put_at = now
            self.source_idle = source_idle
            self.peak = max(self.peak, self.size)
            if self.size >= self.pause_at:
                self.paused = True
            self._changed.notify_all()

    async def wait_for_room(self) -> None:
        """Return once the reader may read: not paused, not held (or the buffer closed)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: (not self.paused and not self.held) or self._closed is not None
            )

    async def close(self, error: BaseException | None = None) -> None:
        """No more input: the writer drains what is left, then gets `error` (or ends)."""
        async with self._changed:
            self._closed = error or BufferClosed()
            self._changed.notify_all()

    # -- the writer's side -----------------------------------------------------------

    async def take(
        self, max_changes: int, max_age: float, clock: Callable[[], float]
    ) -> list[Transaction]:
        """Wait for a batch worth writing and return it.

        A batch is ready when it is full, when the source has nothing more pending,
        or when its oldest transaction has waited `max_age`: a single change is never
        held back for the age limit. Raises the reader's error, or BufferClosed, once
        the buffer is closed and empty.
        """
        async with self._changed:
            while not self._ready(max_changes, max_age, clock()):
                if self._closed is not None and not self._transactions:
                    raise self._closed
                if self._closed is not None:
                    break  # closing: write what is left
                timeout = None
                if self._first_put_at is not None:
                    timeout = max(0.0, self._first_put_at + max_age - clock())
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    pass
            return self._drain(max_changes)

    def _ready(self, max_changes: int, max_age: float, now: float) -> bool:
        if not self._transactions:
            return False
        if self.size >= max_changes or self.source_idle:
            return True
        return self._first_put_at is not None and now - self._first_put_at >= max_age

    def _drain(self, max_changes: int) -> list[Transaction]:
        batch: list[Transaction] = []
        count = 0
        while self._transactions and count < max_changes:
            tx = self._transactions.popleft()
            batch.append(tx)
            count += len(tx.changes)
        self.size -= count
        if batch:
            self.flights += 1
        self._first_put_at = None if not self._transactions else self._first_put_at
        if self.paused and self.size <= self.resume_at:
            self.paused = False
        self._changed.notify_all()
        return batch

    async def acknowledged(self) -> None:
        """The writer is done with the batch it took."""
        async with self._changed:
            self.flights = max(0, self.flights - 1)
            self._changed.notify_all()

    async def hold(self, held: bool) -> None:
        """Open (True) or close (False) the circuit breaker on the reader."""
        async with self._changed:
            self.held = held
            self._changed.notify_all()
