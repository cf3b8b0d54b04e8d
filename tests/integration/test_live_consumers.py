"""The live monitor's websockets, driven through console.asgi.application.

Messages go through the real Redis channel layer (under a prefix of the test's own),
published with `group_send` in the shape of syncer.live.messages, as the worker sends
them; sessions are real Django sessions in the test database.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from console.asgi import application
from console.live import slots, stats
from syncer.live.messages import MONITOR_GROUP, events_group
from syncer.live.publisher import SNAPSHOTS_PER_MESSAGE, LivePublisher
from tests.conftest import DB_SUFFIX
from tests.support.factories import snapshot_message, subscription
from tests.support.users import operator, staff_with, viewer

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost:8000")


def isolated_layer_settings() -> dict[str, Any]:
    """The configured channel layer (real Redis), under a prefix no other run or test shares.

    The hosts stay as configured: the idle-socket test checks that they keep a quiet
    receive alive (redis-py 8's default 5 s read timeout would not).
    """
    layers: dict[str, Any] = copy.deepcopy(django_settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"searchsync_test{DB_SUFFIX}_{uuid.uuid4().hex[:12]}"
    return layers


@pytest.fixture(autouse=True)
async def layer(settings: Any) -> AsyncIterator[Any]:
    settings.CHANNEL_LAYERS = isolated_layer_settings()
    channel_layer = get_channel_layer()
    yield channel_layer
    await channel_layer.flush()  # the test's messages, groups and counts
    # Consumers reached the database from sync_to_async's thread: close those connections,
    # or the test database cannot be dropped at the end.
    await sync_to_async(connections.close_all)()


def session_cookie(user: User) -> tuple[bytes, bytes]:
    return logged_in(user)[1]


def logged_in(user: User) -> tuple[Client, tuple[bytes, bytes]]:
    """A real session of `user` (its client, to log out with) and the socket's cookie."""
    client = Client()
    client.force_login(user)
    return client, (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def user_cookie(username: str, **fields: Any) -> tuple[bytes, bytes]:
    return session_cookie(User.objects.create_user(username, **fields))


@pytest.fixture
def staff() -> tuple[bytes, bytes]:
    return session_cookie(operator())


@pytest.fixture
def orders() -> str:
    return subscription("orders").name


@pytest.fixture
async def sockets() -> AsyncIterator[Callable[..., Any]]:
    """Open websockets; each still running is disconnected at the end (again, if need be)."""
    opened: list[WebsocketCommunicator] = []

    async def open_socket(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
        socket = WebsocketCommunicator(application, path, headers=[ORIGIN, *headers])
        opened.append(socket)
        return socket

    yield open_socket
    for socket in opened:
        if not socket.future.done():
            await socket.disconnect()


async def connected(open_socket: Callable[..., Any], path: str, cookie: Any) -> Any:
    socket = await open_socket(path, cookie)
    accepted, _ = await socket.connect()
    assert accepted
    return socket


async def refusal(socket: WebsocketCommunicator) -> int:
    """The close code of a socket the server accepted and closed at once."""
    accepted, _ = await socket.connect()
    assert accepted  # the handshake completes so that the browser can read the code
    closed = await socket.receive_output(timeout=2)
    assert closed["type"] == "websocket.close"
    return int(closed["code"])


def change(doc_id: str, op: str = "upsert", position: int = 100) -> dict[str, Any]:
    return {
        "kind": "change",
        "op": op,
        "doc_id": doc_id,
        "position": position,
        "position_shown": f"0/{position:X}",
        "commit_time": 1_700_000_000.0,
        "latency_ms": 12.5,
        "batch": 1,
        "outcome": "ok",
    }


def dead_letter(doc_id: str, op: str = "upsert") -> dict[str, Any]:
    return {
        "kind": "dead_letter",
        "op": op,
        "doc_id": doc_id,
        "position": 101,
        "position_shown": "0/65",
        "commit_time": 1_700_000_000.0,
        "batch": 1,
        "error": "400 mapper_parsing_exception: failed to parse field [total]",
    }


async def publish(layer: Any, name: str, *events: dict[str, Any]) -> None:
    await layer.group_send(
        events_group(name), {"type": "sync.events", "subscription": name, "events": list(events)}
    )


async def doc_ids(socket: WebsocketCommunicator) -> list[str]:
    message = await socket.receive_json_from(timeout=2)
    assert message["kind"] == "events", message
    return [e.get("doc_id", f"dropped:{e.get('dropped')}") for e in message["events"]]


async def set_filter(socket: WebsocketCommunicator, **fields: Any) -> dict[str, Any]:
    await socket.send_json_to({"filter": fields})
    answer = await socket.receive_json_from(timeout=2)
    assert answer["kind"] == "filter", answer
    return dict(answer["filter"])


@pytest.mark.parametrize("path", ["/ws/monitor/", "/ws/subscriptions/orders/events/"])
async def test_anonymous_socket_is_closed_with_4401(path: str, orders: str, sockets: Any) -> None:
    assert await refusal(await sockets(path)) == 4401


@pytest.mark.parametrize("path", ["/ws/monitor/", "/ws/subscriptions/orders/events/"])
async def test_non_staff_user_is_closed_with_4403(path: str, orders: str, sockets: Any) -> None:
    clerk = await sync_to_async(user_cookie)("clerk", is_staff=False)
    assert await refusal(await sockets(path, clerk)) == 4403


async def test_deactivated_staff_users_session_no_longer_opens_a_socket(sockets: Any) -> None:
    cookie = await sync_to_async(user_cookie)("gone", is_staff=True)
    await User.objects.filter(username="gone").aupdate(is_active=False)
    assert await refusal(await sockets("/ws/monitor/", cookie)) == 4401


async def test_unknown_subscription_is_closed_with_4404(staff: Any, sockets: Any) -> None:
    assert await refusal(await sockets("/ws/subscriptions/nope/events/", staff)) == 4404


async def test_socket_from_another_sites_page_is_refused(staff: Any) -> None:
    socket = WebsocketCommunicator(
        application, "/ws/monitor/", headers=[(b"origin", b"https://evil.example"), staff]
    )
    accepted, _ = await socket.connect()
    assert not accepted


async def test_one_snapshot_and_heartbeat_reach_every_monitor_socket(
    layer: Any, staff: Any, sockets: Any
) -> None:
    monitors = [await connected(sockets, "/ws/monitor/", staff) for _ in range(3)]
    snapshot = {
        "type": "sync.snapshot",
        "subscription": "orders",
        "worker": "host:1",
        "status": "running",
        "message": "",
        "lag": 0.4,
        "staleness": 0.1,
        "buffer": 12,
        "backpressure": False,
        "throughput": 150.0,
        "dead_letters": 2,
        "live_subscriptions": 3,
        "checkpoint": 4096,
        "checkpoint_shown": "0/1000",
        "at": 1_700_000_000.0,
    }
    await layer.group_send(MONITOR_GROUP, snapshot)
    heartbeat = {
        "type": "worker.heartbeat",
        "worker": "host:1",
        "subscriptions": ["orders"],
        "published": 10,
        "dropped": 0,
        "at": 1_700_000_000.0,
    }
    await layer.group_send(MONITOR_GROUP, heartbeat)

    for monitor in monitors:
        got = await monitor.receive_json_from(timeout=2)
        assert got == {"kind": "snapshot", **{k: v for k, v in snapshot.items() if k != "type"}}
        got = await monitor.receive_json_from(timeout=2)
        assert got == {"kind": "heartbeat", **{k: v for k, v in heartbeat.items() if k != "type"}}
    for monitor in monitors:
        await monitor.disconnect()


async def test_snapshots_of_many_subscriptions_travel_together_and_arrive_one_by_one(
    layer: Any, staff: Any, sockets: Any
) -> None:
    monitor = await connected(sockets, "/ws/monitor/", staff)
    listener = await layer.new_channel()
    await layer.group_add(MONITOR_GROUP, listener)
    publisher = LivePublisher("host:1", events_per_second=100, queue_size=100, layer=layer)
    count = SNAPSHOTS_PER_MESSAGE + 20
    for n in range(count):
        publisher.offer_snapshot(snapshot_message(f"sub-{n}", f"status {n}"))
    await publisher.send_once()

    shown = [await monitor.receive_json_from(timeout=2) for _ in range(count)]
    assert [s["subscription"] for s in shown] == [f"sub-{n}" for n in range(count)]
    assert {s["kind"] for s in shown} == {"snapshot"}
    assert shown[7]["message"] == "status 7"
    sent = [await layer.receive(listener) for _ in range(2)]  # the layer carried two messages
    assert [m["type"] for m in sent] == ["sync.snapshots"] * 2
    assert [len(m["snapshots"]) for m in sent] == [SNAPSHOTS_PER_MESSAGE, 20]
    await monitor.disconnect()


async def test_a_status_message_that_changes_is_redacted_each_time(
    layer: Any, staff: Any, sockets: Any
) -> None:
    monitor = await connected(sockets, "/ws/monitor/", staff)
    publisher = LivePublisher("host:1", events_per_second=100, queue_size=100, layer=layer)
    for secret in ("postgresql://app:hunter22@db/x", "password=letmein99 host=db"):
        publisher.offer_snapshot(snapshot_message("orders", f"cannot connect: {secret}"))
        await publisher.send_once()
        shown = (await monitor.receive_json_from(timeout=2))["message"]
        assert "hunter22" not in shown and "letmein99" not in shown and "***" in shown
    await monitor.disconnect()


async def test_events_reach_every_socket_of_their_subscription_only(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    await sync_to_async(subscription)("customers")
    tails = [await connected(sockets, "/ws/subscriptions/orders/events/", staff) for _ in range(2)]
    other = await connected(sockets, "/ws/subscriptions/customers/events/", staff)

    await publish(layer, "orders", change("o1"), dead_letter("o2"))

    for tail in tails:
        message = await tail.receive_json_from(timeout=2)
        assert message == {
            "kind": "events",
            "subscription": "orders",
            "events": [change("o1"), dead_letter("o2")],
        }
    assert await other.receive_nothing(timeout=0.5)
    for socket in [*tails, other]:
        await socket.disconnect()


async def test_idle_socket_still_relays_events_after_the_layers_read_timeout(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    await asyncio.sleep(7)  # longer than a blocking layer read (5 s)
    await publish(layer, "orders", change("late"))
    assert await doc_ids(tail) == ["late"]


async def test_filter_by_op_keeps_only_that_op(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    assert await set_filter(tail, op="delete") == {"op": "delete", "doc_id_prefix": None}

    await publish(layer, "orders", change("a"), change("b", "delete"), dead_letter("c", "delete"))
    assert await doc_ids(tail) == ["b", "c"]
    await publish(layer, "orders", change("d"), change("e"))  # nothing passes: nothing sent
    assert await tail.receive_nothing(timeout=0.5)
    await tail.disconnect()


async def test_filter_by_doc_id_prefix_keeps_matching_documents(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    assert await set_filter(tail, doc_id_prefix="cust-1") == {
        "op": None,
        "doc_id_prefix": "cust-1",
    }
    await publish(
        layer, "orders", change("cust-1"), change("cust-12"), change("cust-2"), dead_letter("x")
    )
    assert await doc_ids(tail) == ["cust-1", "cust-12"]
    await tail.disconnect()


async def test_filter_changed_over_the_open_socket_applies_from_then_on(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    batch = [change("a1"), change("a2", "delete"), change("b1"), change("b2", "delete")]

    await publish(layer, "orders", *batch)
    assert await doc_ids(tail) == ["a1", "a2", "b1", "b2"]

    await set_filter(tail, op="upsert", doc_id_prefix="b")
    await publish(layer, "orders", *batch)
    assert await doc_ids(tail) == ["b1"]

    await set_filter(tail, op="delete")  # replaces the filter: the prefix is gone
    await publish(layer, "orders", *batch)
    assert await doc_ids(tail) == ["a2", "b2"]

    assert await set_filter(tail) == {"op": None, "doc_id_prefix": None}
    await publish(layer, "orders", *batch)
    assert await doc_ids(tail) == ["a1", "a2", "b1", "b2"]
    await tail.disconnect()


async def test_drop_summary_is_relayed_through_any_filter(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    await set_filter(tail, op="delete", doc_id_prefix="zzz")

    await publish(layer, "orders", change("a"), {"kind": "dropped", "dropped": 1234})

    message = await tail.receive_json_from(timeout=2)
    assert message["events"] == [{"kind": "dropped", "dropped": 1234}]
    await tail.disconnect()


@pytest.mark.parametrize(
    ("sent", "complaint"),
    [
        ("not json at all", "not JSON"),
        ('["filter"]', 'expected {"filter"'),
        ('{"filter": {"op": "upsert"}, "extra": 1}', 'expected {"filter"'),
        ('{"filter": "upsert"}', '"filter" must be an object'),
        ('{"filter": {"op": "insert"}}', "op must be upsert, delete or null, not 'insert'"),
        ('{"filter": {"doc_id_prefix": 7}}', "doc_id_prefix must be text or null, not 7"),
        ('{"filter": {"doc_id": "a"}}', "unknown filter field(s) doc_id"),
    ],
)
async def test_malformed_client_message_gets_an_error_and_the_socket_stays_open(
    sent: str, complaint: str, layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    await set_filter(tail, op="upsert")

    await tail.send_to(text_data=sent)
    error = await tail.receive_json_from(timeout=2)
    assert error["kind"] == "error"
    assert complaint in error["message"]

    # Still open, and the filter set before the bad message still applies.
    await publish(layer, "orders", change("a"), change("b", "delete"))
    assert await doc_ids(tail) == ["a"]
    await tail.disconnect()


async def test_binary_frame_gets_an_error(staff: Any, orders: str, sockets: Any) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    await tail.send_to(bytes_data=b"\x00\x01")
    assert (await tail.receive_json_from(timeout=2))["kind"] == "error"
    assert await set_filter(tail, op="delete") == {"op": "delete", "doc_id_prefix": None}
    await tail.disconnect()


async def test_connected_sockets_and_delivered_events_are_counted(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    monitor = await connected(sockets, "/ws/monitor/", staff)
    tails = [await connected(sockets, "/ws/subscriptions/orders/events/", staff) for _ in range(2)]
    await set_filter(tails[1], op="delete")
    assert (await stats.read_stats()).connected_clients == 3

    await publish(
        layer, "orders", change("a"), change("b", "delete"), {"kind": "dropped", "dropped": 5}
    )
    assert await doc_ids(tails[0]) == ["a", "b", "dropped:5"]
    assert await doc_ids(tails[1]) == ["b", "dropped:5"]
    # Dropped summaries are not deliveries: 2 events to one socket, 1 to the other.
    assert (await stats.read_stats()).delivered == 3

    await tails[0].disconnect()
    await monitor.disconnect()
    assert (await stats.read_stats()).connected_clients == 1
    await tails[1].disconnect()
    assert (await stats.read_stats()).connected_clients == 0


async def test_socket_killed_without_a_disconnect_leaves_the_count_and_its_group(
    layer: Any, staff: Any, orders: str, sockets: Any
) -> None:
    tail = await connected(sockets, "/ws/subscriptions/orders/events/", staff)
    assert (await stats.read_stats()).connected_clients == 1

    # As daphne kills an application instance that outlives its close timeout.
    tail.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tail.future

    assert (await stats.read_stats()).connected_clients == 0
    members = await layer.connection(0).zcard(f"{layer.prefix}:group:{events_group('orders')}")
    assert members == 0


async def test_published_and_dropped_sum_the_workers_last_heartbeats(
    layer: Any, staff: Any, sockets: Any
) -> None:
    monitor = await connected(sockets, "/ws/monitor/", staff)
    for worker, published, dropped in [("a:1", 5, 0), ("b:2", 7, 1), ("a:1", 40, 3)]:
        await layer.group_send(
            MONITOR_GROUP,
            {
                "type": "worker.heartbeat",
                "worker": worker,
                "subscriptions": [],
                "published": published,
                "dropped": dropped,
                "at": 1_700_000_000.0,
            },
        )
        assert (await monitor.receive_json_from(timeout=2))["kind"] == "heartbeat"

    counts = await stats.read_stats()
    assert (counts.published, counts.dropped, counts.workers) == (47, 4, 2)
    await monitor.disconnect()


async def test_stats_listen_for_heartbeats_when_no_monitor_socket_relays_them(layer: Any) -> None:
    async def worker_beats() -> None:
        while True:
            await layer.group_send(
                MONITOR_GROUP,
                {
                    "type": "worker.heartbeat",
                    "worker": "lonely:1",
                    "subscriptions": ["orders"],
                    "published": 321,
                    "dropped": 9,
                    "at": 1_700_000_000.0,
                },
            )
            await asyncio.sleep(0.3)

    beating = asyncio.create_task(worker_beats())
    try:
        counts = await stats.read_stats()
    finally:
        beating.cancel()
    assert (counts.published, counts.dropped, counts.workers) == (321, 9, 1)


async def test_stats_without_any_worker_are_zero(layer: Any) -> None:
    counts = await stats.read_stats()
    assert counts == stats.LiveStats(
        published=0, delivered=0, dropped=0, connected_clients=0, workers=0
    )


# -- an open socket's caller is checked again; each user holds a bounded number ------------


@pytest.fixture
def fast_recheck(settings: Any, fast_password_hashing: None) -> float:
    settings.LIVE_STREAM_RECHECK_SECONDS = 0.2
    return 0.2


def _lose_staff(user: User, client: Client) -> None:
    User.objects.filter(pk=user.pk).update(is_staff=False)


def _deactivate(user: User, client: Client) -> None:
    User.objects.filter(pk=user.pk).update(is_active=False)


def _lose_view_permission(user: User, client: Client) -> None:
    user.user_permissions.clear()


def _change_password(user: User, client: Client) -> None:
    user.set_password("new-password")
    user.save()


LOSSES: dict[str, tuple[Callable[[User, Client], None], int]] = {
    "logout": (lambda user, client: client.logout(), 4401),
    "deactivated": (_deactivate, 4401),
    "password changed": (_change_password, 4401),
    "staff flag lost": (_lose_staff, 4403),
    "view permission lost": (_lose_view_permission, 4403),
}


async def closing_code(socket: WebsocketCommunicator, within: float) -> int:
    closed = await socket.receive_output(timeout=within)
    assert closed["type"] == "websocket.close", closed
    return int(closed["code"])


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("path", ["/ws/monitor/", "/ws/subscriptions/orders/events/"])
async def test_an_open_socket_closes_once_its_caller_may_no_longer_watch(
    loss: str, path: str, layer: Any, orders: str, sockets: Any, fast_recheck: float
) -> None:
    user = await sync_to_async(viewer)()
    client, cookie = await sync_to_async(logged_in)(user)
    socket = await connected(sockets, path, cookie)
    assert await socket.receive_nothing(timeout=3 * fast_recheck)  # re-checked, still open

    lose, code = LOSSES[loss]
    await sync_to_async(lose)(user, client)

    assert await closing_code(socket, within=10 * fast_recheck) == code
    assert await slots.held(user.pk) == 0
    group = MONITOR_GROUP if path == "/ws/monitor/" else events_group("orders")
    assert await layer.connection(0).zcard(f"{layer.prefix}:group:{group}") == 0


async def test_a_staff_user_without_the_view_permission_is_closed_with_4403(
    orders: str, sockets: Any
) -> None:
    bare = await sync_to_async(staff_with)("bare", ())
    _, cookie = await sync_to_async(logged_in)(bare)
    assert await refusal(await sockets("/ws/monitor/", cookie)) == 4403
    assert await refusal(await sockets("/ws/subscriptions/orders/events/", cookie)) == 4403


async def test_each_user_holds_at_most_the_configured_number_of_sockets(
    settings: Any, layer: Any, orders: str, sockets: Any
) -> None:
    settings.LIVE_STREAMS_PER_USER = 2
    user = await sync_to_async(viewer)()
    _, cookie = await sync_to_async(logged_in)(user)
    first = await connected(sockets, "/ws/monitor/", cookie)
    await connected(sockets, "/ws/subscriptions/orders/events/", cookie)

    assert await refusal(await sockets("/ws/monitor/", cookie)) == 4429
    assert await slots.held(user.pk) == 2
    other = await sync_to_async(viewer)("other")
    _, other_cookie = await sync_to_async(logged_in)(other)
    await connected(sockets, "/ws/monitor/", other_cookie)  # the cap is per user

    await first.disconnect()
    assert await slots.held(user.pk) == 1
    again = await connected(sockets, "/ws/monitor/", cookie)
    await layer.group_send(MONITOR_GROUP, {"type": "sync.snapshot", "subscription": "orders"})
    assert (await again.receive_json_from(timeout=2))["kind"] == "snapshot"


async def test_slots_of_a_process_that_died_stop_counting_after_their_ttl(layer: Any) -> None:
    assert await slots.take(7, "dead-process-stream", ttl=0.3)
    assert await slots.held(7) == 1
    await asyncio.sleep(0.4)  # nothing refreshes it: the expiry is the condition under test
    assert await slots.held(7) == 0
