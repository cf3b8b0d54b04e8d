"""A live subscription's filter: CEL text, validated, compiled once and shared.

`compile_filter` refuses a filter with every problem found (`FilterError`, each
`FilterProblem` with the offset in the text and what to change), so registration can
answer 422 with all of them at once. The compiled program is cached by text: 100,000
live subscriptions of a gateway often share a handful of filter shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import cel

from syncer.engine.matching.activation import Activation
from syncer.engine.matching.analysis import Analysis, Pin, RangePin, analyse, field_problems
from syncer.errors import FilterError, FilterProblem

PROGRAM_CACHE_SIZE = 65_536
"""Distinct filter texts whose compiled program is kept (a program is a few KB)."""


@dataclass(frozen=True, slots=True, eq=False)
class Filter:
    text: str
    program: cel.Program
    pins: tuple[Pin, ...]
    """The top-level conjuncts that pin a value: the matcher's index reads them."""
    pin_only: bool = False
    """The filter is its one pin (`doc.tenant == 7`): the index decides it alone when the
    change's value has a literal's own type and equals it."""
    ranges: tuple[RangePin, ...] = ()
    """The top-level conjuncts that bound a number: indexed when no conjunct pins a value."""

    def evaluate(self, activation: Activation) -> bool | None:
        """Whether the change matches; None when the filter cannot be evaluated on it (a
        type mismatch, a missing field, a result that is not a bool): no match, and the
        caller counts it."""
        try:
            result = self.program.execute(activation.context)
        except Exception:  # the engine raises KeyError, TypeError, RuntimeError, IndexError...
            return None
        return result if isinstance(result, bool) else None


def compile_filter(text: str, fields: Mapping[str, str] | None = None) -> Filter:
    """Validate and compile a filter.

    `fields` maps the sync subscription's document fields to their source type names
    (`{"total": "numeric", "meta": "jsonb"}`); None when the columns are not known, and
    then field names are not checked.
    """
    analysis = _analysed(text)
    found = list(analysis.problems)
    if fields is not None:
        found.extend(field_problems(analysis.reads, fields))
    if found:
        raise FilterError(sorted(found, key=lambda p: -1 if p.position is None else p.position))
    return _compiled(text, analysis.pins, analysis.pin_only, analysis.ranges)


@functools.lru_cache(maxsize=PROGRAM_CACHE_SIZE)
def _analysed(text: str) -> Analysis:
    return analyse(text)


@functools.lru_cache(maxsize=PROGRAM_CACHE_SIZE)
def _compiled(
    text: str, pins: tuple[Pin, ...], pin_only: bool, ranges: tuple[RangePin, ...]
) -> Filter:
    try:
        program = cel.compile(text)
    except ValueError as error:  # what the analysing parser let through, the engine refused
        message = str(error).split("ERROR:")[-1].strip().splitlines()[0]
        raise FilterError([FilterProblem(None, f"the CEL engine refuses it: {message}")]) from None
    return Filter(text, program, pins, pin_only, ranges)
