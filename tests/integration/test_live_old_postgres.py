"""`old` in live subscriptions' filters from a real PostgreSQL source: the row before the
change with REPLICA IDENTITY FULL, null with the default identity.

The real worker (in-process), osmem, NATS JetStream (a stream of the test's own).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from opensearchpy import OpenSearch

from syncer.models import Subscription
from syncer.operations import live_subscriptions as ops
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.jetstream import Stream
from tests.support.users import operator


def events(stream: Stream, count: int, what: str) -> list[tuple[str, dict[str, Any]]]:
    """(gateway, body) of the stream's messages, once it holds at least `count`."""
    wait_for(lambda: asyncio.run(stream.count()) >= count, timeout=20, what=what)
    messages = asyncio.run(stream.messages())
    prefix = stream.config.subject_prefix + "."
    return [(m.subject.removeprefix(prefix).split(".")[0], orjson.loads(m.data)) for m in messages]


def test_old_is_the_row_before_the_change_with_identity_full_and_null_with_the_default(
    source_conn: Any,
    table_name: str,
    make_subscription: Any,
    search: OpenSearch,
    nats_stream: Stream,
) -> None:
    full, plain = f"{table_name}_full", f"{table_name}_plain"
    for table in (full, plain):
        source_conn.execute(
            f"CREATE TABLE {table} (id int PRIMARY KEY, status text, note text, body text)"
        )
    source_conn.execute(f"ALTER TABLE {full} REPLICA IDENTITY FULL")
    # Out of line and uncompressed: an update that leaves it alone sends it as 'u'.
    source_conn.execute(f"ALTER TABLE {full} ALTER COLUMN body SET STORAGE EXTERNAL")
    orders: Subscription = make_subscription("orders", full, snapshot_mode="discard")
    plains: Subscription = make_subscription("plain", plain, snapshot_mode="discard")
    owner = operator()
    filters = {
        "changed": ("orders", "old.status != doc.status"),
        "kept": ("orders", "old != null && old.status == doc.status && old.body == doc.body"),
        "gone": ("orders", 'op == "delete" && doc == null && old.status == "paid"'),
        "unknown": ("plain", 'op == "upsert" && old == null'),
        "unknown-delete": ("plain", 'op == "delete" && old == null'),
    }
    ops.register(
        owner,
        [ops.Registration(gw, sub, text, "nats") for gw, (sub, text) in filters.items()],
    )
    body = "".join(uuid.uuid4().hex for _ in range(200))  # 6,400 characters
    with WorkerThread([orders, plains]) as worker:
        for name in ("orders", "plain"):
            wait_for(lambda n=name: status_of(n).status == "caught_up", what=f"{name} caught up")  # type: ignore[misc]
        source_conn.execute(
            f"INSERT INTO {full} VALUES (1, 'open', 'a', %s), (2, 'open', 'a', %s)", (body, body)
        )
        source_conn.execute(f"INSERT INTO {plain} VALUES (1, 'open', 'a', %s)", (body,))
        wait_for(
            lambda: len(index_docs(search, "orders")) == 2 and len(index_docs(search, "plain")),
            what="the inserts indexed",
        )
        got = events(nats_stream, 1, "the plain insert's event")
        # Neither the status nor the TOASTed body change here for row 2.
        source_conn.execute(f"UPDATE {full} SET status = 'paid' WHERE id = 1")
        source_conn.execute(f"UPDATE {full} SET note = 'b' WHERE id = 2")
        source_conn.execute(f"UPDATE {plain} SET status = 'paid' WHERE id = 1")
        got = events(nats_stream, 4, "the updates' events")
        source_conn.execute(f"DELETE FROM {full} WHERE id = 1")
        source_conn.execute(f"DELETE FROM {plain} WHERE id = 1")
        got = events(nats_stream, 6, "the deletes' events")
        matching = worker.runner.matching
        assert matching is not None
        wait_for(lambda: matching.matched >= 8, what="every change matched")
        got = events(nats_stream, 6, "nothing more")

    assert worker.result is True
    seen = sorted((gw, b["subscription"], b["key"], b["op"]) for gw, b in got)
    assert seen == [
        ("changed", "orders", "1", "upsert"),
        ("gone", "orders", "1", "delete"),
        ("kept", "orders", "2", "upsert"),
        ("unknown", "plain", "1", "upsert"),
        ("unknown", "plain", "1", "upsert"),
        ("unknown-delete", "plain", "1", "delete"),
    ]
    by_gateway = {gw: b for gw, b in got}
    # The unchanged TOASTed body came whole in the old row: the document has it.
    assert by_gateway["changed"]["document"] == {
        "id": 1,
        "status": "paid",
        "note": "a",
        "body": body,
    }
    assert by_gateway["kept"]["document"]["note"] == "b"
    assert by_gateway["gone"]["document"] is None
