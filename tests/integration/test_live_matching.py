"""Live subscriptions end to end: the real worker matches acknowledged changes and delivers.

Real PostgreSQL source, osmem-server, NATS JetStream on 127.0.0.1:4222 (a stream and
subject prefix of each test's own, deleted after it) and Redis for the Channels layer.
Live subscriptions are registered through the operations the API uses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from syncer.live.events import LIVE_MESSAGE_TYPE, MatchedEvent, live_group
from syncer.models import LiveSubscription, Subscription
from syncer.operations import live_subscriptions as ops
from syncer.worker import metrics
from tests.integration.test_live_publisher import Listener, layer_config
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.jetstream import NATS_HOST, NATS_PORT, Stream
from tests.support.process import WorkerProcess, free_port, worker_env
from tests.support.tcpproxy import TcpProxy
from tests.support.users import operator

PICKUP = 5.0
"""Seconds a registration may take to reach the worker: the refresh runs every control
interval (1 s); loose for a busy machine."""


@pytest.fixture
def orders(source_conn: Any, table_name: str, make_subscription: Any, search: Any) -> Subscription:
    source_conn.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, region text, total int, status text)"
    )
    sub: Subscription = make_subscription("orders", table_name, snapshot_mode="discard")
    return sub


def register(owner: User, gateway: str, text: str, delivery: str = "nats") -> uuid.UUID:
    (created,) = ops.register(owner, [ops.Registration(gateway, "orders", text, delivery)])
    return created.id


def received(stream: Stream) -> list[tuple[str, dict[str, Any], str]]:
    """(subject, body, Nats-Msg-Id) of every message in the stream, in stream order."""
    messages = asyncio.run(stream.messages()) if asyncio.run(stream.exists()) else []
    return [(m.subject, orjson.loads(m.data), (m.headers or {})["Nats-Msg-Id"]) for m in messages]


def wait_received(stream: Stream, count: int, what: str) -> list[tuple[str, dict[str, Any], str]]:
    wait_for(lambda: asyncio.run(stream.count()) >= count, timeout=20, what=what)
    return received(stream)


def sample(worker: WorkerThread, name: str, **labels: str) -> float:
    registry = metrics.registry_for(
        lambda: worker.runner.pipelines, matching=lambda: worker.runner.matching
    )
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_matching_changes_reach_jetstream_once_in_order_and_nothing_else(
    orders: Subscription, source_conn: Any, table_name: str, nats_stream: Stream
) -> None:
    owner = operator()
    eu = register(owner, "gw-a", 'doc.region == "eu"')
    big_us = register(owner, "gw-b", 'doc.region == "us" && doc.total > 100')
    # Unpinned (a top-level `doc.total > 1000` would be range-indexed, and a null total
    # never a candidate): evaluated on every change; `null <= 1000` is an evaluation error.
    large = register(owner, "gw-c", "!(doc.total <= 1000)")
    prefix = nats_stream.config.subject_prefix
    with WorkerThread([orders]) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        assert worker.runner.matching is not None
        assert worker.runner.matching.active() == {"orders": 3}
        assert worker.runner.matching.nats is not None, "a nats live subscription starts it"
        source_conn.execute(
            f"INSERT INTO {table_name} VALUES (1, 'eu', 10, 'new'), (2, 'us', 50, 'new'),"
            " (3, 'us', 500, 'new')"
        )
        # One batch holds one change per document: the update waits for the insert's event.
        wait_received(nats_stream, 2, "the inserts' events")
        source_conn.execute(f"UPDATE {table_name} SET total = 20 WHERE id = 1")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (4, 'ap', NULL, 'new')")
        wait_received(nats_stream, 3, "the update's event")
        wait_for(lambda: worker.runner.matching.matched >= 5, what="every change matched")  # type: ignore[union-attr]
        time.sleep(0.5)  # nothing else arrives
        got = received(nats_stream)
        assert [(subject, body["key"], body["document"]["total"]) for subject, body, _ in got] == [
            (f"{prefix}.gw-a.{eu}", "1", 10),
            (f"{prefix}.gw-b.{big_us}", "3", 500),
            (f"{prefix}.gw-a.{eu}", "1", 20),
        ]
        first = MatchedEvent.from_json(orjson.dumps(got[0][1]))
        assert first.gateway_id == "gw-a" and first.subscription == "orders"
        assert first.op == "upsert" and first.document == {
            "id": 1,
            "region": "eu",
            "total": 10,
            "status": "new",
        }
        assert got[0][2] == first.msg_id
        assert got[0][1]["position"] < got[2][1]["position"], "in order per document"
        assert abs(first.commit_time - time.time()) < 60
        assert not [s for s, _, _ in got if s.endswith(str(large))]
        assert worker.runner.matching.evaluation_errors >= 1, "row 4's null total"
        assert sample(worker, "searchsync_live_evaluation_errors_total") >= 1
        assert (
            sample(worker, "searchsync_live_deliveries_total", channel="nats", outcome="offered")
            == 3
        )
        assert sample(worker, "searchsync_live_subscriptions_active", subscription="orders") == 3

        # Registered while the worker runs: picked up within the refresh interval.
        ap = register(owner, "gw-d", 'doc.region in ["ap", "sa"]')
        registered_at = time.monotonic()
        wait_for(
            lambda: worker.runner.matching.active() == {"orders": 4},  # type: ignore[union-attr]
            timeout=PICKUP,
            what="the new live subscription picked up",
        )
        assert time.monotonic() - registered_at <= PICKUP
        # Deleted and expired ones stop receiving.
        ops.delete(owner, eu)
        LiveSubscription.objects.filter(pk=big_us).update(
            created_at=timezone.now() - dt.timedelta(seconds=10),
            expires_at=timezone.now() - dt.timedelta(seconds=1),
        )
        wait_for(
            lambda: worker.runner.matching.active() == {"orders": 2},  # type: ignore[union-attr]
            timeout=PICKUP,
            what="the deleted and the expired dropped",
        )
        source_conn.execute(
            f"INSERT INTO {table_name} VALUES (5, 'eu', 1, 'x'), (6, 'us', 900, 'x'),"
            " (7, 'sa', 2, 'x')"
        )
        got = wait_received(nats_stream, 4, "the new live subscription's event")
        time.sleep(0.5)
        got = received(nats_stream)
        assert [(s, b["key"]) for s, b, _ in got[3:]] == [(f"{prefix}.gw-d.{ap}", "7")]
    assert worker.result is True

    # Persisted: a new worker matches what was registered before it started.
    with WorkerThread([orders]) as again:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up again")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (8, 'ap', 3, 'x')")
        got = wait_received(nats_stream, 5, "delivered after the restart")
        assert [(s, b["key"]) for s, b, _ in got[4:]] == [(f"{prefix}.gw-d.{ap}", "8")]
        assert len({msg_id for _, _, msg_id in got}) == len(got), "no Nats-Msg-Id twice"
        assert again.runner.matching is not None
        assert again.runner.matching.active() == {"orders": 2}


def test_websocket_live_subscriptions_get_their_channels_group_message(
    orders: Subscription, source_conn: Any, table_name: str, settings: Any
) -> None:
    config = layer_config()
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": config}
    }
    owner = operator()
    watching = register(owner, "browser-1", "doc.total >= 100", delivery="websocket")
    other = register(owner, "browser-2", 'doc.status == "gone"', delivery="websocket")
    with (
        WorkerThread([orders]) as worker,
        Listener(config, live_group(watching), live_group(other)) as listener,
    ):
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        assert worker.runner.matching is not None
        assert worker.runner.matching.nats is None, "no nats live subscription: no connection"
        source_conn.execute(
            f"INSERT INTO {table_name} VALUES (1, 'eu', 150, 'new'), (2, 'eu', 5, 'new')"
        )
        wait_for(lambda: listener.of_type(LIVE_MESSAGE_TYPE), what="the websocket group message")
        time.sleep(0.5)
        messages = listener.of_type(LIVE_MESSAGE_TYPE)
        assert len(messages) == 1
        event = MatchedEvent.from_json(messages[0]["event"])
        assert event.live_subscription_id == watching and event.gateway_id == "browser-1"
        assert event.key == "1" and event.document is not None
        assert event.document["total"] == 150
        assert worker.runner.matching.deliveries["websocket", "sent"] == 1


def test_the_worker_expires_live_subscriptions_and_counts_them(
    orders: Subscription, settings: Any
) -> None:
    settings.LIVE_SUBSCRIPTION_EXPIRE_INTERVAL = 0.2
    owner = operator()
    kept = register(owner, "gw-1", 'doc.region == "eu"', delivery="websocket")
    gone = register(owner, "gw-1", 'doc.region == "us"', delivery="websocket")
    LiveSubscription.objects.filter(pk=gone).update(
        created_at=timezone.now() - dt.timedelta(seconds=10),
        expires_at=timezone.now() - dt.timedelta(seconds=1),
    )
    with WorkerThread([orders]) as worker:
        wait_for(lambda: not LiveSubscription.objects.filter(pk=gone).exists(), what="expired")
        assert worker.runner.matching is not None
        wait_for(lambda: worker.runner.matching.expired == 1, what="counted")  # type: ignore[union-attr]
        assert sample(worker, "searchsync_live_subscriptions_expired_total") == 1
        assert LiveSubscription.objects.filter(pk=kept).exists()


@pytest.fixture
def nats_proxy() -> Iterator[TcpProxy]:
    """A proxy in front of the real NATS server, to take it away from the worker."""
    proxy = TcpProxy(NATS_HOST, NATS_PORT)
    proxy.start()
    yield proxy
    proxy.stop()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The worker process's /metrics, by sample name and labels; {} while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def checkpoint_of(name: str) -> int | None:
    """The checkpoint saved in the console database: where a restarted worker goes on."""
    checkpoint: int | None = Subscription.objects.get(name=name).checkpoint
    return checkpoint


@pytest.mark.usefixtures("fast_retries")
def test_kill_9_while_nats_holds_events_then_restart_delivers_each_change_once(
    orders: Subscription,
    source_conn: Any,
    table_name: str,
    nats_stream: Stream,
    nats_proxy: TcpProxy,
    opensearch_url: str,
    search: Any,
    tmp_path: Path,
) -> None:
    owner = operator()
    eu = register(owner, "gw-k", 'doc.region == "eu"')
    config = nats_stream.config
    env = {
        **worker_env(),
        "LIVE_NATS_URL": f"nats://{nats_proxy.host}:{nats_proxy.port}",
        "LIVE_NATS_STREAM": config.stream,
        "LIVE_NATS_SUBJECT_PREFIX": config.subject_prefix,
        "LIVE_NATS_DUPLICATE_WINDOW_SECONDS": str(config.duplicate_window),
        "LIVE_CHECKPOINT_HOLD_SECONDS": "30",
    }
    log = tmp_path / "worker.log"

    def write(keys: range) -> None:
        for key in keys:  # one transaction each: one event each
            source_conn.execute(f"INSERT INTO {table_name} VALUES (%s, 'eu', %s, 'x')", (key, key))

    def start() -> tuple[WorkerProcess, int]:
        port = free_port()
        worker = WorkerProcess(
            opensearch_url, log, "--subscription", "orders", base_env=env, metrics_port=port
        )
        return worker, port

    worker, port = start()
    try:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        write(range(0, 10))
        wait_for(lambda: asyncio.run(nats_stream.count()) >= 10, timeout=20, what="delivered")
        with nats_proxy.down():
            write(range(10, 30))  # matched and buffered, never acknowledged by JetStream
            wait_for(lambda: len(index_docs(search, "orders")) == 30, what="all indexed")
            buffered = ("searchsync_live_nats_buffered_events", frozenset[tuple[str, str]]())
            wait_for(
                lambda: scrape(port).get(buffered, 0) >= 20, timeout=20, what="events buffered"
            )
            # The checkpoint waits below the first event JetStream has not acknowledged
            # (a document's version is its change's position).
            first_buffered = search.get(index="orders", id="10")["_version"]
            time.sleep(0.6)  # the hold is re-checked meanwhile
            held = checkpoint_of("orders")
            assert held is not None and held < first_buffered
            worker.kill()  # its NATS buffer is gone with it
            write(range(30, 40))  # while no worker runs
        assert asyncio.run(nats_stream.count()) == 10, "nothing got through the proxy"
        worker, port = start()
        write(range(40, 50))
        keys = {str(k) for k in range(50)}
        deadline = time.monotonic() + 60
        while missing := keys - {b["key"] for _, b, _ in received(nats_stream)}:
            assert time.monotonic() < deadline, (
                f"not delivered after the kill: {sorted(missing, key=int)}; {worker.output()}"
            )
            time.sleep(0.2)
        time.sleep(1)  # nothing more arrives
    finally:
        assert worker.terminate() == 0
    got = received(nats_stream)
    assert {s for s, _, _ in got} == {f"{config.subject_prefix}.gw-k.{eu}"}
    assert sorted(int(b["key"]) for _, b, _ in got) == list(range(50)), "each key exactly once"
    changes = [(b["key"], b["position"]) for _, b, _ in got]
    assert len(changes) == len(set(changes)), "no change delivered twice"
    assert len({msg_id for _, _, msg_id in got}) == len(got)
    positions = [b["position"] for _, b, _ in got]
    assert positions == sorted(positions), "one key per transaction: in commit order"


@pytest.mark.usefixtures("fast_retries")
def test_a_nats_outage_holds_the_checkpoint_and_it_catches_up_after_delivery(
    orders: Subscription,
    source_conn: Any,
    table_name: str,
    nats_stream: Stream,
    nats_proxy: TcpProxy,
    search: Any,
    settings: Any,
) -> None:
    settings.LIVE_NATS_URL = f"nats://{nats_proxy.host}:{nats_proxy.port}"
    owner = operator()
    register(owner, "gw-o", 'doc.region == "eu"')

    def write(keys: range, region: str = "eu") -> None:
        for key in keys:
            source_conn.execute(
                f"INSERT INTO {table_name} VALUES (%s, %s, %s, 'x')", (key, region, key)
            )

    with WorkerThread([orders]) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        matching = worker.runner.matching
        assert matching is not None and matching.nats is not None
        write(range(0, 5))
        wait_for(lambda: asyncio.run(nats_stream.count()) >= 5, timeout=20, what="delivered")
        delivered = search.get(index="orders", id="4")["_version"]
        wait_for(lambda: (checkpoint_of("orders") or 0) >= delivered, what="checkpoint moved")
        before = checkpoint_of("orders")
        with nats_proxy.down():
            write(range(5, 25))
            write(range(100, 110), region="us")  # matches nothing: holds nothing by itself
            wait_for(lambda: len(index_docs(search, "orders")) == 35, what="all indexed")
            wait_for(lambda: matching.nats.buffered == 20, what="events buffered")  # type: ignore[union-attr]
            first_buffered = search.get(index="orders", id="5")["_version"]
            time.sleep(0.6)  # the hold is re-checked meanwhile
            held = checkpoint_of("orders")
            assert held is not None and before is not None
            assert before <= held < first_buffered, "held below the first unacknowledged event"
            assert worker.runner.pipelines["orders"].stats.checkpoint == held
        got = wait_received(nats_stream, 25, "delivered after the outage")
        assert sorted(int(b["key"]) for _, b, _ in got) == list(range(25)), "each key once"
        last = search.get(index="orders", id="109")["_version"]
        # No new change arrives: the periodic re-check moves the checkpoint on.
        wait_for(
            lambda: (checkpoint_of("orders") or 0) >= last, timeout=10, what="checkpoint caught up"
        )
        assert matching.nats.dropped.total() == 0
    assert worker.result is True


@pytest.mark.usefixtures("fast_retries")
def test_past_the_hold_bound_the_checkpoint_moves_on_counted_and_events_still_arrive(
    orders: Subscription,
    source_conn: Any,
    table_name: str,
    nats_stream: Stream,
    nats_proxy: TcpProxy,
    search: Any,
    settings: Any,
) -> None:
    settings.LIVE_NATS_URL = f"nats://{nats_proxy.host}:{nats_proxy.port}"
    settings.LIVE_CHECKPOINT_HOLD_SECONDS = 1
    settings.LIVE_MATCH_QUEUE_SIZE = 1234  # its own, not the monitor's
    settings.LIVE_WEBSOCKET_SEND_TIMEOUT = 0.7
    owner = operator()
    register(owner, "gw-b", 'doc.region == "eu"')
    with WorkerThread([orders]) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        matching = worker.runner.matching
        assert matching is not None and matching.nats is not None
        assert matching._changes.maxsize == 1234 and matching.send_timeout == 0.7
        source_conn.execute(f"INSERT INTO {table_name} VALUES (0, 'eu', 0, 'x')")
        wait_for(lambda: asyncio.run(nats_stream.count()) == 1, timeout=20, what="delivered")
        wait_for(lambda: matching.nats.buffered == 0, what="acknowledged")  # type: ignore[union-attr]
        # Under load the first event's ack may itself take longer than the 1 s bound:
        # an episode of its own, over before this one starts.
        expired = "searchsync_checkpoint_hold_expired_total"
        changes = "searchsync_checkpoint_hold_expired_changes_total"
        before = sample(worker, expired, subscription="orders")
        before_changes = sample(worker, changes, subscription="orders")
        with nats_proxy.down():
            # From the change's commit: a loaded machine may take the whole hold to
            # get as far as the lines below, but the checkpoint cannot move sooner.
            started = time.monotonic()
            source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 'eu', 1, 'x')")
            wait_for(lambda: matching.nats.buffered == 1, what="buffered")  # type: ignore[union-attr]
            position = search.get(index="orders", id="1")["_version"]
            wait_for(
                lambda: (checkpoint_of("orders") or 0) >= position,
                timeout=10,
                what="the checkpoint moved on past the bound",
            )
            assert time.monotonic() - started >= 0.5, "held first"
            assert matching.nats.buffered == 1, "still unacknowledged"
            assert sample(worker, expired, subscription="orders") == before + 1
            assert sample(worker, changes, subscription="orders") == before_changes + 1
        got = wait_received(nats_stream, 2, "delivered once NATS is back")
        assert [b["key"] for _, b, _ in got] == ["0", "1"]
        assert sample(worker, expired, subscription="orders") == before + 1
    assert worker.result is True


def test_nats_down_never_stops_the_sync(
    orders: Subscription, source_conn: Any, table_name: str, search: Any, settings: Any
) -> None:
    settings.LIVE_NATS_URL = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    settings.LIVE_NATS_STREAM = f"searchsync-test-down-{uuid.uuid4().hex[:8]}"
    owner = operator()
    register(owner, "gw-down", 'doc.region == "eu"')
    with WorkerThread([orders], shutdown_timeout=2) as worker:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 'eu', 1, 'x'), (2, 'us', 2, 'x')")
        wait_for(lambda: len(index_docs(search, "orders")) == 2, what="the rows indexed")
        matching = worker.runner.matching
        assert matching is not None and matching.nats is not None
        wait_for(lambda: matching.deliveries["nats", "offered"] == 1, what="the event offered")
        assert matching.nats.published == 0 and matching.nats.buffered == 1
    assert worker.result is True, "stopped in time with NATS unreachable"
    assert matching.nats.dropped["stopped"] == 1, "the undelivered event is counted"
