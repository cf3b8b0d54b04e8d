"""`/ws/live/` end to end through a real daphne process, with aiohttp's websocket client.

daphne serves console.asgi on the test database with a channel layer of this module's
own (a Redis prefix); the test plays the worker by sending `live.matched` messages to a
live subscription's group, as syncer.live.events says the worker does.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from console.models import ApiToken
from syncer.live.events import LIVE_MESSAGE_TYPE, MatchedEvent, live_group
from syncer.models import LiveSubscription
from tests.conftest import DB_SUFFIX
from tests.support.factories import subscription
from tests.support.process import drop_redis_keys, serving_daphne
from tests.support.users import operator

pytestmark = pytest.mark.django_db(transaction=True)

RECHECK = 0.3
BUFFER = 5
BEHIND = 1.0
PREFIX = f"searchsync_test{DB_SUFFIX}_{uuid.uuid4().hex[:12]}"
LAYERS: dict[str, Any] = copy.deepcopy(django_settings.CHANNEL_LAYERS)
LAYERS["default"]["CONFIG"]["prefix"] = PREFIX


@pytest.fixture(scope="module")
def daphne(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`daphne console.asgi:application` on the test database; its ws:// base URL."""
    folder = tmp_path_factory.mktemp("daphne_live")
    extra = {
        "CHANNEL_LAYERS": LAYERS,
        "LIVE_STREAM_RECHECK_SECONDS": RECHECK,
        "LIVE_WS_AUTH_SECONDS": 1,
        "LIVE_WS_SEND_BUFFER": BUFFER,
        "LIVE_WS_BEHIND_SECONDS": BEHIND,
    }
    try:
        with serving_daphne(folder, django_settings.DATABASES["default"]["NAME"], extra) as port:
            yield f"ws://127.0.0.1:{port}"
    finally:
        drop_redis_keys(django_settings.REDIS_URL, PREFIX)


@pytest.fixture(autouse=True)
async def layer(settings: Any) -> AsyncIterator[Any]:
    settings.CHANNEL_LAYERS = LAYERS
    yield get_channel_layer()
    await sync_to_async(connections.close_all)()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _gateway_token() -> tuple[ApiToken, str]:
    subscription("orders")
    return ApiToken.issue(operator(), "gateway")


@pytest.fixture
async def token() -> tuple[ApiToken, str]:
    return await sync_to_async(_gateway_token)()


async def connect(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None
) -> aiohttp.ClientWebSocketResponse:
    """A gateway's socket: no Origin (it is no browser page)."""
    return await http.ws_connect(f"{base}/ws/live/", headers=headers or {})


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


