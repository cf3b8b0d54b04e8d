"""The index export (`GET /api/subscriptions/{name}/documents/export`, `manage.py export`)
against a real osmem-server, through the ASGI handler (Django's AsyncClient).

osmem 0.1.4 makes point-in-time readers but cannot sort on `_shard_doc`, so the export
reads it by scroll, as it does OpenSearch 2.x; the PIT pages are exercised by giving the
reader osmem's `_id` as its tiebreaker.
"""

from __future__ import annotations

import http.client
import io
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError, OutputWrapper
from django.db import connections
from django.test import AsyncClient, Client
from opensearchpy import OpenSearch

from console.models import ApiToken
from syncer.management.progress import ProgressBar
from syncer.models import Subscription
from syncer.operations import exports
from syncer.sinks.opensearch.export import ReadMethod, index_pages
from syncer.wiring import sink_config
from tests.support.factories import entry, subscription
from tests.support.httpfaults import FaultProxy
from tests.support.process import serving_daphne
from tests.support.tcpproxy import TcpProxy
from tests.support.users import operator, staff_with, viewer

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/subscriptions/orders/documents/export"
Indexed = dict[str, tuple[int, dict[str, Any]]]


class Bearer:
    """An AsyncClient sending an API token with each request (its own `headers` are not)."""

    def __init__(self, text: str) -> None:
        self.client = AsyncClient()
        self.headers = {"Authorization": f"Bearer {text}"}

    async def get(self, path: str, data: dict[str, str] | None = None) -> Any:
        return await self.client.get(path, data, headers=self.headers)


def bearer(user: User, read_only: bool = False) -> tuple[Bearer, ApiToken]:
    token, text = ApiToken.issue(user, "ci", read_only=read_only)
    return Bearer(text), token


@pytest.fixture
def client() -> Bearer:
    return bearer(operator())[0]


@pytest.fixture(autouse=True)
async def close_connections() -> AsyncIterator[None]:
    yield
    # The ASGI handler reached the database from sync_to_async's thread: close those
    # connections, or the test database cannot be dropped at the end.
    await sync_to_async(connections.close_all)()


def put_many(search: OpenSearch, index: str, docs: Indexed) -> None:
    """Index `docs` (id -> (version, source)) with external versions, as the worker does."""
    lines: list[bytes] = []
    for doc_id, (version, source) in docs.items():
        action = {"_index": index, "_id": doc_id, "version": version, "version_type": "external"}
        lines += [orjson.dumps({"index": action}), orjson.dumps(source)]
    for start in range(0, len(lines), 4000):
        answer = search.bulk(body=b"\n".join(lines[start : start + 4000]) + b"\n")
        assert not answer["errors"], answer
    search.indices.refresh(index=index)


def orders_docs(n: int, *, start: int = 0) -> Indexed:
    return {
        f"o-{i}": (1000 + 7 * i, {"order_id": i, "total": i / 4, "tags": ["a", str(i % 3)]})
        for i in range(start, start + n)
    }


@pytest.fixture
def orders(search: OpenSearch) -> Indexed:
    """Subscription `orders` over index `orders`, holding 1,200 documents (two pages)."""
    subscription("orders")
    search.indices.create(index="orders")
    docs = orders_docs(1200)
    put_many(search, "orders", docs)
    return docs


def parse(body: bytes) -> tuple[Indexed, dict[str, Any], list[dict[str, Any]]]:
    """(documents by id, the summary, every line) of an export."""
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines, "an export always ends with its summary line"
    *documents, last = lines
    assert set(last) == {"summary"}, last
    found: Indexed = {}
    for line in documents:
        assert set(line) == {"id", "version", "document"}, line
        assert line["id"] not in found, f"{line['id']} exported twice"
        found[line["id"]] = (line["version"], line["document"])
    return found, last["summary"], lines


