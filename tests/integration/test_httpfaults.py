"""The fault-injecting HTTP proxy, in front of a real osmem-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import pytest
from opensearchpy import AsyncOpenSearch, NotFoundError, OpenSearch, TransportError

from tests.support.httpfaults import FaultProxy


@pytest.fixture
def proxy(opensearch_faults: FaultProxy) -> FaultProxy:
    return opensearch_faults


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[OpenSearch]:
    # No client retries: each call must be exactly one request through the proxy.
    client = OpenSearch(hosts=[proxy.url], timeout=10, max_retries=0)
    yield client
    client.close()


def bulk_body(*doc_ids: str, index: str = "docs") -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = []
    for doc_id in doc_ids:
        body += [{"index": {"_index": index, "_id": doc_id}}, {"n": doc_id}]
    return body


def statuses(response: dict[str, Any]) -> list[int]:
    return [next(iter(item.values()))["status"] for item in response["items"]]


def test_passes_requests_and_server_errors_through_unchanged(proxy, client, search):
    client.index(index="docs", id="1", body={"title": "hello world"}, params={"refresh": "true"})
    assert client.get(index="docs", id="1")["_source"] == {"title": "hello world"}
    hits = client.search(index="docs", q="title:hello")["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["1"]
    assert client.indices.exists(index="docs") is True  # HEAD
    assert client.indices.exists(index="absent") is False
    with pytest.raises(NotFoundError) as missing:
        client.get(index="absent", id="1")
    assert missing.value.error == "index_not_found_exception"
    assert search.get(index="docs", id="1")["_source"] == {"title": "hello world"}
    assert proxy.stats.requests == proxy.stats.forwarded == 6
    assert proxy.stats.failed == proxy.stats.rejected_items == 0


def test_gzip_bodies_pass_through(proxy, search):
    zipped = OpenSearch(hosts=[proxy.url], http_compress=True, max_retries=0)
    try:
        zipped.bulk(body=bulk_body("1", "2"), params={"refresh": "true"})
        assert zipped.count(index="docs")["count"] == 2
    finally:
        zipped.close()
    assert search.count(index="docs")["count"] == 2


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(429, "es_rejected_execution_exception"), (503, "cluster_block_exception")],
)
def test_fails_exactly_count_requests_without_reaching_the_server(
    proxy, client, search, status, error_type
):
    proxy.fail_requests(status=status, count=2, path_contains="_doc")
    for _ in range(2):
        with pytest.raises(TransportError) as failed:
            client.index(index="docs", id="1", body={"n": 1}, params={"refresh": "true"})
        assert failed.value.status_code == status
        assert failed.value.error == error_type
        assert failed.value.info == {
            "error": {
                "root_cause": [{"type": error_type, "reason": ANY}],
                "type": error_type,
                "reason": ANY,
            },
            "status": status,
        }
    assert not search.indices.exists(index="docs")  # the server never saw them
    client.index(index="docs", id="1", body={"n": 1}, params={"refresh": "true"})
    assert search.get(index="docs", id="1")["_source"] == {"n": 1}
    assert (proxy.stats.failed, proxy.stats.forwarded) == (2, 1)


def test_failures_without_count_last_until_cleared(proxy, client):
    proxy.fail_requests(status=500, count=None, body={"error": "boom"})
    for _ in range(3):
        with pytest.raises(TransportError) as failed:
            client.info()
        assert failed.value.status_code == 500
        assert failed.value.info == {"error": "boom"}
    proxy.clear()
    assert client.info()["version"]["distribution"] == "opensearch"


def test_delay_holds_only_matching_requests(proxy, client):
    client.index(index="docs", id="1", body={"n": 1}, params={"refresh": "true"})
    proxy.delay(0.5, path_contains="_search")
    started = time.monotonic()
    client.search(index="docs")
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    client.get(index="docs", id="1")
    assert time.monotonic() - started < 0.5
    assert proxy.stats.delayed == 1


def test_rejected_items_are_not_applied_and_answered_in_place(proxy, client, search):
    proxy.reject_items(["2"])
    response = client.bulk(body=bulk_body("1", "2", "3"), params={"refresh": "true"})
    assert response["errors"] is True
    assert statuses(response) == [201, 429, 201]
    assert [next(iter(item.values()))["_id"] for item in response["items"]] == ["1", "2", "3"]
    assert response["items"][1]["index"]["error"]["type"] == "es_rejected_execution_exception"
    assert search.exists(index="docs", id="1") and search.exists(index="docs", id="3")
    assert not search.exists(index="docs", id="2")
    assert proxy.stats.rejected_items == 1
    # Without count, the id is rejected every time.
    assert statuses(client.bulk(body=bulk_body("2"))) == [429]
    assert not search.exists(index="docs", id="2")


def test_rejected_id_goes_through_after_count_rejections(proxy, client, search):
    proxy.reject_items(lambda doc_id: doc_id.startswith("b"), status=503, count=1)
    first = client.bulk(body=bulk_body("a", "b1", "b2"), params={"refresh": "true"})
    assert statuses(first) == [201, 503, 503]
    assert search.count(index="docs")["count"] == 1
    second = client.bulk(body=bulk_body("b1", "b2"), params={"refresh": "true"})
    assert second["errors"] is False
    assert statuses(second) == [201, 201]
    assert search.count(index="docs")["count"] == 3


def test_rejected_delete_leaves_the_document(proxy, client, search):
    search.index(index="docs", id="1", body={"n": 1}, params={"refresh": "true"})
    forwarded = proxy.stats.forwarded
    proxy.reject_items("1", error_type="cluster_block_exception", reason="read-only")
    response = client.bulk(body=[{"delete": {"_index": "docs", "_id": "1"}}])
    assert response["items"] == [
        {
            "delete": {
                "_index": "docs",
                "_id": "1",
                "status": 429,
                "error": {"type": "cluster_block_exception", "reason": "read-only"},
            }
        }
    ]
    assert proxy.stats.forwarded == forwarded  # nothing was left to send
    assert search.exists(index="docs", id="1")


def test_rejects_items_of_gzip_bulk_on_an_index_path(proxy, search):
    zipped = OpenSearch(hosts=[proxy.url], http_compress=True, max_retries=0)
    proxy.reject_items(["1"])
    try:
        body = [{"index": {"_id": "1"}}, {"n": 1}, {"index": {"_id": "2"}}, {"n": 2}]
        response = zipped.bulk(index="docs", body=body, params={"refresh": "true"})
    finally:
        zipped.close()
    assert statuses(response) == [429, 201]
    assert response["items"][0]["index"]["_index"] == "docs"
    assert not search.exists(index="docs", id="1")
    assert search.exists(index="docs", id="2")


async def test_async_client_keeps_working_across_faults(proxy, search):
    client = AsyncOpenSearch(hosts=[proxy.url], max_retries=0)
    try:
        proxy.fail_requests(status=503, count=1, path_contains="_bulk")
        proxy.reject_items(["2"], count=1)
        with pytest.raises(TransportError):
            await client.bulk(body=bulk_body("1", "2"))
        assert statuses(await client.bulk(body=bulk_body("1", "2"))) == [201, 429]
        assert statuses(await client.bulk(body=bulk_body("2"), refresh=True)) == [201]
    finally:
        await client.close()
    assert search.count(index="docs")["count"] == 2
