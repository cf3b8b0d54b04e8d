"""Parsing and checking subscriptions files, without a database."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncer.errors import DeclarationError
from syncer.operations.declarations import load, parse

ORDERS: dict[str, Any] = {
    "name": "orders",
    "source": {
        "kind": "postgres",
        "dsn": "env:SOURCE_DATABASE_URL",
        "relation": "public.orders",
        "key": ["order_id"],
    },
    "index": {
        "name": "orders",
        "settings": {"number_of_shards": 1},
        "mappings": {},
        "adopt": True,
    },
    "snapshot": "discard",
    "batch": {"max_size": 500, "max_age_ms": 2000},
    "backpressure": {"pause_at": 4000, "resume_at": 1000},
    "enabled": False,
}

MINIMAL_YAML = """\
subscriptions:
  - name: customers
    source:
      kind: postgres
      dsn: postgresql://app@db.internal/shop
      relation: customers
    index:
      name: customers
"""


def errors_of(text: str | bytes, filename: str = "subs.yaml") -> list[str]:
    with pytest.raises(DeclarationError) as caught:
        parse(text, filename=filename)
    return caught.value.errors


def one_subscription(**changes: Any) -> str:
    """A JSON file with ORDERS, `section__key=value` changing a nested key."""
    item = json.loads(json.dumps(ORDERS))
    for path, value in changes.items():
        target = item
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        target[last] = value
    return json.dumps({"subscriptions": [item]})


def test_yaml_file_becomes_specs_with_model_defaults() -> None:
    [spec] = parse(MINIMAL_YAML, filename="subs.yml")

    assert spec.name == "customers"
    assert spec.values == {
        "enabled": True,
        "source_kind": "postgres",
        "source_dsn": "postgresql://app@db.internal/shop",
        "relation": "customers",
        "key_columns": [],
        "source_cluster": "",
        "source_envelope": "diff",
        "index_name": "customers",
        "index_settings": {},
        "index_mappings": {},
        "adopt_index": False,
        "snapshot_mode": "index",
        "batch_max_size": 1000,
        "batch_max_age_ms": 5000,
        "backpressure_pause_at": 5000,
        "backpressure_resume_at": 2500,
    }


def test_every_declared_field_reaches_the_spec() -> None:
    [spec] = parse(one_subscription(), filename="subs.json")

    assert spec.values["enabled"] is False
    assert spec.values["key_columns"] == ["order_id"]
    assert spec.values["index_settings"] == {"number_of_shards": 1}
    assert spec.values["adopt_index"] is True
    assert spec.values["snapshot_mode"] == "discard"
    assert spec.values["batch_max_size"] == 500
    assert spec.values["batch_max_age_ms"] == 2000
    assert spec.values["backpressure_pause_at"] == 4000
    assert spec.values["backpressure_resume_at"] == 1000


def test_json_and_yaml_of_the_same_file_give_the_same_specs() -> None:
    document = {"subscriptions": [ORDERS]}

    from_json = parse(json.dumps(document), filename="subs.json")
    from_yaml = parse(yaml.safe_dump(document), filename="subs.yaml")

    assert from_json == from_yaml


@pytest.mark.parametrize("filename", ["subs.conf", "<stdin>", "no-extension"])
def test_format_is_sniffed_when_the_extension_says_nothing(filename: str) -> None:
    assert parse(one_subscription(), filename=filename)[0].name == "orders"
    assert parse(MINIMAL_YAML, filename=filename)[0].name == "customers"
    assert parse("{subscriptions: []}", filename=filename) == []


def test_utf8_bytes_with_a_byte_order_mark_are_read() -> None:
    assert parse(b"\xef\xbb\xbf" + MINIMAL_YAML.encode(), filename="s.yaml")[0].name == "customers"


def test_load_reads_a_file_and_names_it_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(MINIMAL_YAML)
    assert load(path)[0].name == "customers"

    with pytest.raises(DeclarationError) as caught:
        load(tmp_path / "absent.yaml")
    assert caught.value.errors == [
        f"{tmp_path / 'absent.yaml'}: cannot read the file (No such file or directory)"
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {"source__relation": "public..x"},
            "subscription 'orders': source.relation: 'public..x' is not a table name; write "
            "table or schema.table",
            id="bad-relation",
        ),
        pytest.param(
            {"index__name": "Orders"},
            "subscription 'orders': index.name: index name 'Orders' must be lowercase",
            id="uppercase-index",
        ),
        pytest.param(
            {"backpressure__resume_at": 4000},
            "subscription 'orders': backpressure.resume_at: resume_at (4000) must be below "
            "pause_at (4000)",
            id="resume-not-below-pause",
        ),
        pytest.param(
            {"backpressure__pause_at": 100, "backpressure__resume_at": 50},
            "subscription 'orders': backpressure.pause_at: pause_at (100) must be at least the "
            "batch size (500)",
            id="pause-below-batch",
        ),
        pytest.param(
            {"index__setings": {}},
            "subscription 'orders': index.setings: unknown key; index takes name, settings, "
            "mappings, adopt (did you mean 'settings'?)",
            id="unknown-key",
        ),
        pytest.param(
            {"batch__max_size": "1000"},
            "subscription 'orders': batch.max_size: expected a whole number, got a string",
            id="string-for-number",
        ),
        pytest.param(
            {"enabled": "yes"},
            "subscription 'orders': enabled: expected true or false, got a string",
            id="string-for-bool",
        ),
        pytest.param(
            {"batch__max_size": 0},
            "subscription 'orders': batch.max_size: must be at least 1",
            id="zero-batch",
        ),
        pytest.param(
            {"batch__max_age_ms": -5},
            "subscription 'orders': batch.max_age_ms: Ensure this value is greater than or "
            "equal to 0.",
            id="negative",
        ),
        pytest.param(
            {"source__key": "order_id"},
            "subscription 'orders': source.key: expected a list, got a string (a list of "
            "column names, e.g. [order_id])",
            id="key-not-a-list",
        ),
        pytest.param(
            {"source__key": ["id", "id"]},
            "subscription 'orders': source.key: key columns must not repeat a column",
            id="key-repeats",
        ),
        pytest.param(
            {"source__kind": "materialize", "source__key": []},
            "subscription 'orders': source.key: materialize sources need key columns: the "
            "columns that identify a document, e.g. [order_id]",
            id="materialize-without-key",
        ),
        pytest.param(
            {"source__kind": "mysql"},
            "subscription 'orders': source.kind: 'mysql' is not one of: postgres, materialize, "
            "push",
            id="unknown-kind",
        ),
        pytest.param(
            {"source__cluster": "serving"},
            "subscription 'orders': source.cluster: only materialize sources have a cluster; "
            "remove it",
            id="cluster-for-postgres",
        ),
        pytest.param(
            {"source__dsn": "env:1BAD"},
            "subscription 'orders': source.dsn: '1BAD' is not an environment variable name",
            id="env-dsn-bad-name",
        ),
        pytest.param(
            {"source__dsn": ""},
            "subscription 'orders': source.dsn: postgres sources need a DSN",
            id="empty-dsn",
        ),
        pytest.param(
            {"snapshot": "full"},
            "subscription 'orders': snapshot: 'full' is not one of: index, discard",
            id="unknown-snapshot-mode",
        ),
        pytest.param(
            {"index__mappings": []},
            "subscription 'orders': index.mappings: expected a mapping, got a list",
            id="mappings-not-an-object",
        ),
        pytest.param(
            {"source": "public.orders"},
            "subscription 'orders': source: expected a mapping, got a string",
            id="section-not-a-mapping",
        ),
    ],
)
def test_an_error_names_the_subscription_and_the_field(
    changes: dict[str, Any], expected: str
) -> None:
    [error] = errors_of(one_subscription(**changes), filename="subs.json")

    assert error.startswith(expected)


def test_a_missing_required_field_says_what_to_add() -> None:
    item = {"name": "orders", "source": {"kind": "postgres", "dsn": "env:SOURCE_DATABASE_URL"}}

    errors = errors_of(json.dumps({"subscriptions": [item]}), filename="s.json")

    assert errors == [
        "subscription 'orders': source.relation: required; add it (e.g. public.orders)",
        "subscription 'orders': index: required; add it (a mapping with at least a name)",
    ]


def test_every_error_of_every_subscription_is_reported() -> None:
    text = """
