"""What each caller may do, through the API and the admin: the same Django permissions.

One table of every API endpoint with the permission it needs, run for each kind of
caller: a view-only staff user (session and token), an operator's read-only token, an
operator (session and full token), a staff user without permissions. Each gets exactly
what it may: the endpoint's answer, or 403 naming the missing permission with nothing
changed. The admin's actions are checked for a view-only staff user the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.api import api
from console.api.permissions import required_permissions
from console.models import ApiToken
from syncer.models import (
    DeadLetter,
    LiveSubscription,
    PushedChange,
    Subscription,
    Verification,
)
from tests.support.factories import entry, subscription
from tests.support.users import operator, staff_with, token_client, viewer

pytestmark = pytest.mark.django_db

JSON = "application/json"
VIEW_S, ADD_S, CHANGE_S, DELETE_S = (
    f"syncer.{action}_subscription" for action in ("view", "add", "change", "delete")
)
VIEW_D, CHANGE_D, DELETE_D = (
    f"syncer.{action}_deadletter" for action in ("view", "change", "delete")
)
VIEW_L, ADD_L, CHANGE_L, DELETE_L = (
    f"syncer.{action}_livesubscription" for action in ("view", "add", "change", "delete")
)
LIVE = "/api/live-subscriptions"
NEW_LIVE_SUBSCRIPTION = {
    "gateway_id": "gw-1",
    "subscription": "orders",
    "filter": "true",
    "delivery": "nats",
}
NEW_SUBSCRIPTION = {
    "name": "customers",
    "source": {"kind": "postgres", "dsn": "postgresql://u@h/db", "relation": "customers"},
    "index": {"name": "customers"},
}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    permission: str
    allowed: int  # the status of a caller who may
    body: dict[str, Any] | None = None


# Every endpoint of the API but /api/health and /api/ready (see the coverage test below).
CALLS = [
    Call("get", "/api/subscriptions", VIEW_S, 200),
    Call("post", "/api/subscriptions", ADD_S, 201, NEW_SUBSCRIPTION),
    Call("get", "/api/subscriptions/orders", VIEW_S, 200),
    Call("patch", "/api/subscriptions/orders", CHANGE_S, 200, {"enabled": False}),
    Call("delete", "/api/subscriptions/orders?force=true", DELETE_S, 200),
    Call("post", "/api/subscriptions/orders/pause", CHANGE_S, 200),
    Call("post", "/api/subscriptions/orders/resume", CHANGE_S, 200),
    Call("post", "/api/subscriptions/orders/resync", CHANGE_S, 200, {"mode": "in_place"}),
    # No OpenSearch behind the console here: the caller who may read gets 503, not 403.
    Call("get", "/api/subscriptions/orders/documents/o1", VIEW_S, 503),
    Call("get", "/api/subscriptions/orders/documents?id=o1", VIEW_S, 503),
    # The export streams under daphne only (test_export.py); the test client is told so.
    Call("get", "/api/subscriptions/orders/documents/export", VIEW_S, 501),
    # A trace says in its answer what it could not read: the source and OpenSearch here.
    Call("get", "/api/subscriptions/orders/trace/o1", VIEW_S, 200),
    # A verification of a subscription whose first copy has not ended is refused (409)
    # once the permission is checked; the orders subscription here has none (404).
    Call("post", "/api/subscriptions/orders/verify", CHANGE_S, 409, {"repair": True}),
    Call("get", "/api/subscriptions/orders/verifications", VIEW_S, 200),
    Call("get", "/api/subscriptions/orders/verifications/1", VIEW_S, 404),
    # Documents pushed to a subscription that is not of kind push: 409.
    Call("post", "/api/subscriptions/orders/documents/stream", CHANGE_S, 409, {}),
    # A document whose id is "stream" (the push route's path): no OpenSearch here, 503.
    Call("get", "/api/subscriptions/orders/documents/stream", VIEW_S, 503),
    # The stream needs daphne (test_live_access.py); under the test client it says so.
    Call("get", "/api/subscriptions/orders/events/stream", VIEW_S, 501),
    Call("get", "/api/events/stats", VIEW_S, 200),
    Call("get", "/api/dlq", VIEW_D, 200),
    Call("get", "/api/dlq/stats", VIEW_D, 200),
    Call("get", "/api/dlq/{entry}", VIEW_D, 200),
    Call("get", "/api/dlq/export", VIEW_D, 200),
    Call("post", "/api/dlq/retry", CHANGE_D, 200, {"subscription": "orders", "dry_run": True}),
    Call("post", "/api/dlq/purge", DELETE_D, 200, {"subscription": "orders"}),
    # Each also needs VIEW_S (but delete), which every caller below holding these holds.
    Call("get", LIVE, VIEW_L, 200),
    Call("get", f"{LIVE}/{{live}}", VIEW_L, 200),
    Call("post", LIVE, ADD_L, 201, NEW_LIVE_SUBSCRIPTION),
    Call("put", f"{LIVE}/{{live}}/heartbeat", CHANGE_L, 200),
    Call("put", f"{LIVE}/heartbeat?gateway_id=gw-1", CHANGE_L, 200),
    Call("delete", f"{LIVE}/{{live}}", DELETE_L, 204),
]
VIEWS = {VIEW_S, VIEW_D, VIEW_L}


def _session(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# caller name -> (client maker, the permissions it holds)
CALLERS: dict[str, tuple[Callable[[], Client], set[str]]] = {
    "view-only staff session": (lambda: _session(viewer()), VIEWS),
    "view-only staff user's token": (lambda: token_client(viewer()), VIEWS),
    "operator's read-only token": (lambda: token_client(operator(), read_only=True), VIEWS),
    "superuser's read-only token": (
        lambda: token_client(User.objects.create_superuser("root"), read_only=True),
        VIEWS,
    ),
    "operator's full token": (lambda: token_client(operator()), {c.permission for c in CALLS}),
    "operator session": (lambda: _session(operator()), {c.permission for c in CALLS}),
    "staff session without permissions": (lambda: _session(staff_with("bare", ())), set()),
}


@pytest.fixture(autouse=True)
def unreachable_opensearch(settings: Any) -> None:
    settings.OPENSEARCH_URL = "http://127.0.0.1:9"  # refused at once


def state() -> tuple[Any, ...]:
    """Everything a call could change: the subscriptions' rows, the dead letters, the
    live subscriptions, the verifications asked for and the documents pushed."""
    return (
        list(Subscription.objects.order_by("pk").values()),
        list(DeadLetter.objects.order_by("pk").values_list("pk", flat=True)),
        list(LiveSubscription.objects.order_by("pk").values()),
        list(Verification.objects.order_by("pk").values_list("pk", flat=True)),
        list(PushedChange.objects.order_by("pk").values_list("pk", flat=True)),
    )


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.method} {c.path}")
def test_each_caller_gets_exactly_what_its_permissions_allow(call: Call, caller: str) -> None:
    orders = subscription("orders")
    dead = entry(orders, "o1")
    make_client, held = CALLERS[caller]
    client = make_client()
    # The caller's own live subscription (each caller is the newest user).
    live = _live_subscription(User.objects.latest("pk"), orders)
    path = call.path.replace("{entry}", str(dead.pk)).replace("{live}", str(live.pk))
    before = state()

    if call.body is None:
        response = getattr(client, call.method)(path)
    else:
        response = getattr(client, call.method)(path, call.body, content_type=JSON)

    if call.permission in held:
        assert response.status_code == call.allowed, response.content
        return
    assert response.status_code == 403, response.content
    assert call.permission in response.json()["detail"]
    assert state() == before


def _live_subscription(owner: User, sub: Subscription) -> LiveSubscription:
    now = timezone.now()
    return LiveSubscription.objects.create(
        owner=owner,
        gateway_id="gw-1",
        subscription=sub,
        filter="true",
        delivery="nats",
        expires_at=now + dt.timedelta(minutes=5),
    )


def test_every_endpoint_states_its_permission_and_the_table_has_it() -> None:
    stated = {}
    for _prefix, router in api._routers:
        for view in router.path_operations.values():
            for operation in view.operations:
                name = operation.view_func.__name__
                stated[name] = required_permissions(operation)
    unchecked = {name for name, permissions in stated.items() if permissions is None}
    # Health is public; readiness and the JSON 404 for unknown paths hold no data.
    assert unchecked == {"health", "ready", "unknown_endpoint"}
    assert len(CALLS) == len(stated) - len(unchecked)


def test_a_token_acts_as_its_user_whose_permissions_change() -> None:
    subscription("orders")
    user = viewer()
    client = token_client(user)
    assert client.post("/api/subscriptions/orders/pause").status_code == 403

    user.user_permissions.add(*operator("other").user_permissions.all())
    assert client.post("/api/subscriptions/orders/pause").status_code == 200
    assert Subscription.objects.get(name="orders").paused


# -- the admin: a view-only staff user can read and nothing else ---------------------------


def _subscription_action(action: str) -> Callable[[Subscription, DeadLetter], tuple[str, Any]]:
    def post(sub: Subscription, dead: DeadLetter) -> tuple[str, Any]:
        data = {
            "action": f"{action}_selected",
            "_selected_action": [str(sub.pk)],
            "index": "0",
            "select_across": "0",
            "confirm": "yes",
            "mode": "in_place",
        }
        return reverse("admin:syncer_subscription_changelist"), data

    return post


def _dead_letter_action(action: str) -> Callable[[Subscription, DeadLetter], tuple[str, Any]]:
    def post(sub: Subscription, dead: DeadLetter) -> tuple[str, Any]:
        data = {
            "action": f"{action}_selected",
            "_selected_action": [str(dead.pk)],
            "select_across": "0",
            "confirm": "yes",
        }
        return reverse("admin:syncer_deadletter_changelist"), data

    return post


def _control(action: str) -> Callable[[Subscription, DeadLetter], tuple[str, Any]]:
    def post(sub: Subscription, dead: DeadLetter) -> tuple[str, Any]:
        url = reverse("admin:syncer_subscription_control", args=[sub.pk, action])
        return url, {"confirm": "yes", "mode": "in_place"}

    return post


ADMIN_WRITES: dict[str, Callable[[Subscription, DeadLetter], tuple[str, Any]]] = {
    **{f"{a} (changelist action)": _subscription_action(a) for a in ("pause", "resume")},
    **{f"{a} (changelist action)": _subscription_action(a) for a in ("resync", "reset")},
    **{f"{a} (subscription page)": _control(a) for a in ("pause", "resume", "resync", "reset")},
    "delete subscriptions (changelist action)": _subscription_action("delete"),
    "verify and repair (changelist action)": lambda s, d: (
        reverse("admin:syncer_subscription_changelist"),
        {"action": "verify_selected", "_selected_action": [str(s.pk)], "confirm": "yes"},
    ),
    "verify and repair (subscription page)": lambda s, d: (
        reverse("admin:syncer_subscription_verify", args=[s.pk]),
        {"confirm": "yes", "repair": "on"},
    ),
    "retry dead letters (changelist action)": _dead_letter_action("retry"),
    "purge dead letters (changelist action)": _dead_letter_action("purge"),
    "retry dead letters (bulk page)": lambda s, d: (
        reverse("admin:syncer_deadletter_retry"),
        {"subscription": "orders", "confirm": "yes"},
    ),
    "purge dead letters (bulk page)": lambda s, d: (
        reverse("admin:syncer_deadletter_purge"),
        {"subscription": "orders", "confirm": "yes"},
    ),
    "add a subscription": lambda s, d: (
        reverse("admin:syncer_subscription_add"),
        {"name": "x", "source_dsn": "postgresql://u@h/db", "relation": "x", "index_name": "x"},
    ),
    "change a subscription": lambda s, d: (
        reverse("admin:syncer_subscription_change", args=[s.pk]),
        {"name": "renamed", "relation": "public.orders", "index_name": "orders"},
    ),
    "delete a subscription": lambda s, d: (
        reverse("admin:syncer_subscription_delete", args=[s.pk]),
        {"post": "yes"},
    ),
}


@pytest.mark.parametrize("write", list(ADMIN_WRITES))
def test_a_view_only_staff_user_changes_nothing_through_the_admin(write: str) -> None:
    sub = subscription("orders")
    dead = entry(sub, "o1")
    client = _session(viewer())
    assert client.get(reverse("admin:syncer_subscription_changelist")).status_code == 200
    assert client.get(reverse("admin:syncer_deadletter_changelist")).status_code == 200
    before = state()

    url, data = ADMIN_WRITES[write](sub, dead)
    response = client.post(url, data)

    # Refused outright (403), or the changelist again with the action ignored (200).
    assert response.status_code in (200, 403), response.status_code
    assert state() == before


def test_revoking_tokens_in_the_admin_needs_the_change_permission() -> None:
    owner = operator()
    token, _ = ApiToken.issue(owner, "ci")
    looker = staff_with("looker", ())
    looker.user_permissions.add(*_token_permissions("view"))
    changer = staff_with("changer", ())
    changer.user_permissions.add(*_token_permissions("view", "change"))
    changelist = reverse("admin:console_apitoken_changelist")
    revoke = {"action": "revoke_selected", "_selected_action": [token.pk]}

    looking = _session(looker)
    listing = looking.get(changelist)
    assert listing.status_code == 200
    assert "revoke_selected" not in listing.content.decode()
    looking.post(changelist, revoke)
    token.refresh_from_db()
    assert token.revoked_at is None

    _session(changer).post(changelist, revoke)
    token.refresh_from_db()
    assert token.revoked_at is not None


def _token_permissions(*actions: str) -> list[Any]:
    from django.contrib.auth.models import Permission

    return list(
        Permission.objects.filter(
            content_type__app_label="console", codename__in=[f"{a}_apitoken" for a in actions]
        )
    )


def test_the_live_monitor_page_needs_the_view_permission_as_its_sockets_do() -> None:
    subscription("orders")
    assert _session(viewer()).get("/console/").status_code == 200
    assert _session(staff_with("bare", ())).get("/console/").status_code == 403
