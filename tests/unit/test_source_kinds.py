"""The source-kind registry: each kind's attributes, positions, relation checks, choices."""

from __future__ import annotations

from typing import get_args

import pytest

from syncer.sources import kinds
from syncer.sources.kinds import KINDS, MATERIALIZE, POSTGRES, SourceValues, kind
from syncer.sources.materialize import catalog as materialize_catalog
from syncer.sources.materialize.source import MaterializeSource
from syncer.sources.postgres.replication import drop_replication
from syncer.sources.postgres.source import PostgresSource

VALUES = SourceValues(
    name="orders",
    dsn="env:SOURCE_DATABASE_URL",
    relation="public.orders",
    key_columns=("order_id",),
    slot_name="searchsync_orders_0123abcd",
    cluster="serving",
    envelope="upsert",
    wal_warn_bytes=123,
)


def test_the_kinds_are_postgres_materialize_and_push_by_name() -> None:
    assert list(KINDS) == ["postgres", "materialize", "push"]
    assert kind("postgres") is POSTGRES
    assert kind("materialize") is MATERIALIZE
    assert all(k.name == name for name, k in KINDS.items())
    with pytest.raises(KeyError):
        kind("mysql")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("postgres", POSTGRES), ("materialize", MATERIALIZE), ("mysql", None), (["postgres"], None)],
)
def test_named_is_none_for_what_names_no_kind(value: object, expected: kinds.Kind | None) -> None:
    assert kinds.named(value) is expected


def test_postgres_has_no_options_defaults_its_key_and_drops_its_slot() -> None:
    assert POSTGRES.label == "PostgreSQL"
    assert POSTGRES.options == ()
    assert POSTGRES.needs_key_columns is False
    assert POSTGRES.cleanup is drop_replication


def test_materialize_has_a_cluster_and_an_envelope_needs_keys_and_leaves_nothing() -> None:
    assert MATERIALIZE.label == "Materialize"
    assert MATERIALIZE.options == ("cluster", "envelope")
    assert MATERIALIZE.needs_key_columns is True
    assert MATERIALIZE.cleanup is None


def test_every_kinds_options_are_among_the_known_options() -> None:
    for k in KINDS.values():
        assert set(k.options) <= set(kinds.OPTIONS), k.name


def test_a_postgres_source_is_built_from_the_values_it_uses() -> None:
    source = POSTGRES.build(VALUES)
    assert isinstance(source, PostgresSource)
    config = source.config
    assert (config.name, config.dsn, config.relation) == ("orders", VALUES.dsn, "public.orders")
    assert config.key_columns == ("order_id",)
    assert config.slot_name == VALUES.slot_name
    assert config.wal_warn_bytes == 123


def test_a_materialize_source_is_built_with_its_cluster_and_envelope() -> None:
    source = MATERIALIZE.build(VALUES)
    assert isinstance(source, MaterializeSource)
    config = source.config
    assert (config.name, config.dsn, config.relation) == ("orders", VALUES.dsn, "public.orders")
    assert config.key_columns == ("order_id",)
    assert (config.cluster, config.envelope) == ("serving", "upsert")


@pytest.mark.parametrize(
    ("k", "position", "shown"),
    [
        (POSTGRES, 0x16B374D848, "16/B374D848"),
        (POSTGRES, None, "-"),
        (MATERIALIZE, 1795966748618, "1795966748618 (2026-11-29 15:39:08.618 UTC)"),
        (MATERIALIZE, None, "-"),
    ],
)
def test_each_kind_shows_positions_as_its_own_tools_do(
    k: kinds.Kind, position: int | None, shown: str
) -> None:
    assert k.format_position(position) == shown
    assert kinds.format_position(k.name, position) == shown


def test_a_name_no_kind_has_shows_its_position_as_an_lsn() -> None:
    assert kinds.format_position("mysql", 0x16B374D848) == "16/B374D848"


@pytest.mark.parametrize(
    ("k", "relation"),
    [
        (POSTGRES, "orders"),
        (POSTGRES, 'public."Orders"'),
        (MATERIALIZE, "shop.public.orders_view"),
        (MATERIALIZE, "SELECT id, total FROM orders WHERE total > 0"),
    ],
)
def test_each_kind_accepts_its_relations(k: kinds.Kind, relation: str) -> None:
    assert k.relation_problem(relation) is None


@pytest.mark.parametrize(
    ("k", "relation", "problem"),
    [
        (
            POSTGRES,
            "SELECT * FROM orders",
            "postgres sources need a table, not a query: write table or schema.table "
            "(a query works only with materialize sources)",
        ),
        (
            POSTGRES,
            "shop.public.orders",
            "'shop.public.orders' is not a table name; write table or schema.table "
            '(double-quote names with capitals or dots: "My Schema"."Orders")',
        ),
        (
            MATERIALIZE,
            "a.b.c.d",
            "'a.b.c.d' is neither a relation name nor a query; write view, schema.view or "
            'database.schema.view (double-quote names with capitals or dots: "My Schema".'
            '"Orders"), or a query starting with SELECT or WITH',
        ),
        (
            MATERIALIZE,
            "SELECT 1;",
            "remove the semicolon at character 9: the query runs as SUBSCRIBE (<query>), so "
            "it must be one statement without a semicolon",
        ),
    ],
)
def test_each_kind_says_why_a_relation_will_not_do(
    k: kinds.Kind, relation: str, problem: str
) -> None:
    assert k.relation_problem(relation) == problem


def test_the_models_source_kinds_are_the_registrys_and_only_those() -> None:
    from syncer.models import Subscription

    assert Subscription.SourceKind.choices == [(k.name, k.label) for k in KINDS.values()]


def test_every_kind_that_reads_a_database_has_a_live_check() -> None:
    from syncer.operations.preflight import SOURCE_CHECKS

    assert set(SOURCE_CHECKS) == {name for name, k in KINDS.items() if k.reads_database}


def test_the_apis_source_kinds_are_the_registrys() -> None:
    from console.api.schemas import SourceKind

    assert get_args(SourceKind) == tuple(KINDS)


def test_both_kinds_tell_their_columns_and_a_materialize_query_has_no_cheap_answer() -> None:
    assert POSTGRES.column_types is not None and MATERIALIZE.column_types is not None
    # Answered before any connection is tried: the DSN is never used.
    assert MATERIALIZE.column_types("postgresql://nowhere.invalid/x", "SELECT 1 AS a") is None
    assert MATERIALIZE.column_types("postgresql://nowhere.invalid/x", "not a name!") is None


@pytest.mark.parametrize(
    ("shown", "source_type"),
    [
        ("numeric(10,2)", "numeric"),
        ("timestamp(3) with time zone", "timestamp with time zone"),
        ("Double Precision", "double precision"),
        ("integer list", "integer list"),
        ("text[]", "text[]"),
    ],
)
def test_materialize_type_names_are_read_without_their_modifiers(
    shown: str, source_type: str
) -> None:
    assert materialize_catalog._type_name(shown) == source_type