subscriptions:
  - name: orders
    source: {kind: postgres, dsn: "env:1BAD", relation: public..x}
    index: {name: Orders}
    backpressure: {pause_at: 5000, resume_at: 6000}
  - name: customers
    source: {kind: materialize, dsn: env:ORDERS_SOURCE_URL, relation: customers, colour: blue}
    index: {name: customers}
"""
    errors = errors_of(text)

    assert [e.split(":")[0] + ":" + e.split(":")[1] for e in errors] == [
        "subscription 'orders': source.dsn",
        "subscription 'orders': source.relation",
        "subscription 'orders': index.name",
        "subscription 'orders': backpressure.resume_at",
        "subscription 'customers': source.colour",
        "subscription 'customers': source.key",
    ]


def test_field_checks_still_run_when_another_field_has_the_wrong_type() -> None:
    errors = errors_of(one_subscription(batch__max_size="big", index__name="Orders"), "s.json")

    assert "subscription 'orders': batch.max_size: expected a whole number, got a string" in errors
    assert any(
        e.startswith("subscription 'orders': index.name: index name 'Orders'") for e in errors
    )


def test_duplicate_names_are_an_error() -> None:
    document = {"subscriptions": [ORDERS, {**ORDERS, "enabled": True}, ORDERS]}

    errors = errors_of(json.dumps(document), filename="s.json")

    assert errors == [
        "subscription 'orders': name: declared 3 times (subscriptions[0], subscriptions[1], "
        "subscriptions[2]); give each subscription a unique name"
    ]


def test_a_subscription_without_a_valid_name_is_named_by_position() -> None:
    document = {
        "subscriptions": [
            ORDERS,
            {**ORDERS, "name": "Bad Name!"},
            {k: v for k, v in ORDERS.items() if k != "name"},
            "orders",
        ]
    }

    errors = errors_of(json.dumps(document), filename="s.json")

    assert errors == [
        "subscriptions[1]: name: 'Bad Name!': Enter a valid “slug” consisting of letters, "
        "numbers, underscores or hyphens.",
        "subscriptions[2]: name: required; add it (a slug, e.g. orders)",
        "subscriptions[3]: expected a mapping with name, source and index, got a string",
    ]


def test_malformed_yaml_is_reported_with_its_line_and_column() -> None:
    text = "subscriptions:\n  - name: orders\n    source: {kind: postgres\n    index: x\n"

    [error] = errors_of(text, filename="subs.yaml")

    assert error.startswith("subs.yaml, line 4, column 10: ")


def test_malformed_json_is_reported_with_its_line_and_column() -> None:
    [error] = errors_of('{"subscriptions": [\n  {"name": "orders",}\n]}', filename="s.json")

    assert error == (
        "s.json, line 2, column 21: invalid JSON: Expecting property name enclosed in double quotes"
    )


SHAPE = "the file must be a mapping with a 'subscriptions' list"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [f"subs.yaml: the file is empty; {SHAPE}"]),
        ("- name: orders\n", [f"subs.yaml: {SHAPE}, not a list"]),
        (
            "subscriptions:\n",
            [
                "subs.yaml: subscriptions: expected a list, got null (write `subscriptions: []` "
                "to declare none)"
            ],
        ),
        (
            "subscription: []\n",
            [
                f"subs.yaml: unknown top-level key 'subscription'; {SHAPE}",
                f"subs.yaml: no 'subscriptions' key; {SHAPE}",
            ],
        ),
        (
            "subscriptions: []\nsubscriptions: []\n",
            ["subs.yaml, line 2, column 1: duplicate key 'subscriptions'"],
        ),
        (
            "subscriptions: [\n",
            [
                "subs.yaml, line 2, column 1: while parsing a flow node, expected the node "
                "content, but found '<stream end>'"
            ],
        ),
        (
            "subscriptions: []\n---\nb: 2\n",
            [
                "subs.yaml, line 2, column 1: expected a single document in the stream, but "
                "found another document"
            ],
        ),
    ],
)
def test_a_file_of_the_wrong_shape_is_rejected(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


def test_duplicate_keys_in_a_subscription_are_an_error() -> None:
    text = MINIMAL_YAML + "    enabled: true\n    enabled: false\n"

    assert errors_of(text) == ["subs.yaml, line 10, column 5: duplicate key 'enabled'"]


def test_yaml_anchors_and_merge_keys_are_allowed() -> None:
    text = """
