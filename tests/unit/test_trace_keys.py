"""A trace's key: a document id read back into the key's values, and the SELECT it becomes."""

from __future__ import annotations

import pytest

from syncer.engine.changes import doc_id, key_parts
from syncer.errors import InvalidKey
from syncer.sources.lookup import parse_key
from syncer.sources.materialize.lookup import select_statement


@pytest.mark.parametrize(
    "key",
    [
        ("42",),
        ("a|b",),  # one column: its text, bars and all
        ("eu", "7"),
        ("a|b", "c"),
        ("a", "b|c"),
        ("back\\slash", "x"),
        ("", "empty first"),
        ("trailing\\", "|"),
        ("a", "b", "c"),
    ],
)
def test_a_document_id_reads_back_as_the_key_it_was_made_of(key: tuple[str, ...]) -> None:
    assert key_parts(doc_id(key), len(key)) == key


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("a", 2),  # too few values
        ("a|b|c", 2),  # too many
        ("a\\x|b", 2),  # \ escapes only \ and |
        ("a|b\\", 2),  # a \ at the end escapes nothing
    ],
)
def test_text_that_no_key_of_that_many_columns_makes_is_not_a_key(text: str, count: int) -> None:
    assert key_parts(text, count) is None


def test_a_key_that_does_not_fit_is_refused_naming_the_columns_and_the_format() -> None:
    with pytest.raises(InvalidKey) as refused:
        parse_key("eu", ("region", "id"), "public.orders")
    message = str(refused.value)
    assert "its key is (region, id)" in message
    assert "<region>|<id>" in message
    with pytest.raises(InvalidKey, match=r"give a document key: the value of id"):
        parse_key("", ("id",), "public.orders")


def test_materializes_select_quotes_names_and_wraps_a_query() -> None:
    view = select_statement('db.sales."Open Orders"', ("order_id", "Line"))
    query = select_statement("SELECT id, total FROM orders", ("id",))

    assert view.as_string(None) == (
        'SELECT * FROM "db"."sales"."Open Orders" WHERE "order_id" = %s AND "Line" = %s'
    )
    assert query.as_string(None) == (
        'SELECT * FROM (SELECT id, total FROM orders) AS "searchsync_trace" WHERE "id" = %s'
    )
