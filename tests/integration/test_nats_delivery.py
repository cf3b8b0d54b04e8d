"""NATS JetStream delivery of matched events, read back by a real JetStream consumer.

The real NATS server on 127.0.0.1:4222 (JetStream on) is shared with other test runs:
each test has its own stream and subject prefix, named after a random id, and deletes
its stream at the end. Outages are a `TcpProxy` in front of the server taken down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import nats.js.errors
import orjson
import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from syncer.conf import NatsConfig
from syncer.live.delivery import Breaker, DropReason
from syncer.live.events import MatchedEvent
from syncer.live.nats import NatsDelivery
from syncer.worker.metrics import registry_for
from tests.support import nats_publisher
from tests.support.jetstream import NATS_HOST, NATS_PORT, NATS_URL, Stream, make_config
from tests.support.process import ROOT
from tests.support.tcpproxy import TcpProxy

OFFER_BOUND = 0.1
"""Seconds one `offer` may take while NATS is down: a tenth of the publish timeout and of
the reconnect wait, so waiting on either would fail it; loose enough for a busy machine."""


def events(count: int, live_id: uuid.UUID | None = None, gateway: str = "gw-1", start: int = 0):
    live_id = live_id or uuid.uuid4()
    return [
        MatchedEvent(
            live_subscription_id=live_id,
            gateway_id=gateway,
            subscription="orders",
            op="upsert",
            key=str(i),
            position=1000 + i,
            commit_time=1.7e9 + i,
            document={"id": i, "region": "eu", "meta": {"n": i}},
        )
        for i in range(start, start + count)
    ]


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
def run() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def direct(run: str) -> AsyncIterator[NatsConfig]:
    """A configuration on the real server, its stream deleted after the test."""
    config = make_config(run)
    yield config
    await Stream(config).delete()


Start = Callable[[NatsConfig], Awaitable[NatsDelivery]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a delivery; every one is stopped at the end, even when the test failed."""
    started: list[NatsDelivery] = []

    async def start(config: NatsConfig) -> NatsDelivery:
        delivery = NatsDelivery(config)
        started.append(delivery)
        await delivery.start()
        return delivery

    yield start
    for delivery in started:
        await delivery.stop(timeout=0)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(NATS_HOST, NATS_PORT)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
async def proxied(run: str, proxy: TcpProxy) -> AsyncIterator[NatsConfig]:
    """A configuration through the proxy, with a small buffer and window."""
    config = make_config(run, url=f"nats://{proxy.host}:{proxy.port}", buffer=50, window=10)
    yield config
    await Stream(config).delete()


def breaker_of(delivery: NatsDelivery) -> Breaker:
    """Read afresh: mypy would keep an earlier `is Breaker.OPEN` narrowing past an await."""
    return delivery.breaker


def stored_keys(messages: list[Msg]) -> list[str]:
    return [MatchedEvent.from_json(m.data).key for m in messages]


async def test_delivers_each_event_on_its_subject_with_its_msg_id_and_body(
    direct: NatsConfig, start: Start
):
    delivery = await start(direct)
    first, second = uuid.uuid4(), uuid.uuid4()
    sent = [
        *events(2, first, gateway="gw-a"),
        MatchedEvent(second, "gw_b", "orders", "delete", "a|b", 77, 1.7e9, None),
    ]
    assert all(delivery.offer(event) for event in sent)
    await wait_until(lambda: delivery.published == 3)
    await delivery.stop(timeout=5)

    received = await Stream(direct).messages()
    assert [m.subject for m in received] == [
        f"{direct.subject_prefix}.gw-a.{first}",
        f"{direct.subject_prefix}.gw-a.{first}",
        f"{direct.subject_prefix}.gw_b.{second}",
    ]
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in received] == [e.msg_id for e in sent]
    assert [MatchedEvent.from_json(m.data) for m in received] == sent
    body = orjson.loads(received[2].data)
    assert body == {
        "live_subscription_id": str(second),
        "gateway_id": "gw_b",
        "subscription": "orders",
        "op": "delete",
        "key": "a|b",
        "position": 77,
        "commit_time": 1.7e9,
        "document": None,
    }
    assert delivery.duplicates == 0 and sum(delivery.dropped.values()) == 0
    assert delivery.publish_seconds.snapshot().count == 3


async def test_creates_the_missing_stream_with_the_settings_limits(
    direct: NatsConfig, start: Start
):
    stream = Stream(direct)
    assert not await stream.exists()
    delivery = await start(direct)
    delivery.offer(events(1)[0])
    await wait_until(lambda: delivery.published == 1)
    await delivery.stop(timeout=5)

    config = await stream.info()
    assert config.subjects == [f"{direct.subject_prefix}.>"]
    assert config.max_age == pytest.approx(120.0)
    assert config.duplicate_window == pytest.approx(60.0)


