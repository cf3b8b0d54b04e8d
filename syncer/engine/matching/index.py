"""The matcher's first phase: live subscriptions by the value one of their conjuncts pins.

A filter `doc.tenant == 42 && ...` can only match a change whose `doc.tenant` equals 42,
so it is filed under (("doc", "tenant"), 42), and a change looks up, for each path any
filter is filed under, the bucket of the value it carries there. Each live subscription
is filed under one pin only: one is enough to exclude every change it cannot match.

Keys follow CEL's equality, coarsened where needed, never finer: values CEL holds equal
(int 5, uint 5u, double 5.0) share a key, so a bucket may hold a filter that turns out
not to match (the second phase evaluates it) but never misses one that does. A value
that no scalar literal can equal (a list, a map, a timestamp, a missing field) has no key.

A filter that is its pin and nothing else (`doc.tenant == 42`, `Filter.pin_only`) is
also filed by its literals' exact values (type and value): a change carrying exactly
such a value matches it without evaluating anything. Within a bucket, Python's equality
of two values of one type is CEL's; values of different types (int 5 and double 5.0)
are left to the engine.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from syncer.engine.matching.activation import Activation
from syncer.engine.matching.analysis import Path, Pin

K = TypeVar("K", bound=Hashable)

IndexKey = tuple[str, Any]
ExactKey = tuple[type, Any]

_INT64 = range(-(2**63), 2**63)


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


def exact_key(value: Any) -> ExactKey | None:
    """A value by its type and itself; None for an int past CEL's 64 bits (the engine
    makes it a uint or a double) and for anything a literal cannot be."""
    kind = type(value)
    if kind is int and value not in _INT64:
        return None
    if kind in (int, float, str, bool, type(None)):
        return (kind, value)
    return None


class PinIndex(Generic[K]):
    """Live subscription ids filed by one pin each."""

    def __init__(self) -> None:
        self._buckets: dict[Path, dict[IndexKey, set[K]]] = {}
        self._exact: dict[Path, dict[ExactKey, set[K]]] = {}
        self._filed: dict[K, tuple[Path, tuple[IndexKey, ...], tuple[ExactKey, ...]]] = {}
        self._keys_of: dict[int, tuple[Pin, tuple[IndexKey, ...], tuple[ExactKey, ...]]] = {}
        """A pin's keys by the pin object: live subscriptions of one filter text share
        its pins. The entry holds the pin, so its id is not reused while cached."""

    def __len__(self) -> int:
        return len(self._filed)

    def __contains__(self, id: object) -> bool:
        return id in self._filed

    def add(self, id: K, pins: Iterable[Pin], pin_only: bool = False) -> bool:
        """File `id` under the pin that should make it a candidate least often; False
        when there is no pin. An empty `in []` files it under no value: it can match
        nothing.

        Which pin: not `op` if there is another (two values: it excludes little); then
        the fewest values per distinct value the index already holds on that path (a
        tenant among thousands beats a region among four); then the least crowded
        buckets. The first live subscriptions of a path choose with less to go on; a
        live subscription keeps its pin until it is added again. `pin_only`: the filter
        is its one pin, also filed by exact value.
        """
        pins = tuple(pins)
        if not pins:
            return False
        chosen = pins[0] if len(pins) == 1 else self._least_crowded(pins)
        path = chosen.path
        keys, exact = self._keys(chosen)
        if not pin_only:
            exact = ()
        if id in self._filed:
            self.remove(id)
        buckets = self._buckets.setdefault(path, {})
        for key in keys:
            buckets.setdefault(key, set()).add(id)
        if exact:
            sure = self._exact.setdefault(path, {})
            for value in exact:
                sure.setdefault(value, set()).add(id)
        self._filed[id] = (path, keys, exact)
        return True

    def _keys(self, pin: Pin) -> tuple[tuple[IndexKey, ...], tuple[ExactKey, ...]]:
        cached = self._keys_of.get(id(pin))
        if cached is not None and cached[0] is pin:
            return cached[1], cached[2]
        if len(self._keys_of) >= _KEYS_CACHED:
            self._keys_of.clear()
        keys, exact = _keys(pin), _exact_keys(pin)
        self._keys_of[id(pin)] = (pin, keys, exact)
        return keys, exact

    def _least_crowded(self, pins: tuple[Pin, ...]) -> Pin:
        best: tuple[tuple[int, float, int], Pin] | None = None
        for pin in pins:
            keys = self._keys(pin)[0]
            buckets = self._buckets.get(pin.path, {})
            share = len(keys) / max(1, len(buckets))
            crowd = sum(len(buckets.get(key, ())) for key in keys)
            rank = (_weak(pin.path), share, crowd)
            if best is None or rank < best[0]:
                best = (rank, pin)
        assert best is not None
        return best[1]

    def remove(self, id: K) -> None:
        filed = self._filed.pop(id, None)
        if filed is None:
            return
        path, keys, exact = filed
        _discard(self._buckets, path, keys, id)
        if exact:
            _discard(self._exact, path, exact, id)

    def hits(self, activation: Activation) -> Iterator[tuple[set[K], set[K]]]:
        """For each path a bucket of which the change meets: the ids filed under it, and
        those of them that match for certain (pin-only, exactly this value). An id is
        filed under one path, so appears in one bucket only."""
        for path, buckets in self._buckets.items():
            value = activation.lookup(path)
            key = index_key(value)
            bucket = buckets.get(key) if key is not None else None
            if bucket:
                exact = exact_key(value)
                sure = self._exact.get(path, {}).get(exact) if exact is not None else None
                yield bucket, sure or _NONE

    def candidates(self, activation: Activation) -> set[K]:
        """The ids whose pin the change meets (a superset of those whose filter holds)."""
        found: set[K] = set()
        for bucket, _ in self.hits(activation):
            found |= bucket
        return found


_NONE: set[Any] = set()
_KEYS_CACHED = 65_536
"""Pins whose keys an index keeps (as many as the compile cache keeps filters)."""


def _keys(pin: Pin) -> tuple[IndexKey, ...]:
    """A pin's bucket keys (every literal a pin holds, bool, number, string or null, has
    one). Cached by the pin object, never by its value: Python holds Pin(p, (1,)) and
    Pin(p, (True,)) equal."""
    return tuple({key for key in map(index_key, pin.values) if key is not None})


def _exact_keys(pin: Pin) -> tuple[ExactKey, ...]:
    return tuple({value for value in map(exact_key, pin.values) if value is not None})


def _discard(table: dict[Path, dict[Any, set[K]]], path: Path, keys: Iterable[Any], id: K) -> None:
    buckets = table[path]
    for key in keys:
        bucket = buckets[key]
        bucket.discard(id)
        if not bucket:
            del buckets[key]
    if not buckets:
        del table[path]


def _weak(path: Path) -> int:
    """`op` has two values: pinning it excludes little, so any other pin goes first."""
    return 1 if path == ("op",) else 0
