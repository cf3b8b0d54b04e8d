"""The OpenSearch error translator against a real osmem-server, faults injected by proxies.

Each status class becomes one syncer.errors error: no answer, 408, 429 and 5xx are
SinkUnavailable; 413 RequestTooLarge (unless `plain`); 401/403 and every other refusal
SinkConfigError. What OpenSearch answered stays readable through `answer_of`.
"""

from __future__ import annotations

import asyncio

import pytest
from opensearchpy import OpenSearch

from syncer.errors import RequestTooLarge, SinkConfigError, SinkUnavailable, SyncError
from syncer.sinks.opensearch.client import (
    INDEX_NOT_FOUND,
    Answer,
    answer_of,
    async_client,
    none_if,
    sync_client,
    translated,
)
from syncer.sinks.opensearch.connection import Connection
from syncer.sinks.opensearch.sink import OpenSearchSinkConfig, read_document
from tests.support.httpfaults import FaultProxy
from tests.support.tcpproxy import TcpProxy

INJECTED = "[injected by FaultProxy]"


@pytest.fixture
def faults(opensearch_faults: FaultProxy) -> FaultProxy:
    return opensearch_faults


def ask(url: str, *, plain: bool = False, timeout: float = 5.0) -> SyncError | None:
    """Check index `orders` through a fresh async client; the translated error, if any."""

    async def run() -> SyncError | None:
        client = async_client(Connection(url), timeout)
        try:
            with translated("checking index orders", plain=plain):
                await client.indices.get(index="orders")
        except SyncError as exc:
            return exc
        finally:
            await client.close()
        return None

    return asyncio.run(run())


def test_a_working_server_raises_nothing(opensearch_url: str, search: OpenSearch) -> None:
    search.indices.create(index="orders")
    assert ask(opensearch_url) is None


def test_a_stopped_server_is_unavailable_without_an_answer(opensearch_proxy: TcpProxy) -> None:
    with opensearch_proxy.down():
        error = ask(opensearch_proxy.url())
    assert isinstance(error, SinkUnavailable)
    assert str(error).startswith("checking index orders: cannot reach OpenSearch (")
    assert answer_of(error).status == 0
    assert answer_of(error).error


def test_a_timeout_is_unavailable_without_an_answer(faults: FaultProxy) -> None:
    faults.delay(2.0)
    error = ask(faults.url, timeout=0.3)
    assert isinstance(error, SinkUnavailable)
    assert "cannot reach OpenSearch" in str(error)
    assert answer_of(error).status == 0


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_busy_or_failing_answers_are_unavailable(faults: FaultProxy, status: int) -> None:
    faults.fail_requests(status)
    error = ask(faults.url)
    assert isinstance(error, SinkUnavailable)
    answer = answer_of(error)
    assert answer.status == status
    assert str(error) == (
        f"checking index orders: OpenSearch answered {status} {answer.error_type}: {answer.reason}"
    )


def test_a_503_keeps_the_error_type_and_reason(faults: FaultProxy) -> None:
    faults.fail_requests(503)
    error = ask(faults.url)
    assert isinstance(error, SinkUnavailable)
    assert answer_of(error) == Answer(
        503,
        error_type="cluster_block_exception",
        error="cluster_block_exception",
        reason=f"blocked by: [SERVICE_UNAVAILABLE/1/state not recovered]; {INJECTED}",
    )


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_say_which_settings_to_check(faults: FaultProxy, status: int) -> None:
    faults.fail_requests(status)
    error = ask(faults.url)
    assert isinstance(error, SinkConfigError)
    assert str(error) == (
        f"checking index orders: OpenSearch refused the credentials ({status} exception: "
        f"HTTP {status} {INJECTED}); check OPENSEARCH_USER / OPENSEARCH_PASSWORD and the "
        "user's permissions"
    )
    assert answer_of(error).status == status


def test_a_413_is_a_request_too_large(faults: FaultProxy) -> None:
    faults.fail_requests(413)
    error = ask(faults.url)
    assert isinstance(error, RequestTooLarge)
    assert str(error) == "checking index orders: OpenSearch refused the request as too large"
    assert answer_of(error).status == 413


@pytest.mark.parametrize("status", [400, 409])
def test_other_refusals_are_the_configurations(faults: FaultProxy, status: int) -> None:
    faults.fail_requests(status)
    error = ask(faults.url)
    assert isinstance(error, SinkConfigError)
    assert str(error) == (
        f"checking index orders: OpenSearch refused it ({status} exception: HTTP {status} "
        f"{INJECTED})"
    )


def test_a_missing_index_is_a_404_index_not_found(opensearch_url: str) -> None:
    error = ask(opensearch_url)
    assert isinstance(error, SinkConfigError)
    answer = answer_of(error)
    assert (answer.status, answer.error_type, answer.error) == (
        404,
        INDEX_NOT_FOUND,
        INDEX_NOT_FOUND,
    )
    assert str(error).startswith(
        f"checking index orders: OpenSearch refused it (404 {INDEX_NOT_FOUND}: "
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (503, SinkUnavailable),
        (429, SinkUnavailable),
        (401, SinkConfigError),
        (413, SinkConfigError),
        (400, SinkConfigError),
    ],
)
def test_plain_words_every_answer_alike(faults: FaultProxy, status: int, kind: type) -> None:
    """The alias swap's wording: no credentials hint, a 413 is a refusal like another."""
    faults.fail_requests(status)
    error = ask(faults.url, plain=True)
    assert error is not None and type(error) is kind
    assert str(error) == (
        f"checking index orders: OpenSearch answered {status} {answer_of(error).error}"
    )


def test_plain_says_so_when_it_cannot_reach_opensearch(opensearch_proxy: TcpProxy) -> None:
    with opensearch_proxy.down():
        error = ask(opensearch_proxy.url(), plain=True)
    assert isinstance(error, SinkUnavailable)
    assert str(error).startswith("checking index orders: cannot reach OpenSearch (")


def test_the_sync_client_is_translated_alike(faults: FaultProxy) -> None:
    client = sync_client(Connection(faults.url), 5.0)
    try:
        faults.fail_requests(502)
        with pytest.raises(SinkUnavailable) as raised, translated("asking OpenSearch"):
            client.info()
        assert answer_of(raised.value).status == 502
        assert client.info()["version"]["number"]
    finally:
        client.close()


def test_read_document_tells_a_missing_document_from_a_missing_index(
    opensearch_url: str, search: OpenSearch
) -> None:
    config = OpenSearchSinkConfig(
        name="orders", index="orders", connection=Connection(opensearch_url)
    )
    with pytest.raises(SinkConfigError) as raised:
        asyncio.run(read_document(config, "1"))
    assert answer_of(raised.value).error_type == INDEX_NOT_FOUND

    search.index(index="orders", id="1", body={"total": 3}, params={"refresh": "true"})
    found = asyncio.run(read_document(config, "1"))
    assert found is not None and found["_source"] == {"total": 3}
    assert asyncio.run(read_document(config, "2")) is None


def test_none_if_turns_only_the_named_status_into_none(faults: FaultProxy) -> None:
    async def run() -> None:
        client = async_client(Connection(faults.url), 5.0)
        try:
            assert await none_if(404, client.indices.get_alias(name="absent")) is None
            faults.fail_requests(503)
            with pytest.raises(SinkUnavailable), translated("reading alias absent"):
                await none_if(404, client.indices.get_alias(name="absent"))
        finally:
            await client.close()

    asyncio.run(run())
