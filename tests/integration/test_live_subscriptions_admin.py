"""The live-subscription admin: a read-only list with its filters, and a delete action
that only a user with the delete permission may use."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from syncer.models import LiveSubscription, Subscription
from tests.support.factories import subscription
from tests.support.users import operator, viewer

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

CHANGELIST = reverse("admin:syncer_livesubscription_changelist")


def live(
    owner: User,
    sub: Subscription,
    gateway_id: str = "gw-1",
    expires_in: dt.timedelta = dt.timedelta(minutes=5),
    delivery: str = "nats",
) -> LiveSubscription:
    now = timezone.now()
    return LiveSubscription.objects.create(
        owner=owner,
        gateway_id=gateway_id,
        subscription=sub,
        filter='doc.status == "paid"',
        delivery=delivery,
        created_at=now - dt.timedelta(hours=1),
        expires_at=now + expires_in,
    )


def session(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def listed(client: Client, **query: str) -> set[LiveSubscription]:
    response = client.get(CHANGELIST, query)
    assert response.status_code == 200
    return set(response.context["cl"].result_list)


@pytest.fixture
def rows() -> dict[str, LiveSubscription]:
    orders, customers = subscription("orders"), subscription("customers")
    alice, bob = operator("alice"), operator("bob")
    return {
        "alice-soon": live(alice, orders, expires_in=dt.timedelta(seconds=30)),
        "alice-later": live(alice, orders, "gw-2", dt.timedelta(minutes=5), "websocket"),
        "bob-customers": live(bob, customers, "gw-9", dt.timedelta(hours=1)),
        "bob-expired": live(bob, orders, "gw-9", -dt.timedelta(seconds=5)),
    }


def test_the_list_filters_by_owner_gateway_subscription_and_expiry(
    rows: dict[str, LiveSubscription],
) -> None:
    client = session(operator("ops"))
    alice = User.objects.get(username="alice")
    customers = Subscription.objects.get(name="customers")

    assert listed(client) == set(rows.values())
    assert listed(client, owner__id__exact=str(alice.pk)) == {
        rows["alice-soon"],
        rows["alice-later"],
    }
    assert listed(client, gateway_id="gw-9") == {rows["bob-customers"], rows["bob-expired"]}
    assert listed(client, subscription__id__exact=str(customers.pk)) == {rows["bob-customers"]}
    assert listed(client, delivery__exact="websocket") == {rows["alice-later"]}
    assert listed(client, expires="1m") == {rows["alice-soon"]}
    assert listed(client, expires="10m") == {rows["alice-soon"], rows["alice-later"]}
    assert listed(client, expires="expired") == {rows["bob-expired"]}
    assert listed(client, q="gw-2") == {rows["alice-later"]}

    page = client.get(CHANGELIST, {"expires": "expired"}).content.decode()
    # Five seconds when the rows were made; a second or two more on a busy machine.
    assert re.search(r"expired [5-9] s ago", page), page


def test_an_operator_deletes_selected_rows_after_confirming(
    rows: dict[str, LiveSubscription],
) -> None:
    client = session(operator("ops"))
    chosen = [rows["alice-soon"], rows["bob-expired"]]
    selection = {
        "action": "delete_selected",
        "_selected_action": [str(r.pk) for r in chosen],
        "index": "0",
        "select_across": "0",
    }

    confirm = client.post(CHANGELIST, selection)
    assert confirm.status_code == 200
    assert "Are you sure" in confirm.content.decode()
    assert LiveSubscription.objects.count() == 4

    done = client.post(CHANGELIST, {**selection, "post": "yes"})
    assert done.status_code == 302
    assert set(LiveSubscription.objects.all()) == {rows["alice-later"], rows["bob-customers"]}


def test_one_row_reads_as_a_page_without_a_form_and_deletes_from_its_page(
    rows: dict[str, LiveSubscription],
) -> None:
    client = session(operator("ops"))
    row = rows["alice-later"]
    page = client.get(reverse("admin:syncer_livesubscription_change", args=[row.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert escape('doc.status == "paid"') in html
    assert 'name="_save"' not in html  # read-only: nothing to save
    assert client.get(reverse("admin:syncer_livesubscription_add")).status_code == 403

    delete = reverse("admin:syncer_livesubscription_delete", args=[row.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not LiveSubscription.objects.filter(pk=row.pk).exists()


def test_a_view_only_staff_user_sees_the_list_and_deletes_nothing(
    rows: dict[str, LiveSubscription],
) -> None:
    client = session(viewer())
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert "delete_selected" not in response.content.decode()
    assert listed(client) == set(rows.values())

    row = rows["alice-soon"]
    selection: dict[str, Any] = {
        "action": "delete_selected",
        "_selected_action": [str(row.pk)],
        "index": "0",
        "select_across": "0",
        "post": "yes",
    }
    client.post(CHANGELIST, selection)
    delete = reverse("admin:syncer_livesubscription_delete", args=[row.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert LiveSubscription.objects.count() == 4
