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
from lark import Token, Tree

from syncer.engine.matching.activation import Activation
from syncer.engine.matching.analysis import Pin, parse, pins, problems
from syncer.errors import FilterError, FilterProblem

PROGRAM_CACHE_SIZE = 65_536
"""Distinct filter texts whose compiled program is kept (a program is a few KB)."""


@dataclass(frozen=True, slots=True, eq=False)
class Filter:
    text: str
    program: cel.Program
    pins: tuple[Pin, ...]
    """The top-level conjuncts that pin a value: the matcher's index reads them."""

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
    tree, found = _parsed(text)
    if tree is None:
        raise FilterError(found)
    found = problems(tree, fields)
    if found:
        raise FilterError(found)
    return _compiled(text)


@functools.lru_cache(maxsize=PROGRAM_CACHE_SIZE)
def _parsed(text: str) -> tuple[Tree[Token] | None, list[FilterProblem]]:
    return parse(text)


@functools.lru_cache(maxsize=PROGRAM_CACHE_SIZE)
def _compiled(text: str) -> Filter:
    tree, _ = _parsed(text)
    assert tree is not None
    pinned = tuple(pins(tree))
    try:
        program = cel.compile(text)
    except ValueError as error:  # what the analysing parser let through, the engine refused
        message = str(error).split("ERROR:")[-1].strip().splitlines()[0]
        raise FilterError([FilterProblem(None, f"the CEL engine refuses it: {message}")]) from None
    return Filter(text, program, pinned)