defaults: &source {kind: postgres, dsn: env:ORDERS_SOURCE_URL}
"""
    assert errors_of(text)[0].startswith("subs.yaml: unknown top-level key 'defaults'")
    text = """
subscriptions:
  - name: a
    source: &src {kind: postgres, dsn: env:ORDERS_SOURCE_URL, relation: a}
    index: {name: a}
  - name: b
    source: {<<: *src, relation: b}
    index: {name: b}
"""
    a, b = parse(text, filename="s.yaml")
    assert (a.values["relation"], b.values["relation"]) == ("a", "b")
    assert b.values["source_dsn"] == "env:ORDERS_SOURCE_URL"


def test_an_alias_bomb_is_refused_before_it_is_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]

    [error] = errors_of("\n".join(lines) + "\n")

    assert error.startswith("subs.yaml: more than 200000 values")


def test_a_self_referencing_yaml_structure_is_refused() -> None:
    [error] = errors_of("subscriptions: &s [*s]\n")

    assert "subs.yaml" in error


def test_very_deep_nesting_is_refused() -> None:
    assert errors_of("[" * 50_000 + "]" * 50_000, filename="s.json") == [
        "s.json: nested too deeply"
    ]
    settings: Any = {}
    for _ in range(100):
        settings = {"a": settings}
    errors = errors_of(one_subscription(index__settings=settings), filename="s.json")
    assert errors == ["s.json: nested more than 64 levels deep"]


def test_a_very_long_name_is_shortened_in_the_message() -> None:
    [error] = errors_of(one_subscription(name="x" * 100_000), filename="s.json")

    assert error.startswith(
        "subscriptions[0]: name: '" + "x" * 60 + "…': Ensure this value has at most 63"
    )
    assert len(error) < 300


def test_a_very_long_relation_is_shortened_in_the_message() -> None:
    errors = errors_of(one_subscription(source__relation="a." * 5000), filename="s.json")

    assert errors[0].startswith("subscription 'orders': source.relation: ")
    assert all(len(e) < 400 for e in errors)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "ord\x00ers"}, "subscriptions[0]: name: contains a NUL character"),
        (
            {"source__relation": "orders\x00"},
            "subscription 'orders': source.relation: contains a NUL",
        ),
        ({"source__dsn": "env:A\x00"}, "subscription 'orders': source.dsn: contains a NUL"),
        ({"index__name": "ord\x00"}, "subscription 'orders': index.name: contains a NUL"),
        ({"source__key": ["id\x00"]}, "subscription 'orders': source.key[0]: contains a NUL"),
        (
            {"index__settings": {"a": ["\x00"]}},
            "subscription 'orders': index.settings.a[0]: contains a NUL",
        ),
        (
            {"index__mappings": {"\x00": 1}},
            "subscription 'orders': index.mappings: key '\\x00' contains a NUL",
        ),
        (
            {"index__name": "ord\ud800"},
            "subscription 'orders': index.name: contains an unpaired surrogate",
        ),
    ],
)
def test_text_postgresql_cannot_store_is_refused(changes: dict[str, Any], expected: str) -> None:
    errors = errors_of(one_subscription(**changes), filename="s.json")

    assert errors[0].startswith(expected)
    assert not any("\x00" in e for e in errors)


def test_unicode_names_are_refused_and_shown_escaped_when_invisible() -> None:
    errors = errors_of(one_subscription(name="commandes-é"), filename="s.json")
    assert errors == [
        "subscriptions[0]: name: 'commandes-é': Enter a valid “slug” consisting of letters, "
        "numbers, underscores or hyphens."
    ]
    errors = errors_of(one_subscription(source__relation="orders\u202e"), filename="s.json")
    assert errors[0].startswith("subscription 'orders': source.relation: 'orders\\u202e' is not a")


def test_unicode_in_quoted_relations_and_index_settings_is_kept() -> None:
    changes = {"source__relation": '"Commandes"."Été"', "index__settings": {"note": "café ☕"}}
    [spec] = parse(one_subscription(**changes), filename="s.json")

    assert spec.values["relation"] == '"Commandes"."Été"'
    assert spec.values["index_settings"] == {"note": "café ☕"}


def test_values_jsonb_cannot_hold_are_refused() -> None:
    text = """
