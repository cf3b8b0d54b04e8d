"""`/ws/live/` driven through console.asgi.application with channels' WebsocketCommunicator.

The channel layer is the real Redis one (under a prefix of the test's own); the worker's
side is played by sending `live.matched` messages to a live subscription's group, in the
shape of syncer.live.events, as the worker does. Tokens, sessions and live subscriptions
are real rows of the test database. The end-to-end path through a real daphne is in
test_live_socket_daphne.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from console.asgi import application
from console.live import slots
from console.models import ApiToken
from syncer.live.events import LIVE_MESSAGE_TYPE, MatchedEvent, live_group
from syncer.models import LiveSubscription
from syncer.operations import live_subscriptions
from tests.integration.test_live_consumers import isolated_layer_settings
from tests.support.factories import subscription
from tests.support.users import operator, staff_with, viewer

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost:8000")
PATH = "/ws/live/"
RECHECK = 0.2


@pytest.fixture(autouse=True)
async def layer(settings: Any) -> AsyncIterator[Any]:
    settings.CHANNEL_LAYERS = isolated_layer_settings()
    settings.LIVE_STREAM_RECHECK_SECONDS = RECHECK
    channel_layer = get_channel_layer()
    yield channel_layer
    await channel_layer.flush()
    await sync_to_async(connections.close_all)()


@pytest.fixture
async def orders() -> str:
    return (await sync_to_async(subscription)("orders")).name


def issue_token(user: User, read_only: bool = False) -> tuple[ApiToken, str]:
    return ApiToken.issue(user, f"gateway-{uuid.uuid4().hex[:8]}", read_only=read_only)


@pytest.fixture
async def token(orders: str) -> str:
    _, text = await sync_to_async(issue_token)(await sync_to_async(operator)())
    return text


def authorization(text: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {text}".encode())


class SlowClient(WebsocketCommunicator):  # type: ignore[misc]
    """A client that reads slowly, behind a server that holds at most `unread` frames for
    it and makes the application's send wait beyond that, as an ASGI server with
    backpressure does (daphne does not: see the report)."""

    def __init__(self, *args: Any, unread: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._output_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=unread)


@pytest.fixture
async def sockets() -> AsyncIterator[Callable[..., Any]]:
    """Open websockets; each still running is disconnected at the end."""
    opened: list[WebsocketCommunicator] = []

    async def open_socket(
        *headers: tuple[bytes, bytes], unread: int | None = None
    ) -> WebsocketCommunicator:
        if unread is None:
            socket = WebsocketCommunicator(application, PATH, headers=[ORIGIN, *headers])
        else:
            socket = SlowClient(application, PATH, headers=[ORIGIN, *headers], unread=unread)
        opened.append(socket)
        accepted, _ = await socket.connect()
        assert accepted
        return socket

    yield open_socket
    for socket in opened:
        if not socket.future.done():
            await socket.disconnect()


async def ready(socket: WebsocketCommunicator) -> dict[str, Any]:
    message: dict[str, Any] = await socket.receive_json_from(timeout=3)
    assert message["type"] == "ready", message
    return message


async def closed_with(socket: WebsocketCommunicator, within: float = 3) -> tuple[int, str]:
    """The `closing` message's (code, reason), then the close frame with that code."""
    closing = await socket.receive_json_from(timeout=within)
    assert closing["type"] == "closing", closing
    close = await socket.receive_output(timeout=within)
    assert close["type"] == "websocket.close", close
    assert close["code"] == closing["code"]
    return int(closing["code"]), str(closing["reason"])


async def ask(socket: WebsocketCommunicator, message: dict[str, Any]) -> dict[str, Any]:
    await socket.send_json_to(message)
    answer: dict[str, Any] = await socket.receive_json_from(timeout=5)
    return answer


def entry(gateway_id: str = "gw-1", filter: str = 'doc.region == "eu"', **more: Any) -> Any:
    return {"gateway_id": gateway_id, "subscription": "orders", "filter": filter, **more}


