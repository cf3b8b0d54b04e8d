"""`/ws/live/` end to end: a real `runsyncer` process syncs a PostgreSQL table into
osmem-server and matches every acknowledged change; a real daphne serves the socket; an
aiohttp client registers (over REST and over the socket) and reads the events.

One worker, one daphne and one source table for the module (starting them is most of
the cost), on one settings module, so that both share a channel layer of the module's
own (a Redis prefix) with a small `capacity`: the last test overflows it for real. The
module's rows live outside any test transaction; its teardown flushes the test
database, as a transactional test does.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connections
from opensearchpy import OpenSearch
from osmem_server import OsmemServer

from console.models import ApiToken
from syncer.models import LiveSubscription, Subscription
from tests.conftest import DB_SUFFIX
from tests.support.harness import wait_for
from tests.support.process import (
    WorkerProcess,
    daphne_process,
    drop_redis_keys,
    free_port,
    settings_module,
    worker_env,
    worker_metric,
)
from tests.support.users import operator

# Only so that the test database is set up: the tests' own rows are written from other
# threads (Stack.orm), outside the test's transaction, and the module's teardown flushes.
pytestmark = pytest.mark.django_db

T = TypeVar("T")
NAME = "ws_e2e_orders"
CAPACITY = 40
"""Messages the Channels layer holds per daphne process channel before dropping."""
PREFIX = f"searchsync_test{DB_SUFFIX}_{uuid.uuid4().hex[:12]}"
LAYERS: dict[str, Any] = copy.deepcopy(django_settings.CHANNEL_LAYERS)
LAYERS["default"]["CONFIG"].update(prefix=PREFIX, capacity=CAPACITY)
WAIT = 20.0
"""Seconds an event may take to arrive (commit, sync, match, Redis, daphne): loose for a
busy machine; they take milliseconds."""


@dataclass
class Stack:
    """The module's running system and how to reach it."""

    folder: Path
    source_dsn: str
    table: str
    opensearch_url: str
    selected: dict[str, str]
    """The environment that selects the module's settings module."""
    base: str = ""
    """daphne's http:// base URL."""
    daphne: Any = None
    token: str = ""
    worker: WorkerProcess | None = None
    metrics_port: int = 0
    starts: int = 0
    blocker: Any = None

    def start_worker(self) -> None:
        self.starts += 1
        self.metrics_port = free_port()
        self.worker = WorkerProcess(
            self.opensearch_url,
            self.folder / f"worker-{self.starts}.log",
            "--subscription",
            NAME,
            base_env={**worker_env(), **self.selected},
            metrics_port=self.metrics_port,
        )

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the worker's /metrics (0 when it is not there yet)."""
        return worker_metric(self.metrics_port, name, **labels)

    def orm(self, function: Callable[[], T]) -> T:
        """Run `function` on the test database, outside any test's transaction, in a
        thread of its own (an async test's thread may not use the ORM)."""

        def call() -> T:
            try:
                return function()
            finally:
                connections.close_all()

        with self.blocker.unblock(), ThreadPoolExecutor(1) as thread:
            return thread.submit(call).result()

    def active(self) -> float:
        return self.metric("searchsync_live_subscriptions_active", subscription=NAME)

    def registered(self) -> int:
        return self.orm(lambda: LiveSubscription.objects.filter(subscription__name=NAME).count())

    def wait_picked_up(self) -> None:
        """Until the worker matches every live subscription of the table (refresh: 1 s)."""
        count = self.registered()
        wait_for(lambda: self.active() == count, timeout=WAIT, what=f"{count} picked up")

    def caught_up(self) -> bool:
        return self.orm(lambda: Subscription.objects.get(name=NAME).status) == "caught_up"

    def execute(self, *statements: str) -> Written:
        """Each statement its own transaction (its own position), in this order; when."""
        started = time.time()
        with psycopg.connect(self.source_dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.format(t=self.table))
        return Written(started, time.time())


@dataclass(frozen=True)
class Written:
    """When some writes were committed: between `started` and `ended` (wall clock)."""

    started: float
    ended: float

    def __or__(self, other: Written) -> Written:
        return Written(min(self.started, other.started), max(self.ended, other.ended))

    def holds(self, commit_time: float) -> bool:
        # PostgreSQL's commit timestamp, on this machine's clock: a second of slack.
        return self.started - 1 <= commit_time <= self.ended + 1


def _create(stack: Stack) -> None:
    user = operator("ws-e2e")
    _, stack.token = ApiToken.issue(user, "gateway")
    sub = Subscription(
        name=NAME,
        relation=stack.table,
        index_name=NAME,
        source_dsn=stack.source_dsn,
        snapshot_mode="discard",
    )
    sub.full_clean()
    sub.save()