subscriptions:
  - name: orders
    source: {kind: postgres, dsn: env:ORDERS_SOURCE_URL, relation: orders}
    index:
      name: orders
      settings: {refresh: .nan, created: 2024-01-01, nested: {1: one}}
"""
    errors = errors_of(text)

    assert sorted(errors) == [
        "subscription 'orders': index.settings.created: a date is not a JSON value; quote it as "
        "a string",
        "subscription 'orders': index.settings.nested: key 1 is not a string; quote it",
        "subscription 'orders': index.settings.refresh: nan is not a JSON number; use a finite "
        "number",
    ]


def test_nan_in_a_json_file_is_refused() -> None:
    text = one_subscription().replace('"number_of_shards": 1', '"number_of_shards": NaN')

    assert errors_of(text, filename="s.json") == [
        "s.json: invalid JSON: NaN is not a JSON number; use a finite number"
    ]


def test_bytes_that_are_not_utf8_are_refused() -> None:
    assert errors_of(b"subscriptions: [\xff]\n") == [
        "subs.yaml: not UTF-8 text (bad byte at offset 16); save it as UTF-8"
    ]


def test_a_dsn_in_the_wrong_field_is_reported_without_its_password() -> None:
    errors = errors_of(one_subscription(source__relation="postgresql://u:s3cret@h/db"), "s.json")

    assert errors == [
        "subscription 'orders': source.relation: 'postgresql://u:***@h/db' is not a table name; "
        'write table or schema.table (double-quote names with capitals or dots: "My Schema"."'
        'Orders")'
    ]


def test_an_invalid_dsn_is_reported_without_its_password() -> None:
    errors = errors_of(one_subscription(source__dsn="postgresql://u:s3cret@h/db?bogus=1"), "s.json")

    assert errors[0].startswith("subscription 'orders': source.dsn: not a valid PostgreSQL DSN")
    assert not any("s3cret" in e for e in errors)


def test_a_thousand_errors_are_cut_to_a_readable_list() -> None:
    document = {"subscriptions": [{**ORDERS, "name": f"s{i}", "snapshot": "x"} for i in range(150)]}

    errors = errors_of(json.dumps(document), filename="s.json")

    assert len(errors) == 101
    assert errors[-1] == "... and 50 more errors"


MATERIALIZE_YAML = """\
subscriptions:
  - name: orders-search
    source:
      kind: materialize
      dsn: env:MATERIALIZE_URL
      relation: |
        WITH open AS (SELECT * FROM orders WHERE status <> 'closed; really')
        SELECT order_id, "Customer Name", count(*) AS lines  -- per order
        FROM open GROUP BY order_id, "Customer Name"
      key: [order_id]
      cluster: serving
      envelope: upsert
    index: {name: orders}