async def register(socket: WebsocketCommunicator, *entries: dict[str, Any]) -> list[str]:
    answer = await ask(socket, {"type": "register", "ref": "r1", "subscriptions": list(entries)})
    assert answer["type"] == "registered", answer
    assert answer["ref"] == "r1"
    return [item["id"] for item in answer["items"]]


def matched(live_id: str, key: str = "o1", position: int = 42) -> MatchedEvent:
    return MatchedEvent(
        live_subscription_id=uuid.UUID(live_id),
        gateway_id="gw-1",
        subscription="orders",
        op="upsert",
        key=key,
        position=position,
        commit_time=1_700_000_000.25,
        document={"id": key, "region": "eu", "total": "100.50"},
    )


async def send_event(layer: Any, event: MatchedEvent) -> None:
    await layer.group_send(
        live_group(event.live_subscription_id),
        {"type": LIVE_MESSAGE_TYPE, "event": event.to_json().decode()},
    )


def expires_at(live_id: str) -> datetime:
    return LiveSubscription.objects.get(pk=live_id).expires_at


# -- who may open it -------------------------------------------------------------------------


async def test_a_token_in_the_header_opens_it(token: str, sockets: Any) -> None:
    socket = await sockets(authorization(token))
    hello = await ready(socket)
    assert hello["user"] == "ops"
    assert hello["ttl_seconds"] == 300
    assert hello["renewed_every_seconds"] == 100


async def test_a_token_as_the_first_message_opens_it(token: str, sockets: Any) -> None:
    socket = await sockets()
    await socket.send_json_to({"type": "auth", "token": token})
    assert (await ready(socket))["user"] == "ops"
    assert (await ask(socket, {"type": "heartbeat", "gateway_id": "gw-1"}))["renewed"] == 0


