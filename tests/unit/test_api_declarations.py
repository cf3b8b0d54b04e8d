"""The API's subscription bodies: merged like a partial file entry, errors by field path."""

from __future__ import annotations

import pytest

from console.api import declarations
from console.api.errors import FieldErrors
from syncer.errors import Problem
from syncer.models import Subscription


def postgres_subscription() -> Subscription:
    return Subscription(
        name="orders",
        source_kind="postgres",
        source_dsn="postgresql://sync:pw@db/shop",
        relation="public.orders",
        index_name="orders",
    )


def test_a_postgres_declaration_names_no_materialize_options_and_keeps_the_dsn() -> None:
    entry = declarations.declaration_of(postgres_subscription())
    assert entry["source"] == {
        "kind": "postgres",
        "dsn": "postgresql://sync:pw@db/shop",
        "relation": "public.orders",
        "key": [],
    }
    assert entry["index"]["name"] == "orders" and entry["batch"]["max_size"] == 1000
    assert declarations.to_spec(entry).values["relation"] == "public.orders"


def test_merge_changes_sections_key_by_key_and_null_resets() -> None:
    current = declarations.declaration_of(postgres_subscription())
    merged = declarations.merge(
        current, {"index": {"name": "v2"}, "batch": {"max_size": None}, "enabled": None}
    )
    assert merged["index"] == {"name": "v2", "settings": {}, "mappings": {}, "adopt": False}
    assert "max_size" not in merged["batch"] and merged["batch"]["max_age_ms"] == 5000
    assert "enabled" not in merged
    assert current["index"]["name"] == "orders"  # the current declaration is left alone


def test_merge_into_postgres_drops_materialize_options_unless_given() -> None:
    current = {"source": {"kind": "materialize", "cluster": "serving", "envelope": "upsert"}}
    assert declarations.merge(current, {"source": {"kind": "postgres"}})["source"] == {
        "kind": "postgres"
    }
    kept = declarations.merge(current, {"source": {"kind": "postgres", "cluster": "x"}})
    assert kept["source"] == {"kind": "postgres", "cluster": "x"}


def test_file_errors_become_field_errors_with_the_file_paths() -> None:
    entry = declarations.declaration_of(postgres_subscription())
    entry["source"]["relation"] = "SELECT 1"
    entry["index"]["name"] = "Orders"
    with pytest.raises(FieldErrors) as caught:
        declarations.to_spec(entry)
    assert [field for field, _ in caught.value.errors] == ["source.relation", "index.name"]


def test_a_body_the_file_format_cannot_hold_is_a_body_error() -> None:
    entry = declarations.declaration_of(postgres_subscription())
    entry["index"]["settings"] = {"a": float("inf")}
    with pytest.raises(FieldErrors) as caught:
        declarations.to_spec(entry)
    ((field, message),) = caught.value.errors
    assert field == "(body)" and message.startswith("invalid JSON: Infinity is not a JSON number")


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (
            Problem("subscription 'orders'", "source.relation", "not a table"),
            ("source.relation", "not a table"),
        ),
        (
            Problem("subscriptions[0]", "name", "'A B': enter a slug"),
            ("name", "'A B': enter a slug"),
        ),
        (Problem("subscription 'orders'", "index.settings.a", "inf"), ("index.settings.a", "inf")),
        (Problem("subscription 'orders'", "", "something is off"), ("(body)", "something is off")),
        (
            Problem("subscription 'orders'", "colour", "unknown key"),
            ("(body)", "colour: unknown key"),
        ),
        (Problem("request.json", "", "nested too deeply"), ("(body)", "nested too deeply")),
    ],
)
def test_a_file_problem_becomes_a_field_error(problem: Problem, expected: tuple[str, str]) -> None:
    assert declarations._field_error(problem) == expected
