"""Batching: when to turn buffered transactions into bulk requests."""

from __future__ import annotations

from syncer.engine.changes import Transaction


class Batcher:
    """Accumulate transactions until the batch is full, old, or the source is idle.

    Transactions are never split: a batch may exceed `max_size` by the rest of the
    transaction that crossed it, and the checkpoint moves only past whole ones.
    """

    def __init__(self, max_size: int, max_age: float) -> None:
        self.max_size = max_size
        self.max_age = max_age
        self._transactions: list[Transaction] = []
        self._size = 0
        self._started_at: float | None = None

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return bool(self._transactions)

    def add(self, transaction: Transaction, now: float) -> None:
        if self._started_at is None:
            self._started_at = now
        self._transactions.append(transaction)
        self._size += len(transaction.changes)

    @property
    def full(self) -> bool:
        return self._size >= self.max_size

    def due(self, now: float) -> bool:
        """True when the oldest buffered transaction has waited `max_age`."""
        return self._started_at is not None and now - self._started_at >= self.max_age

    def drain(self) -> list[Transaction]:
        batch, self._transactions = self._transactions, []
        self._size, self._started_at = 0, None
        return batch
