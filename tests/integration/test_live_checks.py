"""Live checks of a subscription against the real systems it names.

Real PostgreSQL, the Materialize pgwire double and a real osmem-server: each test
breaks one thing and reads the operator's message for that field.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opensearchpy import OpenSearch

from syncer.models import Subscription
from syncer.operations import preflight
from tests.support.materialize_double import MaterializeDouble
from tests.support.process import free_port

VIEW = "orders_search_source_mv"
COLUMNS = (("order_id", "int8"), ("customer", "text"), ("total", "numeric"))


@pytest.fixture
def orders(source_conn: psycopg.Connection, table_name: str) -> str:
    source_conn.execute(
        f"CREATE TABLE {table_name} (order_id int PRIMARY KEY, customer text, total numeric)"
    )
    return table_name


@pytest.fixture
def mz() -> Iterator[MaterializeDouble]:
    with MaterializeDouble(VIEW, COLUMNS) as double:
        yield double


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def postgres(source_dsn: str, relation: str, **fields: Any) -> Subscription:
    fields.setdefault("index_name", "orders")
    return Subscription(name="orders", source_dsn=source_dsn, relation=relation, **fields)


def materialize(mz: MaterializeDouble, **fields: Any) -> Subscription:
    fields.setdefault("relation", VIEW)
    fields.setdefault("key_columns", ["order_id"])
    fields.setdefault("index_name", "orders")
    fields.setdefault("source_dsn", mz.dsn)
    return Subscription(name="orders", source_kind="materialize", **fields)


def with_password(dsn: str, password: str) -> str:
    """`dsn` with a user and password put in (trust auth ignores the password)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.update(user=params.get("user") or "postgres", password=password)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def test_a_postgres_table_with_its_primary_key_passes(
    source_dsn: str, orders: str, opensearch_url: str
) -> None:
    assert preflight.check(postgres(source_dsn, f"public.{orders}")) == {}
    assert preflight.check(postgres(source_dsn, orders, key_columns=["order_id"])) == {}


def test_a_missing_table_is_a_relation_problem(source_dsn: str, opensearch_url: str) -> None:
    problems = preflight.check(postgres(source_dsn, "public.no_such_orders"))

    assert problems == {
        "relation": [
            "relation public.no_such_orders does not exist in database "
            f"{psycopg.conninfo.conninfo_to_dict(source_dsn)['dbname']}; create the table or "
            "fix the relation"
        ]
    }


def test_an_unknown_key_column_names_the_columns_there_are(
    source_dsn: str, orders: str, opensearch_url: str
) -> None:
    problems = preflight.check(postgres(source_dsn, orders, key_columns=["order_no"]))

    assert problems == {
        "key_columns": [
            f"key column(s) order_no not in public.{orders}; "
            "its columns are: order_id, customer, total"
        ]
    }


def test_a_table_without_primary_key_asks_for_key_columns(
    source_dsn: str, source_conn: psycopg.Connection, table_name: str, opensearch_url: str
) -> None:
    source_conn.execute(f"CREATE TABLE {table_name} (order_id int, total numeric)")

    problems = preflight.check(postgres(source_dsn, table_name))

    assert list(problems) == ["key_columns"]
    assert problems["key_columns"][0].startswith(f"public.{table_name} has no primary key; add one")


def test_a_view_is_refused_for_a_postgres_source(
    source_dsn: str, source_conn: psycopg.Connection, orders: str, opensearch_url: str
) -> None:
    source_conn.execute(f"CREATE VIEW {orders}_v AS SELECT * FROM {orders}")

    problems = preflight.check(postgres(source_dsn, f"{orders}_v", key_columns=["order_id"]))

    assert problems["relation"][0].startswith(f"public.{orders}_v is a view; PostgreSQL logical")


def test_a_refused_connection_says_which_host_and_port_without_the_password(
    opensearch_url: str,
) -> None:
    port = free_port()
    dsn = f"postgresql://orders:s3cret-pw@127.0.0.1:{port}/shop"

    problems = preflight.check(postgres(dsn, "public.orders"))

    assert problems == {
        "source_dsn": [
            f"could not connect to 127.0.0.1:{port}: connection refused; check host and port"
        ]
    }
    assert preflight.as_lines(problems) == [
        f"source DSN: could not connect to 127.0.0.1:{port}: connection refused; "
        "check host and port"
    ]


def test_an_unknown_host_and_an_unknown_database_are_named(
    source_dsn: str, opensearch_url: str
) -> None:
    unknown_host = preflight.check(postgres("postgresql://u:pw@no-such-host.invalid/db", "t"))
    missing_db = source_dsn.rsplit("/", 1)[0] + "/searchsync_no_such_db"
    unknown_db = preflight.check(postgres(with_password(missing_db, "s3cret-pw"), "t"))

    assert unknown_host["source_dsn"] == [
        "could not connect to no-such-host.invalid:5432: host no-such-host.invalid not found; "
        "check the host name"
    ]
    assert unknown_db["source_dsn"] == [
        "database searchsync_no_such_db does not exist on 127.0.0.1:5432; check the database name"
    ]
    assert "s3cret-pw" not in str(unknown_db)


