"""Live subscriptions on Materialize-backed sync subscriptions, through the pgwire double:
the view's columns checked at registration (SHOW COLUMNS), numeric compared as a number,
and `old` from the diff envelope's retractions (null with ENVELOPE UPSERT).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opensearchpy import OpenSearch

from syncer.models import Subscription
from syncer.operations import live_subscriptions as ops
from syncer.operations import source_fields
from tests.support.factories import subscription
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.jetstream import Stream
from tests.support.materialize_double import MaterializeDouble
from tests.support.users import operator, token_client

VIEW = "orders_mv"
COLUMNS = (("order_id", "int8"), ("status", "text"), ("total", "numeric"))
URL = "/api/live-subscriptions"


@pytest.fixture
def mz() -> Iterator[MaterializeDouble]:
    source_fields.forget()
    with MaterializeDouble(VIEW, COLUMNS) as double:
        yield double
    source_fields.forget()


def post(client: Any, subscription_name: str, text: str) -> Any:
    body = {"gateway_id": "gw-1", "subscription": subscription_name, "filter": text}
    return client.post(URL, {**body, "delivery": "nats"}, content_type="application/json")


@pytest.mark.django_db
def test_a_filter_on_a_materialize_view_reads_only_the_view_s_columns(
    mz: MaterializeDouble,
) -> None:
    materialize = {"source_kind": "materialize", "source_dsn": mz.dsn, "key_columns": ["order_id"]}
    subscription("orders", relation=VIEW, **materialize)
    subscription("by_query", relation=f"SELECT * FROM {VIEW}", **materialize)
    client = token_client(operator("gateway"))

    text = "doc.totl > 100.5"
    refused = post(client, "orders", text)
    assert refused.status_code == 422, refused.content
    (error,) = refused.json()["errors"]
    assert "unknown field 'totl'" in error["message"]
    assert "order_id, status, total" in error["message"]
    assert error["position"] in (text.index("totl") - 1, text.index("totl"))
    below = post(client, "orders", 'doc.total.currency == "EUR"')
    assert below.status_code == 422
    assert "field 'total' is numeric, not json/jsonb" in below.json()["errors"][0]["message"]
    assert any(s == f'SHOW COLUMNS FROM "{VIEW}"' for s in mz.statements)

    fine = post(client, "orders", "doc.total > 100.5 && old.status != doc.status")
    assert fine.status_code == 201, fine.content
    # A query's columns are not asked (only planning it would tell): not checked.
    assert post(client, "by_query", "doc.whatever == 1").status_code == 201


def test_materialize_changes_carry_old_from_retractions_and_compare_numeric_as_numbers(
    mz: MaterializeDouble,
    make_subscription: Any,
    opensearch_url: str,
    search: OpenSearch,
    nats_stream: Stream,
) -> None:
    def materialize(name: str, **fields: Any) -> Subscription:
        sub: Subscription = make_subscription(
            name,
            VIEW,
            source_kind="materialize",
            source_dsn=mz.dsn,
            key_columns=["order_id"],
            batch_max_age_ms=200,
            **fields,
        )
        return sub

    mz.insert((1, "open", "99.00"), (2, "open", "10.00"))
    diffs, upserts = materialize("orders"), materialize("upserts", source_envelope="upsert")
    filters = {
        "changed": ("orders", "old.status != doc.status"),
        "big": ("orders", "doc.total > 100.5"),
        "gone": ("orders", 'op == "delete" && doc == null && old.status == "paid"'),
        "upsert-null": ("upserts", 'old == null && doc.status == "paid"'),
    }
    ops.register(
        operator(),
        [ops.Registration(gw, sub, text, "nats") for gw, (sub, text) in filters.items()],
    )

    def passed(timestamp: int) -> None:
        for name in ("orders", "upserts"):
            wait_for(
                lambda n=name: (status_of(n).checkpoint or 0) > timestamp,  # type: ignore[misc]
                what=f"{name}'s checkpoint past {timestamp}",
            )

    with WorkerThread([diffs, upserts]) as worker:
        for name in ("orders", "upserts"):
            wait_for(lambda n=name: len(index_docs(search, n)) == 2, what=f"{name}'s snapshot")  # type: ignore[misc]
        # One batch holds one change per document: the delete waits for the update's batch.
        mz.update((1, "open", "99.00"), (1, "paid", "120.50"))
        passed(mz.update((2, "open", "10.00"), (2, "open", "11.00")))
        passed(mz.delete((1, "paid", "120.50")))
        wait_for(lambda: asyncio.run(nats_stream.count()) >= 4, timeout=20, what="the events")
        matching = worker.runner.matching
        assert matching is not None
        assert matching.evaluation_errors >= 1, "old.status on the snapshot's null old"
        time.sleep(0.5)  # nothing else arrives
        messages = asyncio.run(nats_stream.messages())

    prefix = nats_stream.config.subject_prefix + "."
    got = [(m.subject.removeprefix(prefix).split(".")[0], orjson.loads(m.data)) for m in messages]
    assert sorted((gw, b["subscription"], b["key"], b["op"]) for gw, b in got) == [
        ("big", "orders", "1", "upsert"),
        ("changed", "orders", "1", "upsert"),
        ("gone", "orders", "1", "delete"),
        ("upsert-null", "upserts", "1", "upsert"),
    ]
    changed = next(b for gw, b in got if gw == "changed")
    assert changed["document"] == {"order_id": 1, "status": "paid", "total": "120.50"}
