"""The event stream and the monitor's counts, through a real daphne process.

daphne serves console.asgi on the test database with a channel layer of this module's
own (a Redis prefix) and a 0.5 s heartbeat; the test publishes with `group_send` in the
shape of syncer.live.messages, as the worker does, and reads the stream over HTTP.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.test import Client

from console.live import slots, stats
from console.models import ApiToken
from syncer.live.messages import MONITOR_GROUP, events_group
from tests.conftest import DB_SUFFIX
from tests.support.factories import subscription
from tests.support.harness import wait_for
from tests.support.process import drop_redis_keys, serving_daphne
from tests.support.users import operator

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT = 0.5
RECHECK = 0.3
STREAMS_PER_USER = 3
PREFIX = f"searchsync_test{DB_SUFFIX}_{uuid.uuid4().hex[:12]}"
# The configured channel layer under a prefix of this module's own.
LAYERS: dict[str, Any] = copy.deepcopy(django_settings.CHANNEL_LAYERS)
LAYERS["default"]["CONFIG"]["prefix"] = PREFIX


@pytest.fixture(scope="module")
def daphne(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """`daphne console.asgi:application` on the test database; (host, port)."""
    folder = tmp_path_factory.mktemp("daphne")
    extra = {
        "CHANNEL_LAYERS": LAYERS,
        "LIVE_SSE_HEARTBEAT": HEARTBEAT,
        "LIVE_STREAM_RECHECK_SECONDS": RECHECK,
        "LIVE_STREAMS_PER_USER": STREAMS_PER_USER,
    }
    try:
        with serving_daphne(folder, django_settings.DATABASES["default"]["NAME"], extra) as port:
            yield "127.0.0.1", port
    finally:  # the module's groups, messages and counts
        drop_redis_keys(django_settings.REDIS_URL, PREFIX)


@pytest.fixture(autouse=True)
def layer(settings: Any) -> Iterator[Any]:
    settings.CHANNEL_LAYERS = LAYERS
    yield get_channel_layer()


@pytest.fixture
def token() -> str:
    _, text = ApiToken.issue(operator(), "ci")
    subscription("orders")
    return text


def request(
    server: tuple[str, int], path: str, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.request("GET", path, headers=_auth(token))
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class Stream:
    """An open `text/event-stream` response, read block by block (blank-line separated)."""

    def __init__(
        self,
        server: tuple[str, int],
        path: str,
        token: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.conn = http.client.HTTPConnection(*server, timeout=5)
        sent = {"Accept": "text/event-stream", **_auth(token), **(headers or {})}
        self.conn.request("GET", path, headers=sent)
        self.response = self.conn.getresponse()

    def block(self) -> list[str]:
        lines: list[str] = []
        while True:
            line = self.response.readline().decode()
            assert line, "the stream ended"
            if line == "\n":
                return lines
            lines.append(line.rstrip("\n"))

    def next_events(self) -> dict[str, Any]:
        """The next `events` event's data, skipping heartbeat comments."""
        while True:
            block = self.block()
            if block and block[0] == "event: events":
                assert block[1].startswith("data: ") and len(block) == 2, block
                data: dict[str, Any] = json.loads(block[1].removeprefix("data: "))
                return data
            assert all(line.startswith(":") for line in block), block

    def until_closed(self) -> dict[str, Any]:
        """The data of the `closed` event that ends the stream (skipping all else); then
        the stream must end."""
        while True:
            block = self.block()
            if block and block[0] == "event: closed":
                closed: dict[str, Any] = json.loads(block[1].removeprefix("data: "))
                assert self.response.readline() == b"", "the stream goes on after closed"
                return closed

    def close(self) -> None:
        self.response.close()  # it holds the socket: closing the connection alone does not
        self.conn.close()


def change(doc_id: str, op: str = "upsert") -> dict[str, Any]:
    return {
        "kind": "change",
        "op": op,
        "doc_id": doc_id,
        "position": 7,
        "position_shown": "0/7",
        "commit_time": 1_700_000_000.0,
        "latency_ms": 3.0,
        "batch": 2,
        "outcome": "ok",
    }


def publish(layer: Any, name: str, *events: dict[str, Any]) -> None:
    async_to_sync(layer.group_send)(
        events_group(name), {"type": "sync.events", "subscription": name, "events": list(events)}
    )


def opened(server: tuple[str, int], token: str, query: str = "") -> Stream:
    stream = Stream(server, f"/api/subscriptions/orders/events/stream{query}", token)
    assert stream.response.status == 200
    assert stream.response.getheader("Content-Type") == "text/event-stream"
    # The first block is sent once the stream has joined the group.
    assert stream.block() == ["retry: 3000", ": subscribed to orders"]
    return stream


