"""Pause, resume, resync and reset from the admin: confirmation first, then the request.

Each action goes through `syncer.operations.control`, so a confirmed one shows on the row
(`paused`, `resync_requested_at`, `reset_requested_at`) and in `control_version`,
and it adds an admin log entry that the subscription's page lists.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.contrib import messages
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from syncer.models import Subscription
from tests.support import factories
from tests.support.factories import entry

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

CHANGELIST = reverse("admin:syncer_subscription_changelist")
SECRET_DSN = "postgresql://orders:s3cret-pw@db.internal/shop"
CONFIRM_TEMPLATE = "admin/syncer/subscription/confirm_control.html"


def make(name: str = "orders", **fields: Any) -> Subscription:
    return factories.subscription(name, **{"source_dsn": SECRET_DSN, **fields})


def control_url(subscription: Subscription, action: str) -> str:
    return reverse("admin:syncer_subscription_control", args=[subscription.pk, action])


def change_url(subscription: Subscription) -> str:
    return reverse("admin:syncer_subscription_change", args=[subscription.pk])


def action_post(action: str, *subscriptions: Subscription, **extra: str) -> dict[str, Any]:
    """What the changelist posts when `action` is chosen with `subscriptions` ticked."""
    return {
        "action": action,
        "_selected_action": [str(s.pk) for s in subscriptions],
        "index": "0",
        "select_across": "0",
        **extra,
    }


def shown_messages(response: Any) -> list[tuple[int, str]]:
    return [(m.level, m.message) for m in response.context["messages"]]


def log_of(subscription: Subscription) -> list[tuple[str, str]]:
    entries = LogEntry.objects.filter(object_id=str(subscription.pk)).order_by("pk")
    return [(e.user.get_username(), e.get_change_message()) for e in entries]


def row_of(changelist: str, name: str) -> str:
    """The changelist's table row of the subscription called `name`."""
    return next(row for row in changelist.split("<tr")[1:] if f">{name}</a>" in row)


def stored(subscription: Subscription) -> Subscription:
    return Subscription.objects.get(pk=subscription.pk)


# -- the list --------------------------------------------------------------------------


def test_changelist_shows_the_workers_figures_and_marks_old_ones_stale(
    admin_client: Client,
) -> None:
    now = timezone.now()
    fresh = make(
        "orders",
        status=Subscription.Status.STREAMING,
        status_message="streaming from slot searchsync_orders",
        lag_seconds=1.4,
        staleness_seconds=0.5,
        throughput=1234.5,
        stats_at=now - dt.timedelta(seconds=3),
        owner="host-a:123",
        checkpoint=0x16_B374D848,
        checkpoint_at=now,
    )
    make(
        "customers",
        source_kind="materialize",
        relation="customers_mv",
        key_columns=["id"],
        lag_seconds=95.0,
        staleness_seconds=4000.0,
        throughput=3.0,
        stats_at=now - dt.timedelta(minutes=5),
        owner="host-b:456",
        paused=True,
    )
    make("invoices")  # never run: no figures
    entry(fresh, "1")
    entry(fresh, "2")

    response = admin_client.get(CHANGELIST)

    content = response.content.decode()
    assert "s3cret-pw" not in content
    orders_row, customers_row, invoices_row = (
        row_of(content, name) for name in ("orders", "customers", "invoices")
    )
    assert "Streaming</span>" in orders_row
    assert "streaming from slot searchsync_orders" in orders_row
    assert "PostgreSQL</span>" in orders_row and "public.orders" in orders_row
    assert ">1.4 s<" in orders_row
    assert ">0.5 s<" in orders_row
    assert ">1,234.5/s<" in orders_row
    assert "16/B374D848" in orders_row
    dlq = reverse("admin:syncer_deadletter_changelist")
    assert f'href="{dlq}?subscription__id__exact={fresh.pk}">2</a>' in orders_row
    assert "(stale)" not in orders_row

    assert "Materialize</span>" in customers_row
    assert "1.6 min (stale)" in customers_row
    assert "1.1 h (stale)" in customers_row
    assert "3.0/s (stale)" in customers_row
    assert "published 5 min ago by worker host-b:456; it may have stopped" in customers_row
    assert 'alt="True"' in customers_row  # the paused column

    for column in ("lag_text", "staleness_text", "throughput_text"):
        assert f'<td class="field-{column}">-</td>' in invoices_row


