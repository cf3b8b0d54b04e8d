"""Live subscriptions' filters: what registration refuses (with the offset and what to
fix), what a filter compares (source types), and that an error on a change is no match."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings

from syncer.engine.matching import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_LIST_SIZE,
    MAX_REGEX_LENGTH,
    FilterError,
    FilterProblem,
    Pin,
    RangePin,
    activation,
    analysis,
    compile_filter,
)
from syncer.engine.matching.activation import Activation
from tests.unit.test_matching_index import LITERALS, PATHS, filters

FIELDS = {
    "id": "int4",
    "tenant": "int8",
    "total": "numeric",
    "ratio": "float8",
    "status": "text",
    "meta": "jsonb",
    "created_at": "timestamptz",
    "day": "date",
    "seen_at": "timestamp",
    "active": "bool",
    "scores": "_numeric",
}


def refused(text: str, fields: dict[str, str] | None = FIELDS) -> list[FilterProblem]:
    with pytest.raises(FilterError) as caught:
        compile_filter(text, fields)
    assert caught.value.problems, "a FilterError always says why"
    return caught.value.problems


def only(text: str, fields: dict[str, str] | None = FIELDS) -> FilterProblem:
    problems = refused(text, fields)
    assert len(problems) == 1, problems
    return problems[0]


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "says"),
    [
        ("doc.status == ", 14, "ends too early"),
        ("(doc.id == 1", 12, "ends too early"),
        ("doc.id = 1", 7, "compare with =="),
        ('doc.status == "open', 14, "string is not closed"),
        ("doc.id == 1 & doc.id == 2", 12, "'and' is &&"),
        ("doc.id == 1 ==", 14, "ends too early"),
        ("doc.id == == 1", 10, "unexpected '=='"),
    ],
)
def test_a_syntax_error_says_where_and_what(text: str, position: int, says: str) -> None:
    problem = only(text)
    assert problem.position == position
    assert problem.message.startswith("syntax error")
    assert says in problem.message


def test_an_empty_filter_is_refused() -> None:
    assert only("   ").message == "the filter is empty; write a CEL expression"


def test_an_unknown_top_level_variable_is_refused_at_its_offset() -> None:
    problem = only('doc.id == 1 && user.id == "a"')
    assert problem.position == 15
    assert "unknown variable 'user'" in problem.message
    assert "doc, old, op, key and position" in problem.message


def test_every_known_variable_is_accepted() -> None:
    compile_filter('doc.id == 1 && old.id == 1 && op == "upsert" && key == "1" && position > 0')


def test_an_unknown_field_is_refused_and_the_known_ones_listed() -> None:
    problem = only("doc.id == 1 && old.totl > 5")
    assert problem.position == 19
    assert "unknown field 'totl'" in problem.message
    assert "active, created_at, day, id, meta" in problem.message


def test_an_unknown_field_read_by_index_or_in_has_is_refused() -> None:
    assert only('doc["nope"] == 1').position == 4
    assert only("has(doc.nope)").position == 8


def test_fields_are_not_checked_when_the_columns_are_unknown() -> None:
    compile_filter("doc.anything.below == 1", None)


def test_any_path_below_a_json_column_is_allowed() -> None:
    compile_filter('doc.meta.region.code == "eu" && has(doc.meta.a.b) && doc.meta["x-y"] == 1')


def test_a_path_below_a_column_that_is_not_json_is_refused() -> None:
    problem = only("doc.total.cents > 1")
    assert problem.position == 10
    assert "'total' is numeric, not json/jsonb" in problem.message


def test_every_problem_is_reported_in_the_order_of_the_text() -> None:
    problems = refused("foo == 1 && doc.nope == 2 && doc.status.lowerAscii() == 'a'")
    assert [problem.position for problem in problems] == [0, 16, 40]


def test_a_filter_longer_than_the_maximum_is_refused() -> None:
    text = "doc.id == 1" + " || doc.id == 1" * (MAX_LENGTH // 15)
    assert len(text) > MAX_LENGTH
    problem = only(text)
    assert f"at most {MAX_LENGTH}" in problem.message
    assert f"{len(text)} characters" in problem.message


def test_a_filter_nested_deeper_than_the_maximum_is_refused() -> None:
    compile_filter("(" * (MAX_DEPTH - 1) + "doc.id == 1" + ")" * (MAX_DEPTH - 1))
    problem = only("(" * MAX_DEPTH + "doc.id == 1" + ")" * MAX_DEPTH)
    assert problem.position is None
    assert f"nests {MAX_DEPTH + 1} levels deep; at most {MAX_DEPTH}" in problem.message


def test_a_list_literal_larger_than_the_maximum_is_refused() -> None:
    allowed = ", ".join(str(n) for n in range(MAX_LIST_SIZE))
    compile_filter(f"doc.id in [{allowed}]")
    problem = only(f"doc.id in [{allowed}, 100]")
    assert problem.position == 10
    assert f"{MAX_LIST_SIZE + 1} elements; at most {MAX_LIST_SIZE}" in problem.message


@pytest.mark.parametrize("macro", ["all", "exists", "exists_one", "map", "filter"])
def test_comprehension_macros_are_refused(macro: str) -> None:
    problem = only(f"doc.meta.tags.{macro}(t, t == 'a')")
    assert problem.position == 14
    assert f"'{macro}' is a comprehension macro, not allowed" in problem.message


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("doc.status.lowerAscii() == 'a'", 11),
        ("type(doc.id) == type(1)", 0),
        ("dyn(doc.id) == 1", 0),
    ],
)
def test_a_function_outside_the_allow_list_is_refused(text: str, position: int) -> None:
    problem = refused(text)[0]
    assert problem.position == position
    assert "is not allowed; use one of contains, double" in problem.message


def test_a_method_called_as_a_function_says_how_to_call_it() -> None:
    problem = only("startsWith(doc.status, 'eu')")
    assert (problem.position, problem.message) == (
        0,
        "'startsWith' is a method: write value.startsWith(...)",
    )


def test_a_leading_dot_global_and_message_construction_are_refused() -> None:
    assert "leading '.'" in only(".doc.id == 1").message
    assert "message construction" in refused("Foo{a: 1} == doc.meta")[0].message


def test_matches_takes_a_literal_pattern_of_bounded_length_the_engine_accepts() -> None:
    compile_filter("doc.status.matches('^eu-[0-9]+$')")
    assert "one string literal" in only("doc.status.matches(doc.status)").message
    long = "a" * (MAX_REGEX_LENGTH + 1)
    assert f"at most {MAX_REGEX_LENGTH}" in only(f"doc.status.matches('{long}')").message
    problem = only("doc.status.matches('(unclosed')")
    assert problem.position == 19
    assert problem.message == "invalid regular expression: unclosed group"


def test_the_error_reads_as_a_sentence_with_each_position() -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter("foo == 1 && doc.nope == 2", FIELDS)
    assert str(caught.value).startswith("at 0: unknown variable 'foo'")
    assert "; at 16: unknown field 'nope'" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_identical_texts_share_one_compiled_filter() -> None:
    text = 'doc.status == "shared" && doc.id > 3'
    assert compile_filter(text, FIELDS) is compile_filter(text, None)
    assert compile_filter(text).program is not compile_filter(text + " ").program


# -- pinned conjuncts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pins"),
    [
        ("doc.tenant == 7", [Pin(("doc", "tenant"), (7,))]),
        ('"eu" == doc.meta.region', [Pin(("doc", "meta", "region"), ("eu",))]),
        ("doc.id in [1, 2.5, 'x', null, true]", [Pin(("doc", "id"), (1, 2.5, "x", None, True))]),
        (
            "doc.tenant == 7 && (doc.status == 'a' || doc.status in ['b']) && doc.total > 3",
            [Pin(("doc", "tenant"), (7,)), Pin(("doc", "status"), ("a", "b"))],
        ),
        (
            "(doc.id == 1 && op == 'delete') && key == 'k'",
            [
                Pin(("doc", "id"), (1,)),
                Pin(("op",), ("delete",)),
                Pin(("key",), ("k",)),
            ],
        ),
        ("doc.id == 1 || doc.tenant == 2", []),
        ("doc.id == 1 || doc.id > 5", []),
        ("!(doc.id == 1)", []),
        ("doc.id != 1 && doc.id == doc.tenant", []),
        ("doc.id == 1 ? true : false", []),
        ("doc.id in [1, doc.tenant]", []),
        ("doc.id == -3", [Pin(("doc", "id"), (-3,))]),
        ('doc["id"] == 4u', [Pin(("doc", "id"), (4,))]),
        ("doc.id in []", [Pin(("doc", "id"), ())]),
    ],
)
def test_pinned_conjuncts_are_the_top_level_equalities_and_ins(text: str, pins: list[Pin]) -> None:
    assert list(compile_filter(text).pins) == pins


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("doc.total > 500", [RangePin(("doc", "total"), ">", 500)]),
        ("doc.total >= -2.5", [RangePin(("doc", "total"), ">=", -2.5)]),
        ("500 < doc.total", [RangePin(("doc", "total"), ">", 500)]),  # read path-first
        ("1.5 >= doc.meta.x", [RangePin(("doc", "meta", "x"), "<=", 1.5)]),
        ("position < 10u", [RangePin(("position",), "<", 10)]),
        ("doc.total > 1e3", [RangePin(("doc", "total"), ">", 1000.0)]),
        (
            'doc.total > 5 && doc.status != "x" && doc.total <= 9',
            [RangePin(("doc", "total"), ">", 5), RangePin(("doc", "total"), "<=", 9)],
        ),
        ("doc.tenant == 7 && doc.total > 3", [RangePin(("doc", "total"), ">", 3)]),
        ("doc.total > 5 || doc.vip", []),  # not a top-level conjunct
        ("!(doc.total > 5)", []),
        ('doc.status > "m"', []),  # strings: not indexed
        ("doc.total > doc.limit", []),
        ('doc.at > timestamp("2026-01-01T00:00:00Z")', []),  # timestamps: not indexed
        ("doc.total + 1 > 5", []),
        ("doc.total > -(5)", []),
        ("doc.total != 5", []),
    ],
)
def test_range_conjuncts_are_the_top_level_comparisons_with_a_number(
    text: str, ranges: list[RangePin]
) -> None:
    assert list(compile_filter(text).ranges) == ranges


# -- evaluation ---------------------------------------------------------------------------

DOC: dict[str, Any] = {
    "id": 5,
    "tenant": "42",
    "total": "120.5000",
    "ratio": "NaN",
    "status": "eu-open",
    "meta": {"region": "eu", "tags": ["a", "b"], "nested": {"deep": 3}, "none": None},
    "created_at": "2026-03-01T12:00:00+02:00",
    "day": "2026-03-01",
    "seen_at": "2026-03-01T10:00:00",
    "active": True,
    "scores": ["1.5", "2"],
}
OLD = {**DOC, "status": "eu-draft", "total": "99.9"}


def holds(text: str, change: Activation | None = None) -> bool | None:
    return compile_filter(text, FIELDS).evaluate(
        change or activation(DOC, OLD, "upsert", "5", 9, FIELDS)
    )


@pytest.mark.parametrize(
    "text",
    [
        'doc.meta.region == "eu" && doc.meta.nested.deep == 3',
        "doc.meta.none == null && doc.meta.tags == ['a', 'b']",
        "has(doc.meta.region) && !has(doc.meta.absent)",
        "doc.id in [4, 5, 6] && 'a' in doc.meta.tags",
        "old.status != doc.status && old.total < doc.total",
        "doc.total > 100.5 && doc.total < 121 && doc.total == 120.5",
        "doc.tenant == 42 && doc.tenant > 41.5",
        "doc.created_at == timestamp('2026-03-01T10:00:00Z')",
        "doc.seen_at == timestamp('2026-03-01T10:00:00Z') && doc.day < doc.seen_at",
        "doc.created_at - doc.day == duration('10h')",
        "doc.status.startsWith('eu-') && doc.status.endsWith('open') && doc.status.contains('-o')",
        "doc.status.matches('^eu-[a-z]+$') && size(doc.meta.tags) == 2",
        "doc.scores[0] == 1.5 && doc.scores[1] == 2",
        "doc.active && op == 'upsert' && key == '5' && position == 9",
        "doc.ratio != doc.ratio",  # NaN stays a double: unequal to itself
        "int(doc.total) == 120 && string(doc.id) == '5' && double(doc.id) == 5.0",
    ],
)
def test_filters_compare_values_as_their_source_types(text: str) -> None:
    assert holds(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "doc.total < 100.5",
        "doc.meta.region == 'us'",
        "old.status == doc.status",
        "has(doc.meta.absent)",
    ],
)
def test_a_filter_that_does_not_hold_is_false(text: str) -> None:
    assert holds(text) is False


@pytest.mark.parametrize(
    "text",
    [
        "doc.meta.absent == 1",  # a missing field
        "doc.status > 3",  # a type mismatch
        "doc.id / 0 == 1",
        "doc.meta.tags[5] == 'a'",
        "doc.id",  # not a bool
        "doc.meta.region.code == 'x'",  # a field of a string
    ],
)
def test_an_evaluation_error_is_none_no_match(text: str) -> None:
    assert holds(text) is None


def test_old_is_null_when_the_source_did_not_send_it() -> None:
    change = activation(DOC, None, "upsert", "5", 9, FIELDS)
    assert holds("old == null", change) is True
    assert holds("old.status != doc.status", change) is None


def test_a_delete_without_a_document_has_a_null_doc() -> None:
    change = activation(None, OLD, "delete", "5", 9, FIELDS)
    assert holds("op == 'delete' && doc == null && old.status == 'eu-draft'", change) is True


def test_the_activation_types_known_fields_and_leaves_the_rest() -> None:
    values = activation({**DOC, "extra": "7"}, None, "upsert", "5", 9, FIELDS).values
    doc = values["doc"]
    assert doc["total"] == 120.5 and doc["tenant"] == 42 and doc["extra"] == "7"
    assert doc["created_at"] == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
    assert doc["day"] == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert doc["scores"] == [1.5, 2]
    assert values["old"] is None


def test_an_integral_numeric_stays_exact_and_an_unparsable_value_stays_as_held() -> None:
    fields = {"n": "numeric", "t": "timestamptz", "i": "int4"}
    doc = activation(
        {"n": "12345678901234567", "t": "infinity", "i": "x"}, None, "upsert", "k", 1, fields
    ).values["doc"]
    assert doc == {"n": 12345678901234567, "t": "infinity", "i": "x"}
    change = activation({"n": "12345678901234567"}, None, "upsert", "k", 1, fields)
    assert compile_filter("doc.n == 12345678901234567").evaluate(change) is True


def test_a_long_chain_of_conjuncts_within_the_length_is_analysed() -> None:
    text = " && ".join(["doc.id == 1"] * 130 + ["(doc.status == 'a' || doc.status == 'b')"])
    assert len(text) <= MAX_LENGTH
    assert compile_filter(text).pins[-1] == Pin(("doc", "status"), ("a", "b"))
    short = "&&".join(["true"] * 333)
    assert compile_filter(short).evaluate(activation(DOC, None, "upsert", "5", 9)) is True


# -- the fast parse ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=filters([*PATHS, 'doc["tenant"]'], LITERALS))
def test_the_unpositioned_parse_analyses_a_filter_exactly_as_the_positioned_one(
    text: str,
) -> None:
    tree, found = analysis._parse(text)
    assert tree is not None, text
    assert analysis.analyse(text) == analysis._analysis(tree, found)


@pytest.mark.parametrize(
    "text",
    [
        "doc.a == [1, 2" + ", 3" * 120 + "]",  # a node's position: the list literal's
        "Name{a: 1}",
        ".doc == 1",
        "doc.a = 1",
        "doc.a.exists(x, x > 1)",
    ],
)
def test_a_filter_with_problems_is_analysed_with_the_nodes_positions(text: str) -> None:
    tree, found = analysis._parse(text)
    expected = analysis._analysis(tree, found) if tree is not None else None
    result = analysis.analyse(text)
    assert result.problems
    if expected is not None:
        assert result == expected
    if text.startswith("doc.a == [1"):
        assert [p.position for p in result.problems] == [9]  # where "[" is


@pytest.mark.parametrize(
    "text",
    [
        "doc.tenant == 4711",
        "doc.tenant == -4711 && doc.total > 50",
        "-5 == doc.a || doc.a in [1, -2, 30000]",
        'doc.a == 5 && doc.bb == 123456 && doc.meta.x == 7 && doc["c9"] == 8',
        'doc.s == "12 and 13" && doc.n == 3',
        "doc.n == 3 // 4 in a comment",
        "doc.a == 007",
        "doc.a == 5u && doc.b == 6",
        "doc.a == 0x1F && doc.b == 6",
        "doc.a == 1234567890123456789 && doc.b == 6",
        "doc.a == 5. && doc.b == .5 && doc.c == 5e3 && doc.d == 6",
        "doc.a1 == 2 && doc.b == 1000000000000000000",
        "doc.a ==\n 5 &&\n doc.b == 6",
        "doc.tenant == 4711 && doc.total.nope(3)",
        "doc.a == 5 &&",
        "doc.a == 5 && '7' == doc.b",
        'doc.s == r"5" && doc.n == 5',
        'doc.region == "eu-7" && doc.total > 5',
        "doc.total > 5 && doc.b <= -7 && 12 < doc.c && doc.d >= 2.5",
        "-3 >= doc.total && doc.total < 1000000000000000000",
        'doc.region in ["eu", "us", ""] || doc.region == "x y"',
        '"a" == doc.b && doc.c.startsWith("d") && {"k": 1} == doc.m',
        'doc.a == b"x" && doc.b == "x"',
        'doc.a == "x" && doc["b"] == "y"',
        'doc.a == "x" && doc.b.matches("^y")',
        'doc.a == "x" && doc.tags[0] == "y"',
        'doc.a == "x\\"y"',
        'doc.a == """x""" && doc.b == "y"',
        'doc.a == "unclosed',
        'doc.a == "" && doc.b == ""',
        'doc.a == "x" // "a comment" 5',
    ],
)
def test_texts_of_one_shape_are_analysed_as_each_would_be_on_its_own(text: str) -> None:
    tree, found = analysis._parse(text)
    expected = (
        analysis._analysis(tree, found)
        if tree is not None
        else analysis.Analysis(tuple(found), (), ())
    )
    assert analysis.analyse(text) == expected
    assert analysis.analyse(text) == expected  # the shape cached


def test_a_shape_serves_its_texts_with_their_own_values_and_positions() -> None:
    first = analysis.analyse("doc.tenant == 7 && doc.total > 1")
    second = analysis.analyse("doc.tenant == 123456 && doc.total > 99")
    assert first.pins == (Pin(("doc", "tenant"), (7,)),)
    assert second.pins == (Pin(("doc", "tenant"), (123456,)),)
    assert sorted(r.position for r in second.reads) == [4, 28]
    third = analysis.analyse('doc.region == "eu" && doc.total > 1')
    fourth = analysis.analyse('doc.region == "north-america" && doc.total > 1')
    assert third.pins == (Pin(("doc", "region"), ("eu",)),)
    assert fourth.pins == (Pin(("doc", "region"), ("north-america",)),)
    assert sorted(r.position for r in fourth.reads) == [4, 37]
    assert first.ranges == (RangePin(("doc", "total"), ">", 1),)
    assert second.ranges == (RangePin(("doc", "total"), ">", 99),)
    assert analysis.analyse("-40 < doc.total").ranges == (RangePin(("doc", "total"), ">", -40),)


def test_a_literal_the_grammar_allows_and_the_engine_refuses_is_a_filter_error() -> None:
    with pytest.raises(FilterError, match="the CEL engine refuses it"):
        compile_filter("doc.a == 5.")