def test_a_silent_server_is_given_up_on_within_the_timeout(
    silent_port: int, opensearch_url: str
) -> None:
    dsn = f"postgresql://orders:s3cret-pw@127.0.0.1:{silent_port}/shop"
    started = time.monotonic()

    problems = preflight.check(postgres(dsn, "public.orders"), timeout=1.0)

    assert time.monotonic() - started < 3
    assert problems == {
        "source_dsn": [
            "the source did not answer within 1 s; check that it is up, or tick “skip live "
            "checks” to save anyway"
        ]
    }


def test_an_env_dsn_is_resolved_and_an_unset_one_is_explained(
    source_dsn: str, orders: str, opensearch_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERS_SOURCE_DSN", source_dsn)
    monkeypatch.delenv("ORDERS_MISSING_SOURCE_DSN", raising=False)

    assert preflight.check(postgres("env:ORDERS_SOURCE_DSN", orders)) == {}
    problems = preflight.check(postgres("env:ORDERS_MISSING_SOURCE_DSN", orders))
    assert problems["source_dsn"][0].startswith(
        "the environment variable ORDERS_MISSING_SOURCE_DSN is not set in the console's environment"
    )


def test_a_materialize_view_is_subscribed_without_reading_rows_and_rolled_back(
    mz: MaterializeDouble, opensearch_url: str
) -> None:
    mz.insert((1, "ann", "10.50"))

    assert preflight.check(materialize(mz, source_cluster="serving")) == {}

    assert mz.rows_sent == 0
    statements = mz.statements
    assert 'SET CLUSTER = "serving"' in statements
    declare = next(s for s in statements if s.startswith("DECLARE"))
    assert f'SUBSCRIBE "{VIEW}" WITH (SNAPSHOT = false)' in declare
    assert statements[-1] == "ROLLBACK"


@pytest.mark.parametrize(
    ("fields", "field", "expected"),
    [
        pytest.param(
            {"relation": "orders_mv_typo"},
            "relation",
            "orders_mv_typo does not exist in Materialize (unknown catalog item "
            "'orders_mv_typo'); create it or fix the relation",
            id="unknown-view",
        ),
        pytest.param(
            {"key_columns": ["order_no"]},
            "key_columns",
            f"key column(s) order_no not in {VIEW}; its columns are: order_id, customer, total",
            id="unknown-key",
        ),
        pytest.param(
            {"source_cluster": "bulk"},
            "source_cluster",
            "cannot run SUBSCRIBE on cluster bulk: unknown cluster 'bulk'; check the cluster name",
            id="unknown-cluster",
        ),
    ],
)
def test_materialize_problems_land_on_their_field(
    mz: MaterializeDouble, opensearch_url: str, fields: dict[str, Any], field: str, expected: str
) -> None:
    problems = preflight.check(materialize(mz, **fields))

    assert problems == {field: [expected]}
    assert mz.statements[-1] == "ROLLBACK"


def test_a_materialize_query_is_checked_by_its_columns(
    mz: MaterializeDouble, opensearch_url: str
) -> None:
    query = f"SELECT order_id, total FROM {VIEW} WHERE total > 0"

    assert preflight.check(materialize(mz, relation=query)) == {}
    problems = preflight.check(materialize(mz, relation=query, key_columns=["id"]))
    assert problems["key_columns"][0].startswith("key column(s) id not in the query;")


def test_an_unreachable_opensearch_is_an_index_problem(
    source_dsn: str, orders: str, settings: Any
) -> None:
    settings.OPENSEARCH_URL = f"http://admin:os-s3cret@127.0.0.1:{free_port()}"

    problems = preflight.check(postgres(source_dsn, orders))

    assert list(problems) == ["index_name"]
    assert problems["index_name"][0].startswith("OpenSearch at http://admin:***@127.0.0.1:")
    assert problems["index_name"][0].endswith(
        "is unreachable, so the index cannot be checked; check OPENSEARCH_URL and that "
        "OpenSearch is up, or tick “skip live checks” to save anyway"
    )
    assert "os-s3cret" not in str(problems)


def test_an_existing_index_or_alias_passes(
    source_dsn: str, orders: str, search: OpenSearch
) -> None:
    search.indices.create(index="orders_v2")
    search.indices.put_alias(index="orders_v2", name="orders")

    assert preflight.check(postgres(source_dsn, orders, index_name="orders")) == {}
    assert preflight.check(postgres(source_dsn, orders, index_name="orders_v2")) == {}


def test_source_and_index_problems_are_reported_together(settings: Any) -> None:
    settings.OPENSEARCH_URL = f"http://127.0.0.1:{free_port()}"

    problems = preflight.check(postgres(f"postgresql://u:pw@127.0.0.1:{free_port()}/db", "t"))

    assert sorted(problems) == ["index_name", "source_dsn"]
