"""Indexes searchsync did not create are written into, never swept or deleted unless adopted.

Real worker (the Runner `runsyncer` runs), real osmem-server, the Materialize double as
the source (its first snapshot sweeps, and its resyncs copy again), real PostgreSQL for
the console.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from opensearchpy import OpenSearch

from syncer.errors import ForeignIndex
from syncer.models import Subscription
from syncer.operations import control
from syncer.sinks.opensearch.aliases import point_alias
from syncer.sinks.opensearch.connection import Connection
from syncer.sinks.opensearch.sink import OpenSearchSink, OpenSearchSinkConfig
from syncer.wiring import sink_config
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.materialize_double import MaterializeDouble

pytestmark = pytest.mark.usefixtures("fast_retries")

COLUMNS = (("order_id", "int8"), ("total", "numeric"))
BILLING_META = {"owner": "billing-app"}
OUR_META = {"managed_by": "searchsync", "subscription": "orders"}


@pytest.fixture
def foreign_index(search: OpenSearch) -> str:
    """`orders`, made by another application, holding one of its documents."""
    search.indices.create(index="orders", body={"mappings": {"_meta": BILLING_META}})
    search.index(index="orders", id="billing-1", body={"invoice": 1}, refresh=True)
    return "orders"


@pytest.fixture
def mz() -> Any:
    with MaterializeDouble("orders_mv", COLUMNS) as double:
        double.insert((1, "1.00"), (2, "2.00"))
        yield double


def mz_subscription(make_subscription: Any, mz: Any, **fields: Any) -> Subscription:
    sub: Subscription = make_subscription(
        "orders",
        "orders_mv",
        source_kind="materialize",
        source_dsn=mz.dsn,
        key_columns=["order_id"],
        batch_max_age_ms=200,
        **fields,
    )
    return sub


def declares(mz: Any) -> int:
    return sum(1 for s in mz.statements if s.startswith("DECLARE"))


def meta_of(search: OpenSearch, index: str) -> dict[str, Any]:
    mappings = search.indices.get_mapping(index=index)[index]["mappings"]
    meta: dict[str, Any] = mappings.get("_meta", {})
    return meta


def in_error() -> Subscription | None:
    row = status_of("orders")
    return row if row.status == Subscription.Status.ERROR else None


def adopt(sub: Subscription, adopt: bool = True) -> None:
    sub.refresh_from_db()
    sub.adopt_index = adopt
    sub.save(update_fields=["adopt_index", "updated_at"])  # a config change: restarts it


def test_an_index_searchsync_creates_carries_its_mark_beside_the_subscriptions_mappings(
    opensearch_url: str, search: OpenSearch
) -> None:
    config = OpenSearchSinkConfig(
        name="orders",
        index="orders",
        connection=Connection(opensearch_url),
        mappings={"_meta": {"team": "search"}, "properties": {"total": {"type": "double"}}},
    )

    async def open_and_close() -> None:
        sink = OpenSearchSink(config)
        await sink.open()
        await sink.close()

    asyncio.run(open_and_close())

    mappings = search.indices.get_mapping(index="orders")["orders"]["mappings"]
    assert mappings["_meta"] == {"team": "search", **OUR_META}
    assert mappings["properties"]["total"] == {"type": "double"}


def test_a_first_snapshot_into_another_applications_index_is_not_swept_until_adopted(
    make_subscription: Any, search: OpenSearch, foreign_index: str, mz: Any
) -> None:
    sub = mz_subscription(make_subscription, mz)
    with WorkerThread(None):
        row = wait_for(in_error, what="the sweep refused")
        assert "searchsync did not create index orders" in row.status_message
        assert "index.adopt: true" in row.status_message
        assert "not retried" in row.status_message
        assert row.last_error.startswith("refusing to remove the documents the copy did not")
        # Written, as into any existing index; nothing removed.
        assert set(index_docs(search, "orders")) == {"billing-1", "1", "2"}
        assert declares(mz) == 1
        time.sleep(1.0)  # retries come after 0.2 s here: none may follow
        assert declares(mz) == 1 and in_error() is not None

        adopt(sub)
        wait_for(lambda: status_of("orders").snapshot_completed_at, what="adopted, swept")
        assert set(index_docs(search, "orders")) == {"1", "2"}
        assert meta_of(search, "orders") == {**BILLING_META, **OUR_META}


def test_an_in_place_resync_of_another_applications_index_is_refused_before_copying(
    make_subscription: Any, search: OpenSearch, foreign_index: str, mz: Any
) -> None:
    sub = mz_subscription(make_subscription, mz, snapshot_mode="discard")
    with WorkerThread(None):
        wait_for(lambda: status_of("orders").status == "caught_up", what="streaming")
        mz.insert((3, "3.00"))
        wait_for(lambda: "3" in index_docs(search, "orders"), what="a change written")
        copies = declares(mz)

        control.resync(sub)
        row = wait_for(in_error, what="the resync refused")
        assert row.status_message.startswith("refusing to resync orders in place: searchsync")
        assert "index.adopt: true" in row.status_message
        assert "Nothing was copied; the resync request stays" in row.status_message
        assert declares(mz) == copies
        assert set(index_docs(search, "orders")) == {"billing-1", "3"}
        assert status_of("orders").resync_requested_at is not None

        adopt(sub)
        wait_for(lambda: status_of("orders").resync_requested_at is None, what="resync done")
        assert set(index_docs(search, "orders")) == {"1", "2", "3"}
        assert meta_of(search, "orders") == {**BILLING_META, **OUR_META}


def test_a_new_index_resync_never_deletes_another_applications_index_unless_adopted(
    make_subscription: Any, search: OpenSearch, foreign_index: str, mz: Any
) -> None:
    sub = mz_subscription(make_subscription, mz, snapshot_mode="discard")
    with WorkerThread(None):
        wait_for(lambda: status_of("orders").status == "caught_up", what="streaming")

        control.resync(sub, Subscription.ResyncMode.NEW_INDEX)
        row = wait_for(in_error, what="the resync refused")
        assert row.status_message.startswith(
            "refusing to resync into a new index behind orders: searchsync did not create"
        )
        assert "the swap would delete it" in row.status_message
        assert list(search.indices.get(index="orders*")) == ["orders"]  # nothing built
        assert "billing-1" in index_docs(search, "orders")

        # Adopted, the swap may delete it.
        adopt(sub)
        wait_for(lambda: status_of("orders").resync_requested_at is None, what="swapped")
        (first,) = search.indices.get_alias(name="orders")
        assert first.startswith("orders-") and meta_of(search, first) == OUR_META
        assert set(index_docs(search, "orders")) == {"1", "2"}

        # An index searchsync created is swapped away from and deleted as before.
        adopt(sub, False)
        control.resync(sub, Subscription.ResyncMode.NEW_INDEX)
        wait_for(
            lambda: (
                status_of("orders").resync_requested_at is None
                and list(search.indices.get_alias(name="orders")) != [first]
            ),
            what="second swap",
        )
        assert not search.indices.exists(index=first)
        assert set(index_docs(search, "orders")) == {"1", "2"}


def test_the_swap_itself_refuses_an_index_it_did_not_create(
    opensearch_url: str, search: OpenSearch, foreign_index: str, make_subscription: Any
) -> None:
    # The check before the copy may be outrun: say another application made the index
    # while the new one was being built.
    sub = make_subscription("orders", "public.orders", validate=False)
    target = "orders-20261201210000000000"
    search.indices.create(index=target)

    with pytest.raises(ForeignIndex, match="searchsync did not create index orders"):
        asyncio.run(point_alias(sink_config(sub, target), "orders"))

    assert "billing-1" in index_docs(search, "orders")
    assert search.indices.get_alias(index=target)[target]["aliases"] == {}