def test_changelist_filters_by_paused(admin_client: Client) -> None:
    make("orders", paused=True)
    make("customers")

    response = admin_client.get(CHANGELIST, {"paused__exact": "1"})

    assert [s.name for s in response.context["cl"].result_list] == ["orders"]


# -- changelist actions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "explained"),
    [
        ("pause_selected", "The worker stops reading the source within seconds"),
        ("resume_selected", "The worker starts reading again from the checkpoint"),
        ("resync_selected", "copies the whole source relation into OpenSearch again"),
        ("reset_selected", "the next start is a first start in the subscription's snapshot mode"),
    ],
)
def test_each_action_asks_for_confirmation_and_changes_nothing_until_then(
    admin_client: Client, action: str, explained: str
) -> None:
    orders = make("orders", paused=action == "resume_selected")
    customers = make("customers", paused=action == "resume_selected")

    response = admin_client.post(CHANGELIST, action_post(action, orders, customers))

    assert response.status_code == 200
    assert next(t.name for t in response.templates) == CONFIRM_TEMPLATE
    content = response.content.decode()
    assert escape(explained) in content
    assert "<td>orders</td>" in content and "<td>customers</td>" in content
    assert "s3cret-pw" not in content
    for subscription in (orders, customers):
        unchanged = stored(subscription)
        assert unchanged.control_version == 0
        assert unchanged.resync_requested_at is None and unchanged.reset_requested_at is None
    assert not LogEntry.objects.exists()


def test_confirmed_pause_pauses_each_selected_subscription_and_logs_it(
    admin_client: Client, admin_user: User
) -> None:
    orders = make("orders")
    already = make("customers", paused=True)
    make("invoices")

    response = admin_client.post(
        CHANGELIST, action_post("pause_selected", orders, already, confirm="yes"), follow=True
    )

    assert (stored(orders).paused, stored(orders).control_version) == (True, 1)
    assert (stored(already).paused, stored(already).control_version) == (True, 0)
    assert (stored(Subscription.objects.get(name="invoices")).paused) is False
    assert shown_messages(response) == [
        (messages.INFO, "customers: already paused; nothing to do"),
        (messages.SUCCESS, "orders: paused; its worker applies it within seconds"),
    ]
    assert log_of(orders) == [(admin_user.username, "Paused.")]
    assert log_of(already) == []


def test_confirmed_resume_resumes(admin_client: Client, admin_user: User) -> None:
    orders = make("orders", paused=True, owner="host-a:123")

    response = admin_client.post(
        CHANGELIST, action_post("resume_selected", orders, confirm="yes"), follow=True
    )

    assert (stored(orders).paused, stored(orders).control_version) == (False, 1)
    assert shown_messages(response) == [
        (messages.SUCCESS, "orders: resumed; worker host-a:123 applies it within seconds")
    ]
    assert log_of(orders) == [(admin_user.username, "Resumed.")]


def test_resync_confirmation_explains_both_modes_and_applies_the_chosen_one(
    admin_client: Client, admin_user: User
) -> None:
    orders = make("orders")

    page = admin_client.post(CHANGELIST, action_post("resync_selected", orders))
    content = page.content.decode()
    assert "This field is required" not in content
    assert re.search(r'value="in_place"[^>]* checked', content)  # the default
    assert 'name="mode" value="in_place"' in content and 'name="mode" value="new_index"' in content
    assert "removes the documents the copy did not contain" in content
    assert escape("swaps the alias named like the subscription's index") in content

    admin_client.post(
        CHANGELIST, action_post("resync_selected", orders, confirm="yes", mode="new_index")
    )

    resynced = stored(orders)
    assert resynced.resync_mode == Subscription.ResyncMode.NEW_INDEX
    assert resynced.resync_requested_at is not None
    assert resynced.control_version == 1
    assert log_of(orders) == [
        (admin_user.username, "Resync requested (into a new index, then swap the alias to it).")
    ]