async def body_of(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


# -- the API -----------------------------------------------------------------------------


async def test_export_gives_back_every_document_with_its_version(
    client: Bearer, search: OpenSearch, orders: Indexed
) -> None:
    newer = {"o-5": (999_999, {"order_id": 5, "total": 0.5, "tags": ["changed"]})}
    put_many(search, "orders", newer)
    search.delete(index="orders", id="o-6", version=999_999, version_type="external")
    search.indices.refresh(index="orders")
    expected = {**orders, **newer}
    del expected["o-6"]

    response = await client.get(URL)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    found, summary, _ = parse(await body_of(response))
    assert found == expected
    assert summary == {
        "subscription": "orders",
        "index": "orders",
        "documents": 1199,
        "complete": True,
        "read": "scroll",  # osmem has no _shard_doc
    }


async def test_an_alias_is_exported_from_the_index_it_names(
    client: Bearer, search: OpenSearch
) -> None:
    await sync_to_async(subscription)("orders")
    search.indices.create(index="orders_v3")
    search.indices.create(index="orders_v2")
    docs = orders_docs(30)
    put_many(search, "orders_v3", docs)
    put_many(search, "orders_v2", orders_docs(5, start=500))  # not behind the alias
    search.indices.put_alias(index="orders_v3", name="orders")

    found, summary, _ = parse(await body_of(await client.get(URL)))

    assert found == docs
    assert (summary["index"], summary["documents"], summary["complete"]) == ("orders", 30, True)


async def test_an_empty_index_exports_only_its_summary(client: Bearer, search: OpenSearch) -> None:
    await sync_to_async(subscription)("orders")
    search.indices.create(index="orders")

    found, summary, lines = parse(await body_of(await client.get(URL)))

    assert (found, len(lines)) == ({}, 1)
    assert (summary["documents"], summary["complete"]) == (0, True)


async def test_opensearch_gone_midway_ends_with_an_incomplete_summary(
    client: Bearer, orders: Indexed, opensearch_proxy: TcpProxy, settings: Any
) -> None:
    settings.OPENSEARCH_URL = opensearch_proxy.url()
    response = await client.get(URL)
    assert response.status_code == 200
    chunks = aiter(response.streaming_content)
    first = await anext(chunks)  # the first page of 1,000

    with opensearch_proxy.down():
        rest = b"".join([chunk async for chunk in chunks])

    found, summary, _ = parse(first + rest)
    assert len(found) == 1000
    assert all(orders[doc_id] == value for doc_id, value in found.items())
    assert summary["complete"] is False
    assert summary["documents"] == 1000
    assert "cannot reach OpenSearch" in summary["error"]
    assert "stopped after 1000 documents" in summary["error"]


async def test_missing_index_is_404_before_anything_is_streamed(
    client: Bearer, search: OpenSearch
) -> None:
    await sync_to_async(subscription)("orders")

    response = await client.get(URL)

    assert response.status_code == 404
    assert "index 'orders' does not exist yet" in response.json()["detail"]
    assert not search.indices.exists(index="orders")


async def test_unknown_subscription_is_404(client: Bearer, opensearch_url: str) -> None:
    response = await client.get("/api/subscriptions/nope/documents/export")

    assert response.status_code == 404
    assert response.json() == {"detail": "no subscription named 'nope'"}


@pytest.fixture
def callers() -> dict[str, tuple[Bearer, ApiToken]]:
    return {
        "viewer": bearer(viewer()),
        "read_only_token": bearer(operator("ro"), read_only=True),
        "no_view": bearer(staff_with("clerk", ("add", "change"))),
        "revoked": bearer(viewer("gone")),
    }


async def test_view_permission_is_what_an_export_needs(
    callers: dict[str, tuple[Bearer, ApiToken]], orders: Indexed
) -> None:
    await sync_to_async(callers["revoked"][1].revoke)()
    statuses = {}
    for who, (caller, _) in callers.items():
        response = await caller.get(URL)
        statuses[who] = response.status_code
        if response.status_code == 200:
            found, summary, _ = parse(await body_of(response))
            assert len(found) == summary["documents"] == 1200
        else:
            assert b"order_id" not in response.content

    assert statuses == {"viewer": 200, "read_only_token": 200, "no_view": 403, "revoked": 401}
    anonymous = await AsyncClient().get(URL)
    assert anonymous.status_code == 401


def test_the_wsgi_handler_refuses_to_stream_it(orders: Indexed) -> None:
    _, text = ApiToken.issue(operator(), "ci")

    response = Client(headers={"Authorization": f"Bearer {text}"}).get(URL)

    assert response.status_code == 501
    assert "daphne" in response.json()["detail"]


async def test_a_document_whose_id_is_export_is_read_by_query(
    client: Bearer, search: OpenSearch
) -> None:
    await sync_to_async(subscription)("orders")
    search.indices.create(index="orders")
    put_many(search, "orders", {"export": (77, {"n": 1}), "other": (78, {"n": 2})})

    by_query = await client.get("/api/subscriptions/orders/documents", {"id": "export"})
    by_path = await client.get("/api/subscriptions/orders/documents/other")
    exported, _, _ = parse(await body_of(await client.get(URL)))

    assert by_query.status_code == 200
    assert (by_query.json()["id"], by_query.json()["version"]) == ("export", 77)
    assert by_query.json()["document"] == {"n": 1}
    assert by_path.json()["document"] == {"n": 2}
    assert set(exported) == {"export", "other"}


def test_daphne_streams_both_exports_in_chunks(
    orders: Indexed, opensearch_url: str, tmp_path: Any
) -> None:
    entry(Subscription.objects.get(name="orders"), "o-1")
    _, text = ApiToken.issue(viewer(), "ci")
    database = django_settings.DATABASES["default"]["NAME"]

    with serving_daphne(tmp_path, database, {"OPENSEARCH_URL": opensearch_url}) as port:
        answers: dict[str, tuple[int, str | None, bytes]] = {}
        for path in (URL, "/api/dlq/export"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path, headers={"Authorization": f"Bearer {text}"})
            response = conn.getresponse()
            encoding = response.getheader("Transfer-Encoding")
            answers[path] = (response.status, encoding, response.read())
            conn.close()

    status, encoding, body = answers[URL]
    assert (status, encoding) == (200, "chunked")
    found, summary, _ = parse(body)
    assert (found, summary["complete"]) == (orders, True)
    status, encoding, body = answers["/api/dlq/export"]
    assert (status, encoding) == (200, "chunked")
    *entries, last = [json.loads(line) for line in body.splitlines()]
    assert [e["doc_id"] for e in entries] == ["o-1"]
    assert last == {"summary": {"dead_letters": 1, "complete": True}}


# -- the read ------------------------------------------------------------------------------


async def read_all(
    sub: Subscription, tiebreaker: str, during: Callable[[], None], page_size: int = 100
) -> tuple[Indexed, str]:
    """Every document `index_pages` reads, calling `during()` after the first page."""
    method = ReadMethod()
    found: Indexed = {}
    pages = index_pages(sink_config(sub), page_size=page_size, method=method, tiebreaker=tiebreaker)
    async for page in pages:
        if not found:
            during()
        for hit in page:
            assert hit.id not in found
            found[hit.id] = (hit.version or 0, hit.source)
    return found, method.name


@pytest.mark.parametrize(("tiebreaker", "read"), [("_shard_doc", "scroll"), ("_id", "pit")])
async def test_the_read_is_one_view_while_the_index_changes(
    search: OpenSearch, tiebreaker: str, read: str
) -> None:
    sub = await sync_to_async(subscription)("orders")
    search.indices.create(index="orders")
    docs = orders_docs(450)
    put_many(search, "orders", docs)

    def change_everything() -> None:
        put_many(search, "orders", orders_docs(50, start=10_000))  # new ones
        put_many(search, "orders", {"o-449": (5_000_000, {"order_id": -1})})  # a newer one
        search.delete(index="orders", id="o-448", version=5_000_000, version_type="external")
        search.indices.refresh(index="orders")

    found, method = await read_all(sub, tiebreaker, change_everything)

    assert method == read
    assert found == docs
    answer = search.transport.perform_request("GET", "/_search/point_in_time/_all")
    assert answer["pits"] == []  # released, not left to expire


async def test_a_server_without_point_in_time_is_read_by_scroll(
    opensearch_faults: FaultProxy, search: OpenSearch, settings: Any
) -> None:
    sub = await sync_to_async(subscription)("orders")
    search.indices.create(index="orders")
    docs = orders_docs(250)
    put_many(search, "orders", docs)
    settings.OPENSEARCH_URL = opensearch_faults.url
    # As OpenSearch 1.x answers a path it has no handler for.
    opensearch_faults.fail_requests(400, None, "/_search/point_in_time", "no handler found")

    found, method = await read_all(sub, "_id", lambda: None)

    assert (method, found) == ("scroll", docs)


# -- memory ------------------------------------------------------------------------------


async def export_peak(sub: Subscription) -> tuple[int, int, int]:
    """(documents, bytes, peak traced memory) of streaming the subscription's export."""
    size = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        export = await exports.open_index_export(sub, page_size=100)
        async for chunk in export.lines():
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert export.complete
    return export.documents, size, peak


async def test_memory_stays_flat_whatever_the_index_size(search: OpenSearch) -> None:
    small = await sync_to_async(subscription)("small")
    large = await sync_to_async(subscription)("large")
    note = "x" * 1000
    for name, n in (("small", 500), ("large", 5000)):
        search.indices.create(index=name)
        put_many(search, name, {f"d{i}": (i + 1, {"i": i, "note": note}) for i in range(n)})

    small_count, _, small_peak = await export_peak(small)
    large_count, large_size, large_peak = await export_peak(large)

    assert (small_count, large_count) == (500, 5000)
    # Ten times the documents, about the same peak: one page (100) at a time.
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)
    assert large_peak < large_size / 2, (large_peak, large_size)


