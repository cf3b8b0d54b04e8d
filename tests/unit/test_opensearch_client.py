"""The one OpenSearch client factory: the options every client is built with."""

from __future__ import annotations

import pytest

from syncer.errors import SinkConfigError, SinkUnavailable
from syncer.sinks.opensearch.client import (
    Answer,
    answer_of,
    async_client,
    options,
    sync_client,
    translated,
    unavailable,
)
from syncer.sinks.opensearch.connection import Connection


def test_plain_http_takes_no_tls_options_and_never_retries() -> None:
    assert options(Connection("http://localhost:9200"), 2.0) == {"timeout": 2.0, "max_retries": 0}


def test_a_user_logs_in_with_basic_auth() -> None:
    connection = Connection("http://localhost:9200", user="searchsync", password="s3cret")
    assert options(connection, 30.0)["http_auth"] == ("searchsync", "s3cret")


def test_no_user_no_auth_even_with_a_password() -> None:
    assert "http_auth" not in options(Connection("http://localhost:9200", password="x"), 1.0)


def test_https_verifies_certificates_with_the_ca_bundle() -> None:
    connection = Connection("https://search:9200", ca_certs="/etc/ssl/ca.pem")
    assert options(connection, 3.0) == {
        "timeout": 3.0,
        "max_retries": 0,
        "verify_certs": True,
        "ca_certs": "/etc/ssl/ca.pem",
    }


def test_https_may_skip_verification_and_uses_the_system_bundle_by_default() -> None:
    got = options(Connection("https://search:9200", verify_certs=False), 3.0)
    assert got["verify_certs"] is False
    assert "ca_certs" not in got


def test_ca_certs_and_verify_certs_are_for_https_only() -> None:
    got = options(Connection("http://search:9200", ca_certs="/ca.pem", verify_certs=False), 1.0)
    assert "ca_certs" not in got and "verify_certs" not in got


def test_the_sync_client_is_built_from_the_same_options() -> None:
    client = sync_client(Connection("http://localhost:9200", "u", "p"), 2.0)
    try:
        assert client.transport.kwargs == {"timeout": 2.0, "http_auth": ("u", "p")}
        assert client.transport.max_retries == 0
        assert client.transport.get_connection().headers["authorization"] == "Basic dTpw"
    finally:
        client.close()


async def test_the_async_client_is_built_from_the_same_options() -> None:
    client = async_client(Connection("http://localhost:9200", "u", "p"), 3.0)
    try:
        assert client.transport.kwargs == {"timeout": 3.0, "http_auth": ("u", "p")}
        assert client.transport.max_retries == 0
    finally:
        await client.close()


@pytest.mark.parametrize("status", [0, 408, 429, 500, 503, 599])
def test_no_answer_408_429_and_5xx_mean_unavailable(status: int) -> None:
    assert unavailable(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413])
def test_other_refusals_are_not_unavailability(status: int) -> None:
    assert not unavailable(status)


def test_an_os_error_is_opensearch_unreachable() -> None:
    with pytest.raises(SinkUnavailable) as raised, translated("writing to index orders"):
        raise ConnectionRefusedError(111, "Connection refused")
    assert str(raised.value) == (
        "writing to index orders: cannot reach OpenSearch ([Errno 111] Connection refused)"
    )
    assert answer_of(raised.value) == Answer(
        0, error="[Errno 111] Connection refused", reason="[Errno 111] Connection refused"
    )


def test_other_errors_pass_through_and_have_no_answer() -> None:
    with pytest.raises(SinkConfigError) as raised, translated("checking index orders"):
        raise SinkConfigError("already ours")
    assert str(raised.value) == "already ours"
    assert answer_of(raised.value) == Answer(0)


def test_a_connection_never_shows_its_password() -> None:
    shown = repr(Connection("https://search:9200", user="searchsync", password="s3cret"))
    assert "s3cret" not in shown and "searchsync" in shown
