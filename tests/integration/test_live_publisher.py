"""What the real worker publishes for the live monitor, seen from the real channel layer.

Real PostgreSQL, real osmem-server, real Redis (127.0.0.1:6379). Each test has its own
channel-layer prefix, so parallel runs never see each other's messages. A listener in
its own thread joins the groups like a consumer does (new_channel + group_add) and
keeps what it receives.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from syncer.live.messages import MONITOR_GROUP, events_group
from syncer.operations import live_subscriptions as live_ops
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.tcpproxy import TcpProxy
from tests.support.users import operator

REDIS = django_settings.REDIS_URL  # each pytest-xdist worker has a database of its own
# redis-py 8 reads with a 5 s socket timeout by default: exactly channels-redis's blocking
# receive time, so an idle receive would fail. Consumers wait without one.
RECEIVING = {"address": REDIS, "socket_timeout": None}
STRICT = {
    "dynamic": "strict",
    "properties": {"id": {"type": "integer"}, "total": {"type": "integer"}},
}


class Listener:
    """Joins groups of the channel layer and collects what arrives, in a thread."""

    def __init__(self, config: dict[str, Any], *groups: str) -> None:
        self.layer = import_string("channels_redis.core.RedisChannelLayer")(**config)
        self.groups = groups
        self.messages: list[dict[str, Any]] = []
        self._joined = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            channel = await self.layer.new_channel()
            for group in self.groups:
                await self.layer.group_add(group, channel)
            self._joined.set()
            try:
                while True:
                    message = await self.layer.receive(channel)
                    # Snapshots travel many to a layer message; the tests read them one by one.
                    self.messages.extend(message.get("snapshots", [message]))
            finally:
                for group in self.groups:
                    await self.layer.group_discard(group, channel)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass

    def __enter__(self) -> Listener:
        self._thread.start()
        assert self._joined.wait(10), "the listener could not join its groups"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(15)

    def of_type(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            m
            for m in list(self.messages)
            if m["type"] == kind and all(m.get(k) == v for k, v in fields.items())
        ]

    def events(self, subscription: str) -> list[dict[str, Any]]:
        return [
            event
            for m in self.of_type("sync.events", subscription=subscription)
            for event in m["events"]
        ]


def layer_config(host: dict[str, Any] = RECEIVING) -> dict[str, Any]:
    return {"hosts": [host], "prefix": f"test-live-{uuid.uuid4().hex[:12]}", "expiry": 10}


@pytest.fixture
def live(settings: Any) -> dict[str, Any]:
    """The worker's channel layer: the real Redis, a prefix of this test's own."""
    config = layer_config()
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": config}
    }
    return config


def create_table(source_conn: Any, table: str) -> None:
    source_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, total int, note text)")


def test_each_applied_change_is_published_with_its_position_latency_and_batch(
    source_conn, table_name, make_subscription, search, live
):
    create_table(source_conn, table_name)
    sub = make_subscription("orders", table_name, snapshot_mode="discard")
    with WorkerThread([sub]), Listener(live, events_group("orders")) as listener:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        written_at = time.time()
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 10, 'a'), (2, 20, 'b')")
        source_conn.execute(f"UPDATE {table_name} SET total = 11 WHERE id = 1")
        source_conn.execute(f"DELETE FROM {table_name} WHERE id = 2")
        wait_for(
            lambda: any(e.get("op") == "delete" for e in listener.events("orders")),
            what="the delete published",
        )
        events = listener.events("orders")
        assert {e["kind"] for e in events} == {"change"}
        assert {e["doc_id"] for e in events} == {"1", "2"}
        for event in events:
            assert set(event) == {
                "kind",
                "op",
                "doc_id",
                "position",
                "position_shown",
                "commit_time",
                "latency_ms",
                "batch",
                "outcome",
            }
            assert event["outcome"] == "ok" and event["batch"] >= 1
            assert written_at - 1 <= event["commit_time"] <= time.time()
            assert 0 <= event["latency_ms"] < 30_000
            assert "/" in event["position_shown"]  # an LSN, as PostgreSQL shows it
        delete = next(e for e in events if e["op"] == "delete")
        assert delete["doc_id"] == "2"
        # The latest position published is where the checkpoint now stands.
        latest = max(e["position"] for e in events)
        wait_for(lambda: status_of("orders").checkpoint == latest, what="checkpoint")
    assert index_docs(search, "orders") == {"1": {"id": 1, "total": 11, "note": "a"}}


def test_each_snapshot_counts_its_subscriptions_live_subscriptions(
    source_conn, table_name, make_subscription, search, live
):
    create_table(source_conn, table_name)
    create_table(source_conn, f"{table_name}_b")
    watched = make_subscription("watched", table_name, snapshot_mode="discard")
    unwatched = make_subscription("unwatched", f"{table_name}_b", snapshot_mode="discard")
    owner = operator()
    first, _ = live_ops.register(
        owner,
        [live_ops.Registration(f"gw-{i}", "watched", "doc.total > 1", "websocket") for i in (1, 2)],
    )

    def latest(name: str) -> dict[str, Any]:
        return listener.of_type("sync.snapshot", subscription=name)[-1]

    with Listener(live, MONITOR_GROUP) as listener, WorkerThread([watched, unwatched]):
        wait_for(
            lambda: (
                len(listener.of_type("sync.snapshot", subscription="unwatched")) >= 1
                and latest("watched")["live_subscriptions"] == 2
            ),
            what="a snapshot counting both live subscriptions",
        )
        assert latest("unwatched")["live_subscriptions"] == 0
        live_ops.delete(owner, first.id)
        # Seen at the worker's next refresh (every control interval).
        wait_for(
            lambda: latest("watched")["live_subscriptions"] == 1,
            what="a snapshot counting the one left",
        )


def test_snapshots_and_heartbeats_go_to_the_monitor_group_once_a_second(
    source_conn, table_name, make_subscription, opensearch_url, live
):
    create_table(source_conn, table_name)
    sub = make_subscription("lagging", table_name, snapshot_mode="discard")
    with Listener(live, MONITOR_GROUP) as listener, WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("lagging").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 10, 'a')")
        wait_for(lambda: status_of("lagging").checkpoint, what="a checkpoint")
        time.sleep(3.2)
        snapshots = wait_for(
            lambda: [
                s
                for s in listener.of_type("sync.snapshot", subscription="lagging")
                if s["checkpoint"] == status_of("lagging").checkpoint
            ],
            what="a snapshot at the checkpoint",
        )
        beats = listener.of_type("worker.heartbeat", worker=worker.runner.worker_id)
    latest = snapshots[-1]
    assert latest["status"] == "caught_up" and latest["worker"] == worker.runner.worker_id
    assert latest["lag"] == 0 and latest["buffer"] == 0 and latest["backpressure"] is False
    assert latest["dead_letters"] == 0 and "/" in latest["checkpoint_shown"]
    assert latest["staleness"] is not None and latest["staleness"] < 5
    every = listener.of_type("sync.snapshot", subscription="lagging")
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(every)]
    assert len(every) >= 3 and all(0.5 < gap < 2.5 for gap in gaps), gaps
    assert len(beats) >= 3
    assert beats[-1]["subscriptions"] == ["lagging"] and beats[-1]["published"] >= 1
    assert beats[-1]["dropped"] == 0 and beats[-1]["interval"] == 1.0


def test_a_dead_lettered_change_is_published_with_its_error(
    source_conn, table_name, make_subscription, opensearch_url, live
):
    create_table(source_conn, table_name)
    sub = make_subscription("notes", table_name, snapshot_mode="discard", index_mappings=STRICT)
    with (
        Listener(live, events_group("notes"), MONITOR_GROUP) as listener,
        WorkerThread([sub]),
    ):
        wait_for(lambda: status_of("notes").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 5, 'hello')")
        source_conn.execute(f"INSERT INTO {table_name} (id, total) VALUES (2, 6)")
        dead = wait_for(
            lambda: [e for e in listener.events("notes") if e["kind"] == "dead_letter"],
            what="a dead-letter event",
        )
        wait_for(
            lambda: [
                s
                for s in listener.of_type("sync.snapshot", subscription="notes")
                if s["dead_letters"] == 1
            ],
            what="a snapshot counting the dead letter",
        )
    assert len(dead) == 1
    assert dead[0]["doc_id"] == "1" and dead[0]["op"] == "upsert" and dead[0]["batch"] >= 1
    assert dead[0]["error"].startswith("400 strict_dynamic_mapping_exception")
    assert "note" in dead[0]["error"]
    ok = [e for e in listener.events("notes") if e["kind"] == "change"]
    assert [e["doc_id"] for e in ok] == ["2"]


def test_beyond_the_rate_limit_one_drop_summary_replaces_the_individual_events(
    source_conn, table_name, make_subscription, opensearch_url, live, settings
):
    settings.SYNCER_LIVE_EVENTS_PER_SECOND = 5
    create_table(source_conn, table_name)
    sub = make_subscription("busy", table_name, snapshot_mode="discard")
    with (
        Listener(live, events_group("busy"), MONITOR_GROUP) as listener,
        WorkerThread([sub]) as worker,
    ):
        wait_for(lambda: status_of("busy").status == "caught_up", what="caught up")
        source_conn.execute(
            f"INSERT INTO {table_name} SELECT i, i, 'x' FROM generate_series(1, 200) i"
        )

        def told() -> int:
            events = listener.events("busy")
            changes = sum(1 for e in events if e["kind"] == "change")
            dropped = sum(e["dropped"] for e in events if e["kind"] == "dropped")
            return int(changes + dropped)

        wait_for(lambda: told() == 200, what="every change sent or summarised")
        publisher = worker.runner.publisher
        assert publisher is not None
        wait_for(
            lambda: any(
                b["dropped"] == publisher.dropped for b in listener.of_type("worker.heartbeat")
            ),
            what="the heartbeat counting the drops",
        )
        messages = listener.of_type("sync.events", subscription="busy")
    events = [e for m in messages for e in m["events"]]
    changes = [e for e in events if e["kind"] == "change"]
    summaries = [e for e in events if e["kind"] == "dropped"]
    assert 5 <= len(changes) <= 10  # 5 a second: the batch and at most one more second
    assert summaries and all(set(s) == {"kind", "dropped"} for s in summaries)
    assert sum(s["dropped"] for s in summaries) == 200 - len(changes) == publisher.dropped
    assert publisher.published == len(changes)
    # The events of a round travel together, not one message each.
    assert len(messages) < len(changes)


@pytest.fixture
def redis_proxy() -> Any:
    proxy = TcpProxy("127.0.0.1", 6379)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.usefixtures("fast_retries")
def test_a_redis_outage_darkens_the_monitor_but_not_the_sync_and_publishing_recovers(
    source_conn, table_name, make_subscription, search, settings, redis_proxy, caplog
):
    # The worker reaches Redis through the proxy; the listener (the web side) directly.
    worker_host = {
        "address": REDIS.replace(":6379/", f":{redis_proxy.port}/"),
        "socket_connect_timeout": 0.5,
        "socket_timeout": 0.5,
    }
    config = layer_config(worker_host)
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": config}
    }
    settings.SYNCER_LIVE_SEND_TIMEOUT = 0.5
    caplog.set_level(logging.INFO, logger="syncer.live.publisher")
    create_table(source_conn, table_name)
    sub = make_subscription("dark", table_name, snapshot_mode="discard")
    listening = {**config, "hosts": [RECEIVING]}
    with Listener(listening, events_group("dark")) as listener, WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("dark").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (0, 0, 'before')")
        wait_for(lambda: listener.events("dark"), what="events before the outage")
        publisher = worker.runner.publisher
        assert publisher is not None

        with redis_proxy.down():
            started = time.monotonic()
            for i in range(1, 41):
                source_conn.execute(f"INSERT INTO {table_name} VALUES ({i}, {i}, 'dark')")
                time.sleep(0.05)
            # The sync goes on: every row reaches the index while Redis is unreachable.
            wait_for(
                lambda: len(index_docs(search, "dark")) == 41,
                timeout=15,
                what="the index converging during the outage",
            )
            converged_in = time.monotonic() - started
            wait_for(lambda: publisher.send_failures >= 1, what="a failed send")
            seen_dark = [e for e in listener.events("dark") if e["doc_id"] != "0"]
            outage_failures = publisher.send_failures
        assert seen_dark == []
        assert converged_in < 10, converged_in
        assert status_of("dark").status in ("caught_up", "streaming")
        # Failing fast and keeping quiet a second after each failure: not one per message.
        assert 1 <= outage_failures <= converged_in + 3
        assert publisher.lost >= 1 and not publisher.connected

        # Back by itself: the next heartbeat goes through, then events flow again.
        wait_for(lambda: publisher.connected, timeout=10, what="publishing recovered")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (100, 100, 'after')")
        wait_for(
            lambda: any(e["doc_id"] == "100" for e in listener.events("dark")),
            timeout=15,
            what="events flowing again after the outage",
        )
    logged = [r.msg.get("event") for r in caplog.records if isinstance(r.msg, dict)]
    assert logged.count("live_publish_failed") == 1
    assert logged.count("live_publish_recovered") == 1


def test_a_full_queue_drops_and_counts_instead_of_holding_the_sync(
    source_conn, table_name, make_subscription, search, live, settings
):
    settings.SYNCER_LIVE_QUEUE_SIZE = 3
    create_table(source_conn, table_name)
    sub = make_subscription("flood", table_name, snapshot_mode="discard")
    with Listener(live, events_group("flood")) as listener, WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("flood").status == "caught_up", what="caught up")
        source_conn.execute(
            f"INSERT INTO {table_name} SELECT i, i, 'x' FROM generate_series(1, 100) i"
        )
        wait_for(lambda: len(index_docs(search, "flood")) == 100, what="every row indexed")
        wait_for(
            lambda: any(e["kind"] == "dropped" for e in listener.events("flood")),
            what="the drop summary",
        )
        publisher = worker.runner.publisher
        assert publisher is not None
    events = listener.events("flood")
    changes = [e for e in events if e["kind"] == "change"]
    assert len(changes) == 3 == publisher.published
    assert sum(e["dropped"] for e in events if e["kind"] == "dropped") == 97 == publisher.dropped


def test_a_worker_with_live_off_publishes_nothing(
    source_conn, table_name, make_subscription, search, live
):
    create_table(source_conn, table_name)
    sub = make_subscription("quiet", table_name, snapshot_mode="discard")
    worker = WorkerThread([sub])
    worker.runner.live = False  # runsyncer --no-live
    with Listener(live, events_group("quiet"), MONITOR_GROUP) as listener, worker:
        wait_for(lambda: status_of("quiet").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 1, 'x')")
        wait_for(lambda: "1" in index_docs(search, "quiet"), what="the row indexed")
        time.sleep(1.5)  # more than a snapshot interval
    assert worker.runner.publisher is None
    assert listener.messages == []


def test_a_change_the_index_already_has_newer_is_published_as_stale(
    source_conn, table_name, make_subscription, search, live
):
    create_table(source_conn, table_name)
    sub = make_subscription("replayed", table_name, snapshot_mode="discard")
    with Listener(live, events_group("replayed")) as listener, WorkerThread([sub]):
        wait_for(lambda: status_of("replayed").status == "caught_up", what="caught up")
        # A newer version already indexed (as after a replay from an older checkpoint).
        newer = {"id": 7, "total": 70, "note": "newer"}
        search.index(index="replayed", id="7", body=newer, version=2**60, version_type="external")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (7, 1, 'older')")
        source_conn.execute(f"INSERT INTO {table_name} VALUES (8, 1, 'new')")
        wait_for(lambda: len(listener.events("replayed")) == 2, what="both changes published")
    outcomes = {e["doc_id"]: e["outcome"] for e in listener.events("replayed")}
    assert outcomes == {"7": "stale", "8": "ok"}
    assert search.get(index="replayed", id="7")["_source"] == newer