async def receive(socket: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await socket.receive_json(timeout=5)
    return message


async def closed(socket: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """The `closing` message's reason, and the close code daphne sent."""
    closing = await receive(socket)
    assert closing["type"] == "closing", closing
    frame = await socket.receive(timeout=5)
    assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), frame
    assert socket.close_code == closing["code"]
    return socket.close_code, str(closing["reason"])


async def register(socket: aiohttp.ClientWebSocketResponse, gateway_id: str = "gw-1") -> str:
    await socket.send_json(
        {
            "type": "register",
            "subscriptions": [
                {"gateway_id": gateway_id, "subscription": "orders", "filter": "doc.total > 100"}
            ],
        }
    )
    answer = await receive(socket)
    assert answer["type"] == "registered", answer
    return str(answer["items"][0]["id"])


def matched(live_id: str, key: str, position: int) -> MatchedEvent:
    return MatchedEvent(
        live_subscription_id=uuid.UUID(live_id),
        gateway_id="gw-1",
        subscription="orders",
        op="upsert",
        key=key,
        position=position,
        commit_time=1_700_000_123.5,
        document={"id": key, "total": "250.00", "meta": {"region": "eu"}},
    )


async def send_event(layer: Any, event: MatchedEvent) -> None:
    await layer.group_send(
        live_group(event.live_subscription_id),
        {"type": LIVE_MESSAGE_TYPE, "event": event.to_json().decode()},
    )


async def test_header_token_register_and_receive_an_event(
    daphne: str, layer: Any, http: Any, token: Any
) -> None:
    socket = await connect(http, daphne, bearer(token[1]))
    assert (await receive(socket))["type"] == "ready"
    live_id = await register(socket)
    row = await LiveSubscription.objects.aget(pk=live_id)
    assert (row.delivery, row.gateway_id) == ("websocket", "gw-1")

    await send_event(layer, matched(live_id, "o-7", 901))
    assert await receive(socket) == {
        "type": "event",
        "live_subscription_id": live_id,
        "gateway_id": "gw-1",
        "subscription": "orders",
        "op": "upsert",
        "key": "o-7",
        "position": 901,
        "commit_time": 1_700_000_123.5,
        "document": {"id": "o-7", "total": "250.00", "meta": {"region": "eu"}},
    }
    await socket.close()


async def test_token_as_first_message_then_resume_after_a_reconnect(
    daphne: str, layer: Any, http: Any, token: Any
) -> None:
    first = await connect(http, daphne)
    await first.send_json({"type": "auth", "token": token[1]})
    assert (await receive(first))["type"] == "ready"
    live_id = await register(first, "gw-restarts")
    await first.close()

    second = await connect(http, daphne, bearer(token[1]))
    assert (await receive(second))["type"] == "ready"
    await second.send_json({"type": "resume", "gateway_id": "gw-restarts"})
    resumed = await receive(second)
    assert (resumed["type"], resumed["ids"]) == ("resumed", [live_id])
    await send_event(layer, matched(live_id, "after-restart", 902))
    event = await receive(second)
    assert (event["type"], event["key"], event["position"]) == ("event", "after-restart", 902)
    await second.close()


async def test_a_staff_session_cookie_opens_it(daphne: str, http: Any, token: Any) -> None:
    client = Client()
    await sync_to_async(client.force_login)(await User.objects.aget(username="ops"))
    # A browser: its page's Origin, and the session cookie.
    cookie = {
        "Cookie": f"sessionid={client.cookies['sessionid'].value}",
        "Origin": daphne.replace("ws://", "http://"),
    }
    socket = await connect(http, daphne, cookie)
    assert (await receive(socket))["user"] == "ops"
    await socket.close()


async def test_wrong_token_missing_token_and_revoked_while_open_are_closed_with_4401(
    daphne: str, http: Any, token: Any
) -> None:
    wrong = await connect(http, daphne, bearer("ssk_wrong"))
    assert await closed(wrong) == (4401, "invalid API token; check it, or ask for a new one")

    silent = await connect(http, daphne)  # LIVE_WS_AUTH_SECONDS = 1 in this daphne
    code, reason = await closed(silent)
    assert code == 4401
    assert reason.startswith("no credentials within 1 s")

    found, text = token
    socket = await connect(http, daphne, bearer(text))
    assert (await receive(socket))["type"] == "ready"
    await sync_to_async(found.revoke)()
    assert await closed(socket) == (4401, "this API token has been revoked")


async def test_a_slow_client_with_flow_control_gets_dropped_then_is_closed_with_4008(
    daphne: str, layer: Any, http: Any, token: Any
) -> None:
    socket = await connect(http, daphne, bearer(token[1]))
    assert (await receive(socket))["type"] == "ready"
    await socket.send_json({"type": "flow", "window": 5})
    assert await receive(socket) == {"type": "flow", "ref": None, "window": 5}
    live_id = await register(socket)

    async def burst(first: int) -> None:
        for position in range(first, first + 20):
            await send_event(layer, matched(live_id, f"k{position}", position))
        await asyncio.sleep(0.5)  # all offered before the client reads on

    async def events(count: int) -> list[int]:
        got = [await receive(socket) for _ in range(count)]
        assert {m["type"] for m in got} == {"event"}, got
        return [m["position"] for m in got]

    # 5 sent (the window), 5 buffered, 10 dropped while the client acknowledges nothing.
    await burst(0)
    assert await events(5) == [0, 1, 2, 3, 4]
    await socket.send_json({"type": "ack", "received": 5})
    assert await events(5) == [5, 6, 7, 8, 9]
    summary = await receive(socket)
    assert (summary["type"], summary["count"]) == ("dropped", 10)
    await socket.send_json({"type": "ack", "received": 10})

    await burst(100)  # behind again, and it stays behind for over BEHIND seconds
    assert await events(5) == [100, 101, 102, 103, 104]
    code, reason = await closed(socket)
    assert code == 4008
    assert "read too slowly" in reason