@pytest.fixture(scope="module")
def stack(
    django_db_setup: None,
    django_db_blocker: Any,
    source_dsn: str,
    osmem_server: OsmemServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("ws-e2e")
    table = f"ws_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, region text, total int)")
    clone = osmem_server.clone()
    database = django_settings.DATABASES["default"]["NAME"]
    stack = Stack(folder, source_dsn, table, str(clone.url), {}, blocker=django_db_blocker)
    extra = {"CHANNEL_LAYERS": LAYERS}
    try:
        stack.orm(lambda: _create(stack))
        with daphne_process(folder, database, extra) as (port, process):
            stack.selected = settings_module(folder, database, extra)
            stack.base, stack.daphne = f"http://127.0.0.1:{port}", process
            stack.start_worker()
            wait_for(stack.caught_up, timeout=60, what="the worker caught up")
            yield stack
            assert stack.worker is not None
            assert stack.worker.terminate() == 0, stack.worker.output()
    finally:
        if stack.worker is not None and stack.worker.process.poll() is None:
            stack.worker.kill()
        stack.orm(lambda: call_command("flush", interactive=False, verbosity=0))
        drop_redis_keys(django_settings.REDIS_URL, PREFIX)
        clone.close()
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            for (slot,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
                " AND NOT active"
            ).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            conn.execute(f"DROP TABLE {table}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- the client's side -------------------------------------------------------------------


class Socket:
    """A gateway's socket on /ws/live/ (a bearer token in the handshake, no Origin)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, stack: Stack, token_message: bool = False
    ) -> Socket:
        """Authenticated by the handshake's header, or (`token_message`) by an `auth`
        first message, as a browser holding a token does."""
        header = {} if token_message else {"Authorization": f"Bearer {stack.token}"}
        socket = await http.ws_connect(
            stack.base.replace("http://", "ws://") + "/ws/live/", headers=header
        )
        opened = cls(socket)
        if token_message:
            await socket.send_json({"type": "auth", "token": stack.token})
        assert (await opened.receive())["type"] == "ready"
        return opened

    async def receive(self, timeout: float = WAIT) -> dict[str, Any]:
        message: dict[str, Any] = await self.socket.receive_json(timeout=timeout)
        return message

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request; its answer (no event can come before it: none is expected)."""
        await self.socket.send_json(request)
        return await self.receive()

    async def messages(self, count: int) -> list[dict[str, Any]]:
        return [await self.receive() for _ in range(count)]

    async def nothing_more(self, seconds: float = 0.5) -> None:
        with pytest.raises(asyncio.TimeoutError):
            extra = await self.receive(timeout=seconds)
            pytest.fail(f"unexpected message {extra}")

    async def close(self) -> None:
        await self.socket.close()


async def register_rest(
    http: aiohttp.ClientSession, stack: Stack, gateway_id: str, text: str
) -> str:
    async with http.post(
        f"{stack.base}/api/live-subscriptions",
        json={
            "gateway_id": gateway_id,
            "subscription": NAME,
            "filter": text,
            "delivery": "websocket",
        },
        headers={"Authorization": f"Bearer {stack.token}"},
    ) as answer:
        body = await answer.json()
        assert answer.status == 201, body
        return str(body["id"])


async def register_socket(socket: Socket, gateway_id: str, text: str) -> str:
    answer = await socket.ask(
        {
            "type": "register",
            "subscriptions": [{"gateway_id": gateway_id, "subscription": NAME, "filter": text}],
        }
    )
    assert answer["type"] == "registered", answer
    (found,) = answer["items"]
    assert found["delivery"] == "websocket"
    return str(found["id"])


def indexed(stack: Stack, key: str) -> tuple[int, dict[str, Any]]:
    """(version, source) of a document in the index: what its event must say."""
    client = OpenSearch(hosts=[stack.opensearch_url], timeout=30)
    try:
        found = client.get(index=NAME, id=key)
        return int(found["_version"]), dict(found["_source"])
    finally:
        client.close()


def summary(event: dict[str, Any]) -> tuple[str, str, str, dict[str, Any] | None]:
    return event["live_subscription_id"], event["op"], event["key"], event["document"]


def row(key: int, region: str, total: int) -> dict[str, Any]:
    return {"id": key, "region": region, "total": total}


async def next_round(
    socket: Socket,
    stack: Stack,
    written: Written,
    expected: list[tuple[str, str, str, dict[str, Any] | None]],
) -> list[dict[str, Any]]:
    """The events of one round of writes: exactly `expected`, in any order across
    documents; checked against the index (position = version, document = source) and
    the time of the writes (commit time)."""
    got = await socket.messages(len(expected))
    assert {m["type"] for m in got} == {"event"}, got
    assert sorted(map(summary, got), key=repr) == sorted(expected, key=repr)
    for event in got:
        assert event["subscription"] == NAME
        assert written.holds(event["commit_time"]), (written, event)
        if event["op"] == "upsert":
            assert indexed(stack, event["key"]) == (event["position"], event["document"])
    return got


# -- the tests -----------------------------------------------------------------------------


async def test_rest_and_socket_registered_live_subscriptions_get_exactly_their_events(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    eu = await register_rest(http, stack, "gw-rest", 'doc.region == "eu"')
    # The same filter for another gateway that no socket resumes: nothing reaches us.
    await register_rest(http, stack, "gw-elsewhere", 'doc.region == "eu"')
    socket = await Socket.open(http, stack)
    resumed = await socket.ask({"type": "resume", "gateway_id": "gw-rest"})
    assert (resumed["type"], resumed["ids"]) == ("resumed", [eu])
    # Registered over the socket: every op on two keys, deletes too.
    pair = await register_socket(socket, "gw-socket", 'key in ["2", "3"]')
    stack.wait_picked_up()

    # One document changes at most once a round, so that every change has its event (a
    # batch keeps a document's last state; the last round shows that).
    written = stack.execute(
        "INSERT INTO {t} VALUES (1, 'eu', 10)",
        "INSERT INTO {t} VALUES (2, 'us', 50)",
        "INSERT INTO {t} VALUES (3, 'eu', 20)",
        "INSERT INTO {t} VALUES (4, 'us', 30)",
    )
    first = await next_round(
        socket,
        stack,
        written,
        [
            (eu, "upsert", "1", row(1, "eu", 10)),
            (eu, "upsert", "3", row(3, "eu", 20)),
            (pair, "upsert", "2", row(2, "us", 50)),
            (pair, "upsert", "3", row(3, "eu", 20)),
        ],
    )
    written = stack.execute(
        "UPDATE {t} SET total = 11 WHERE id = 1",
        "UPDATE {t} SET region = 'eu' WHERE id = 2",
        "DELETE FROM {t} WHERE id = 3",
        "UPDATE {t} SET total = 31 WHERE id = 4",
    )
    second = await next_round(
        socket,
        stack,
        written,
        [
            (eu, "upsert", "1", row(1, "eu", 11)),
            (eu, "upsert", "2", row(2, "eu", 50)),
            (pair, "upsert", "2", row(2, "eu", 50)),
            (pair, "delete", "3", None),  # doc is null: the eu filter cannot match it
        ],
    )
    written = stack.execute(
        "DELETE FROM {t} WHERE id = 1",
        "UPDATE {t} SET region = 'us' WHERE id = 2",
        "INSERT INTO {t} VALUES (5, 'eu', 5)",
    )
    third = await next_round(
        socket,
        stack,
        written,
        [(pair, "upsert", "2", row(2, "us", 50)), (eu, "upsert", "5", row(5, "eu", 5))],
    )
    await socket.nothing_more()

    events = first + second + third
    for key in ("1", "2", "3"):  # in commit order per document, for each live subscription
        for live in (eu, pair):
            positions = [
                e["position"]
                for e in events
                if (e["key"], e["live_subscription_id"]) == (key, live)
            ]
            assert positions == sorted(set(positions)), (key, live, positions)
    gateways = {eu: "gw-rest", pair: "gw-socket"}
    assert all(e["gateway_id"] == gateways[e["live_subscription_id"]] for e in events)

    # Ten quick updates of one document, no waiting: however the worker batches them,
    # its events come in commit order and end on the last state.
    written = stack.execute(
        "INSERT INTO {t} VALUES (6, 'eu', 0)",
        *(f"UPDATE {{t}} SET total = {n} WHERE id = 6" for n in range(1, 10)),
    )
    burst = [await socket.receive()]
    while burst[-1].get("document", {}).get("total") != 9:
        burst.append(await socket.receive())
    assert {(m["type"], m["live_subscription_id"], m["key"]) for m in burst} == {("event", eu, "6")}
    totals = [m["document"]["total"] for m in burst]
    assert totals == sorted(set(totals)), totals
    positions = [m["position"] for m in burst]
    assert positions == sorted(set(positions)), positions
    assert indexed(stack, "6") == (positions[-1], row(6, "eu", 9))
    assert all(written.holds(m["commit_time"]) for m in burst)
    await socket.nothing_more()
    await socket.close()


async def test_a_worker_restart_keeps_delivering_to_the_same_socket(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    socket = await Socket.open(http, stack)
    live = await register_socket(socket, "gw-restart", 'doc.region == "ap"')
    stack.wait_picked_up()
    written = stack.execute("INSERT INTO {t} VALUES (10, 'ap', 1)")
    (before,) = await next_round(socket, stack, written, [(live, "upsert", "10", row(10, "ap", 1))])

    assert stack.worker is not None
    assert stack.worker.terminate() == 0, stack.worker.output()
    written = stack.execute("INSERT INTO {t} VALUES (11, 'ap', 2)")  # while no worker runs
    stack.start_worker()
    written |= stack.execute("INSERT INTO {t} VALUES (12, 'ap', 3)")
    after = await next_round(
        socket,
        stack,
        written,
        [(live, "upsert", "11", row(11, "ap", 2)), (live, "upsert", "12", row(12, "ap", 3))],
    )
    await socket.nothing_more()  # nothing twice (the checkpoint), no gap (a new epoch)
    assert before["position"] < min(e["position"] for e in after)
    assert stack.active() == stack.registered(), "the new worker loaded them all"
    await socket.close()


async def test_a_gateway_reconnecting_with_its_gateway_id_finds_and_receives_its_subscriptions(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    first = await Socket.open(http, stack)
    live = await register_socket(first, "gw-comes-back", 'doc.region == "sa"')
    await first.close()  # the gateway restarts: its live subscription stays

    async with http.get(
        f"{stack.base}/api/live-subscriptions",
        params={"gateway_id": "gw-comes-back"},
        headers={"Authorization": f"Bearer {stack.token}"},
    ) as answer:
        listed = await answer.json()
    assert [i["id"] for i in listed["items"]] == [live]

    second = await Socket.open(http, stack, token_message=True)
    resumed = await second.ask({"type": "resume", "gateway_id": "gw-comes-back"})
    assert (resumed["type"], resumed["count"], resumed["ids"]) == ("resumed", 1, [live])
    renewed = await second.ask({"type": "heartbeat", "gateway_id": "gw-comes-back"})
    assert (renewed["type"], renewed["renewed"]) == ("heartbeat", 1)
    stack.wait_picked_up()
    written = stack.execute("INSERT INTO {t} VALUES (20, 'sa', 7)")
    await next_round(second, stack, written, [(live, "upsert", "20", row(20, "sa", 7))])
    await second.nothing_more()
    await second.close()


async def test_events_the_channel_layer_drops_are_told_as_an_upstream_dropped_summary(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    socket = await Socket.open(http, stack)
    live = await register_socket(socket, "gw-flood", 'doc.region == "flood"')
    stack.wait_picked_up()
    written = stack.execute("INSERT INTO {t} VALUES (100, 'flood', 0)")
    await next_round(socket, stack, written, [(live, "upsert", "100", row(100, "flood", 0))])

    flood = 3 * CAPACITY
    sent = stack.metric("searchsync_live_deliveries_total", channel="websocket", outcome="sent")
    stack.daphne.send_signal(signal.SIGSTOP)  # a web process that cannot read its channel
    try:
        stack.execute(
            f"INSERT INTO {{t}} SELECT g, 'flood', g FROM generate_series(101, {100 + flood}) g"
        )
        wait_for(
            lambda: (
                stack.metric(
                    "searchsync_live_deliveries_total", channel="websocket", outcome="sent"
                )
                >= sent + flood
            ),
            timeout=WAIT,
            what="the worker sent every event to the Channels layer",
        )
    finally:
        stack.daphne.send_signal(signal.SIGCONT)
    last = 101 + flood
    stack.execute(f"INSERT INTO {{t}} VALUES ({last}, 'flood', 0)")

    received: list[dict[str, Any]] = []
    while not received or received[-1].get("key") != str(last):
        received.append(await socket.receive())
    events = [m for m in received if m["type"] == "event"]
    summaries = [m for m in received if m["type"] == "dropped"]
    got = {int(e["key"]) for e in events}
    lost = set(range(101, 101 + flood)) - got
    # The layer held CAPACITY (daphne's pending pop may have taken one more) and dropped
    # the rest; the last event came after daphne went on.
    assert len(events) - 1 <= CAPACITY + 1, len(events)
    assert len(lost) == flood - (len(events) - 1) >= flood - CAPACITY - 1
    assert summaries == [
        {
            "type": "dropped",
            "count": len(lost),
            "since": summaries[0]["since"],
            "where": "upstream",
            "live_subscription_id": live,
        }
    ]
    assert received[-2] is summaries[0], "in the lost events' place: before the next event"
    assert abs(summaries[0]["since"] - time.time()) < 60
    await socket.nothing_more()
    await socket.close()
