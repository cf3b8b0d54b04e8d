"""The matcher: the pin index narrows the candidates, CEL decides, and nothing that brute
force would match is ever missed (the property test at the end)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer.engine.matching import (
    Matcher,
    PinIndex,
    activation,
    compile_filter,
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
    matcher.add("unpinned", compile_filter("doc.total > 100"))
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


def test_a_numeric_string_finds_a_filter_pinned_on_the_number() -> None:
    matcher: Matcher[str] = Matcher()
    matcher.add("int", compile_filter("doc.total == 5"))
    matcher.add("double", compile_filter("doc.total in [5.0, 6.5]"))
    matcher.add("uint", compile_filter("doc.total == 5u"))
    for held in ("5", "5.000", 5, 5.0):
        result = matcher.match(change({"total": held}))
        assert sorted(result.ids) == ["double", "int", "uint"], held
    assert matcher.match(change({"total": "6.5"})).ids == ["double"]


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
LITERALS = [
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

paths = st.sampled_from(PATHS)
literals = st.sampled_from(LITERALS)


@st.composite
def atoms(draw: st.DrawFn) -> str:
    path = draw(paths)
    kind = draw(st.sampled_from(["eq", "eq", "in", "or", "range", "ne", "has", "not", "flip"]))
    if kind == "eq":
        return f"{path} == {draw(literals)}"
    if kind == "flip":
        return f"{draw(literals)} == {path}"
    if kind == "in":
        return f"{path} in [{', '.join(draw(st.lists(literals, max_size=4)))}]"
    if kind == "or":
        return (
            "("
            + " || ".join(
                f"{path} == {lit}" for lit in draw(st.lists(literals, min_size=2, max_size=3))
            )
            + ")"
        )
    if kind == "range":
        operator = draw(st.sampled_from(["<", "<=", ">", ">="]))
        return f"{path} {operator} {draw(st.sampled_from(['0', '1.5', '5']))}"
    if kind == "ne":
        return f"{path} != {draw(literals)}"
    if kind == "has":
        return f"has({draw(st.sampled_from(['doc.u', 'doc.meta.x', 'old.u']))})"
    return f"!({draw(paths)} == {draw(literals)})"


@st.composite
def filters(draw: st.DrawFn) -> str:
    conjunction = " && ".join(draw(st.lists(atoms(), min_size=1, max_size=3)))
    if draw(st.integers(0, 4)) == 0:
        return f"{conjunction} || {' && '.join(draw(st.lists(atoms(), min_size=1, max_size=2)))}"
    return conjunction


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name in ("tenant", "total", "status", "u"):
        if draw(st.booleans()) or name == "tenant":
            doc[name] = draw(st.sampled_from(VALUES))
    if draw(st.booleans()):
        doc["meta"] = draw(st.sampled_from([{"x": value} for value in VALUES] + [{}, None, "x"]))
    return doc


@st.composite
def changes(draw: st.DrawFn) -> Activation:
    old = draw(st.none() | documents())
    op = draw(st.sampled_from(["upsert", "delete"]))
    return activation(draw(documents()), old, op, draw(st.sampled_from(["k1", "5"])), 10, FIELDS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(filters(), min_size=1, max_size=20),
    events=st.lists(changes(), min_size=1, max_size=5),
)
def test_the_matcher_finds_exactly_what_brute_force_finds(
    texts: list[str], events: list[Activation]
) -> None:
    compiled = [compile_filter(text, FIELDS) for text in texts]
    matcher: Matcher[int] = Matcher()
    for number, filter in enumerate(compiled):
        matcher.add(number, filter)
    for event in events:
        verdicts = [filter.evaluate(event) for filter in compiled]
        result = matcher.match(event)
        assert sorted(result.ids) == [n for n, verdict in enumerate(verdicts) if verdict is True], (
            texts,
            event.values,
        )
        assert result.candidates <= len(compiled)
        # every error brute force meets among the candidates is counted; none outside them
        assert result.errors <= sum(verdict is None for verdict in verdicts)
