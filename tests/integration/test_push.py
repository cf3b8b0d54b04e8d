"""Push subscriptions: NDJSON posted to a real daphne, queued in PostgreSQL, indexed by a
real worker (in-process, or a `runsyncer` process killed with -9).

daphne serves console.asgi on the test database with small bounds of this module's own
(lines of 300 bytes, requests of 6,000, queues of 60 operations), so that each bound is
reached with a few lines.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from console.models import ApiToken
from syncer.models import PushedChange, PushSequence, Subscription
from syncer.sources.push import queue as push_queue
from syncer.worker import metrics
from tests.support.factories import subscription as postgres_subscription
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.process import WorkerProcess, serving_daphne
from tests.support.tcpproxy import TcpProxy
from tests.support.users import operator, viewer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

MAX_LINE = 300
MAX_REQUEST = 6_000
QUEUE_LIMIT = 60
PATH = "/api/subscriptions/{}/documents/stream"


@pytest.fixture(scope="module")
def daphne(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("daphne")
    extra = {
        "SYNCER_PUSH_MAX_LINE_BYTES": MAX_LINE,
        "SYNCER_PUSH_MAX_REQUEST_BYTES": MAX_REQUEST,
        "SYNCER_PUSH_QUEUE_LIMIT": QUEUE_LIMIT,
        "SYNCER_PUSH_COMMIT_LINES": 7,
    }
    with serving_daphne(folder, django_settings.DATABASES["default"]["NAME"], extra) as port:
        yield port


@pytest.fixture
def token() -> str:
    return ApiToken.issue(operator(), "ci")[1]


def push_subscription(name: str = "books", **fields: Any) -> Subscription:
    sub = Subscription(name=name, source_kind="push", index_name=name, **fields)
    sub.full_clean()
    sub.save()
    return sub


def post(
    port: int,
    name: str,
    body: bytes,
    token: str | None,
    content_type: str = "application/x-ndjson",
) -> tuple[int, list[dict[str, Any]], dict[str, str]]:
    """POST `body`; the status, the answer's JSON lines (or its one JSON body), headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", PATH.format(name), body=body, headers=headers)
        response = conn.getresponse()
        text = response.read()
        answer = [json.loads(line) for line in text.splitlines() if line.strip()]
        return response.status, answer, dict(response.getheaders())
    finally:
        conn.close()


def ndjson(*lines: Any) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def upsert(doc_id: str | int, **doc: Any) -> dict[str, Any]:
    return {"op": "upsert", "id": doc_id, "doc": doc}


def queued_rows(sub: Subscription) -> list[tuple[int, str, str, Any]]:
    return list(
        PushedChange.objects.filter(subscription=sub)
        .order_by("position")
        .values_list("position", "op", "doc_id", "document")
    )


def test_each_line_is_answered_in_order_and_a_malformed_one_is_rejected_alone(daphne, token):
    sub = push_subscription()
    body = ndjson(
        upsert("1", title="Dune"),
        b"{not json",
        {"op": "delete", "id": "2"},
        b"",  # blank: skipped, counted
        {"op": "upsert", "id": "3"},  # no doc
        {"op": "replace", "id": "4", "doc": {}},
        upsert(5, title="Emma"),
        {"op": "delete", "id": "6", "doc": {"x": 1}},
        upsert("7", title="nul \u0000 inside"),
        upsert("8", extra=[1, 2.5, None, {"deep": True}]),
    )
    status, answer, _ = post(daphne, "books", body, token)
    assert status == 200
    *lines, summary = answer
    assert [(a["line"], a["status"]) for a in lines] == [
        (1, "accepted"),
        (2, "rejected"),
        (3, "accepted"),
        (5, "rejected"),
        (6, "rejected"),
        (7, "accepted"),
        (8, "rejected"),
        (9, "rejected"),
        (10, "accepted"),
    ]
    reasons = {a["line"]: a["error"] for a in lines if a["status"] == "rejected"}
    assert "not valid JSON" in reasons[2]
    assert "doc" in reasons[5] and "object" in reasons[5]
    assert '"op" must be "upsert" or "delete"' in reasons[6]
    assert "takes no" in reasons[8]
    assert "\\u0000" in reasons[9]
    positions = [a["position"] for a in lines if a["status"] == "accepted"]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert summary == {
        "status": "summary",
        "accepted": 4,
        "rejected": 5,
        "stopped_at": None,
        "first_position": positions[0],
        "last_position": positions[-1],
    }
    # Positions start at the sequence's creation time in microseconds.
    assert abs(positions[0] / 1e6 - time.time()) < 60
    assert queued_rows(sub) == [
        (positions[0], "upsert", "1", {"title": "Dune"}),
        (positions[1], "delete", "2", None),
        (positions[2], "upsert", "5", {"title": "Emma"}),
        (positions[3], "upsert", "8", {"extra": [1, 2.5, None, {"deep": True}]}),
    ]


