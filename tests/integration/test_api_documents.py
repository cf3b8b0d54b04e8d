"""`/api/subscriptions/{name}/documents/{id}`: the document as a real osmem-server holds it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.test import Client
from opensearchpy import OpenSearch

from tests.support.factories import subscription
from tests.support.process import free_port
from tests.support.users import operator, token_client

pytestmark = pytest.mark.django_db

LSN = (0x16 << 32) | 0xB374D848


@pytest.fixture
def client() -> Client:
    return token_client(operator())


@pytest.fixture
def orders(search: OpenSearch) -> str:
    sub = subscription("orders")
    sub.index_name = "orders_v1"
    sub.save()
    search.indices.create(index="orders_v1")
    return sub.name


def put(search: OpenSearch, doc_id: str, body: dict[str, Any], version: int) -> None:
    search.index(index="orders_v1", id=doc_id, body=body, version=version, version_type="external")


def document_url(name: str, doc_id: str) -> str:
    return f"/api/subscriptions/{name}/documents/{quote(doc_id, safe='')}"


def test_indexed_document_comes_back_with_its_version(
    client: Client, search: OpenSearch, orders: str
) -> None:
    put(search, "42", {"order_id": 42, "total": 9.5, "tags": ["a"]}, LSN)

    response = client.get(document_url(orders, "42"))

    assert response.status_code == 200, response.content
    assert response.json() == {
        "subscription": "orders",
        "index": "orders_v1",
        "id": "42",
        "version": LSN,
        "position_shown": "16/B374D848",
        "document": {"order_id": 42, "total": 9.5, "tags": ["a"]},
    }


def test_composite_key_document_id_with_slash_and_bar_is_found(
    client: Client, search: OpenSearch, orders: str
) -> None:
    put(search, "eu/west|7", {"region": "eu/west", "n": 7}, 10)
    put(search, "eu", {"region": "eu", "n": 0}, 10)

    response = client.get(document_url(orders, "eu/west|7"))

    assert response.status_code == 200, response.content
    assert response.json()["document"] == {"region": "eu/west", "n": 7}


def test_the_current_version_is_shown_after_an_update(
    client: Client, search: OpenSearch, orders: str
) -> None:
    put(search, "7", {"total": 1}, 100)
    put(search, "7", {"total": 2}, 200)

    body = client.get(document_url(orders, "7")).json()

    assert (body["version"], body["document"]) == (200, {"total": 2})


def test_missing_document_is_404(client: Client, search: OpenSearch, orders: str) -> None:
    put(search, "1", {"total": 1}, 10)

    response = client.get(document_url(orders, "2"))

    assert response.status_code == 404
    assert response.json() == {"detail": "no document '2' in index 'orders_v1'"}


def test_missing_index_is_404_and_not_created(client: Client, search: OpenSearch) -> None:
    subscription("fresh")

    response = client.get(document_url("fresh", "1"))

    assert response.status_code == 404
    assert "index 'fresh' does not exist yet" in response.json()["detail"]
    assert not search.indices.exists(index="fresh")


def test_unknown_subscription_is_404(client: Client, opensearch_url: str) -> None:
    response = client.get(document_url("nope", "1"))
    assert response.status_code == 404
    assert response.json() == {"detail": "no subscription named 'nope'"}


def test_unreachable_opensearch_is_503_with_the_reason(client: Client, settings: Any) -> None:
    port = free_port()
    settings.OPENSEARCH_URL = f"http://admin:s3cret@127.0.0.1:{port}"  # nothing listens there
    subscription("orders")

    response = client.get(document_url("orders", "1"))

    assert response.status_code == 503
    assert response.json()["detail"].startswith("cannot reach OpenSearch")
    assert "s3cret" not in response.content.decode()


def test_document_needs_authentication(search: OpenSearch, orders: str) -> None:
    put(search, "1", {"total": 1}, 10)

    anonymous = Client().get(document_url(orders, "1"))
    clerk = User.objects.create_user("clerk", is_staff=False)
    not_staff = token_client(clerk, "clerk").get(document_url(orders, "1"))

    assert anonymous.status_code == 401
    assert "document" not in anonymous.json()
    assert not_staff.status_code == 403