def test_resync_with_an_unknown_mode_asks_again(admin_client: Client) -> None:
    orders = make("orders")

    response = admin_client.post(
        CHANGELIST, action_post("resync_selected", orders, confirm="yes", mode="rebuild")
    )

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert stored(orders).control_version == 0


def test_confirmed_reset_requests_a_first_start(admin_client: Client, admin_user: User) -> None:
    orders = make("orders", checkpoint=12345, snapshot_mode="discard")

    response = admin_client.post(
        CHANGELIST, action_post("reset_selected", orders, confirm="yes"), follow=True
    )

    reset = stored(orders)
    assert reset.reset_requested_at is not None and reset.control_version == 1
    assert shown_messages(response) == [
        (
            messages.SUCCESS,
            "orders: checkpoint reset requested; its worker restarts it from scratch "
            "(stream new changes only) within seconds",
        )
    ]
    assert log_of(orders) == [(admin_user.username, "Checkpoint reset requested.")]


# -- one subscription, from its page ---------------------------------------------------


@pytest.mark.parametrize("action", ["pause", "resume", "resync", "reset"])
def test_control_page_confirms_on_get_and_changes_nothing(
    admin_client: Client, action: str
) -> None:
    orders = make("orders", paused=action == "resume")

    response = admin_client.get(control_url(orders, action))

    assert response.status_code == 200
    content = response.content.decode()
    assert f'action="{control_url(orders, action)}"' in content
    assert 'value="Yes, ' in content and ' orders">' in content
    assert 'name="confirm" value="yes"' in content
    assert f'href="{change_url(orders)}"' in content  # "No, take me back"
    assert "s3cret-pw" not in content
    assert stored(orders).control_version == 0
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize(
    ("action", "post", "expected", "logged"),
    [
        ("pause", {}, {"paused": True}, "Paused."),
        ("resync", {"mode": "in_place"}, {"resync_mode": "in_place"}, "Resync requested"),
        ("reset", {}, {"resync_mode": ""}, "Checkpoint reset requested."),
    ],
)
def test_control_page_applies_on_confirmation_and_returns_to_the_subscription(
    admin_client: Client,
    admin_user: User,
    action: str,
    post: dict[str, str],
    expected: dict[str, Any],
    logged: str,
) -> None:
    orders = make("orders")

    response = admin_client.post(control_url(orders, action), {"confirm": "yes", **post})

    assert response.status_code == 302
    assert response["Location"] == change_url(orders)
    after = stored(orders)
    assert after.control_version == 1
    assert {field: getattr(after, field) for field in expected} == expected
    ((user, message),) = log_of(orders)
    assert user == admin_user.username and message.startswith(logged)


def test_control_page_post_without_confirmation_changes_nothing(admin_client: Client) -> None:
    orders = make("orders")

    response = admin_client.post(control_url(orders, "pause"), {})

    assert response.status_code == 200
    assert stored(orders).paused is False


def test_unknown_action_and_unknown_subscription_are_not_found(admin_client: Client) -> None:
    orders = make("orders")

    assert admin_client.get(control_url(orders, "drop")).status_code == 404
    missing = reverse("admin:syncer_subscription_control", args=[orders.pk + 100, "pause"])
    assert admin_client.get(missing).status_code == 404


def test_a_staff_user_who_may_only_view_cannot_control(client: Client) -> None:
    orders = make("orders")
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_subscription"))
    client.force_login(viewer)

    page = client.get(change_url(orders))
    denied = client.post(control_url(orders, "pause"), {"confirm": "yes"})
    listed = client.post(CHANGELIST, action_post("pause_selected", orders, confirm="yes"))

    assert page.status_code == 200
    assert control_url(orders, "pause") not in page.content.decode()
    assert denied.status_code == 403
    assert listed.status_code == 200  # the changelist: with no such action to take
    assert stored(orders).paused is False


def test_an_anonymous_visitor_is_sent_to_log_in(client: Client) -> None:
    orders = make("orders")

    response = client.post(control_url(orders, "pause"), {"confirm": "yes"})

    assert response.status_code == 302 and "/login/" in response["Location"]
    assert stored(orders).paused is False


# -- the change page: buttons and who changed what ---------------------------------------