def test_a_token_without_change_permission_is_refused_and_nothing_is_queued(daphne):
    sub = push_subscription()
    body = ndjson(upsert("1", title="Dune"))
    view_only = ApiToken.issue(viewer(), "viewer")[1]
    read_only = ApiToken.issue(operator(), "ro", read_only=True)[1]
    revoked_token, revoked = ApiToken.issue(operator("ops2"), "old")
    revoked_token.revoked_at = timezone.now()
    revoked_token.save()

    status, answer, _ = post(daphne, "books", body, view_only)
    assert status == 403 and "syncer.change_subscription" in answer[0]["detail"]
    status, answer, _ = post(daphne, "books", body, read_only)
    assert status == 403 and "read-only" in answer[0]["detail"]
    status, answer, _ = post(daphne, "books", body, revoked)
    assert status == 401 and "revoked" in answer[0]["detail"]
    status, _, _ = post(daphne, "books", body, None)
    assert status == 401
    assert queued_rows(sub) == []


def test_only_push_subscriptions_take_ndjson_documents(daphne, token):
    postgres_subscription("orders")
    push_subscription()
    status, answer, _ = post(daphne, "orders", ndjson(upsert("1")), token)
    assert status == 409
    assert "source kind push" in answer[0]["detail"]
    status, answer, _ = post(daphne, "books", ndjson(upsert("1")), token, "application/json")
    assert status == 415 and "application/x-ndjson" in answer[0]["detail"]
    status, answer, _ = post(daphne, "nobody", ndjson(upsert("1")), token)
    assert status == 404
    assert not PushedChange.objects.exists()


def test_a_line_over_the_bound_is_rejected_alone_and_a_request_over_it_stops_where_it_did(
    daphne, token
):
    sub = push_subscription()
    long_line = upsert("big", text="x" * MAX_LINE)
    status, answer, _ = post(daphne, "books", ndjson(upsert("1"), long_line, upsert("2")), token)
    assert status == 200
    assert [a.get("status") for a in answer] == ["accepted", "rejected", "accepted", "summary"]
    assert "SYNCER_PUSH_MAX_LINE_BYTES" in answer[1]["error"]
    assert f"more than {MAX_LINE}" in answer[1]["error"]

    # Lines of 120 bytes with their newline: the request bound (6,000 bytes) ends line 50.
    lines = [json.dumps(upsert(f"{i:04d}", pad="p" * 60)).encode().ljust(119) for i in range(80)]
    assert all(len(line) == 119 for line in lines)
    status, answer, _ = post(daphne, "books", b"\n".join(lines) + b"\n", token)
    assert status == 200
    *accepted, stopped, summary = answer
    assert [a["line"] for a in accepted] == list(range(1, 51))
    assert {a["status"] for a in accepted} == {"accepted"}
    assert stopped["status"] == "stopped" and stopped["line"] == 51
    assert stopped["reason"] == "request_too_large"
    assert "SYNCER_PUSH_MAX_REQUEST_BYTES" in stopped["error"] and "line 51" in stopped["error"]
    assert summary["accepted"] == 50 and summary["stopped_at"] == 51
    assert [doc_id for _, _, doc_id, _ in queued_rows(sub)][2:] == [f"{i:04d}" for i in range(50)]

    # The bound falling inside a line: that line is the first not read.
    status, answer, _ = post(daphne, "books", b"\n" * 5950 + lines[0] + b"\n", token)
    assert answer[0] == {
        "line": 5951,
        "status": "stopped",
        "reason": "request_too_large",
        "error": answer[0]["error"],
    }
    assert answer[1]["accepted"] == 0