# -- manage.py export ----------------------------------------------------------------------


def export_command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("export", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_command_writes_the_export_and_a_progress_bar(orders: Indexed) -> None:
    out, err = export_command("orders")

    found, summary, _ = parse(out.encode())
    assert found == orders
    assert (summary["documents"], summary["complete"]) == (1200, True)
    assert "orders: [" + "#" * 30 + "] 1,200/1,200 documents (100%)" in err
    assert err.rstrip().endswith("done")


def test_command_with_opensearch_failing_midway_exits_1_after_an_incomplete_summary(
    orders: Indexed, opensearch_faults: FaultProxy, settings: Any
) -> None:
    settings.OPENSEARCH_URL = opensearch_faults.url
    opensearch_faults.fail_requests(503, None, "/_search/scroll")  # every page but the first
    out = io.StringIO()

    with pytest.raises(CommandError) as caught:
        call_command("export", "orders", "--page-size", "100", stdout=out, stderr=io.StringIO())

    found, summary, _ = parse(out.getvalue().encode())
    assert len(found) == 100
    assert (summary["documents"], summary["complete"]) == (100, False)
    assert "export of orders incomplete" in str(caught.value)
    assert "503" in str(caught.value)


def test_command_refuses_a_missing_index_and_an_unknown_subscription(opensearch_url: str) -> None:
    subscription("orders")

    with pytest.raises(CommandError) as missing:
        export_command("orders")
    with pytest.raises(CommandError) as unknown:
        export_command("nope")

    assert "index 'orders' does not exist yet" in str(missing.value)
    assert "no subscription named 'nope'" in str(unknown.value)
    assert unknown.value.returncode == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_one_line_on_a_terminal() -> None:
    now = [0.0]
    out = Terminal()
    bar = ProgressBar(OutputWrapper(out), "orders", 1000, clock=lambda: now[0])

    bar.update(0)
    now[0] = 0.1
    bar.update(100)  # too soon after the last: not drawn
    now[0] = 1.0
    bar.update(500)
    now[0] = 2.0
    bar.finish(1000)

    frames = out.getvalue().split("\r\x1b[2K")
    assert frames == [
        "",
        "orders: [" + "." * 30 + "] 0/1,000 documents (0%)",
        "orders: [" + "#" * 15 + "." * 15 + "] 500/1,000 documents (50%), 500/s, about 1 s left",
        "orders: [" + "#" * 30 + "] 1,000/1,000 documents (100%), 500/s, done\n",
    ]
