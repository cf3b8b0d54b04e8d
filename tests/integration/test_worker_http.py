"""The worker's HTTP server as a client on the network meets it: real sockets.

It listens on 127.0.0.1 unless told otherwise (Linux routes all of 127.0.0.0/8 to the
loopback, so 127.0.0.2 stands in for "another address of this machine"), and drops a
client that connects and sends nothing, or half a request, after its request timeout.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from syncer.worker import http
from tests.support.process import free_port

TIMEOUT = 0.5


@pytest.fixture
def serve() -> Iterator[Callable[..., int]]:
    stops: list[Callable[[], None]] = []

    def start(host: str = http.DEFAULT_HOST) -> int:
        port = free_port()
        stops.append(
            http.serve(port, dict, CollectorRegistry(), host=host, request_timeout=TIMEOUT)
        )
        return port

    yield start
    for stop in stops:
        stop()


def connects(host: str, port: int) -> bool:
    with socket.socket() as client:
        client.settimeout(2)
        return client.connect_ex((host, port)) == 0


def health(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
        return int(response.status)


def test_it_listens_on_the_loopback_only_by_default(serve):
    port = serve()
    assert connects("127.0.0.1", port)
    assert not connects("127.0.0.2", port)


def test_metrics_host_opens_it_to_other_addresses(serve):
    port = serve(host="0.0.0.0")
    assert connects("127.0.0.2", port)


def closed_by_server(client: socket.socket, within: float) -> float:
    """Seconds until the server closed `client` (reads return b""); fails past `within`."""
    started = time.monotonic()
    client.settimeout(within)
    try:
        data = client.recv(1024)
    except TimeoutError:
        raise AssertionError(f"the server kept a silent client open for {within} s") from None
    except ConnectionResetError:
        data = b""  # shut while our bytes were still arriving
    assert data == b"", data
    return time.monotonic() - started


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /health HTTP/1.1\r\nHost: worker\r\n"],
    ids=["nothing", "half a request"],
)
def test_a_slow_client_is_dropped_and_does_not_hold_up_others(serve, sent):
    port = serve()
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(sent)
        # Others are answered while the slow client hangs on.
        assert health(port) == 200
        assert closed_by_server(slow, within=TIMEOUT + 3) < TIMEOUT + 1
    assert health(port) == 200


def test_a_request_trickled_byte_by_byte_is_dropped_too(serve):
    port = serve()
    request = b"GET /health HTTP/1.1\r\nHost: worker\r\nX-Slow: " + b"x" * 100
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as slow:
        for byte in request:  # each byte well within the per-read timeout
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break  # shut by the server
            time.sleep(TIMEOUT / 5)
            if time.monotonic() - started > TIMEOUT + 3:
                raise AssertionError("the server kept reading a trickled request")
        assert closed_by_server(slow, within=3) < 3
    assert time.monotonic() - started < TIMEOUT + 2
    assert health(port) == 200