def test_events_arrive_as_event_stream_lines(daphne: Any, layer: Any, token: str) -> None:
    stream = opened(daphne, token)
    try:
        dropped = {"kind": "dropped", "dropped": 40}
        publish(layer, "orders", change("1"), change("2", "delete"), dropped)
        assert stream.next_events() == {
            "kind": "events",
            "subscription": "orders",
            "events": [change("1"), change("2", "delete"), dropped],
        }
    finally:
        stream.close()


def test_stream_filters_by_op_and_doc_id_prefix(daphne: Any, layer: Any, token: str) -> None:
    stream = opened(daphne, token, "?op=delete&doc_id_prefix=eu-")
    try:
        publish(layer, "orders", change("eu-1"), change("eu-2", "delete"), change("us-3", "delete"))
        publish(layer, "orders", change("eu-4", "delete"))
        assert [e["doc_id"] for e in stream.next_events()["events"]] == ["eu-2"]
        assert [e["doc_id"] for e in stream.next_events()["events"]] == ["eu-4"]
    finally:
        stream.close()


def test_heartbeat_comment_arrives_on_an_idle_stream(daphne: Any, token: str) -> None:
    stream = opened(daphne, token)
    try:
        started = time.monotonic()
        assert stream.block() == [": heartbeat"]
        assert stream.block() == [": heartbeat"]
        assert time.monotonic() - started >= HEARTBEAT
    finally:
        stream.close()


def test_idle_stream_still_delivers_after_the_layers_read_timeout(
    daphne: Any, layer: Any, token: str
) -> None:
    stream = opened(daphne, token)
    try:
        idle_until = time.monotonic() + 7  # longer than a blocking layer read (5 s)
        while time.monotonic() < idle_until:
            assert stream.block() == [": heartbeat"]
        publish(layer, "orders", change("late"))
        assert [e["doc_id"] for e in stream.next_events()["events"]] == ["late"]
    finally:
        stream.close()


def test_stream_refuses_missing_token_unknown_subscription_and_bad_filter(
    daphne: Any, token: str
) -> None:
    status, body = request(daphne, "/api/subscriptions/orders/events/stream")
    assert status == 401
    assert "Authorization: Bearer" in body["detail"]
    status, _ = request(daphne, "/api/subscriptions/orders/events/stream", "ssk_wrong")
    assert status == 401
    status, body = request(daphne, "/api/subscriptions/nope/events/stream", token)
    assert (status, body["detail"]) == (404, "no subscription named 'nope'")
    status, body = request(daphne, "/api/subscriptions/orders/events/stream?op=insert", token)
    assert status == 422
    assert body["errors"][0]["field"] == "op"


def test_client_count_rises_while_streaming_and_falls_after(
    daphne: Any, layer: Any, token: str
) -> None:
    def counts() -> dict[str, Any]:
        status, body = request(daphne, "/api/events/stats", token)
        assert status == 200, body
        return body

    wait_for(lambda: counts()["connected_clients"] == 0, what="earlier tests' streams to close")
    before = counts()
    first, second = opened(daphne, token), opened(daphne, token, "?op=delete")
    try:
        # A reading of the counts answers for about a second (stats.SHARE_FOR).
        wait_for(
            lambda: counts()["connected_clients"] == before["connected_clients"] + 2,
            timeout=5,
            what="both streams to count",
        )
        publish(layer, "orders", change("1"), change("2", "delete"))
        assert len(first.next_events()["events"]) == 2
        assert len(second.next_events()["events"]) == 1
        wait_for(
            lambda: counts()["delivered"] == before["delivered"] + 3,
            timeout=5,
            what="the deliveries to count",
        )
    finally:
        first.close()
    try:
        wait_for(
            lambda: counts()["connected_clients"] == before["connected_clients"] + 1,
            timeout=15,
            what="the closed stream to leave the count",
        )
    finally:
        second.close()
    wait_for(
        lambda: counts()["connected_clients"] == before["connected_clients"],
        timeout=15,
        what="both streams to leave the count",
    )
    assert group_size(events_group("orders")) == 0  # each stream left the group


