"""The matcher's first phase: live subscriptions by the value one of their conjuncts pins.

A filter `doc.tenant == 42 && ...` can only match a change whose `doc.tenant` equals 42,
so it is filed under (("doc", "tenant"), 42), and a change looks up, for each path any
filter is filed under, the bucket of the value it carries there. Each live subscription
is filed under one pin only: one is enough to exclude every change it cannot match.

Keys follow CEL's equality, coarsened where needed, never finer: values CEL holds equal
(int 5, uint 5u, double 5.0) share a key, so a bucket may hold a filter that turns out
not to match (the second phase evaluates it) but never misses one that does. A value
that no scalar literal can equal (a list, a map, a timestamp, a missing field) has no key.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Generic, TypeVar

from syncer.engine.matching.activation import Activation
from syncer.engine.matching.analysis import Path, Pin

K = TypeVar("K", bound=Hashable)

IndexKey = tuple[str, Any]


def index_key(value: Any) -> IndexKey | None:
    """The bucket of a value: equal in CEL means equal here. bool is kept apart from the
    numbers (Python's True == 1, CEL's true != 1); every number is keyed by its double,
    which CEL's heterogeneous equality between int, uint and double implies."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        try:
            return ("number", float(value))
        except OverflowError:  # an int past a double's range: only equal to itself
            return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null", None)
    return None


class PinIndex(Generic[K]):
    """Live subscription ids filed by one pin each."""

    def __init__(self) -> None:
        self._buckets: dict[Path, dict[IndexKey, set[K]]] = {}
        self._filed: dict[K, tuple[Path, tuple[IndexKey, ...]]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    def __contains__(self, id: object) -> bool:
        return id in self._filed

    def add(self, id: K, pins: Iterable[Pin]) -> bool:
        """File `id` under the most selective of `pins` (not `op` if another, then the
        fewest values, then the least crowded buckets); False when there is no pin. An
        empty `in []` files it under no value: it can match nothing."""
        best: tuple[tuple[int, int, int], Path, tuple[IndexKey, ...]] | None = None
        for pin in pins:
            # every literal a pin holds (bool, number, string, null) has a key
            keys = tuple({key for key in map(index_key, pin.values) if key is not None})
            rank = (_weak(pin.path), len(keys), self._crowd(pin.path, keys))
            if best is None or rank < best[0]:
                best = (rank, pin.path, keys)
        if best is None:
            return False
        self.remove(id)
        _, path, keys = best
        buckets = self._buckets.setdefault(path, {})
        for key in keys:
            buckets.setdefault(key, set()).add(id)
        self._filed[id] = (path, keys)
        return True

    def remove(self, id: K) -> None:
        filed = self._filed.pop(id, None)
        if filed is None:
            return
        path, keys = filed
        buckets = self._buckets[path]
        for key in keys:
            bucket = buckets[key]
            bucket.discard(id)
            if not bucket:
                del buckets[key]
        if not buckets:
            del self._buckets[path]

    def candidates(self, activation: Activation) -> set[K]:
        """The ids whose pin the change meets (a superset of those whose filter holds)."""
        found: set[K] = set()
        for path, buckets in self._buckets.items():
            key = index_key(activation.lookup(path))
            if key is not None:
                bucket = buckets.get(key)
                if bucket:
                    found |= bucket
        return found

    def _crowd(self, path: Path, keys: tuple[IndexKey, ...]) -> int:
        buckets = self._buckets.get(path, {})
        return sum(len(buckets.get(key, ())) for key in keys)


def _weak(path: Path) -> int:
    """`op` has two values: pinning it excludes little, so any other pin goes first."""
    return 1 if path == ("op",) else 0