async def test_updates_an_existing_stream_to_the_settings_limits(direct: NatsConfig, start: Start):
    nc = await nats.connect(NATS_URL)
    other = f"{direct.subject_prefix}-other.>"
    await nc.jetstream().add_stream(
        StreamConfig(name=direct.stream, subjects=[other], max_age=600, duplicate_window=5)
    )
    await nc.close()
    delivery = await start(direct)
    delivery.offer(events(1)[0])
    await wait_until(lambda: delivery.published == 1)
    await delivery.stop(timeout=5)

    config = await Stream(direct).info()
    assert config.subjects == [other, f"{direct.subject_prefix}.>"]  # theirs kept
    assert config.max_age == pytest.approx(120.0)
    assert config.duplicate_window == pytest.approx(60.0)


async def test_the_same_event_twice_or_after_a_restart_is_stored_once(
    direct: NatsConfig, start: Start
):
    event = events(1)[0]
    delivery = await start(direct)
    delivery.offer(event)
    await wait_until(lambda: delivery.published == 1)
    delivery.offer(event)  # a retry of the same change
    await wait_until(lambda: delivery.published == 2)
    await delivery.stop(timeout=5)
    assert delivery.duplicates == 1

    restarted = await start(direct)  # a new worker replaying from its checkpoint
    restarted.offer(event)
    await wait_until(lambda: restarted.published == 1)
    await restarted.stop(timeout=5)
    assert restarted.duplicates == 1

    received = await Stream(direct).messages()
    assert len(received) == 1
    assert MatchedEvent.from_json(received[0].data) == event


async def test_an_outage_buffers_drops_the_overflow_and_recovers(
    proxied: NatsConfig, proxy: TcpProxy, start: Start
):
    delivery = await start(proxied)
    before, during = events(1), events(80, start=1)
    delivery.offer(before[0])
    await wait_until(lambda: delivery.published == 1)

    with proxy.down():
        slowest = 0.0
        accepted: list[MatchedEvent] = []
        for i, event in enumerate(during):
            started = time.perf_counter()
            if delivery.offer(event):
                accepted.append(event)
            slowest = max(slowest, time.perf_counter() - started)
            if i == 0:  # the first publish fails: from then on the breaker is open
                await wait_until(lambda: delivery.breaker is Breaker.OPEN, timeout=10)
        assert slowest < OFFER_BOUND
        assert accepted == during[: proxied.buffer]
        assert delivery.dropped[DropReason.BREAKER_OPEN] == len(during) - proxied.buffer
        assert delivery.published == 1
        await asyncio.sleep(1.0)  # the sender keeps trying; none of it reaches the sync
        assert delivery.breaker is Breaker.OPEN and not delivery.connected
        assert delivery.buffered == proxied.buffer
        # The checkpoint may not pass what NATS has not acknowledged yet.
        assert delivery.unsettled_since("orders") == during[0].position
        assert delivery.unsettled_since("another") is None

    await wait_until(lambda: delivery.published == 1 + len(accepted), timeout=20)
    assert breaker_of(delivery) is Breaker.CLOSED and delivery.connected
    assert delivery.outages == 1 and delivery.retried >= 1
    assert delivery.unsettled_since("orders") is None
    await delivery.stop(timeout=5)

    received = await Stream(proxied).messages()
    assert stored_keys(received) == [e.key for e in [*before, *accepted]]  # once each, in order
    assert delivery.dropped == {DropReason.BREAKER_OPEN: 30}


async def test_starts_while_nats_is_down_and_delivers_once_it_is_up(
    proxied: NatsConfig, proxy: TcpProxy, start: Start
):
    sent = events(20)
    with proxy.down():
        started = time.perf_counter()
        delivery = await start(proxied)
        assert time.perf_counter() - started < 0.5
        assert all(delivery.offer(event) for event in sent)
        await asyncio.sleep(1.5)
        assert delivery.published == 0 and not delivery.connected
    await wait_until(lambda: delivery.published == len(sent), timeout=20)
    await delivery.stop(timeout=5)
    assert stored_keys(await Stream(proxied).messages()) == [e.key for e in sent]


async def test_a_stream_deleted_while_running_is_created_again(direct: NatsConfig, start: Start):
    stream = Stream(direct)
    delivery = await start(direct)
    first, later = events(2)
    delivery.offer(first)
    await wait_until(lambda: delivery.published == 1)
    await stream.delete()
    delivery.offer(later)
    await wait_until(lambda: delivery.published == 2, timeout=10)
    await delivery.stop(timeout=5)
    assert stored_keys(await stream.messages()) == [later.key]
    assert delivery.outages == 1


async def test_stop_flushes_what_is_buffered(direct: NatsConfig, start: Start):
    delivery = await start(direct)
    sent = events(2000)
    assert all(delivery.offer(event) for event in sent)
    await delivery.stop(timeout=20)
    assert delivery.published == len(sent) and not delivery.dropped
    assert await Stream(direct).count() == len(sent)
    assert not delivery.offer(events(1)[0])
    assert delivery.dropped == {DropReason.STOPPED: 1}


async def test_stop_gives_up_after_its_timeout_while_nats_is_down(
    proxied: NatsConfig, proxy: TcpProxy, start: Start
):
    delivery = await start(proxied)
    delivery.offer(events(1)[0])
    await wait_until(lambda: delivery.published == 1)
    with proxy.down():
        for event in events(5, start=1):
            delivery.offer(event)
        started = time.perf_counter()
        await delivery.stop(timeout=1.0)
        assert time.perf_counter() - started < 3.0
    assert delivery.dropped == {DropReason.STOPPED: 5}
    assert delivery.buffered == 0


async def test_an_event_larger_than_the_server_takes_is_dropped_and_the_rest_delivered(
    direct: NatsConfig,
    start: Start,
):
    delivery = await start(direct)
    small, huge, after = events(3)
    huge = dataclasses.replace(huge, document={"blob": "x" * 2_000_000})
    for event in (small, huge, after):
        assert delivery.offer(event)
    await wait_until(lambda: delivery.published == 2)
    await delivery.stop(timeout=5)
    assert delivery.dropped == {DropReason.TOO_LARGE: 1}
    assert delivery.unsettled_since("orders") is None
    assert stored_keys(await Stream(direct).messages()) == [small.key, after.key]


async def test_the_worker_metrics_export_the_delivery_counters(direct: NatsConfig, start: Start):
    delivery = await start(direct)
    for event in events(3):
        delivery.offer(event)
    await wait_until(lambda: delivery.published == 3)
    registry = registry_for(lambda: {}, count_dead_letters=lambda names: {}, nats=lambda: delivery)
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    await delivery.stop(timeout=5)
    assert scraped[("searchsync_live_nats_published_total", ())] == 3
    assert scraped[("searchsync_live_nats_breaker_open", ())] == 0
    assert scraped[("searchsync_live_nats_connected", ())] == 1
    assert scraped[("searchsync_live_nats_dropped_total", (("reason", "breaker_open"),))] == 0
    assert scraped[("searchsync_live_nats_publish_seconds_count", ())] == 3
    assert scraped[("searchsync_live_nats_delivery_seconds_bucket", (("le", "+Inf"),))] == 3


def _publisher(config: NatsConfig, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.support.nats_publisher"),
            *(config.url, config.stream, config.subject_prefix, str(count)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def test_a_publisher_killed_midway_and_started_again_stores_each_event_once(
    direct: NatsConfig,
):
    count = 3000
    stream = Stream(direct)
    first = _publisher(direct, count)
    try:
        stored = 0
        deadline = time.monotonic() + 30
        while stored < 300:  # well into the sequence, far from its end
            assert time.monotonic() < deadline and first.poll() is None, "publisher ended"
            await asyncio.sleep(0.02)
            stored = await stream.count() if await stream.exists() else 0
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    await asyncio.sleep(0.3)  # what the server had already read is stored by now
    at_kill = await stream.count()
    assert 300 <= at_kill < count

    second = _publisher(direct, count)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0
    counters = orjson.loads(out.strip().splitlines()[-1])
    assert counters == {"published": count, "duplicates": at_kill, "dropped": {}}

    received = await stream.messages()
    assert stored_keys(received) == [str(i) for i in range(count)]  # none lost, none twice
    expected = nats_publisher.sequence(direct.stream, count)
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in received] == [
        e.msg_id for e in expected
    ]


async def test_an_undeliverable_event_settles_after_the_events_offered_before_it(
    proxied: NatsConfig, proxy: TcpProxy, start: Start
):
    delivery = await start(proxied)
    first, waiting, huge, after = events(4)
    huge = dataclasses.replace(huge, document={"blob": "x" * 2_000_000})
    delivery.offer(first)
    await wait_until(lambda: delivery.published == 1)  # connected: max payload known
    with proxy.down():
        for event in (waiting, huge, after):
            assert delivery.offer(event)
        await wait_until(lambda: breaker_of(delivery) is Breaker.OPEN, timeout=10)
        # `waiting` is in flight, unacknowledged: the checkpoint must stay below it, even
        # though the event behind it cannot go (dropped once `waiting` is acknowledged).
        assert delivery.unsettled_since("orders") == waiting.position
        assert delivery.settled == 1 and not delivery.dropped
    await wait_until(lambda: delivery.published == 3, timeout=20)
    assert delivery.dropped == {DropReason.TOO_LARGE: 1} and delivery.settled == 4
    assert delivery.unsettled_since("orders") is None
    await delivery.stop(timeout=5)
    assert stored_keys(await Stream(proxied).messages()) == [first.key, waiting.key, after.key]
