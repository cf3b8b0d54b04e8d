"""The worker numbers each live subscription's websocket messages (syncer.worker.
live_subscriptions), read back from a real in-memory Channels layer: consecutive per
live subscription, one lost in the worker's own queue still takes a number (so the
socket sees the gap), and each worker run has an epoch of its own."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from channels.layers import InMemoryChannelLayer

from syncer.engine.changes import Change, Op
from syncer.engine.matching import Matcher, compile_filter
from syncer.live.events import LIVE_MESSAGE_TYPE, MatchedEvent, live_group
from syncer.worker.live_subscriptions import LiveMatching, _Known, _Watched

SUB = 1


def matching_with(layer: Any, queue_size: int, *live_ids: uuid.UUID) -> LiveMatching:
    """A worker's matching whose sync subscription SUB has `live_ids`, all websocket."""
    matching = LiveMatching(queue_size=queue_size, send_timeout=1.0, layer=layer)
    matcher: Matcher[uuid.UUID] = Matcher()
    watched = matching._watched[SUB] = _Watched("orders", matcher=matcher)
    for live_id in live_ids:
        matcher.add(live_id, compile_filter('doc.region == "eu"'))
        watched.known[live_id] = _Known('doc.region == "eu"', "websocket", "gw-1")
    return matching


def change(key: int) -> Change:
    return Change(Op.UPSERT, str(key), (key,), 100 + key, 1.7e9, doc={"region": "eu"})


async def received(layer: InMemoryChannelLayer, channel: str, count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(layer.receive(channel), 2) for _ in range(count)]


async def run_until_sent(matching: LiveMatching) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(matching.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await task


async def test_numbers_are_consecutive_per_live_subscription_under_one_epoch() -> None:
    layer = InMemoryChannelLayer()
    a, b = uuid.uuid4(), uuid.uuid4()
    channel = await layer.new_channel()
    await layer.group_add(live_group(a), channel)
    await layer.group_add(live_group(b), channel)
    matching = matching_with(layer, 100, a, b)
    for key in range(3):
        matching.match_once(SUB, change(key))
    await run_until_sent(matching)

    messages = await received(layer, channel, 6)
    assert {m["type"] for m in messages} == {LIVE_MESSAGE_TYPE}
    assert {m["epoch"] for m in messages} == {matching.epoch}
    by_live = {live: [m["seq"] for m in messages if m["live"] == live.hex] for live in (a, b)}
    assert by_live == {a: [1, 2, 3], b: [1, 2, 3]}
    first = MatchedEvent.from_json(next(m["event"] for m in messages if m["live"] == a.hex))
    assert (first.live_subscription_id, first.key) == (a, "0")


async def test_an_event_the_worker_queue_drops_still_takes_its_number() -> None:
    layer = InMemoryChannelLayer()
    a = uuid.uuid4()
    channel = await layer.new_channel()
    await layer.group_add(live_group(a), channel)
    matching = matching_with(layer, 2, a)
    for key in range(5):  # 2 queued, 3 dropped: the sender is not running yet
        matching.match_once(SUB, change(key))
    assert matching.deliveries["websocket", "dropped"] == 3
    await run_until_sent(matching)
    matching.match_once(SUB, change(9))
    await run_until_sent(matching)

    assert [m["seq"] for m in await received(layer, channel, 3)] == [1, 2, 6]


def test_each_worker_run_has_an_epoch_of_its_own() -> None:
    epochs = {LiveMatching(queue_size=1, send_timeout=1.0).epoch for _ in range(50)}
    assert len(epochs) == 50