def test_change_page_offers_pause_or_resume_resync_and_reset(admin_client: Client) -> None:
    running = make("orders")
    paused = make("customers", paused=True)

    running_page = admin_client.get(change_url(running)).content.decode()
    paused_page = admin_client.get(change_url(paused)).content.decode()

    for action in ("pause", "resync", "reset"):
        assert f'href="{control_url(running, action)}"' in running_page
    assert control_url(running, "resume") not in running_page
    assert f'href="{control_url(paused, "resume")}"' in paused_page
    assert control_url(paused, "pause") not in paused_page


def test_change_page_shows_who_changed_what_with_a_link_to_the_history(
    admin_client: Client, admin_user: User
) -> None:
    orders = make("orders")
    admin_client.post(control_url(orders, "pause"), {"confirm": "yes"})
    admin_client.post(control_url(orders, "resync"), {"confirm": "yes", "mode": "new_index"})
    operator = User.objects.create_superuser("night-shift", password="pw")
    other = Client()
    other.force_login(operator)
    other.post(control_url(orders, "resume"), {"confirm": "yes"})

    response = admin_client.get(change_url(orders))

    content = response.content.decode()
    recent = [(e.user.username, e.get_change_message()) for e in response.context["recent_changes"]]
    assert recent == [
        ("night-shift", "Resumed."),
        (admin_user.username, "Resync requested (into a new index, then swap the alias to it)."),
        (admin_user.username, "Paused."),
    ]
    history = content.split("Recent changes", 1)[1]
    assert history.index("night-shift") < history.index("Resync requested")
    assert history.index("Resync requested") < history.index("Paused.")
    history_url = reverse("admin:syncer_subscription_history", args=[orders.pk])
    assert f'href="{history_url}"' in content
    full = admin_client.get(history_url).content.decode()
    assert "Resumed." in full and "night-shift" in full and "s3cret-pw" not in full


def test_change_page_lists_only_the_last_ten_changes(admin_client: Client) -> None:
    orders = make("orders")
    for _ in range(6):
        admin_client.post(control_url(orders, "pause"), {"confirm": "yes"})
        admin_client.post(control_url(orders, "resume"), {"confirm": "yes"})

    response = admin_client.get(change_url(orders))

    assert LogEntry.objects.count() == 12
    assert len(response.context["recent_changes"]) == 10
    assert response.context["recent_changes"][0].get_change_message() == "Resumed."


def test_change_page_state_shows_the_requests_and_the_owner(admin_client: Client) -> None:
    orders = make("orders", owner="host-a:123", stats_at=timezone.now(), lag_seconds=2.0)
    admin_client.post(control_url(orders, "resync"), {"confirm": "yes", "mode": "new_index"})

    content = admin_client.get(change_url(orders)).content.decode()

    assert "host-a:123" in content
    assert "Into a new index, then swap the alias to it" in content
    assert "2.0 s" in content
    assert "s3cret-pw" not in content


def test_a_user_who_may_only_view_sees_the_dsn_without_its_password(client: Client) -> None:
    orders = make("orders")
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_subscription"))
    client.force_login(viewer)

    content = client.get(change_url(orders)).content.decode()

    assert "postgresql://orders:***@db.internal/shop" in content
    assert "s3cret-pw" not in content
    assert "skip_live_checks" not in content


def test_no_admin_page_of_a_subscription_shows_its_password(admin_client: Client) -> None:
    orders = make(
        "orders",
        status_message="reconnecting to postgresql://orders:s3cret-pw@db.internal/shop",
        last_error="password=s3cret-pw host=db.internal refused",
    )
    entry(orders, "1")
    admin_client.post(control_url(orders, "pause"), {"confirm": "yes"})
    pages = [
        CHANGELIST,
        change_url(orders),
        reverse("admin:syncer_subscription_history", args=[orders.pk]),
        reverse("admin:syncer_subscription_delete", args=[orders.pk]),
        reverse("admin:syncer_deadletter_changelist"),
        *(control_url(orders, action) for action in ("resume", "resync", "reset")),
    ]

    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert "s3cret-pw" not in response.content.decode(), url
    for action in ("pause_selected", "resync_selected", "reset_selected"):
        confirmation = admin_client.post(CHANGELIST, action_post(action, orders))
        assert "s3cret-pw" not in confirmation.content.decode(), action
