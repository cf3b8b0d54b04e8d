"""`/api/live-subscriptions`: registration (one, a batch), heartbeats and the TTL's
expiry, the quotas, who sees what, and a gateway finding its own again after a restart.

Against the real test database: the quota's lock is PostgreSQL's, and the concurrent
registrations are real requests on their own connections.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from console.models import ApiToken
from syncer.errors import NotPermitted
from syncer.models import LiveSubscription, Subscription
from syncer.operations import live_subscriptions, source_fields
from syncer.sources.postgres.catalog import column_types
from tests.support.factories import subscription
from tests.support.users import bearer, operator, staff_with, token_client

pytestmark = pytest.mark.django_db

JSON = "application/json"
URL = "/api/live-subscriptions"


def one(**fields: Any) -> dict[str, Any]:
    body = {
        "gateway_id": "gw-1",
        "subscription": "orders",
        "filter": 'doc.status == "paid"',
        "delivery": "nats",
    }
    body.update(fields)
    return body


def post(client: Client, body: dict[str, Any]) -> Any:
    return client.post(URL, body, content_type=JSON)


@pytest.fixture
def orders() -> Subscription:
    return subscription("orders")


@pytest.fixture
def gateway(orders: Subscription) -> Client:
    return token_client(operator("gateway"))


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["items"]]


def expire_now(*live_ids: str) -> None:
    """What the TTL running out does to these rows, without waiting for it."""
    now = timezone.now()
    LiveSubscription.objects.filter(pk__in=live_ids).update(
        created_at=now - dt.timedelta(minutes=10), expires_at=now - dt.timedelta(seconds=1)
    )


# -- registration ------------------------------------------------------------------------


def test_one_registration_is_created_for_the_callers_user_with_the_ttl(gateway: Client) -> None:
    before = timezone.now()
    response = post(gateway, one())

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["gateway_id"] == "gw-1"
    assert body["subscription"] == "orders"
    assert body["filter"] == 'doc.status == "paid"'
    assert body["delivery"] == "nats"
    stored = LiveSubscription.objects.get(pk=body["id"])
    assert stored.owner.username == "gateway"
    ttl = stored.expires_at - stored.created_at
    assert ttl == dt.timedelta(seconds=300)
    assert stored.created_at >= before
    assert gateway.get(f"{URL}/{body['id']}").json()["id"] == body["id"]


def test_a_batch_is_registered_in_order_or_not_at_all(
    gateway: Client, orders: Subscription
) -> None:
    subscription("customers")
    batch = [
        one(filter="doc.a == 1"),
        one(subscription="customers", delivery="websocket", gateway_id="gw-2"),
        one(filter="doc.a == 3"),
    ]
    created = post(gateway, {"subscriptions": batch})
    assert created.status_code == 201, created.content
    items = created.json()["items"]
    assert [(i["filter"], i["subscription"], i["gateway_id"]) for i in items] == [
        ("doc.a == 1", "orders", "gw-1"),
        ('doc.status == "paid"', "customers", "gw-2"),
        ("doc.a == 3", "orders", "gw-1"),
    ]

    refused = post(
        gateway,
        {
            "subscriptions": [
                one(),
                one(subscription="nope"),
                one(gateway_id="gw.eu"),
                one(filter="  "),
            ]
        },
    )
    assert refused.status_code == 422, refused.content
    errors = refused.json()["errors"]
    assert [(e["field"], e["position"]) for e in errors] == [
        ("subscriptions[1].subscription", None),
        ("subscriptions[2].gateway_id", None),
        ("subscriptions[3].filter", 0),
    ]
    assert "no subscription named 'nope'" in errors[0]["message"]
    assert "letters, digits, _ and -" in errors[1]["message"]
    assert LiveSubscription.objects.count() == 3  # none of the refused batch


def test_bodies_of_the_wrong_shape_name_the_field_as_sent(gateway: Client) -> None:
    single = post(gateway, one(delivery="carrier pigeon"))
    assert single.status_code == 422
    assert [e["field"] for e in single.json()["errors"]] == ["delivery"]

    batch = post(gateway, {"subscriptions": [one(), one(delivery="sms")]})
    assert batch.status_code == 422
    assert [e["field"] for e in batch.json()["errors"]] == ["subscriptions[1].delivery"]

    too_many = post(gateway, {"subscriptions": [one()] * 1001})
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "subscriptions"
    assert post(gateway, {"subscriptions": []}).status_code == 422
    assert LiveSubscription.objects.count() == 0


@pytest.mark.parametrize(
    ("text", "position", "says"),
    [
        ("doc.total >", 11, "ends too early"),
        ("doc.a == 1 &&& doc.b == 2", 13, "'and' is &&"),
        ('doc.region == "eu" && dc == "x"', 22, "unknown variable 'dc'"),
        ("doc.items.exists(i, i.price > 10)", 10, "'exists' is a comprehension macro"),
        ("doc.tags.map(t, t + 1) == []", 9, "'map' is a comprehension macro"),
        ("(" * 13 + "doc.a == 1" + ")" * 13, None, "nests 14 levels deep; at most 12"),
        ('doc.note == "' + "x" * 2100 + '"', 2000, "at most 2000"),
        ("doc.a in [" + ",".join(str(i) for i in range(101)) + "]", 9, "100"),
    ],
    ids=["malformed", "bad-operator", "unknown-var", "exists", "map", "deep", "long", "big-list"],
)
def test_a_filter_that_cannot_be_used_is_422_with_where_and_what_to_fix(
    gateway: Client, text: str, position: int | None, says: str
) -> None:
    response = post(gateway, one(filter=text))

    assert response.status_code == 422, response.content
    (error,) = response.json()["errors"]
    assert error["field"] == "filter"
    assert error["position"] == position
    assert says in error["message"]
    assert not LiveSubscription.objects.exists()


def test_every_filter_problem_of_a_batch_is_reported_with_its_entry(gateway: Client) -> None:
    response = post(
        gateway,
        {
            "subscriptions": [
                one(filter='doc.meta.region == "eu" || old.status != doc.status'),
                one(filter="doc.a ==", gateway_id="gw.x"),
                one(filter='doc.name.startsWith("a") && has(doc.b)'),
                one(filter="doc.xs.all(x, x > 0)"),
            ]
        },
    )
    assert response.status_code == 422, response.content
    found = [(e["field"], e["position"]) for e in response.json()["errors"]]
    assert found == [
        ("subscriptions[1].gateway_id", None),
        ("subscriptions[1].filter", 8),
        ("subscriptions[3].filter", 7),
    ]
    assert "subscriptions[1].filter: syntax error" in response.json()["detail"]
    assert not LiveSubscription.objects.exists()


def test_a_filter_reads_only_fields_the_source_table_has(
    source_conn: Any, source_dsn: str, table_name: str
) -> None:
    source_conn.execute(
        f"CREATE TABLE {table_name} (id int PRIMARY KEY, total numeric, meta jsonb, status text)"
    )
    subscription("orders", source_dsn=source_dsn, relation=f"public.{table_name}")
    client = token_client(operator("gateway"))

    text = 'doc.total > 100.5 && doc.stauts == "paid"'
    refused = post(client, one(filter=text))
    assert refused.status_code == 422, refused.content
    (error,) = refused.json()["errors"]
    assert "unknown field 'stauts'" in error["message"]
    assert "id, meta, status, total" in error["message"]
    assert text.index("stauts") - 1 <= error["position"] <= text.index("stauts")

    below_text = post(client, one(filter='doc.status.code == "x"'))
    assert below_text.status_code == 422
    assert "field 'status' is text, not json/jsonb" in below_text.json()["errors"][0]["message"]

    fine = 'doc.meta.region == "eu" && old.status != doc.status && doc.total > 100.5'
    assert post(client, one(filter=fine)).status_code == 201

    # The columns are asked once a minute, not at every registration.
    source_conn.execute(f"ALTER TABLE {table_name} ADD COLUMN region text")
    assert post(client, one(filter='doc.region == "eu"')).status_code == 422
    source_fields.forget()
    assert post(client, one(filter='doc.region == "eu"')).status_code == 201


def test_the_source_catalog_gives_base_types_and_nothing_for_a_missing_table(
    source_conn: Any, source_dsn: str, table_name: str
) -> None:
    source_conn.execute(f"CREATE DOMAIN {table_name}_money AS numeric(12, 2)")
    source_conn.execute(
        f'CREATE TABLE {table_name} (id bigint PRIMARY KEY, "Price" {table_name}_money, '
        "at timestamptz, tags text[])"
    )
    assert column_types(source_dsn, f"public.{table_name}") == {
        "id": "int8",
        "Price": "numeric",
        "at": "timestamptz",
        "tags": "_text",
    }
    assert column_types(source_dsn, "public.no_such_table") is None
    assert column_types(source_dsn, "not a relation name!") is None


def test_without_a_source_to_ask_the_field_names_are_not_checked(gateway: Client) -> None:
    # orders' DSN names a host that does not resolve: its columns cannot be known.
    response = post(gateway, one(filter="doc.whatever == 1"))
    assert response.status_code == 201, response.content


# -- heartbeats and expiry ---------------------------------------------------------------


def test_a_heartbeat_renews_and_expiry_removes_only_the_expired(
    gateway: Client, settings: Any
) -> None:
    settings.LIVE_SUBSCRIPTION_TTL_SECONDS = 60
    kept, renewed, lapsed, other = (post(gateway, one()).json()["id"] for _ in range(4))
    expire_now(renewed, lapsed, other)
    LiveSubscription.objects.filter(pk=renewed).update(
        expires_at=timezone.now() + dt.timedelta(seconds=5)
    )

    before = timezone.now()
    response = gateway.put(f"{URL}/{renewed}/heartbeat")
    assert response.status_code == 200, response.content
    expires_at = dt.datetime.fromisoformat(response.json()["expires_at"])
    assert before + dt.timedelta(seconds=60) <= expires_at <= timezone.now() + dt.timedelta(60)

    # An expired one is gone for its owner already, before the expiry removes its row.
    assert gateway.put(f"{URL}/{lapsed}/heartbeat").status_code == 404
    assert set(ids(gateway.get(URL))) == {kept, renewed}

    out = StringIO()
    call_command("livesubs", "expire", stdout=out)
    assert out.getvalue().strip() == "expired 2 live subscriptions"
    assert set(LiveSubscription.objects.values_list("pk", flat=True)) == {
        uuid.UUID(kept),
        uuid.UUID(renewed),
    }
    assert live_subscriptions.expire() == 0


def test_expiry_works_in_batches_and_counts_them_all(gateway: Client, orders: Subscription) -> None:
    owner = User.objects.get(username="gateway")
    past = timezone.now() - dt.timedelta(minutes=1)
    LiveSubscription.objects.bulk_create(
        LiveSubscription(
            owner=owner,
            gateway_id="gw-1",
            subscription=orders,
            filter="true",
            delivery="nats",
            created_at=past - dt.timedelta(minutes=5),
            expires_at=past + dt.timedelta(seconds=i % 2 * 600),  # every other one still active
        )
        for i in range(25)
    )
    assert live_subscriptions.expire(batch_size=4) == 13
    assert LiveSubscription.objects.count() == 12


def test_a_gateways_heartbeat_renews_all_of_its_own_and_only_those(
    gateway: Client, settings: Any
) -> None:
    mine = [post(gateway, one()).json()["id"] for _ in range(3)]
    elsewhere = post(gateway, one(gateway_id="gw-2")).json()["id"]
    stranger = token_client(operator("stranger"))
    theirs = post(stranger, one()).json()["id"]  # the same gateway_id, another owner
    soon = timezone.now() + dt.timedelta(seconds=10)
    LiveSubscription.objects.update(expires_at=soon)

    response = gateway.put(f"{URL}/heartbeat?gateway_id=gw-1")

    assert response.status_code == 200, response.content
    assert response.json()["renewed"] == 3
    renewed = {
        str(pk)
        for pk in LiveSubscription.objects.filter(expires_at__gt=soon).values_list("pk", flat=True)
    }
    assert renewed == set(mine)
    assert elsewhere not in renewed and theirs not in renewed
    expire_now(*mine)
    assert gateway.put(f"{URL}/heartbeat?gateway_id=gw-1").json()["renewed"] == 0

    bad = gateway.put(f"{URL}/heartbeat?gateway_id=gw.1")
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "gateway_id"


def test_delete_removes_it_once(gateway: Client) -> None:
    live = post(gateway, one()).json()["id"]
    assert gateway.delete(f"{URL}/{live}").status_code == 204
    assert gateway.delete(f"{URL}/{live}").status_code == 404
    assert gateway.put(f"{URL}/{live}/heartbeat").status_code == 404
    assert not LiveSubscription.objects.exists()
    assert gateway.delete(f"{URL}/not-a-uuid").status_code == 422


# -- quotas ------------------------------------------------------------------------------


def test_the_owners_quota_is_429_with_the_limit_and_counts_only_active_ones(
    gateway: Client, settings: Any
) -> None:
    settings.LIVE_SUBSCRIPTIONS_PER_OWNER = 3
    first = [post(gateway, one()).json()["id"] for _ in range(2)]

    refused = post(gateway, {"subscriptions": [one(), one()]})

    assert refused.status_code == 429, refused.content
    body = refused.json()
    assert (body["limit"], body["scope"], body["active"], body["requested"]) == (3, "owner", 2, 2)
    assert "at most 3 (LIVE_SUBSCRIPTIONS_PER_OWNER)" in body["detail"]
    assert LiveSubscription.objects.count() == 2
    assert post(gateway, one()).status_code == 201  # exactly up to the limit
    assert post(gateway, one()).status_code == 429
    # Another owner has a quota of its own; an expired one no longer counts.
    assert post(token_client(operator("other")), one()).status_code == 201
    expire_now(first[0])
    assert post(gateway, one()).status_code == 201


def test_the_global_quota_counts_every_owner(gateway: Client, settings: Any) -> None:
    settings.LIVE_SUBSCRIPTIONS_MAX = 4
    assert post(gateway, {"subscriptions": [one()] * 3}).status_code == 201
    other = token_client(operator("other"))

    refused = post(other, {"subscriptions": [one(), one()]})

    assert refused.status_code == 429
    body = refused.json()
    assert (body["limit"], body["scope"], body["active"], body["requested"]) == (4, "global", 3, 2)
    assert "LIVE_SUBSCRIPTIONS_MAX" in body["detail"]
    assert post(other, one()).status_code == 201
    assert LiveSubscription.objects.count() == 4


def test_filters_that_pin_no_value_have_a_smaller_quota_per_subscription(
    gateway: Client, settings: Any
) -> None:
    settings.LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION = 2
    subscription("customers")
    pinned = post(gateway, one(filter='doc.tenant == "acme" && doc.total > 10'))
    assert pinned.json()["pinned"] is True
    unpinned = post(gateway, one(filter="doc.total > 10 || doc.vip"))
    assert unpinned.json()["pinned"] is False

    refused = post(
        gateway,
        {
            "subscriptions": [
                one(filter='doc.tenant in ["a", "b"]'),  # pinned: not counted
                one(filter="!(doc.total > 20)"),
                one(filter='has(doc.vip) || doc.region == "eu"'),
            ]
        },
    )
    assert refused.status_code == 429, refused.content
    body = refused.json()
    assert (body["limit"], body["scope"], body["active"], body["requested"]) == (
        2,
        "unpinned",
        1,
        2,
    )
    assert (
        "subscription orders has 1 live subscriptions whose filter pins no value"
        in (body["detail"])
    )
    assert "LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION" in body["detail"]
    assert LiveSubscription.objects.count() == 2
    # Pinned ones, and another subscription's unpinned ones, are not held back.
    assert (
        post(gateway, {"subscriptions": [one(filter="doc.id in [1, 2]")] * 50}).status_code == 201
    )
    assert post(gateway, one(subscription="customers", filter="true")).status_code == 201
    assert post(gateway, one(filter="!(doc.total > 20)")).status_code == 201
    assert post(gateway, one(filter="!(doc.total > 30)")).status_code == 429
    # A filter bounding a number at the top level is indexed by it: not counted.
    ranged = post(gateway, one(filter='doc.total > 30 && doc.region != "eu"'))
    assert ranged.status_code == 201 and ranged.json()["pinned"] is True


@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_never_pass_the_quota(settings: Any) -> None:
    settings.LIVE_SUBSCRIPTIONS_PER_OWNER = 5
    subscription("orders")
    _, token = ApiToken.issue(operator("gateway"), "ci")
    callers = 12
    start = threading.Barrier(callers)
    statuses: list[int] = []

    def register() -> None:
        client = bearer(token)
        try:
            start.wait()
            statuses.append(post(client, {"subscriptions": [one()]}).status_code)
        finally:
            connection.close()  # each thread's own connection

    threads = [threading.Thread(target=register) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] * 5 + [429] * 7
    assert LiveSubscription.objects.count() == 5
    # Counted from twelve connections at once, the first of each creating its row.
    assert live_subscriptions.counts() == {("registered", ""): 5, ("refused", "owner"): 7}


# -- counted for /metrics ------------------------------------------------------------------


def test_registrations_are_counted_by_how_many_were_created_in_one_update_per_request(
    gateway: Client,
) -> None:
    assert live_subscriptions.counts() == {}
    assert post(gateway, one()).status_code == 201
    assert live_subscriptions.counts() == {("registered", ""): 1}

    with CaptureQueriesContext(connection) as queries:
        batch = post(
            gateway, {"subscriptions": [one(filter=f"doc.id == {n}") for n in range(1000)]}
        )
    assert batch.status_code == 201, batch.content
    assert live_subscriptions.counts() == {("registered", ""): 1001}
    counted = [q["sql"] for q in queries if "syncer_livesubscriptioncount" in q["sql"]]
    assert len(counted) == 1 and counted[0].startswith("UPDATE"), counted

    # Neither a 422 nor an empty listing counts.
    assert post(gateway, {"subscriptions": [one(), one(filter="doc.a ==")]}).status_code == 422
    assert live_subscriptions.counts() == {("registered", ""): 1001}


def test_each_quotas_refusals_are_counted_by_request_and_none_registered(
    gateway: Client, settings: Any
) -> None:
    settings.LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION = 1
    assert post(gateway, one(filter="doc.total > 1")).status_code == 201
    assert post(gateway, {"subscriptions": [one(filter="true")] * 3}).status_code == 429
    settings.LIVE_SUBSCRIPTIONS_PER_OWNER = 1
    assert post(gateway, {"subscriptions": [one(), one()]}).status_code == 429
    assert post(gateway, one()).status_code == 429
    settings.LIVE_SUBSCRIPTIONS_MAX = 1
    assert post(token_client(operator("other")), one()).status_code == 429

    assert live_subscriptions.counts() == {
        ("registered", ""): 1,
        ("refused", "unpinned"): 1,
        ("refused", "owner"): 2,
        ("refused", "global"): 1,
    }


# -- who sees what -----------------------------------------------------------------------


def test_another_owners_live_subscriptions_are_unknown_to_the_caller(gateway: Client) -> None:
    stranger = token_client(operator("stranger"))
    theirs = post(stranger, one()).json()["id"]
    mine = post(gateway, one()).json()["id"]

    assert ids(gateway.get(URL)) == [mine]
    assert ids(gateway.get(URL, {"gateway_id": "gw-1"})) == [mine]
    for response in (
        gateway.get(f"{URL}/{theirs}"),
        gateway.put(f"{URL}/{theirs}/heartbeat"),
        gateway.delete(f"{URL}/{theirs}"),
    ):
        assert response.status_code == 404, response.content
        # The same answer as for an id nobody has: nothing tells that it exists.
        assert response.json()["detail"].startswith(f"no live subscription {theirs} of yours")
    assert LiveSubscription.objects.filter(pk=theirs).exists()


def test_registering_needs_the_view_permission_on_subscriptions(orders: Subscription) -> None:
    blind = staff_with("blind", ())
    blind.user_permissions.add(
        *operator("perms").user_permissions.filter(codename__endswith="_livesubscription")
    )
    response = post(token_client(blind), one())
    assert response.status_code == 403
    assert "syncer.view_subscription" in response.json()["detail"]
    assert not LiveSubscription.objects.exists()

    # The operation refuses too, for the faces that do not go through the API.
    with pytest.raises(NotPermitted):
        live_subscriptions.register(
            blind, [live_subscriptions.Registration("gw-1", "orders", "true", "nats")]
        )


def test_a_read_only_token_lists_but_registers_renews_and_deletes_nothing(
    gateway: Client,
) -> None:
    live = post(gateway, one()).json()["id"]
    owner = User.objects.get(username="gateway")
    reader = token_client(owner, name="reader", read_only=True)

    assert ids(reader.get(URL)) == [live]
    for response in (
        post(reader, one()),
        reader.put(f"{URL}/{live}/heartbeat"),
        reader.put(f"{URL}/heartbeat?gateway_id=gw-1"),
        reader.delete(f"{URL}/{live}"),
    ):
        assert response.status_code == 403, response.content
        assert "read-only" in response.json()["detail"]
    assert LiveSubscription.objects.count() == 1


def test_a_revoked_token_is_refused(orders: Subscription) -> None:
    token, text = ApiToken.issue(operator("gateway"), "ci")
    client = bearer(text)
    assert post(client, one()).status_code == 201
    token.revoke()
    response = post(client, one())
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert client.get(URL).status_code == 401
    assert LiveSubscription.objects.count() == 1


# -- a gateway's restart, and paging ------------------------------------------------------


def test_a_gateway_restarting_with_its_gateway_id_finds_its_subscriptions(
    orders: Subscription,
) -> None:
    owner = operator("gateway")
    before = token_client(owner, name="gateway-v1")
    registered = [i["id"] for i in post(before, {"subscriptions": [one()] * 4}).json()["items"]]
    post(before, one(gateway_id="gw-2"))

    # The restarted process: a new connection, even a new token of the same user.
    after = token_client(owner, name="gateway-v2")
    # One batch shares its registration time; within it the list orders by id.
    assert ids(after.get(URL, {"gateway_id": "gw-1"})) == sorted(registered)
    assert after.put(f"{URL}/heartbeat?gateway_id=gw-1").json()["renewed"] == 4


def test_the_list_pages_with_a_cursor_stable_while_more_are_registered(gateway: Client) -> None:
    registered = [post(gateway, one()).json()["id"] for _ in range(7)]
    post(gateway, one(gateway_id="gw-2"))

    first = gateway.get(URL, {"gateway_id": "gw-1", "limit": "3"}).json()
    assert [i["id"] for i in first["items"]] == registered[:3]
    late = post(gateway, one()).json()["id"]  # registered meanwhile: joins the end
    gateway.delete(f"{URL}/{registered[4]}")  # one not yet seen goes: none is skipped
    seen = [i["id"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = gateway.get(URL, {"gateway_id": "gw-1", "limit": "3", "cursor": cursor}).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [*registered[:4], *registered[5:], late]

    bad = gateway.get(URL, {"cursor": "not-a-cursor"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "cursor"
