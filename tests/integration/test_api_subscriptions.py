"""`/api/subscriptions`: the read schema, create/patch/delete validated like a file, control.

Changes made through the API appear in the admin's history (LogEntry) for the caller.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.models import ApiToken
from syncer.models import Subscription
from tests.support.factories import entry, subscription
from tests.support.users import operator, token_client

JSON = "application/json"
UNREACHABLE_SOURCE = "postgresql://sync:s3cret-pw@127.0.0.1:9/shop"


@pytest.fixture
def staff(db: None) -> User:
    return operator()


@pytest.fixture
def client(staff: User) -> Client:
    return token_client(staff)


def declaration(name: str = "orders", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "source": {"kind": "postgres", "dsn": UNREACHABLE_SOURCE, "relation": "public.orders"},
        "index": {"name": name},
    }
    body.update(overrides)
    return body


def history(name: str) -> list[tuple[int, str, str]]:
    sub_id = Subscription.objects.filter(name=name).values_list("pk", flat=True).first()
    entries = LogEntry.objects.filter(object_repr=name).order_by("action_time", "pk")
    if sub_id is not None:
        entries = entries.filter(object_id=str(sub_id))
    return [(e.action_flag, e.user.username, e.change_message) for e in entries]


def errors_of(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.content
    return {e["field"]: e["message"] for e in response.json()["errors"]}


# -- read ---------------------------------------------------------------------------------


def test_read_schema_has_status_lag_checkpoint_and_dead_letters_without_the_password(
    client: Client,
) -> None:
    sub = subscription("orders")
    now = timezone.now()
    Subscription.objects.filter(pk=sub.pk).update(
        source_dsn=UNREACHABLE_SOURCE,
        status=Subscription.Status.ERROR,
        status_message="cannot connect to postgresql://sync:s3cret-pw@127.0.0.1:9/shop",
        last_error="password=s3cret-pw rejected",
        last_error_at=now,
        checkpoint=(0x16 << 32) | 0xB374D848,
        checkpoint_at=now,
        lag_seconds=1.5,
        staleness_seconds=0.25,
        throughput=120.0,
        owner="worker-a:123",
    )
    entry(sub, "order-1")
    entry(sub, "order-2")
    subscription("customers")

    listed = client.get("/api/subscriptions")
    assert listed.status_code == 200
    assert [s["name"] for s in listed.json()] == ["customers", "orders"]
    assert "s3cret-pw" not in listed.content.decode()

    shown = client.get("/api/subscriptions/orders").json()
    assert shown["source"]["dsn"] == "postgresql://sync:***@127.0.0.1:9/shop"
    assert shown["status"] == "error"
    assert "***" in shown["status_message"] and "***" in shown["last_error"]
    assert shown["checkpoint"]["position"] == (0x16 << 32) | 0xB374D848
    assert shown["checkpoint"]["shown"] == "16/B374D848"
    assert (shown["lag_seconds"], shown["staleness_seconds"], shown["throughput"]) == (
        1.5,
        0.25,
        120.0,
    )
    assert (shown["owner"], shown["paused"], shown["dead_letters"]) == ("worker-a:123", False, 2)


def test_list_filters_by_status_and_unknown_name_is_404(client: Client) -> None:
    subscription("orders")
    Subscription.objects.filter(name="orders").update(status=Subscription.Status.CAUGHT_UP)
    subscription("customers")
    caught_up = client.get("/api/subscriptions", {"status": "caught_up"}).json()
    assert [s["name"] for s in caught_up] == ["orders"]
    missing = client.get("/api/subscriptions/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no subscription named 'nope'"}


# -- create ---------------------------------------------------------------------------------


def test_create_validates_like_a_file_and_records_who_did_it(client: Client) -> None:
    response = client.post(
        "/api/subscriptions",
        declaration(batch={"max_size": 200}, backpressure={"pause_at": 400, "resume_at": 100}),
        content_type=JSON,
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "orders" and body["status"] == "stopped"
    assert body["source"]["dsn"] == "postgresql://sync:***@127.0.0.1:9/shop"
    stored = Subscription.objects.get(name="orders")
    assert stored.source_dsn == UNREACHABLE_SOURCE  # the real one is kept, only shown redacted
    assert (stored.batch_max_size, stored.backpressure_pause_at) == (200, 400)
    prefix = ApiToken.objects.get().prefix
    assert history("orders") == [(ADDITION, "ops", f"Created, via API token 'ci' (ssk_{prefix}_…)")]


def test_create_of_a_taken_name_is_409_and_leaves_it_alone(client: Client) -> None:
    subscription("orders")
    response = client.post(
        "/api/subscriptions", declaration(index={"name": "other"}), content_type=JSON
    )
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    assert Subscription.objects.get(name="orders").index_name == "orders"


def test_create_errors_name_each_field_by_its_path(client: Client) -> None:
    response = client.post(
        "/api/subscriptions",
        declaration(
            name="Not a slug",
            source={"kind": "postgres", "dsn": "env:1BAD", "relation": "SELECT 1", "cluster": "x"},
            index={"name": "Orders"},
            backpressure={"pause_at": 2000, "resume_at": 3000},
        ),
        content_type=JSON,
    )
    errors = errors_of(response)
    assert set(errors) == {
        "name",
        "source.dsn",
        "source.relation",
        "source.cluster",
        "index.name",
        "backpressure.resume_at",
    }
    assert "query" in errors["source.relation"]
    assert "lowercase" in errors["index.name"]
    assert "source.relation" in response.json()["detail"]
    assert not Subscription.objects.exists()


def test_create_type_errors_and_unknown_keys_are_422_with_paths(client: Client) -> None:
    response = client.post(
        "/api/subscriptions",
        {
            "name": "orders",
            "source": {"kind": "oracle", "relation": "t"},
            "index": {"name": "orders", "shards": 3},
            "batch": {"max_size": "many"},
        },
        content_type=JSON,
    )
    errors = errors_of(response)
    assert {"source.kind", "index.shards", "batch.max_size"} <= set(errors)
    # A kind that reads a database needs its DSN (a push subscription has none).
    no_dsn = client.post(
        "/api/subscriptions",
        {"name": "orders", "source": {"kind": "postgres", "relation": "t"}, "index": {"name": "o"}},
        content_type=JSON,
    )
    assert "source.dsn" in errors_of(no_dsn)
    assert client.post("/api/subscriptions", "{", content_type=JSON).status_code == 400


def test_a_materialize_subscription_needs_key_columns(client: Client) -> None:
    body = declaration(
        source={"kind": "materialize", "dsn": "env:MZ_SOURCE_URL", "relation": "orders_mv"}
    )
    errors = errors_of(client.post("/api/subscriptions", body, content_type=JSON))
    assert "key columns" in errors["source.key"]
    body["source"]["key"] = ["order_id"]
    body["source"]["cluster"] = "serving"
    created = client.post("/api/subscriptions", body, content_type=JSON)
    assert created.status_code == 201
    assert created.json()["source"]["cluster"] == "serving"


# -- patch ------------------------------------------------------------------------------------


def test_patch_changes_given_fields_says_what_changed_and_logs_it(client: Client) -> None:
    client.post("/api/subscriptions", declaration(), content_type=JSON)
    response = client.patch(
        "/api/subscriptions/orders",
        {"index": {"name": "orders-v2"}, "batch": {"max_size": 500}},
        content_type=JSON,
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["changed"] is True
    assert {c["field"]: (c["old"], c["new"]) for c in body["changes"]} == {
        "index.name": ("orders", "orders-v2"),
        "batch.max_size": ("1000", "500"),
    }
    assert body["subscription"]["index"]["name"] == "orders-v2"
    stored = Subscription.objects.get(name="orders")
    assert (stored.index_name, stored.batch_max_size, stored.relation) == (
        "orders-v2",
        500,
        "public.orders",
    )
    assert stored.source_dsn == UNREACHABLE_SOURCE
    flag, user, message = history("orders")[-1]
    assert (flag, user) == (CHANGE, "ops")
    assert message.startswith("Changed index.name (orders → orders-v2), batch.max_size")
    assert message.endswith("via API token 'ci' (ssk_" + ApiToken.objects.get().prefix + "_…)")

    again = client.patch(
        "/api/subscriptions/orders", {"index": {"name": "orders-v2"}}, content_type=JSON
    ).json()
    assert (again["changed"], again["changes"]) == (False, [])
    assert len(history("orders")) == 2


def test_patch_of_a_dsn_never_shows_the_password(client: Client) -> None:
    client.post("/api/subscriptions", declaration(), content_type=JSON)
    response = client.patch(
        "/api/subscriptions/orders",
        {"source": {"dsn": "postgresql://sync:n3w-pw@127.0.0.1:9/shop"}},
        content_type=JSON,
    )
    assert response.status_code == 200
    assert (
        "n3w-pw" not in response.content.decode() and "s3cret-pw" not in response.content.decode()
    )
    assert "(password changed)" in response.json()["changes"][0]["new"]
    assert all("n3w-pw" not in e.change_message for e in LogEntry.objects.all())


def test_patch_errors_are_422_with_paths_and_change_nothing(client: Client) -> None:
    client.post("/api/subscriptions", declaration(), content_type=JSON)
    response = client.patch(
        "/api/subscriptions/orders",
        {"source": {"relation": "not a table!"}, "backpressure": {"resume_at": 9000}},
        content_type=JSON,
    )
    assert set(errors_of(response)) == {"source.relation", "backpressure.resume_at"}
    renamed = client.patch("/api/subscriptions/orders", {"name": "x"}, content_type=JSON)
    assert set(errors_of(renamed)) == {"name"}
    assert Subscription.objects.get(name="orders").relation == "public.orders"
    missing = client.patch("/api/subscriptions/nope", {"enabled": False}, content_type=JSON)
    assert missing.status_code == 404


def test_patch_null_resets_to_the_default_and_switching_kind_drops_materialize_options(
    client: Client,
) -> None:
    body = declaration(
        source={
            "kind": "materialize",
            "dsn": "env:MZ_SOURCE_URL",
            "relation": "orders_mv",
            "key": ["order_id"],
            "cluster": "serving",
        },
        batch={"max_size": 10},
        backpressure={"pause_at": 100, "resume_at": 50},
    )
    assert client.post("/api/subscriptions", body, content_type=JSON).status_code == 201
    response = client.patch(
        "/api/subscriptions/orders",
        {"source": {"kind": "postgres", "relation": "public.orders"}, "batch": {"max_size": None}},
        content_type=JSON,
    )
    # max_size back to its default (1000) is above pause_at: the file's rule says so.
    assert "backpressure.pause_at" in errors_of(response)
    response = client.patch(
        "/api/subscriptions/orders",
        {
            "source": {"kind": "postgres", "relation": "public.orders"},
            "batch": {"max_size": None},
            "backpressure": {"pause_at": None, "resume_at": None},
        },
        content_type=JSON,
    )
    assert response.status_code == 200, response.content
    stored = Subscription.objects.get(name="orders")
    assert (stored.source_kind, stored.source_cluster, stored.batch_max_size) == (
        "postgres",
        "",
        1000,
    )


# -- delete ------------------------------------------------------------------------------------


def test_delete_drops_the_slot_on_a_reachable_source(
    client: Client, make_subscription: Any, source_conn: psycopg.Connection, table_name: str
) -> None:
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    sub = make_subscription("orders", table_name)
    source_conn.execute(
        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (sub.slot_name,)
    )
    response = client.delete("/api/subscriptions/orders")
    assert response.status_code == 200
    assert response.json() == {"name": "orders", "deleted": True, "warning": None}
    assert not Subscription.objects.exists()
    slots = source_conn.execute(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (sub.slot_name,)
    ).fetchone()
    assert slots == (0,)
    assert [(f, u) for f, u, _ in history("orders")] == [(DELETION, "ops")]


def test_delete_with_an_unreachable_source_says_what_to_drop_by_hand(client: Client) -> None:
    client.post("/api/subscriptions", declaration(), content_type=JSON)
    slot = Subscription.objects.get(name="orders").slot_name
    response = client.delete("/api/subscriptions/orders")
    assert response.status_code == 200
    warning = response.json()["warning"]
    assert f"pg_drop_replication_slot('{slot}')" in warning
    assert "s3cret-pw" not in warning
    assert not Subscription.objects.exists()
    assert client.delete("/api/subscriptions/orders").status_code == 404


# -- control -----------------------------------------------------------------------------------


def test_pause_and_resume_say_what_changed_and_tell_the_worker(client: Client) -> None:
    subscription("orders")
    first = client.post("/api/subscriptions/orders/pause").json()
    again = client.post("/api/subscriptions/orders/pause").json()
    assert (first["changed"], first["paused"], first["message"]) == (True, True, "paused")
    assert (again["changed"], again["message"]) == (False, "already paused")
    stored = Subscription.objects.get(name="orders")
    assert stored.paused and stored.control_version == 1
    resumed = client.post("/api/subscriptions/orders/resume").json()
    assert (resumed["changed"], resumed["paused"]) == (True, False)
    assert Subscription.objects.get(name="orders").control_version == 2
    assert [m.split(",")[0] for _, _, m in history("orders")] == ["Paused", "Resumed"]
    assert client.post("/api/subscriptions/nope/pause").status_code == 404


def test_resync_defaults_to_in_place_and_takes_new_index(client: Client) -> None:
    subscription("orders")
    before = timezone.now() - dt.timedelta(seconds=1)
    default = client.generic("POST", "/api/subscriptions/orders/resync")  # no body at all
    assert default.status_code == 200
    assert default.json()["resync_mode"] == "in_place"
    chosen = client.post(
        "/api/subscriptions/orders/resync", {"mode": "new_index"}, content_type=JSON
    ).json()
    assert (chosen["action"], chosen["changed"], chosen["resync_mode"]) == (
        "resync",
        True,
        "new_index",
    )
    stored = Subscription.objects.get(name="orders")
    assert stored.resync_requested_at is not None and stored.resync_requested_at > before
    assert stored.resync_mode == "new_index" and stored.control_version == 2
    assert len(history("orders")) == 2
    bad = client.post("/api/subscriptions/orders/resync", {"mode": "wipe"}, content_type=JSON)
    assert set(errors_of(bad)) == {"mode"}


def test_api_changes_show_in_the_subscription_admin_history(
    client: Client, admin_client: Client
) -> None:
    sub = subscription("orders")
    client.post("/api/subscriptions/orders/pause")
    page = admin_client.get(reverse("admin:syncer_subscription_history", args=[sub.pk]))
    assert page.status_code == 200
    assert "Paused, via API token &#x27;ci&#x27;" in page.content.decode()