def test_over_the_queue_limit_the_push_is_refused_with_429(daphne, token):
    sub = push_subscription()
    # 50 fit; of the next 20, 10 are taken and the request stops at the first one refused.
    status, answer, _ = post(daphne, "books", ndjson(*(upsert(i) for i in range(50))), token)
    assert status == 200 and answer[-1]["accepted"] == 50
    status, answer, _ = post(
        daphne, "books", ndjson(b"{bad", *(upsert(i) for i in range(50, 70))), token
    )
    assert status == 200
    *lines, stopped, summary = answer
    assert [a["status"] for a in lines] == ["rejected"] + ["accepted"] * 10
    assert stopped["reason"] == "queue_full" and stopped["line"] == 12
    assert "full" in stopped["error"] and "line 12" in stopped["error"]
    assert summary["accepted"] == 10 and summary["stopped_at"] == 12
    assert PushedChange.objects.filter(subscription=sub).count() == QUEUE_LIMIT

    status, answer, headers = post(daphne, "books", ndjson(upsert("late")), token)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert answer[0]["queued"] == QUEUE_LIMIT and answer[0]["limit"] == QUEUE_LIMIT
    assert "full" in answer[0]["detail"]
    assert PushedChange.objects.filter(subscription=sub).count() == QUEUE_LIMIT
    # The worker's /metrics shows the queue (a gauge per push subscription).
    assert metrics.push_queue_depths(["books", "no-such"]) == {"books": QUEUE_LIMIT}


def test_updates_of_one_id_over_concurrent_requests_end_with_the_last_accepted_indexed(
    daphne, token, opensearch_url, search
):
    sub = push_subscription(batch_max_size=5)
    with WorkerThread([sub]):

        def send(client: int) -> list[tuple[int, int]]:
            got = []
            for round_ in range(4):
                body = ndjson(*(upsert("hot", client=client, n=round_ * 10 + i) for i in range(3)))
                _, answer, _ = post(daphne, "books", body, token)
                for line, status in zip(range(3), answer[:3], strict=True):
                    assert status["status"] == "accepted", answer
                    got.append((status["position"], client * 100 + round_ * 10 + line))
            return got

        with ThreadPoolExecutor(4) as pool:
            accepted = [pair for pairs in pool.map(send, range(4)) for pair in pairs]
        assert len({position for position, _ in accepted}) == 48
        last_position, last = max(accepted)

        def indexed() -> Any:
            doc = index_docs(search, "books").get("hot")
            return doc if doc and doc["client"] * 100 + doc["n"] == last else None

        wait_for(indexed, timeout=30, what=f"the last accepted update ({last})")
        found = search.get(index="books", id="hot")
        assert found["_version"] == last_position
        # The queue is emptied once the checkpoint covers it.
        wait_for(lambda: not PushedChange.objects.filter(subscription=sub).exists(), timeout=15)
        assert status_of("books").checkpoint == last_position


