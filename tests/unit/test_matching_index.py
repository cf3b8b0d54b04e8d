"""The matcher: the pin index narrows the candidates, CEL decides, and nothing that brute
force would match is ever missed (the property test at the end)."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer.engine.matching import (
    Matcher,
    PinIndex,
    RangeIndex,
    activation,
    compile_filter,
    exact_key,
    index_key,
)
from syncer.engine.matching.activation import Activation

FIELDS = {"tenant": "int8", "total": "numeric", "status": "text", "u": "jsonb", "meta": "jsonb"}


def change(
    doc: dict[str, Any] | None, old: dict[str, Any] | None = None, op: str = "upsert"
) -> Activation:
    return activation(doc, old, op, "k1", 10, FIELDS)


def test_values_equal_in_cel_share_an_index_key() -> None:
    assert index_key(5) == index_key(5.0) == index_key(5.0 + 0)
    assert index_key(0.0) == index_key(-0.0)
    assert index_key(True) != index_key(1)
    assert index_key(False) != index_key(0)
    assert index_key("5") != index_key(5)
    assert index_key(None) == ("null", None)
    assert index_key([5]) is None and index_key({"a": 1}) is None
    assert index_key(10**400) == ("number", 10**400)


def test_the_index_files_a_subscription_under_one_pin_and_finds_it_by_value() -> None:
    index: PinIndex[str] = PinIndex()
    assert index.add("a", compile_filter("doc.tenant == 7 && doc.status == 'x'").pins)
    assert index.add("b", compile_filter("doc.tenant in [7, 8]").pins)
    assert not index.add("c", compile_filter("doc.tenant > 7").pins)
    assert index.candidates(change({"tenant": 7, "status": "x"})) == {"a", "b"}
    assert index.candidates(change({"tenant": "8"})) == {"b"}
    assert index.candidates(change({"tenant": 9})) == set()
    assert index.candidates(change({"status": "x"})) == set()  # "a" is filed by tenant only
    index.remove("a")
    index.remove("a")  # removing twice is harmless
    assert index.candidates(change({"tenant": 7})) == {"b"}
    assert len(index) == 1 and "b" in index and "a" not in index


def test_the_index_prefers_the_pin_with_fewer_values_and_not_op() -> None:
    index: PinIndex[str] = PinIndex()
    index.add(
        "a", compile_filter("op == 'upsert' && doc.status in ['x', 'y'] && doc.tenant == 3").pins
    )
    assert index.candidates(change({"tenant": 3})) == {"a"}
    assert index.candidates(change({"tenant": 4, "status": "x"})) == set()
    index.add("b", compile_filter("op == 'delete' && doc.status in ['x', 'y']").pins)
    assert index.candidates(change({"status": "y"}, op="upsert")) == {"b"}


def test_the_matcher_evaluates_candidates_and_unpinned_and_counts_errors() -> None:
    matcher: Matcher[str] = Matcher()
    matcher.add("pinned", compile_filter("doc.tenant == 1 && doc.total > 10"))
    matcher.add("other-tenant", compile_filter("doc.tenant == 2"))
    matcher.add("unpinned", compile_filter("doc.total > 100 || doc.tenant == 9"))
    matcher.add("broken", compile_filter("doc.meta.region.startsWith('eu')"))
    assert matcher.unpinned == 2 and len(matcher) == 4

    result = matcher.match(change({"tenant": 1, "total": "150.25"}))
    assert sorted(result.ids) == ["pinned", "unpinned"]
    assert result.candidates == 3  # "other-tenant" was not evaluated
    assert result.errors == 1  # "broken": doc has no meta

    matcher.add("unpinned", compile_filter("doc.tenant == 2"))  # replacing the filter pins it
    assert matcher.unpinned == 1
    matcher.remove("broken")
    result = matcher.match(change({"tenant": 1, "total": "150.25"}))
    assert result.ids == ["pinned"] and result.candidates == 1 and result.errors == 0


def test_old_and_new_values_both_find_their_subscriptions() -> None:
    matcher: Matcher[str] = Matcher()
    matcher.add("left", compile_filter("old.status == 'open' && doc.status != 'open'"))
    matcher.add(
        "arrived", compile_filter("doc.status == 'open' && (old == null || old.status != 'open')")
    )
    assert matcher.match(change({"status": "shut"}, {"status": "open"})).ids == ["left"]
    assert matcher.match(change({"status": "open"}, None)).ids == ["arrived"]
    assert matcher.match(change({"status": "open"}, {"status": "open"})).ids == []


def test_a_filter_that_is_its_pin_is_decided_by_an_equal_value_of_the_same_type() -> None:
    assert exact_key(7) == (int, 7) and exact_key(7.0) == (float, 7.0)
    assert exact_key(True) == (bool, True) and exact_key(None) == (type(None), None)
    assert exact_key(2**63) is None and exact_key([7]) is None
    index: PinIndex[str] = PinIndex()
    only = compile_filter("doc.tenant in [7, 'a', 2.5]")
    assert only.pin_only
    index.add("only", only.pins, pin_only=True)
    more = compile_filter("doc.tenant == 7 && doc.total > 1")
    assert not more.pin_only
    index.add("more", more.pins, pin_only=False)
    assert list(index.hits(change({"tenant": 7}))) == [({"only", "more"}, {"only"})]
    assert list(index.hits(change({"tenant": 7.0}))) == [({"only", "more"}, set())]
    assert list(index.hits(change({"tenant": "a"}))) == [({"only"}, {"only"})]
    index.remove("only")
    assert list(index.hits(change({"tenant": 7}))) == [({"more"}, set())]


def test_a_numeric_string_finds_a_filter_pinned_on_the_number() -> None:
    matcher: Matcher[str] = Matcher()
    matcher.add("int", compile_filter("doc.total == 5"))
    matcher.add("double", compile_filter("doc.total in [5.0, 6.5]"))
    matcher.add("uint", compile_filter("doc.total == 5u"))
    for held in ("5", "5.000", 5, 5.0):
        result = matcher.match(change({"total": held}))
        assert sorted(result.ids) == ["double", "int", "uint"], held
    assert matcher.match(change({"total": "6.5"})).ids == ["double"]


def test_the_range_index_finds_the_bounds_a_number_meets_and_only_numbers() -> None:
    index: RangeIndex[str] = RangeIndex()
    for id, text in {
        "gt5": "doc.total > 5",
        "ge5.0": "doc.total >= 5.0",
        "lt-2": "doc.total < -2",
        "le1.5": "1.5 >= doc.total",  # the literal on the left reads as doc.total <= 1.5
        "gt-1": "-1 < doc.total && doc.status != 'x'",
    }.items():
        assert index.add(id, compile_filter(text).ranges)
    assert not index.add("none", compile_filter("doc.status != 'x'").ranges)
    assert len(index) == 5

    def found(total: Any) -> set[str]:
        return {id for ids in index.hits(change({"total": total})) for id in ids}

    # a strict bound is filed as a non-strict one: an equal value is a candidate
    assert found(5) == found(5.0) == found("5.000") == {"gt5", "ge5.0", "gt-1"}
    assert found(4.99) == {"gt-1"}
    assert found(1.5) == {"le1.5", "gt-1"}
    assert found(-1) == {"le1.5", "gt-1"}
    assert found(-2.5) == {"lt-2", "le1.5"}
    assert found(2**70) == {"gt5", "ge5.0", "gt-1"}
    assert found(float("inf")) == {"gt5", "ge5.0", "gt-1"}
    for no_number in (float("nan"), "abc", None, True, [5], {"x": 5}, dt.datetime.now(dt.UTC)):
        assert found(no_number) == set(), no_number
    # a type the index does not order, which the engine compares: every bound, CEL decides
    assert found(decimal.Decimal("-9")) == {"gt5", "ge5.0", "lt-2", "le1.5", "gt-1"}
    assert {id for ids in index.hits(change({"status": "x"})) for id in ids} == set()
    index.remove("gt5")
    index.remove("lt-2")
    assert found(6) == {"ge5.0", "gt-1"} and found(-3) == {"le1.5"}
    assert len(index) == 3


def test_a_filter_with_only_a_range_is_indexed_and_not_unpinned() -> None:
    matcher: Matcher[str] = Matcher()
    matcher.add("big", compile_filter('doc.total > 500 && doc.status != "x"'))
    matcher.add("small", compile_filter("doc.total <= 10"))
    matcher.add("tenant", compile_filter("doc.tenant == 1 && doc.total > 500"))
    assert matcher.unpinned == 0
    result = matcher.match(change({"tenant": 2, "total": "600.5", "status": "y"}))
    assert result.ids == ["big"] and result.candidates == 1
    result = matcher.match(change({"tenant": 1, "total": "600.5", "status": "x"}))
    assert result.ids == ["tenant"] and result.candidates == 2  # the pin, then "big"
    result = matcher.match(change({"tenant": 3, "total": "7"}))
    assert result.ids == ["small"] and result.candidates == 1
    assert matcher.match(change({"tenant": 3})).candidates == 0  # no total: no candidate
    held = {"tenant": 3, "total": decimal.Decimal("600"), "status": "y"}
    result = matcher.match(activation(held, None, "upsert", "k", 1))
    assert result.ids == ["big"] and result.candidates == 2  # a Decimal: CEL decides

    baseline: Matcher[str] = Matcher(index_ranges=False)
    baseline.add("big", compile_filter('doc.total > 500 && doc.status != "x"'))
    assert baseline.unpinned == 1
    assert baseline.match(change({"tenant": 3})).candidates == 1


# -- the property: the index never loses a match -------------------------------------------

PATHS = [
    "doc.tenant",
    "doc.total",
    "doc.status",
    "doc.u",
    "doc.meta.x",
    "old.u",
    "old.status",
    "op",
    "key",
]
BIG = ["9007199254740992.0", "9007199254740993", "9223372036854775813u"]
LITERALS = [
    *BIG,
    "5",
    "5.0",
    "5u",
    "-1",
    "0",
    "0.0",
    "1",
    "1.5",
    '"5"',
    '"a"',
    '"k1"',
    '"upsert"',
    "true",
    "false",
    "null",
]
VALUES: list[Any] = [
    2**53 + 1,
    2**53,
    float(2**53),
    2**63 + 5,
    5,
    5.0,
    "5",
    "5.0",
    -1,
    0,
    0.0,
    1,
    1.5,
    "a",
    "k1",
    "upsert",
    True,
    False,
    None,
    [5],
    {"x": 5},
]
BOUNDS = [
    "0",
    "0.0",
    "-0.0",
    "1.5",
    "5",
    "5.0",
    "5u",
    "-1",
    "-2.5",
    "1e3",
    "9007199254740992.0",
    "9007199254740993",
    "9223372036854775807",
]
"""Range conjuncts' literals: int and double, equal to the values below, negative, past
a double's exact integers."""
# Literals CEL holds equal or that Python confuses (True == 1), with the values a
# change may carry for them: an example draws one group, so they meet often.
CONFUSABLE: list[tuple[list[str], list[Any]]] = [
    (["1", "1.0", "1u", "true", '"1"'], [1, 1.0, True, "1", "1.0"]),
    (["0", "0.0", "false", "null", '"0"'], [0, -0.0, False, None, "0", ""]),
    (["5", "5.0", "5u", '"5"', "5.5"], [5, 5.0, "5", "5.000", 5.5, "5.5"]),
    (BIG, [2**53 + 1, 2**53, float(2**53), 2**63 + 5, "9007199254740993"]),
    (['"a"', '"k1"', '"upsert"', '"delete"'], ["a", "k1", "upsert", "delete", ["a"], {"x": "a"}]),
    # values for the range conjuncts: at the bounds, between, past them, not numbers
    (
        ["5", "-1"],
        [5, 5.0, "5", "4.999", -1, -1.0, "-2.5", -2.5, 1000, "1e3", 0, -0.0, "abc", None],
    ),
    (
        ["9007199254740993", "1.5"],
        [2**53 + 1, 2**63 - 1, 2**63 + 5, -(2**70), float("inf"), float("nan"), "NaN", True],
    ),
]


