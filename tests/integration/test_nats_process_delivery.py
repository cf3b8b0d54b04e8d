"""NATS delivery from the publisher process (`NatsProcessDelivery`), read back by a real
JetStream consumer: the same contract as the in-process delivery, across a process
boundary that may die.

The real NATS server on 127.0.0.1:4222 (JetStream on), a stream and subject prefix of
each test's own, deleted at the end; outages are a `TcpProxy` in front of it taken down.
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
from pathlib import Path

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from syncer.conf import NatsConfig
from syncer.live.delivery import Breaker, DropReason
from syncer.live.events import MatchedEvent
from syncer.live.nats import NatsDelivery
from syncer.live.nats_process import NatsProcessDelivery, nats_delivery
from syncer.live.nats_publisher import ORPHAN_FLUSH
from syncer.worker.metrics import registry_for
from tests.integration.test_nats_delivery import OFFER_BOUND, events, stored_keys, wait_until
from tests.support.jetstream import NATS_HOST, NATS_PORT, Stream, make_config
from tests.support.process import ROOT
from tests.support.tcpproxy import TcpProxy

Start = Callable[[NatsConfig], Awaitable[NatsProcessDelivery]]


@pytest.fixture
async def direct() -> AsyncIterator[NatsConfig]:
    config = make_config(f"t{uuid.uuid4().hex[:12]}")
    yield config
    await Stream(config).delete()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(NATS_HOST, NATS_PORT)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
async def proxied(proxy: TcpProxy) -> AsyncIterator[NatsConfig]:
    """Through the proxy, with a small buffer and window."""
    config = make_config(
        f"t{uuid.uuid4().hex[:12]}",
        url=f"nats://{proxy.host}:{proxy.port}",
        buffer=50,
        window=10,
    )
    yield config
    await Stream(config).delete()


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a delivery; each is stopped at the end, its publisher gone even if it failed."""
    started: list[NatsProcessDelivery] = []

    async def start(config: NatsConfig) -> NatsProcessDelivery:
        delivery = NatsProcessDelivery(config)
        started.append(delivery)
        await delivery.start()
        await wait_until(lambda: delivery.pid is not None)
        return delivery

    yield start
    for delivery in started:
        await delivery.stop(timeout=0)


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def breaker_of(delivery: NatsProcessDelivery) -> Breaker:
    """Read afresh: mypy would keep an earlier narrowing past an await."""
    return delivery.breaker


async def test_delivers_in_order_with_msg_ids_from_a_child_process(
    direct: NatsConfig, start: Start
):
    delivery = await start(direct)
    assert delivery.pid is not None and delivery.pid != os.getpid()
    assert parent_of(delivery.pid) == os.getpid()
    first, second = uuid.uuid4(), uuid.uuid4()
    sent = [
        *events(300, first, gateway="gw-a"),
        MatchedEvent(second, "gw_b", "orders", "delete", "a|b", 5000, 1.7e9, None),
        *events(300, first, gateway="gw-a", start=300),
    ]
    assert all(delivery.offer(event) for event in sent)
    await wait_until(lambda: delivery.buffered == 0)
    publisher = delivery.pid
    await delivery.stop(timeout=5)
    assert not running(publisher), "stop ends the publisher"

    received = await Stream(direct).messages()
    assert [MatchedEvent.from_json(m.data) for m in received] == sent
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in received] == [e.msg_id for e in sent]
    assert received[300].subject == f"{direct.subject_prefix}.gw_b.{second}"
    assert {m.subject for m in received[:300]} == {f"{direct.subject_prefix}.gw-a.{first}"}
    assert delivery.published == len(sent) and delivery.duplicates == 0
    assert not delivery.dropped and delivery.restarts == 0


