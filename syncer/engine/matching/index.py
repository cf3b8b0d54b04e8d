"""The matcher's first phase: live subscriptions by the value one of their conjuncts pins
(`PinIndex`), or, for those that pin none, by the number one bounds (`RangeIndex`).

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

import bisect
import datetime as dt
import math
from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from syncer.engine.matching.activation import MISSING, Activation
from syncer.engine.matching.analysis import Path, Pin, RangePin

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


class RangeIndex(Generic[K]):
    """Live subscriptions filed by one range conjunct each (`doc.total > 500`), for the
    filters that pin no value.

    Per path, two sorted arrays of bounds: lower bounds (`>`, `>=`) and upper bounds
    (`<`, `<=`, kept negated so that both are read the same way). A change's number
    at the path meets a prefix of each, found by bisection: O(log n + k).

    Conservative, never finer than CEL: every bound and value is compared as a double,
    and a strict bound as a non-strict one (`> 5` files under "at least 5.0"). The
    engine compares int with int exactly and a number with a double by the double
    (`9007199254740993 > 9007199254740992.0` is false); rounding to the nearest double
    keeps order (a < b gives double(a) <= double(b)), so whatever the engine holds true
    the index holds true too, and an equal value only costs an evaluation. A value that
    is no number (a string, null, a bool, a list, a map, a timestamp, a missing field)
    or a NaN meets no bound: the engine has no ordering of them with a number and fails
    the conjunct, so the filter cannot hold. A value of any other type (a Decimal, which
    the engine does compare) meets every bound, and CEL decides.
    """

    def __init__(self) -> None:
        self._sides: dict[tuple[Path, bool], _Bounds[K]] = {}
        self._filed: dict[K, tuple[tuple[Path, bool], float]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    def __contains__(self, id: object) -> bool:
        return id in self._filed

    def add(self, id: K, ranges: Iterable[RangePin]) -> bool:
        """File `id` under its first range conjunct (the text's order: which of two is
        the more selective depends on the data); False when there is none."""
        chosen = next(iter(ranges), None)
        if chosen is None:
            return False
        if id in self._filed:
            self.remove(id)
        upper = chosen.operator in ("<", "<=")
        bound = _double(chosen.bound)
        side = (chosen.path, upper)
        key = -bound if upper else bound
        self._sides.setdefault(side, _Bounds()).add(key, id)
        self._filed[id] = (side, key)
        return True

    def remove(self, id: K) -> None:
        filed = self._filed.pop(id, None)
        if filed is None:
            return
        side, key = filed
        bounds = self._sides[side]
        bounds.remove(key, id)
        if not bounds.keys:
            del self._sides[side]

    def hits(self, activation: Activation) -> Iterator[list[K]]:
        """For each side of a path whose bounds the change's number meets: their ids
        (a superset of those whose range conjunct holds)."""
        for (path, upper), bounds in self._sides.items():
            value = activation.lookup(path)
            kind = type(value)
            if kind is int or kind is float:  # not bool: an int to Python, not to CEL
                number = _double(value)
                if number != number:  # NaN
                    continue
                found = bounds.at_most(-number if upper else number)
            elif kind in _NO_NUMBERS:
                continue
            else:  # a type the index does not order (the engine reads a Decimal): CEL decides
                found = bounds.ids[:]
            if found:
                yield found


_NO_NUMBERS = frozenset(
    {str, bytes, bool, type(None), list, tuple, dict, dt.datetime, dt.date, type(MISSING)}
)
"""The types of values the engine never orders with a number (no such overload)."""


class _Bounds(Generic[K]):
    """Keys in ascending order with their ids, side by side."""

    __slots__ = ("ids", "keys")

    def __init__(self) -> None:
        self.keys: list[float] = []
        self.ids: list[K] = []

    def add(self, key: float, id: K) -> None:
        at = bisect.bisect_right(self.keys, key)
        self.keys.insert(at, key)
        self.ids.insert(at, id)

    def remove(self, key: float, id: K) -> None:
        at = bisect.bisect_left(self.keys, key)
        while self.ids[at] != id:  # among the equal keys
            at += 1
        del self.keys[at]
        del self.ids[at]

    def at_most(self, key: float) -> list[K]:
        """The ids whose key is at most `key`."""
        return self.ids[: bisect.bisect_right(self.keys, key)]


def _double(number: int | float) -> float:
    """A number as the nearest double; an int past a double's range as an infinity."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf
