"""`/api/dlq`: filtered cursor pages, one entry, stats, retry and purge through
syncer.operations.dead_letters.

Retries go to a real osmem-server (the `search` fixture): the outcomes are OpenSearch's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from opensearchpy import OpenSearch

from syncer.models import DeadLetter
from tests.support.factories import entry, retry_case, subscription
from tests.support.users import operator, token_client

pytestmark = pytest.mark.django_db

JSON = "application/json"


@pytest.fixture
def client() -> Client:
    return token_client(operator())


def pages(client: Client, **filters: Any) -> list[list[str]]:
    """Every page of the filtered list, as document ids, following next_cursor."""
    seen: list[list[str]] = []
    query = dict(filters)
    while True:
        response = client.get("/api/dlq", query)
        assert response.status_code == 200, response.content
        body = response.json()
        seen.append([item["doc_id"] for item in body["items"]])
        if body["next_cursor"] is None:
            return seen
        query["cursor"] = body["next_cursor"]


def test_list_pages_through_filtered_entries_newest_first(client: Client) -> None:
    orders, customers = subscription("orders"), subscription("customers")
    for i in range(7):
        entry(orders, f"o{i}", age=dt.timedelta(minutes=10 + i))
        entry(customers, f"c{i}", age=dt.timedelta(minutes=10 + i))
    entry(orders, "o-delete", action="delete", age=dt.timedelta(minutes=1))
    entry(orders, "o-rejected", error_type="es_rejected_execution_exception")
    entry(orders, "o-old", age=dt.timedelta(days=3))

    assert pages(client, subscription="orders", action="index", limit=3) == [
        ["o-rejected", "o0", "o1"],
        ["o2", "o3", "o4"],
        ["o5", "o6", "o-old"],
    ]
    assert pages(
        client,
        subscription="orders",
        error_type="mapper_parsing_exception",
        older_than="12m",
        newer_than="1d",
        limit=2,
    ) == [["o2", "o3"], ["o4", "o5"], ["o6"]]
    assert pages(client, subscription="customers", older_than="2d") == [[]]
    everything = [doc for page in pages(client, limit=4) for doc in page]
    assert sorted(everything) == sorted(DeadLetter.objects.values_list("doc_id", flat=True))


def test_paging_is_stable_while_new_entries_arrive(client: Client) -> None:
    orders = subscription("orders")
    for i in range(6):
        entry(orders, f"d{i}", age=dt.timedelta(minutes=i + 1))
    first = client.get("/api/dlq", {"limit": 3}).json()
    assert [i["doc_id"] for i in first["items"]] == ["d0", "d1", "d2"]
    entry(orders, "fresh", age=dt.timedelta(0))  # the worker adds one meanwhile
    DeadLetter.objects.filter(doc_id="d1").delete()  # and an operator purges one
    second = client.get("/api/dlq", {"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [i["doc_id"] for i in second["items"]] == ["d3", "d4", "d5"]
    assert second["next_cursor"] is None


def test_list_items_carry_the_error_but_not_the_payload(client: Client) -> None:
    item = entry(subscription("orders"), "order-1", payload={"total": "x"}, attempts=3)
    (listed,) = client.get("/api/dlq").json()["items"]
    assert listed["id"] == item.pk and listed["subscription"] == "orders"
    assert (listed["attempts"], listed["error_status"], listed["error_type"]) == (
        3,
        400,
        "mapper_parsing_exception",
    )
    assert "payload" not in listed


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"older_than": "yesterday"}, "older_than"),
        ({"older_than": "99999999999w"}, "older_than"),
        ({"older_than": "999999d"}, "older_than"),
        ({"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgMWU5OTld"}, "cursor"),
        ({"newer_than": "0d"}, "newer_than"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"action": "update"}, "action"),
    ],
)
def test_bad_list_parameters_are_422_naming_the_parameter(
    client: Client, query: dict[str, str], field: str
) -> None:
    response = client.get("/api/dlq", query)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_an_unknown_subscription_is_404_everywhere(client: Client) -> None:
    subscription("orders")
    for response in (
        client.get("/api/dlq", {"subscription": "nope"}),
        client.get("/api/dlq/stats", {"subscription": "nope"}),
        client.post("/api/dlq/retry", {"subscription": "nope"}, content_type=JSON),
        client.post("/api/dlq/purge", {"subscription": "nope"}, content_type=JSON),
    ):
        assert response.status_code == 404
        assert "no subscription named 'nope'" in response.json()["detail"]


def test_one_entry_shows_its_payload_and_a_missing_one_is_404(client: Client) -> None:
    item = entry(subscription("orders"), "order-1", payload={"total": "x", "tags": ["a"]})
    shown = client.get(f"/api/dlq/{item.pk}").json()
    assert shown["payload"] == {"total": "x", "tags": ["a"]}
    assert shown["doc_id"] == "order-1" and shown["version"] == 100
    assert client.get(f"/api/dlq/{item.pk + 1000}").status_code == 404


def test_stats_count_per_subscription_and_error_type(client: Client) -> None:
    orders, customers = subscription("orders"), subscription("customers")
    oldest = entry(orders, "o1", age=dt.timedelta(days=2))
    entry(orders, "o2")
    entry(orders, "o3", error_type="illegal_argument_exception")
    entry(customers, "c1")
    stats = client.get("/api/dlq/stats").json()
    assert stats["total"] == 4
    assert stats["by_subscription"] == {"customers": 1, "orders": 3}
    assert [(r["subscription"], r["error_type"], r["count"]) for r in stats["by_error_type"]] == [
        ("customers", "mapper_parsing_exception", 1),
        ("orders", "mapper_parsing_exception", 2),
        ("orders", "illegal_argument_exception", 1),
    ]
    assert stats["oldest"]["id"] == oldest.pk
    only_old = client.get("/api/dlq/stats", {"subscription": "orders", "older_than": "1d"})
    assert only_old.json()["total"] == 1


def test_retry_reports_opensearch_outcomes_like_the_admin(
    client: Client, search: OpenSearch
) -> None:
    orders = subscription("orders")
    valid, older, broken, untouched = retry_case(search, orders)

    dry = client.post(
        "/api/dlq/retry",
        {"ids": [valid.pk, older.pk, broken.pk], "dry_run": True},
        content_type=JSON,
    ).json()
    assert (dry["dry_run"], dry["selected"], dry["retried"]) == (True, 3, 0)
    assert DeadLetter.objects.count() == 4

    response = client.post(
        "/api/dlq/retry", {"ids": [valid.pk, older.pk, broken.pk]}, content_type=JSON
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["message"] == "3 retried: 1 succeeded, 1 superseded, 1 failed"
    assert (body["succeeded"], body["superseded"], body["failed"]) == (1, 1, 1)
    assert body["errors"] == {"mapper_parsing_exception": 1}
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {broken.pk, untouched.pk}
    broken.refresh_from_db()
    assert broken.attempts == 3
    assert search.get(index="orders", id="1")["_source"] == {"total": 5}


def test_retry_of_a_subscription_with_a_limit(client: Client, search: OpenSearch) -> None:
    orders, customers = subscription("orders"), subscription("customers")
    for i in range(5):
        entry(orders, f"o{i}", payload={"total": i}, version=10 + i)
    entry(customers, "c1", payload={"total": 1})
    body = client.post(
        "/api/dlq/retry", {"subscription": "orders", "limit": 3}, content_type=JSON
    ).json()
    assert (body["selected"], body["succeeded"]) == (3, 3)
    assert DeadLetter.objects.filter(subscription=orders).count() == 2
    assert DeadLetter.objects.filter(subscription=customers).count() == 1


def test_retry_while_opensearch_is_down_is_503_with_what_was_done(
    client: Client, settings: Any
) -> None:
    settings.OPENSEARCH_URL = "http://127.0.0.1:9"
    item = entry(subscription("orders"), "o1")
    response = client.post("/api/dlq/retry", {"ids": [item.pk]}, content_type=JSON)
    assert response.status_code == 503
    body = response.json()
    assert body["detail"].startswith("retry stopped")
    assert body["done"]["retried"] == 0
    assert DeadLetter.objects.filter(pk=item.pk).exists()


def test_purge_by_ids_subscription_and_age(client: Client) -> None:
    orders, customers = subscription("orders"), subscription("customers")
    a = entry(orders, "a")
    b = entry(orders, "b")
    entry(orders, "old", age=dt.timedelta(days=10))
    entry(customers, "c-old", age=dt.timedelta(days=10))
    entry(customers, "c-new")

    by_ids = client.post("/api/dlq/purge", {"ids": [a.pk, b.pk]}, content_type=JSON).json()
    assert (by_ids["purged"], by_ids["message"]) == (2, "purged 2 dead letters")

    dry = client.post(
        "/api/dlq/purge", {"older_than": "7d", "dry_run": True}, content_type=JSON
    ).json()
    assert (dry["selected"], dry["purged"]) == (2, 0)
    by_age = client.post(
        "/api/dlq/purge", {"subscription": "customers", "older_than": "7d"}, content_type=JSON
    ).json()
    assert by_age["purged"] == 1
    assert sorted(DeadLetter.objects.values_list("doc_id", flat=True)) == ["c-new", "old"]

    by_subscription = client.post(
        "/api/dlq/purge", {"subscription": "orders"}, content_type=JSON
    ).json()
    assert by_subscription["purged"] == 1
    assert list(DeadLetter.objects.values_list("doc_id", flat=True)) == ["c-new"]


def test_purge_needs_a_selection_or_all(client: Client) -> None:
    entry(subscription("orders"), "a")
    refused = client.post("/api/dlq/purge", {}, content_type=JSON)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "all"
    assert DeadLetter.objects.count() == 1
    bad_age = client.post("/api/dlq/purge", {"older_than": "soon"}, content_type=JSON)
    assert [e["field"] for e in bad_age.json()["errors"]] == ["older_than"]
    done = client.post("/api/dlq/purge", {"all": True}, content_type=JSON).json()
    assert done["purged"] == 1 and not DeadLetter.objects.exists()