async def test_the_publishers_counters_reach_the_worker_metrics(direct: NatsConfig, start: Start):
    delivery = await start(direct)
    small, huge, after = events(3)
    huge = dataclasses.replace(huge, document={"blob": "x" * 2_000_000})
    for event in (small, huge, after):
        assert delivery.offer(event)
    await wait_until(lambda: delivery.published == 2 and delivery.connected)
    registry = registry_for(lambda: {}, count_dead_letters=lambda names: {}, nats=lambda: delivery)
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    await delivery.stop(timeout=5)
    assert scraped[("searchsync_live_nats_published_total", ())] == 2
    assert scraped[("searchsync_live_nats_dropped_total", (("reason", "too_large"),))] == 1
    assert scraped[("searchsync_live_nats_connected", ())] == 1
    assert scraped[("searchsync_live_nats_breaker_open", ())] == 0
    assert scraped[("searchsync_live_nats_buffered_events", ())] == 0
    assert scraped[("searchsync_live_nats_publisher_restarts_total", ())] == 0
    assert scraped[("searchsync_live_nats_publish_seconds_count", ())] == 2
    assert scraped[("searchsync_live_nats_delivery_seconds_bucket", (("le", "+Inf"),))] == 2
    assert scraped[("searchsync_live_nats_delivery_seconds_sum", ())] > 0
    assert stored_keys(await Stream(direct).messages()) == [small.key, after.key]


async def test_a_publisher_killed_mid_stream_is_restarted_and_each_event_is_stored_once(
    direct: NatsConfig, start: Start
):
    delivery = await start(dataclasses.replace(direct, buffer=5000, window=20))
    stream = Stream(direct)
    sent = events(3000)
    killed, stored_at_kill = delivery.pid, 0
    assert killed is not None
    for step in range(0, len(sent), 50):  # paced, so that the kill lands midway
        assert all(delivery.offer(event) for event in sent[step : step + 50])
        await asyncio.sleep(0.02)
        if not stored_at_kill and await stream.exists() and await stream.count() >= 300:
            os.kill(killed, signal.SIGKILL)
            stored_at_kill = await stream.count()
    assert 300 <= stored_at_kill < len(sent), "killed midway"
    await wait_until(lambda: delivery.buffered == 0, timeout=30)
    assert delivery.restarts == 1
    assert delivery.pid is not None and delivery.pid != killed and not running(killed)
    received = await stream.messages()
    assert stored_keys(received) == [e.key for e in sent], "none lost, none twice, in order"
    await delivery.stop(timeout=5)


async def test_unsettled_events_are_kept_across_a_publisher_kill_during_an_outage(
    proxied: NatsConfig, proxy: TcpProxy, start: Start
):
    delivery = await start(proxied)
    await wait_until(lambda: delivery.connected)  # else no publish can fail: no breaker
    orders = events(5, start=10)
    users = [dataclasses.replace(e, subscription="users") for e in events(3, start=12)]
    with proxy.down():
        for event in (*orders, *users):
            assert delivery.offer(event)
        await wait_until(lambda: breaker_of(delivery) is Breaker.OPEN, timeout=10)
        killed = delivery.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        await wait_until(lambda: delivery.restarts == 1 and delivery.pid not in {None, killed})
        # Held for the checkpoint until JetStream acknowledges, whichever process sends.
        assert delivery.unsettled_since("orders") == orders[0].position
        assert delivery.unsettled_since("users") == users[0].position
        assert delivery.buffered == len(orders) + len(users)
        await asyncio.sleep(0.5)
        assert delivery.published == 0
    stream = Stream(proxied)
    deadline = time.monotonic() + 20
    while delivery.unsettled_since("orders") is not None:
        assert time.monotonic() < deadline, "not delivered after the outage"
        await asyncio.sleep(0.001)
    # Settled only once stored: the worker never hears of it before JetStream said so.
    assert await stream.count() >= len(orders)
    await wait_until(lambda: delivery.unsettled_since("users") is None, timeout=20)
    assert stored_keys(await stream.messages()) == [e.key for e in (*orders, *users)]