@st.composite
def atoms(draw: st.DrawFn, paths: list[str], literals: list[str]) -> str:
    path = draw(st.sampled_from(paths))
    literal = st.sampled_from(literals)
    kinds = ["eq", "eq", "in", "or", "range", "range", "range_flip", "ne", "has", "not", "flip"]
    kind = draw(st.sampled_from(kinds))
    if kind == "eq":
        return f"{path} == {draw(literal)}"
    if kind == "flip":
        return f"{draw(literal)} == {path}"
    if kind == "in":
        return f"{path} in [{', '.join(draw(st.lists(literal, max_size=4)))}]"
    if kind == "or":
        equalities = [f"{path} == {lit}" for lit in draw(st.lists(literal, min_size=2, max_size=3))]
        return "(" + " || ".join(equalities) + ")"
    if kind in ("range", "range_flip"):
        operator = draw(st.sampled_from(["<", "<=", ">", ">="]))
        bound = draw(st.sampled_from(BOUNDS))
        return f"{path} {operator} {bound}" if kind == "range" else f"{bound} {operator} {path}"
    if kind == "ne":
        return f"{path} != {draw(literal)}"
    if kind == "has":
        return f"has({draw(st.sampled_from(['doc.u', 'doc.meta.x', 'old.u']))})"
    return f"!({path} == {draw(literal)})"


