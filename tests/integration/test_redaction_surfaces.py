"""Every surface a person reads applies the one redaction (syncer.text.redact).

The live monitor's websocket (snapshots and dead-letter events, through the real
publisher and the real Redis channel layer), the DLQ API's `error_reason`, the worker's
`/ready` over HTTP, the console page, and what the demo prints.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from prometheus_client import CollectorRegistry

from console.asgi import application
from syncer.engine.changes import Change, Op
from syncer.engine.interfaces import Rejected
from syncer.engine.outcomes import ItemResult, Outcome
from syncer.engine.pipeline import BatchReport, Pipeline, PipelineConfig, Status
from syncer.engine.testing import InMemoryDeadLetters, InMemorySink, InMemorySource, InMemoryStore
from syncer.errors import SourceConfigError
from syncer.live.messages import MONITOR_GROUP, events_group
from syncer.live.publisher import LivePublisher
from syncer.models import Subscription
from syncer.worker import http
from tests.conftest import DB_SUFFIX
from tests.support.factories import entry, snapshot_message, subscription
from tests.support.process import ROOT, free_port
from tests.support.users import operator, token_client

LEAKY = "cannot connect to postgresql://:s3cret-pw@db.internal/shop (password=two words)"
SHOWN = "cannot connect to postgresql://:***@db.internal/shop (password=***)"
ORIGIN = (b"origin", b"http://localhost:8000")


def assert_hidden(text: str) -> None:
    assert "s3cret-pw" not in text and "two words" not in text and "words" not in text


# -- the live monitor's websocket -------------------------------------------------------


@pytest.fixture
async def layer(settings: Any) -> AsyncIterator[Any]:
    layers: dict[str, Any] = copy.deepcopy(django_settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["prefix"] = f"searchsync_test{DB_SUFFIX}_{uuid.uuid4().hex[:12]}"
    settings.CHANNEL_LAYERS = layers
    channel_layer = get_channel_layer()
    yield channel_layer
    await channel_layer.flush()
    await sync_to_async(connections.close_all)()


def staff_cookie() -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(User.objects.create_user("ops", is_staff=True, is_superuser=True))
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def opened(path: str, cookie: tuple[bytes, bytes]) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, path, headers=[ORIGIN, cookie])
    accepted, _ = await ws.connect()
    assert accepted
    return ws


def rejected() -> Rejected:
    change = Change(Op.UPSERT, "order-1", ("order-1",), 100, time.time(), {"id": 1})
    return Rejected(change, ItemResult(Outcome.PERMANENT, 400, "mapper_exception", LEAKY), 1)


@pytest.mark.django_db(transaction=True)
async def test_the_monitor_socket_shows_snapshots_and_dead_letters_redacted(layer: Any) -> None:
    await sync_to_async(subscription)("orders")
    cookie = await sync_to_async(staff_cookie)()
    monitor = await opened("/ws/monitor/", cookie)
    events = await opened(f"/ws/subscriptions/{'orders'}/events/", cookie)
    publisher = LivePublisher("host:1", events_per_second=100, queue_size=100, layer=layer)

    publisher.offer_snapshot(snapshot_message(message=LEAKY, status="reconnecting"))
    publisher.offer_batch("orders", "postgres", BatchReport(1, [], [rejected()], time.time()))
    await publisher.send_once()

    shown = await monitor.receive_json_from(timeout=2)
    assert shown["kind"] == "snapshot" and shown["message"] == SHOWN
    batch = await events.receive_json_from(timeout=2)
    (event,) = batch["events"]
    assert event["kind"] == "dead_letter"
    assert event["error"] == f"400 mapper_exception: {SHOWN}"
    await monitor.disconnect()
    await events.disconnect()
    assert events_group("orders") != MONITOR_GROUP


# -- the DLQ API and the console page -----------------------------------------------------


@pytest.mark.django_db
def test_the_dlq_api_shows_error_reasons_redacted() -> None:
    sub = subscription("orders")
    stored = entry(sub, "order-1", error_reason=LEAKY)
    api = token_client(operator("ops", is_superuser=True))

    listed = api.get("/api/dlq")
    one = api.get(f"/api/dlq/{stored.pk}")
    stats = api.get("/api/dlq/stats")

    assert listed.json()["items"][0]["error_reason"] == SHOWN
    assert one.json()["error_reason"] == SHOWN
    assert stats.json()["oldest"]["error_reason"] == SHOWN
    for response in (listed, one, stats):
        assert_hidden(response.content.decode())


@pytest.mark.django_db
def test_the_console_page_shows_status_messages_redacted(admin_client: Client) -> None:
    sub = subscription("orders")
    Subscription.objects.filter(pk=sub.pk).update(status_message=LEAKY)

    page = admin_client.get("/console/")

    assert page.status_code == 200
    assert_hidden(page.content.decode())


# -- the worker's /ready ----------------------------------------------------------------


class RefusingSource(InMemorySource):
    """A source whose driver error quotes a DSN, as some servers' messages do."""

    async def open(self, resume: Any) -> None:
        raise SourceConfigError(LEAKY)


def ready_body(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            body: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return body


async def test_ready_on_the_worker_port_shows_reasons_redacted() -> None:
    config = PipelineConfig(name="orders", poll_interval=0.005, backoff_base=5, backoff_cap=5)
    pipeline = Pipeline(
        config, RefusingSource(), InMemorySink(), InMemoryStore(), InMemoryDeadLetters()
    )
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    port = free_port()
    close = http.serve(port, lambda: {"orders": pipeline}, CollectorRegistry())
    try:
        async with asyncio.timeout(5):
            while pipeline.status != Status.ERROR:
                await asyncio.sleep(0.01)
        body = await asyncio.to_thread(ready_body, port)
    finally:
        close()
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    (reason,) = body["reasons"]
    assert reason.startswith(f"orders: error: {SHOWN}")
    assert body["subscriptions"]["orders"]["reason"].startswith(f"error: {SHOWN}")
    assert_hidden(json.dumps(body))


# -- the demo -----------------------------------------------------------------------------


def test_the_demo_prints_its_urls_without_passwords() -> None:
    spec = importlib.util.spec_from_file_location("searchsync_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    text = demo.instructions(
        "http://127.0.0.1:8000",
        "an existing superuser",
        "https://admin:os-s3cret-pw@search.internal:9200",
        "postgresql://postgres:db-s3cret-pw@127.0.0.1:5432/searchsync",
        "postgresql://:src-s3cret-pw@127.0.0.1:5432/searchsync_demo",
    )

    assert "s3cret" not in text
    assert "curl -s 'https://admin:***@search.internal:9200/demo-orders/_count'" in text
    assert "psql postgresql://:***@127.0.0.1:5432/searchsync_demo" in text
    assert "passwords are shown as ***" in text
