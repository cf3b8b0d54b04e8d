"""Which live subscriptions of one sync subscription a change matches, in two phases.

Phase 1: the pin index (`index.PinIndex`) gives the live subscriptions whose pinned
value the change carries, and the range index (`index.RangeIndex`) those of the others
whose bound the change's number meets (`doc.total > 500`). Phase 2: CEL evaluates the
filter of each of those candidates (but for the pin-only filters the index knows match:
`doc.tenant == 7`, given 7) and of every unpinned live subscription (neither a pin nor a
range: every change is a candidate, hence their own, smaller quota,
`DEFAULT_UNPINNED_QUOTA`). Identical filter texts share one
compiled `Filter`, evaluated once per change for all the live subscriptions holding it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from syncer.engine.matching.activation import Activation
from syncer.engine.matching.filters import Filter
from syncer.engine.matching.index import PinIndex, RangeIndex

K = TypeVar("K", bound=Hashable)

DEFAULT_UNPINNED_QUOTA = 350
"""Live subscriptions without a pinned conjunct a sync subscription may hold. Each one is
evaluated on every change: bench/matching.py measured 1.05 us per unpinned live
subscription per change, over 65 to 80 us for the change itself with 100,000 pinned ones
(docs/benchmarks.md, "Matching"), so 2,000 changes/s leave room for about 400; 350 keeps
a margin for a shared machine's noise (runs computed 380 to 450; 350 measured 2,328/s)."""


@dataclass(frozen=True, slots=True)
class MatchResult(Generic[K]):
    ids: list[K]
    """The live subscriptions whose filter holds for the change."""
    candidates: int
    """Filters evaluated: the index's candidates plus the unpinned live subscriptions."""
    errors: int
    """Of those, the ones that could not be evaluated on this change (no match)."""


class Matcher(Generic[K]):
    """The live subscriptions of one sync subscription, by id. `index_ranges=False`
    leaves the filters with only a range conjunct unpinned (the benchmark's baseline)."""

    def __init__(self, index_ranges: bool = True) -> None:
        self._filters: dict[K, Filter] = {}
        self._index: PinIndex[K] = PinIndex()
        self._ranges: RangeIndex[K] = RangeIndex()
        self._index_ranges = index_ranges
        self._unpinned: set[K] = set()

    def __len__(self) -> int:
        return len(self._filters)

    @property
    def unpinned(self) -> int:
        """How many live subscriptions have neither a pinned conjunct nor an indexed range
        (every change is theirs to evaluate): the number `DEFAULT_UNPINNED_QUOTA` bounds."""
        return len(self._unpinned)

    def add(self, id: K, filter: Filter) -> None:
        """Add a live subscription, or replace its filter."""
        if id in self._filters:
            self.remove(id)
        self._filters[id] = filter
        if self._index.add(id, filter.pins, filter.pin_only):
            return
        if self._index_ranges and self._ranges.add(id, filter.ranges):
            return
        self._unpinned.add(id)

    def remove(self, id: K) -> None:
        if self._filters.pop(id, None) is not None:
            self._index.remove(id)
            self._ranges.remove(id)
            self._unpinned.discard(id)

    def match(self, activation: Activation) -> MatchResult[K]:
        verdicts: dict[int, bool | None] = {}
        matched: list[K] = []
        candidates = errors = 0
        for bucket, sure in self._index.hits(activation):
            candidates += len(bucket)
            matched.extend(sure)
            for live_id in bucket - sure if sure else bucket:
                verdict = self._verdict(self._filters[live_id], activation, verdicts)
                if verdict:
                    matched.append(live_id)
                elif verdict is None:
                    errors += 1
        for ids in self._ranges.hits(activation):
            candidates += len(ids)
            for live_id in ids:
                verdict = self._verdict(self._filters[live_id], activation, verdicts)
                if verdict:
                    matched.append(live_id)
                elif verdict is None:
                    errors += 1
        candidates += len(self._unpinned)
        for live_id in self._unpinned:
            verdict = self._verdict(self._filters[live_id], activation, verdicts)
            if verdict:
                matched.append(live_id)
            elif verdict is None:
                errors += 1
        return MatchResult(matched, candidates, errors)

    @staticmethod
    def _verdict(
        filter: Filter, activation: Activation, verdicts: dict[int, bool | None]
    ) -> bool | None:
        """The filter's verdict on the change, evaluated once for every live
        subscription holding it (the compile cache hands identical texts one object)."""
        shared = id(filter)
        if shared not in verdicts:
            verdicts[shared] = filter.evaluate(activation)
        return verdicts[shared]