@st.composite
def filters(draw: st.DrawFn, paths: list[str], literals: list[str]) -> str:
    """Mostly conjunctions (a lone pin is one in three), sometimes a top-level ||."""
    terms = st.lists(atoms(paths, literals), min_size=1, max_size=3)
    conjunction = " && ".join(draw(terms))
    if draw(st.integers(0, 4)) == 0:
        return f"{conjunction} || {' && '.join(draw(terms))}"
    return conjunction


@st.composite
def documents(draw: st.DrawFn, values: list[Any]) -> dict[str, Any]:
    value = st.sampled_from(values)
    doc: dict[str, Any] = {}
    for name in ("tenant", "total", "status", "u"):
        if draw(st.booleans()) or name == "tenant":
            doc[name] = draw(value)
    if draw(st.booleans()):
        doc["meta"] = draw(st.sampled_from([{"x": draw(value)}, {}, None, "x"]))
    return doc


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[Activation]]:
    """Filters and changes drawn from a small vocabulary of paths, literals and values,
    so that filters collide on paths and values often (type-mixed ones included)."""
    paths = draw(st.lists(st.sampled_from(PATHS), min_size=2, max_size=3, unique=True))
    group = draw(st.sampled_from(CONFUSABLE))
    literals = [*group[0], *draw(st.lists(st.sampled_from(LITERALS), min_size=1, max_size=2))]
    values = [*group[1], *draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2))]
    texts = draw(st.lists(filters(paths, literals), min_size=3, max_size=30))
    events = []
    for _ in range(draw(st.integers(1, 5))):
        old = draw(st.none() | documents(values))
        op = draw(st.sampled_from(["upsert", "delete"]))
        key = draw(st.sampled_from(["k1", "5"]))
        events.append(activation(draw(documents(values)), old, op, key, 10, FIELDS))
    return texts, events


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_the_matcher_finds_exactly_what_brute_force_finds(
    scenario: tuple[list[str], list[Activation]],
) -> None:
    texts, events = scenario
    compiled = [compile_filter(text, FIELDS) for text in texts]
    matcher: Matcher[int] = Matcher()
    for number, filter in enumerate(compiled):
        matcher.add(number, filter)
    for event in events:
        verdicts = [filter.evaluate(event) for filter in compiled]
        result = matcher.match(event)
        expected = [n for n, verdict in enumerate(verdicts) if verdict is True]
        assert sorted(result.ids) == expected, (texts, event.values)
        assert result.candidates <= len(compiled)
        # every error brute force meets among the candidates is counted; none outside them
        assert result.errors <= sum(verdict is None for verdict in verdicts)