def test_accepted_lines_are_indexed_though_the_worker_is_killed_between_accept_and_index(
    daphne, token, opensearch_url, opensearch_proxy: TcpProxy, search, tmp_path: Path
):
    sub = push_subscription()
    log = tmp_path / "worker.log"
    proxied = f"http://127.0.0.1:{opensearch_proxy.port}"
    worker = WorkerProcess(proxied, log, "--subscription", "books")
    try:
        wait_for(lambda: status_of("books").status in {"caught_up", "streaming"}, timeout=30)
        status, answer, _ = post(daphne, "books", ndjson(upsert("warm", n=0)), token)
        assert answer[0]["status"] == "accepted"
        wait_for(lambda: "warm" in index_docs(search, "books"), timeout=20)
        wait_for(lambda: not PushedChange.objects.filter(subscription=sub).exists(), timeout=20)
        with opensearch_proxy.down():
            # Accepted while the worker cannot write: it reads them and holds them.
            body = ndjson(
                *(upsert(f"d{i}", n=i) for i in range(20)), {"op": "delete", "id": "warm"}
            )
            status, answer, _ = post(daphne, "books", body, token)
            assert status == 200 and answer[-1]["accepted"] == 21
            wait_for(lambda: status_of("books").status == "sink_unavailable", timeout=30)
            worker.kill()
        assert PushedChange.objects.filter(subscription=sub).count() == 21
        worker = WorkerProcess(proxied, log, "--subscription", "books")
        expected = {f"d{i}": {"n": i} for i in range(20)}
        wait_for(lambda: index_docs(search, "books") == expected, timeout=45, what="the index")
        wait_for(lambda: not PushedChange.objects.filter(subscription=sub).exists(), timeout=20)
        assert status_of("books").checkpoint == answer[-1]["last_position"]
    finally:
        worker.terminate()
    assert PushSequence.objects.get(subscription=sub).last_position == answer[-1]["last_position"]


def test_the_queue_tables_are_the_models(db):
    assert PushedChange._meta.db_table == push_queue.QUEUE_TABLE
    assert PushSequence._meta.db_table == push_queue.SEQUENCE_TABLE
    assert Subscription._meta.db_table == push_queue.SUBSCRIPTION_TABLE


def test_a_push_wakes_the_worker_at_once_not_after_the_poll_interval(
    daphne, token, opensearch_url, search, settings
):
    settings.SYNCER_POLL_INTERVAL = 30  # only NOTIFY can wake it in time
    push_subscription()
    with WorkerThread([Subscription.objects.get(name="books")]):
        wait_for(lambda: status_of("books").status == "caught_up", timeout=15)
        time.sleep(0.5)  # well into its wait
        for n in range(3):
            started = time.monotonic()
            _, answer, _ = post(daphne, "books", ndjson(upsert("w", n=n)), token)
            assert answer[0]["status"] == "accepted"
            wait_for(
                lambda: index_docs(search, "books").get("w") == {"n": n},  # noqa: B023
                timeout=10,
                interval=0.05,
            )
            assert time.monotonic() - started < 5
    # Woken by NOTIFY, not by a session restarted after a failure (which reads at once too).
    books = status_of("books")
    assert books.last_error == "" and books.last_error_at is None


def test_a_push_subscription_is_created_through_the_api_and_refuses_a_resync(token):
    from tests.support.users import bearer

    client = bearer(token)
    created = client.post(
        "/api/subscriptions",
        {"name": "books", "source": {"kind": "push"}, "index": {"name": "books"}},
        content_type="application/json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["source"]["kind"] == "push"
    refused = client.post(
        "/api/subscriptions",
        {
            "name": "other",
            "source": {"kind": "push", "dsn": "env:SOURCE_DATABASE_URL"},
            "index": {"name": "other"},
        },
        content_type="application/json",
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "source.dsn"
    resync = client.post("/api/subscriptions/books/resync", {}, content_type="application/json")
    assert resync.status_code == 200
    assert resync.json()["changed"] is False
    assert "no source to copy again" in resync.json()["message"]
    assert Subscription.objects.get(name="books").resync_requested_at is None


def test_the_admin_creates_a_push_subscription_and_refuses_one_with_a_dsn(admin_client):
    from django.urls import reverse

    from tests.support.factories import admin_form

    add = reverse("admin:syncer_subscription_add")
    fields = {"source_kind": "push", "relation": "", "name": "books", "index_name": "books"}
    refused = admin_client.post(add, admin_form(**fields))
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors
    assert list(errors) == ["source_dsn"]
    assert "push subscriptions read no database" in errors["source_dsn"][0]
    created = admin_client.post(add, admin_form(**fields, source_dsn=""))
    assert created.status_code == 302
    assert Subscription.objects.get(name="books").kind.name == "push"
    missing = admin_client.post(add, admin_form(name="orders", source_dsn="", relation=""))
    assert set(missing.context["adminform"].form.errors) == {"source_dsn", "relation"}