async def test_a_staff_session_opens_it(orders: str, sockets: Any) -> None:
    client = Client()
    await sync_to_async(client.force_login)(await sync_to_async(operator)())
    socket = await sockets((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    assert (await ready(socket))["user"] == "ops"
    assert len(await register(socket, entry())) == 1


@pytest.mark.parametrize("how", ["header", "message"])
async def test_a_wrong_or_revoked_token_is_closed_with_4401(
    how: str, token: str, sockets: Any
) -> None:
    async def attempt(text: str) -> tuple[int, str]:
        if how == "header":
            return await closed_with(await sockets(authorization(text)))
        socket = await sockets()
        await socket.send_json_to({"type": "auth", "token": text})
        return await closed_with(socket)

    code, reason = await attempt("ssk_not_a_token")
    assert (code, reason) == (4401, "invalid API token; check it, or ask for a new one")
    found, text = await sync_to_async(issue_token)(await User.objects.aget(username="ops"))
    await sync_to_async(found.revoke)()
    code, reason = await attempt(text)
    assert (code, reason) == (4401, "this API token has been revoked; ask for a new one")


async def test_no_credentials_within_the_deadline_is_closed_with_4401(
    settings: Any, orders: str, sockets: Any
) -> None:
    settings.LIVE_WS_AUTH_SECONDS = 0.3
    code, reason = await closed_with(await sockets())
    assert code == 4401
    assert reason.startswith("no credentials within 0.3 s")


async def test_a_request_before_the_token_is_closed_with_4401(orders: str, sockets: Any) -> None:
    socket = await sockets()
    await socket.send_json_to({"type": "resume", "gateway_id": "gw-1"})
    code, reason = await closed_with(socket)
    assert code == 4401
    assert "authenticate first" in reason


async def test_a_non_staff_tokens_user_is_closed_with_4403(orders: str, sockets: Any) -> None:
    clerk = await sync_to_async(User.objects.create_user)("clerk")
    _, text = await sync_to_async(issue_token)(clerk)
    code, _ = await closed_with(await sockets(authorization(text)))
    assert code == 4403


async def test_a_token_revoked_while_open_closes_it_and_leaves_its_groups(
    layer: Any, orders: str, sockets: Any
) -> None:
    found, text = await sync_to_async(issue_token)(await sync_to_async(operator)())
    socket = await sockets(authorization(text))
    await ready(socket)
    (live_id,) = await register(socket, entry())
    assert await socket.receive_nothing(timeout=3 * RECHECK)  # re-checked, still open

    await sync_to_async(found.revoke)()

    assert await closed_with(socket, within=10 * RECHECK) == (
        4401,
        "this API token has been revoked",
    )
    group = live_group(uuid.UUID(live_id))
    assert await layer.connection(0).zcard(f"{layer.prefix}:group:{group}") == 0
    assert await slots.held(found.user_id) == 0


async def test_the_socket_counts_among_the_users_live_streams(
    settings: Any, token: str, sockets: Any
) -> None:
    settings.LIVE_STREAMS_PER_USER = 1
    await ready(await sockets(authorization(token)))
    code, reason = await closed_with(await sockets(authorization(token)))
    assert code == 4429
    assert "LIVE_STREAMS_PER_USER" in reason


# -- requests --------------------------------------------------------------------------------


async def test_registered_over_the_socket_it_is_a_websocket_live_subscription(
    token: str, sockets: Any
) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    answer = await ask(
        socket,
        {"type": "register", "subscriptions": [entry(), entry("gw-2", "!(doc.total > 1)")]},
    )
    assert answer["type"] == "registered"
    first, second = answer["items"]
    assert (first["gateway_id"], first["filter"], first["pinned"]) == (
        "gw-1",
        'doc.region == "eu"',
        True,
    )
    assert (second["gateway_id"], second["pinned"]) == ("gw-2", False)
    rows = [row async for row in LiveSubscription.objects.order_by("created_at", "pk")]
    assert {str(row.id) for row in rows} == {first["id"], second["id"]}
    assert {row.delivery for row in rows} == {"websocket"}
    assert await sync_to_async(live_subscriptions.counts)() == {("registered", ""): 2}


async def test_a_bad_filter_is_an_error_with_its_position_and_nothing_is_registered(
    token: str, sockets: Any
) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    answer = await ask(
        socket,
        {
            "type": "register",
            "ref": 7,
            "subscriptions": [entry(), entry(filter="doc.total >"), entry(gateway_id="a.b")],
        },
    )
    assert answer["type"] == "error"
    assert (answer["request"], answer["ref"], answer["status"]) == ("register", 7, 422)
    by_field = {e["field"]: e for e in answer["errors"]}
    assert set(by_field) == {"subscriptions[1].filter", "subscriptions[2].gateway_id"}
    assert by_field["subscriptions[1].filter"]["position"] == 11
    assert "ends too early" in by_field["subscriptions[1].filter"]["message"]
    assert not await LiveSubscription.objects.aexists()
    assert len(await register(socket, entry())) == 1  # the socket stays usable


@pytest.mark.parametrize(
    ("sent", "field", "says"),
    [
        ("not json", "(message)", "not JSON"),
        ('{"type": "subscribe"}', "type", "one of auth, register"),
        ('{"type": "register", "subscriptions": []}', "subscriptions", "at least 1"),
        (
            '{"type": "register", "subscriptions": [{"gateway_id": "g", "subscription": "orders", '
            '"filter": "true", "delivery": "nats"}]}',
            "subscriptions[0].delivery",
            "Extra inputs",
        ),
        ('{"type": "delete", "id": "nope"}', "id", "UUID"),
    ],
)
async def test_a_malformed_message_is_an_error_naming_the_field(
    sent: str, field: str, says: str, token: str, sockets: Any
) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    await socket.send_to(text_data=sent)
    answer = await socket.receive_json_from(timeout=3)
    assert (answer["type"], answer["status"]) == ("error", 422)
    (error,) = answer["errors"]
    assert error["field"] == field
    assert says in error["message"]


async def test_over_quota_is_a_429_equivalent_with_the_limit(
    settings: Any, token: str, sockets: Any
) -> None:
    settings.LIVE_SUBSCRIPTIONS_PER_OWNER = 2
    socket = await sockets(authorization(token))
    await ready(socket)
    await register(socket, entry())
    answer = await ask(socket, {"type": "register", "subscriptions": [entry(), entry()]})
    assert (answer["type"], answer["status"], answer["scope"]) == ("error", 429, "owner")
    assert (answer["limit"], answer["active"], answer["requested"]) == (2, 1, 2)
    assert "LIVE_SUBSCRIPTIONS_PER_OWNER" in answer["detail"]
    assert await LiveSubscription.objects.acount() == 1
    counted = await sync_to_async(live_subscriptions.counts)()
    assert counted == {("registered", ""): 1, ("refused", "owner"): 1}


async def test_a_read_only_token_may_not_register(orders: str, sockets: Any) -> None:
    _, text = await sync_to_async(issue_token)(await sync_to_async(operator)(), read_only=True)
    socket = await sockets(authorization(text))
    await ready(socket)
    answer = await ask(socket, {"type": "register", "subscriptions": [entry()]})
    assert (answer["type"], answer["status"]) == ("error", 403)
    assert "syncer.add_livesubscription" in answer["detail"]
    assert "read-only" in answer["detail"]


async def test_a_viewer_may_not_register(orders: str, sockets: Any) -> None:
    _, text = await sync_to_async(issue_token)(await sync_to_async(viewer)())
    socket = await sockets(authorization(text))
    await ready(socket)
    answer = await ask(socket, {"type": "register", "subscriptions": [entry()]})
    assert (answer["status"], answer["request"]) == (403, "register")
    assert "syncer.add_livesubscription" in answer["detail"]


async def test_delete_removes_it_and_its_events_stop(layer: Any, token: str, sockets: Any) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    (live_id,) = await register(socket, entry())
    assert await ask(socket, {"type": "delete", "id": live_id}) == {
        "type": "deleted",
        "ref": None,
        "id": live_id,
    }
    assert not await LiveSubscription.objects.filter(pk=live_id).aexists()
    await send_event(layer, matched(live_id))
    assert await socket.receive_nothing(timeout=0.5)
    again = await ask(socket, {"type": "delete", "id": live_id})
    assert (again["type"], again["status"]) == ("error", 404)


# -- delivery --------------------------------------------------------------------------------


async def test_a_registered_live_subscription_receives_its_events_with_every_field(
    layer: Any, token: str, sockets: Any
) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    mine, other = await register(socket, entry(), entry(filter="doc.total > 1"))

    await send_event(layer, matched(mine, "o1", 42))
    await send_event(layer, matched(other, "o2", 43))
    await send_event(layer, matched(str(uuid.uuid4()), "o3", 44))  # no socket's

    assert await socket.receive_json_from(timeout=3) == {
        "type": "event",
        "live_subscription_id": mine,
        "gateway_id": "gw-1",
        "subscription": "orders",
        "op": "upsert",
        "key": "o1",
        "position": 42,
        "commit_time": 1_700_000_000.25,
        "document": {"id": "o1", "region": "eu", "total": "100.50"},
    }
    second = await socket.receive_json_from(timeout=3)
    assert (second["live_subscription_id"], second["key"]) == (other, "o2")
    assert await socket.receive_nothing(timeout=0.5)


async def test_resume_after_a_reconnect_with_the_same_gateway_id(
    layer: Any, token: str, sockets: Any
) -> None:
    first = await sockets(authorization(token))
    await ready(first)
    ids = await register(first, entry(), entry(filter="doc.total > 1"), entry("gw-other"))
    await first.disconnect()
    # Left to their TTL, not deleted, and no longer delivered to anyone.
    assert await LiveSubscription.objects.acount() == 3

    second = await sockets(authorization(token))
    await ready(second)
    await send_event(layer, matched(ids[0], "lost"))  # while no socket is in the group
    answer = await ask(second, {"type": "resume", "gateway_id": "gw-1", "ref": "x"})
    assert (answer["type"], answer["gateway_id"], answer["ref"]) == ("resumed", "gw-1", "x")
    assert sorted(answer["ids"]) == sorted(ids[:2])
    assert answer["count"] == 2
    renewed = await sync_to_async(expires_at)(ids[0])
    assert answer["expires_at"] == renewed.isoformat()

    for live_id in ids:
        await send_event(layer, matched(live_id, f"k-{live_id}"))
    got = [(await second.receive_json_from(timeout=3))["live_subscription_id"] for _ in ids[:2]]
    assert got == ids[:2]
    assert await second.receive_nothing(timeout=0.5)  # not gw-other's, not the lost one


async def test_another_users_live_subscriptions_cannot_be_resumed_or_deleted(
    layer: Any, token: str, sockets: Any
) -> None:
    owner = await sockets(authorization(token))
    await ready(owner)
    (live_id,) = await register(owner, entry())

    intruder_user = await sync_to_async(operator)("intruder")
    _, text = await sync_to_async(issue_token)(intruder_user)
    intruder = await sockets(authorization(text))
    await ready(intruder)
    answer = await ask(intruder, {"type": "resume", "gateway_id": "gw-1"})
    assert (answer["type"], answer["count"], answer["ids"]) == ("resumed", 0, [])
    assert answer["expires_at"] is None
    answer = await ask(intruder, {"type": "delete", "id": live_id})
    assert (answer["type"], answer["status"]) == ("error", 404)

    await send_event(layer, matched(live_id))
    assert (await owner.receive_json_from(timeout=3))["live_subscription_id"] == live_id
    assert await intruder.receive_nothing(timeout=0.5)


async def test_the_socket_renews_its_live_subscriptions_while_open_and_not_after(
    settings: Any, token: str, sockets: Any
) -> None:
    settings.LIVE_SUBSCRIPTION_TTL_SECONDS = 1.5  # renewed every 0.5 s
    socket = await sockets(authorization(token))
    await ready(socket)
    (live_id,) = await register(socket, entry())
    registered = await sync_to_async(expires_at)(live_id)

    await asyncio.sleep(1.2)
    renewed = await sync_to_async(expires_at)(live_id)
    assert renewed > registered

    await socket.disconnect()
    await asyncio.sleep(0.8)
    left = await sync_to_async(expires_at)(live_id)
    await asyncio.sleep(0.6)
    assert await sync_to_async(expires_at)(live_id) == left  # nobody renews it now


async def test_a_heartbeat_message_renews_the_gateways_live_subscriptions(
    token: str, sockets: Any
) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    ids = await register(socket, entry(), entry())
    before = [await sync_to_async(expires_at)(live_id) for live_id in ids]
    answer = await ask(socket, {"type": "heartbeat", "gateway_id": "gw-1"})
    assert (answer["type"], answer["renewed"]) == ("heartbeat", 2)
    after = [await sync_to_async(expires_at)(live_id) for live_id in ids]
    assert all(a > b for a, b in zip(after, before, strict=True))
    assert answer["expires_at"] == after[0].isoformat()


async def test_one_deleted_elsewhere_is_let_go_at_the_next_renewal(
    settings: Any, layer: Any, token: str, sockets: Any
) -> None:
    settings.LIVE_SUBSCRIPTION_TTL_SECONDS = 0.9  # renewed every 0.3 s
    socket = await sockets(authorization(token))
    await ready(socket)
    kept, deleted = await register(socket, entry(), entry())
    await LiveSubscription.objects.filter(pk=deleted).adelete()  # as the API or admin does

    assert await socket.receive_json_from(timeout=3) == {"type": "gone", "ids": [deleted]}
    group = live_group(uuid.UUID(deleted))
    assert await layer.connection(0).zcard(f"{layer.prefix}:group:{group}") == 0
    await send_event(layer, matched(kept))
    assert (await socket.receive_json_from(timeout=3))["live_subscription_id"] == kept


async def test_a_slow_client_gets_a_dropped_summary_then_is_closed_if_it_stays_behind(
    settings: Any, layer: Any, token: str, sockets: Any
) -> None:
    settings.LIVE_WS_SEND_BUFFER = 5
    settings.LIVE_WS_BEHIND_SECONDS = 1.0
    socket = await sockets(authorization(token), unread=3)
    await ready(socket)
    (live_id,) = await register(socket, entry())

    # 20 events while the client reads nothing: 3 unread at the server, 1 in the sender's
    # hands, 5 in the buffer; the other 11 are dropped.
    for position in range(20):
        await send_event(layer, matched(live_id, f"k{position}", position))
    await asyncio.sleep(0.3)
    got = [await socket.receive_json_from(timeout=3) for _ in range(10)]  # catching up
    assert [m["position"] for m in got[:9]] == list(range(9))
    summary = got[9]
    assert (summary["type"], summary["count"]) == ("dropped", 11)
    assert isinstance(summary["since"], float)
    await send_event(layer, matched(live_id, "after", 100))
    assert (await socket.receive_json_from(timeout=3))["position"] == 100  # delivered again

    for position in range(200, 220):  # behind again, and now it stays behind
        await send_event(layer, matched(live_id, f"k{position}", position))
    await asyncio.sleep(2.5)
    while (message := await socket.receive_json_from(timeout=3))["type"] != "closing":
        assert message["type"] == "event"
    assert message["code"] == 4008
    assert "read too slowly" in message["reason"]
    close = await socket.receive_output(timeout=3)
    assert (close["type"], close["code"]) == ("websocket.close", 4008)
    # Closed, but its live subscription is left to its TTL to be resumed.
    assert await LiveSubscription.objects.filter(pk=live_id).aexists()


async def test_a_user_who_lost_the_change_permission_may_no_longer_resume(
    token: str, sockets: Any
) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    await register(socket, entry())
    ops = await User.objects.aget(username="ops")
    await sync_to_async(
        lambda: ops.user_permissions.remove(
            *ops.user_permissions.filter(codename="change_livesubscription")
        )
    )()
    answer = await ask(socket, {"type": "resume", "gateway_id": "gw-1"})
    assert (answer["status"], answer["request"]) == (403, "resume")
    assert "syncer.change_livesubscription" in answer["detail"]


async def test_staff_without_the_view_permission_is_closed_with_4403(
    orders: str, sockets: Any
) -> None:
    bare = await sync_to_async(staff_with)("bare", ())
    _, text = await sync_to_async(issue_token)(bare)
    code, reason = await closed_with(await sockets(authorization(text)))
    assert code == 4403
    assert "syncer.view_subscription" in reason


async def test_an_ack_without_flow_control_is_an_error(token: str, sockets: Any) -> None:
    socket = await sockets(authorization(token))
    await ready(socket)
    answer = await ask(socket, {"type": "ack", "received": 3})
    assert (answer["type"], answer["request"], answer["status"]) == ("error", "ack", 400)
    assert '"flow"' in answer["detail"]


async def test_a_gateway_sends_no_origin_and_another_sites_page_is_refused(
    token: str, staff_cookie: tuple[bytes, bytes]
) -> None:
    gateway = WebsocketCommunicator(application, PATH, headers=[authorization(token)])
    accepted, _ = await gateway.connect()
    assert accepted
    assert (await ready(gateway))["user"] == "ops"
    await gateway.disconnect()

    evil = (b"origin", b"https://evil.example")
    for path in (PATH, "/ws/monitor/"):
        page = WebsocketCommunicator(application, path, headers=[evil, staff_cookie])
        accepted, _ = await page.connect()
        assert not accepted, path
    # Only the live-subscription socket skips the check without an Origin.
    monitor = WebsocketCommunicator(application, "/ws/monitor/", headers=[staff_cookie])
    accepted, _ = await monitor.connect()
    assert not accepted


@pytest.fixture
async def staff_cookie(token: str) -> tuple[bytes, bytes]:
    client = Client()
    await sync_to_async(client.force_login)(await User.objects.aget(username="ops"))
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())