async def test_an_outage_buffers_in_the_worker_drops_the_overflow_and_recovers(
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
            if i == 0:  # the first publish fails: the publisher's stats say the breaker opened
                await wait_until(lambda: delivery.breaker is Breaker.OPEN, timeout=10)
        assert slowest < OFFER_BOUND
        assert accepted == during[: proxied.buffer]
        assert delivery.dropped == {DropReason.BREAKER_OPEN: len(during) - proxied.buffer}
        await asyncio.sleep(1.0)
        assert delivery.published == 1 and not delivery.connected
        assert delivery.buffered == proxied.buffer
        assert delivery.unsettled_since("orders") == during[0].position

    await wait_until(lambda: delivery.published == 1 + len(accepted), timeout=20)
    await wait_until(lambda: breaker_of(delivery) is Breaker.CLOSED and delivery.connected)
    assert delivery.outages == 1 and delivery.retried >= 1
    assert delivery.unsettled_since("orders") is None and delivery.restarts == 0
    await delivery.stop(timeout=5)
    assert stored_keys(await Stream(proxied).messages()) == [e.key for e in [*before, *accepted]]


async def test_stop_gives_up_after_its_timeout_while_nats_is_down(
    proxied: NatsConfig, proxy: TcpProxy, start: Start
):
    delivery = await start(proxied)
    delivery.offer(events(1)[0])
    await wait_until(lambda: delivery.published == 1)
    with proxy.down():
        for event in events(5, start=1):
            delivery.offer(event)
        publisher = delivery.pid
        assert publisher is not None
        started = time.perf_counter()
        await delivery.stop(timeout=1.0)
        # At most the timeout, the publisher's own close (a connect timeout) and the grace
        # after which the worker kills it; then the kill and the reaping.
        assert time.perf_counter() - started < 1.0 + proxied.connect_timeout + 2.0 + 1.5
    assert delivery.dropped == {DropReason.STOPPED: 5}, "counted once, by the publisher"
    assert delivery.buffered == 0 and not running(publisher)
    assert not delivery.offer(events(1)[0])
    assert delivery.dropped == {DropReason.STOPPED: 6}


async def test_the_publisher_exits_when_the_worker_is_killed(proxied: NatsConfig, proxy: TcpProxy):
    with proxy.down():  # it holds events it cannot deliver: it must not wait for ever
        parent = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.support.nats_process_parent"),
                *(proxied.url, proxied.stream, proxied.subject_prefix, "20"),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert parent.stdout is not None
            publisher = orjson.loads(parent.stdout.readline())["publisher"]
            assert running(publisher) and parent_of(publisher) == parent.pid
            await asyncio.sleep(0.5)  # it started delivering
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
            deadline = time.monotonic() + ORPHAN_FLUSH + 5
            while running(publisher):
                assert time.monotonic() < deadline, "the publisher outlived its worker"
                await asyncio.sleep(0.05)
        finally:
            if parent.poll() is None:
                parent.kill()
            parent.communicate()


async def test_the_setting_chooses_the_process_or_the_worker_loop(direct: NatsConfig):
    assert isinstance(nats_delivery(direct), NatsProcessDelivery)
    assert isinstance(nats_delivery(dataclasses.replace(direct, process=False)), NatsDelivery)


async def test_a_url_the_client_cannot_use_drops_events_as_the_in_process_delivery_does():
    config = make_config(f"t{uuid.uuid4().hex[:12]}", url="nats://127.0.0.1:not-a-port")
    delivery = NatsProcessDelivery(config)
    await delivery.start()
    try:
        assert delivery.offer(events(1)[0])
        await wait_until(lambda: delivery.dropped[DropReason.STOPPED] == 1)
        assert delivery.restarts == 0, "not started again: it would give up the same way"
        assert delivery.unsettled_since("orders") is None and delivery.buffered == 0
        assert not delivery.offer(events(1)[0])
        assert delivery.dropped == {DropReason.STOPPED: 2}
    finally:
        await delivery.stop(timeout=1)