def group_size(group: str) -> int:
    """Channels in a layer group, read straight from Redis (channels-redis' key layout)."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        return int(client.zcard(f"{PREFIX}:group:{group}"))
    finally:
        client.close()


def test_stats_report_the_workers_heartbeat_counts(daphne: Any, layer: Any, token: str) -> None:
    # No monitor socket is open: the stats endpoint listens for the heartbeats itself.
    def beat() -> None:
        async_to_sync(layer.group_send)(
            MONITOR_GROUP,
            {
                "type": "worker.heartbeat",
                "worker": "w:1",
                "subscriptions": ["orders"],
                "published": 1200,
                "dropped": 34,
                "at": time.time(),
            },
        )

    stop = threading.Event()

    def beating() -> None:
        while not stop.is_set():
            beat()
            stop.wait(0.3)

    worker = threading.Thread(target=beating, daemon=True)
    worker.start()
    time.sleep(stats.SHARE_FOR)  # an earlier test's reading, without the beats, has expired
    try:
        status, body = request(daphne, "/api/events/stats", token)
    finally:
        stop.set()
        worker.join(5)
    assert status == 200, body
    assert (body["published"], body["dropped"], body["workers"]) == (1200, 34, 1)


def test_concurrent_stats_requests_share_one_reading(daphne: Any, token: str) -> None:
    # No worker's heartbeat on record: a reading listens to the monitor group for
    # LISTEN_FOR itself, as one channel in that group. Ten requests: one listener.
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        client.delete(f"{PREFIX}:searchsync:live:workers")
    finally:
        client.close()
    time.sleep(stats.SHARE_FOR)  # an earlier test's reading has expired
    with listeners_counted() as listeners, ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: request(daphne, "/api/events/stats", token), range(10)))
    assert [status for status, _ in answers] == [200] * 10
    assert max(listeners) == 1, f"{max(listeners)} readings listened at once"
    # The same reading, kept for SHARE_FOR: no listener joins (not a time limit on the
    # answer, which a loaded machine may well exceed).
    with listeners_counted() as again:
        assert request(daphne, "/api/events/stats", token)[0] == 200
    assert max(again) == 0


@contextlib.contextmanager
def listeners_counted() -> Iterator[list[int]]:
    """The monitor group's size, sampled every 20 ms while the block runs."""
    listeners: list[int] = [group_size(MONITOR_GROUP)]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            listeners.append(group_size(MONITOR_GROUP))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield listeners
    finally:
        stop.set()
        watcher.join(5)


def test_stats_need_a_token(daphne: Any, token: str) -> None:
    status, body = request(daphne, "/api/events/stats")
    assert status == 401
    assert "published" not in body


def test_stream_under_a_wsgi_server_says_to_run_daphne(token: str) -> None:
    response = Client(headers={"Authorization": f"Bearer {token}"}).get(
        "/api/subscriptions/orders/events/stream"
    )
    assert response.status_code == 501
    assert "daphne console.asgi:application" in response.json()["detail"]


# -- a stream's caller is checked again while it is open; each user holds a bounded number --


def test_a_stream_ends_once_its_token_is_revoked(daphne: Any, token: str) -> None:
    stream = opened(daphne, token)
    try:
        assert stream.block() == [": heartbeat"]  # re-checked meanwhile, still open
        ApiToken.objects.get().revoke()
        started = time.monotonic()
        closed = stream.until_closed()
        assert (closed["kind"], closed["code"]) == ("closed", 4401)
        assert "revoked" in closed["reason"]
        assert time.monotonic() - started < 10 * RECHECK
    finally:
        stream.close()
    status, _ = request(daphne, "/api/subscriptions/orders/events/stream", token)
    assert status == 401  # and EventSource's reconnection is refused


def test_a_stream_ends_once_its_tokens_user_loses_the_view_permission(
    daphne: Any, token: str
) -> None:
    stream = opened(daphne, token)
    try:
        User.objects.get(username="ops").user_permissions.clear()
        closed = stream.until_closed()
        assert closed["code"] == 4403
        assert "syncer.view_subscription" in closed["reason"]
    finally:
        stream.close()


def test_a_session_stream_ends_at_logout(daphne: Any, token: str) -> None:
    client = Client()
    client.force_login(User.objects.get(username="ops"))
    cookie = {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}
    stream = Stream(daphne, "/api/subscriptions/orders/events/stream", None, cookie)
    try:
        assert stream.response.status == 200
        assert stream.block() == ["retry: 3000", ": subscribed to orders"]
        client.logout()
        assert stream.until_closed()["code"] == 4401
    finally:
        stream.close()


def test_the_stream_cap_counts_the_users_streams_of_every_process(daphne: Any, token: str) -> None:
    user = User.objects.get(username="ops")
    # Streams this user holds in another web process (this one), through the same Redis.
    for n in range(STREAMS_PER_USER - 1):
        assert async_to_sync(slots.take)(user.pk, f"elsewhere-{n}", 30)
    stream = opened(daphne, token)
    try:
        status, body = request(daphne, "/api/subscriptions/orders/events/stream", token)
        assert status == 429
        assert "LIVE_STREAMS_PER_USER" in body["detail"]
        other = operator("other")
        _, text = ApiToken.issue(other, "ci")
        opened(daphne, text).close()  # the cap is per user
    finally:
        stream.close()
    wait_for(
        lambda: async_to_sync(slots.held)(user.pk) == STREAMS_PER_USER - 1,
        timeout=10,
        what="the closed stream to give its slot back",
    )
    opened(daphne, token).close()