"""


def materialize_source(**changes: Any) -> str:
    """ORDERS as a materialize subscription, with `changes` as in `one_subscription`."""
    changes = {"source__kind": "materialize", "source__relation": "orders_mv", **changes}
    return one_subscription(**changes)


def test_a_materialize_source_with_a_query_cluster_and_envelope_becomes_a_spec() -> None:
    [spec] = parse(MATERIALIZE_YAML, filename="subs.yaml")

    assert spec.values["source_kind"] == "materialize"
    assert spec.values["relation"].startswith("WITH open AS (SELECT * FROM orders")
    assert spec.values["key_columns"] == ["order_id"]
    assert spec.values["source_cluster"] == "serving"
    assert spec.values["source_envelope"] == "upsert"


def test_a_materialize_source_defaults_to_the_diff_envelope_and_no_cluster() -> None:
    [spec] = parse(materialize_source(), filename="s.json")

    assert (spec.values["source_cluster"], spec.values["source_envelope"]) == ("", "diff")


@pytest.mark.parametrize(
    "relation",
    [
        "orders_search_source_mv",
        "public.orders_search_source_mv",
        "materialize.public.orders_search_source_mv",
        '"Shop"."Public"."Orders.v2"',
        "select order_id from orders",
        "  SELECT (a + (b * 2)) AS total FROM t WHERE note = 'a ; b ( c'",
        'SELECT ";" FROM t /* ; ( */',
        "SELECT E'it\\'s; fine', $$; ($$, $tag$ ; $tag$ FROM t",
        "SELECT a\n-- a comment; with ( inside\nFROM t\n",
        "WITH x AS (SELECT 1 AS id) SELECT id FROM x",
    ],
)
def test_materialize_takes_a_name_of_up_to_three_parts_or_a_query(relation: str) -> None:
    [spec] = parse(materialize_source(source__relation=relation), filename="s.json")

    assert spec.values["relation"] == relation


@pytest.mark.parametrize(
    ("relation", "expected"),
    [
        pytest.param(
            "SELECT * FROM orders;",
            "remove the semicolon at character 21: the query runs as SUBSCRIBE (<query>), so it "
            "must be one statement without a semicolon",
            id="trailing-semicolon",
        ),
        pytest.param(
            "SELECT 1; DROP TABLE orders",
            "remove the semicolon at character 9:",
            id="two-statements",
        ),
        pytest.param(
            "SELECT count(* FROM orders",
            "the opening parenthesis at character 13 is never closed; add the missing )",
            id="unclosed-parenthesis",
        ),
        pytest.param(
            "SELECT a) FROM orders",
            "the closing parenthesis at character 9 has no opening one; remove it or add the "
            "missing (",
            id="unopened-parenthesis",
        ),
        pytest.param(
            "SELECT 'open FROM orders",
            "the single quote at character 8 is never closed; close it",
            id="unclosed-string",
        ),
        pytest.param(
            'SELECT "open FROM orders',
            "the double quote at character 8 is never closed; close it",
            id="unclosed-quoted-name",
        ),
        pytest.param(
            "SELECT a FROM orders /* note",
            "the comment /* at character 22 is never closed; add */",
            id="unclosed-comment",
        ),
        pytest.param(
            "SELECT a FROM orders -- all of them",
            "the -- comment at character 22 runs to the end of the query and would hide the "
            "parenthesis that closes SUBSCRIBE (...)",
            id="comment-at-the-end",
        ),
        pytest.param(
            "public..orders",
            "'public..orders' is neither a relation name nor a query; write view, schema.view or "
            "database.schema.view",
            id="bad-name",
        ),
        pytest.param(
            "a.b.c.d",
            "'a.b.c.d' is neither a relation name nor a query",
            id="four-parts",
        ),
    ],
)
def test_a_materialize_relation_that_cannot_go_in_subscribe_is_refused(
    relation: str, expected: str
) -> None:
    [error] = errors_of(materialize_source(source__relation=relation), filename="s.json")

    assert error.startswith(f"subscription 'orders': source.relation: {expected}")


def test_a_materialize_source_without_key_columns_is_refused() -> None:
    text = MATERIALIZE_YAML.replace("      key: [order_id]\n", "")

    assert errors_of(text) == [
        "subscription 'orders-search': source.key: materialize sources need key columns: the "
        "columns that identify a document, e.g. [order_id] (a view has no primary key to "
        "default to)"
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {"source__relation": "SELECT * FROM orders"},
            "subscription 'orders': source.relation: postgres sources need a table, not a "
            "query: write table or schema.table (a query works only with materialize sources)",
            id="query",
        ),
        pytest.param(
            {"source__relation": "shop.public.orders"},
            "subscription 'orders': source.relation: 'shop.public.orders' is not a table name; "
            "write table or schema.table",
            id="three-part-name",
        ),
        pytest.param(
            {"source__envelope": "upsert"},
            "subscription 'orders': source.envelope: only materialize sources have an envelope; "
            "remove it",
            id="envelope",
        ),
        pytest.param(
            {"source__envelope": "diff"},
            "subscription 'orders': source.envelope: only materialize sources have an envelope; "
            "remove it",
            id="default-envelope",
        ),
        pytest.param(
            {"source__cluster": ""},
            "subscription 'orders': source.cluster: only materialize sources have a cluster; "
            "remove it",
            id="empty-cluster",
        ),
    ],
)
def test_a_postgres_source_takes_only_a_table_and_no_materialize_options(
    changes: dict[str, Any], expected: str
) -> None:
    [error] = errors_of(one_subscription(**changes), filename="s.json")

    assert error.startswith(expected)


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ("serving", "serving"),
        ("serving_2$", "serving_2$"),
        ('"Serving Cluster"', '"Serving Cluster"'),
        ("2nd", None),
        ("serving cluster", None),
        ("serving;", None),
        ('""', None),
        ("a.b", None),
    ],
)
def test_a_cluster_is_an_identifier_or_a_quoted_name(cluster: str, expected: str | None) -> None:
    text = materialize_source(source__cluster=cluster)
    if expected is not None:
        assert parse(text, filename="s.json")[0].values["source_cluster"] == expected
        return

    assert errors_of(text, filename="s.json") == [
        f"subscription 'orders': source.cluster: '{cluster}' is not a cluster name; use "
        "letters, digits, _ and $, not starting with a digit (e.g. serving), or double-quote it "
        '("Serving 2")'
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"source__envelope": "debezium"},
            "subscription 'orders': source.envelope: 'debezium' is not one of: diff, upsert",
        ),
        (
            {"source__envelope": ["upsert"]},
            "subscription 'orders': source.envelope: expected a string, got a list (diff or "
            "upsert)",
        ),
        (
            {"source__cluster": 7},
            "subscription 'orders': source.cluster: expected a string, got a number (a cluster "
            "name, e.g. serving)",
        ),
    ],
)
def test_a_wrong_envelope_or_cluster_says_what_is_allowed(
    changes: dict[str, Any], expected: str
) -> None:
    assert errors_of(materialize_source(**changes), filename="s.json") == [expected]


def test_source_checks_still_run_when_another_field_has_the_wrong_type() -> None:
    text = materialize_source(source__relation="SELECT 1;", source__key=[], batch__max_size="x")

    errors = errors_of(text, filename="s.json")

    assert [e.split(": ")[1] for e in errors] == ["batch.max_size", "source.relation", "source.key"]


def test_an_unknown_kind_is_the_only_error_about_the_source() -> None:
    text = one_subscription(source__kind="mysql", source__cluster="serving")

    assert errors_of(text, filename="s.json") == [
        "subscription 'orders': source.kind: 'mysql' is not one of: postgres, materialize, push"
    ]


def test_the_module_docstring_example_is_a_valid_file() -> None:
    from syncer.operations import declarations

    doc = declarations.__doc__ or ""
    example = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]

    specs = parse(textwrap.dedent(example), filename="example.yaml")

    assert [(s.name, s.values["source_kind"]) for s in specs] == [
        ("orders", "postgres"),
        ("orders-search", "materialize"),
        ("books", "push"),
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"source__relation": "orders\n"}, "source.relation"),
        ({"source__kind": "materialize", "source__relation": "orders_mv\n"}, "source.relation"),
        ({"source__kind": "materialize", "source__cluster": "serving\n"}, "source.cluster"),
    ],
)
def test_a_name_with_a_trailing_line_break_is_refused(changes: dict[str, Any], field: str) -> None:
    [error] = errors_of(one_subscription(**changes), filename="s.json")

    assert error.startswith(f"subscription 'orders': {field}: '")
    assert "\\n' is n" in error
