"""A subscription that still has dead letters is deleted only when that is asked for.

Its dead letters go with it and can then be neither retried nor read; the service
(`subscriptions.check_deletable`) refuses, and the API (`force=true`), the admin (a ticked
box on the confirmation page, single and bulk) and `subscriptions apply --prune`
(`--force`) say how to ask.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib import messages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from syncer.errors import DeadLettersRemain
from syncer.models import DeadLetter, Subscription
from syncer.operations import subscriptions
from tests.support.factories import entry, subscription
from tests.support.users import operator, token_client

pytestmark = pytest.mark.django_db

NO_SUCH_DB = "postgresql://postgres@127.0.0.1:5432/searchsync_no_such_database"
CHANGELIST = reverse("admin:syncer_subscription_changelist")


def with_dead_letters(name: str, count: int) -> Subscription:
    sub = subscription(name)
    # The source is unreachable: deleting warns about the slot instead of dropping it.
    Subscription.objects.filter(pk=sub.pk).update(source_dsn=NO_SUCH_DB)
    for i in range(count):
        entry(sub, f"{name}-{i}")
    return sub


@pytest.fixture
def api(db: None) -> Client:
    return token_client(operator())


@pytest.fixture
def admin(fast_password_hashing: None, admin_client: Client) -> Client:
    return admin_client


def shown(response: Any, level: int) -> list[str]:
    return [m.message for m in response.context["messages"] if m.level == level]


def test_the_service_refuses_unless_forced() -> None:
    sub = with_dead_letters("orders", 3)

    with pytest.raises(DeadLettersRemain) as caught:
        subscriptions.delete_subscription(sub)

    assert str(caught.value).startswith(
        "subscription orders still has 3 dead letters, which would be deleted with it; retry"
    )
    assert DeadLetter.objects.count() == 3
    subscriptions.delete_subscription(sub, force=True)
    assert not Subscription.objects.exists() and not DeadLetter.objects.exists()


def test_the_api_needs_force_true_and_says_how_many(api: Client) -> None:
    with_dead_letters("orders", 2)

    refused = api.delete("/api/subscriptions/orders")

    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "still has 2 dead letters" in detail
    assert detail.endswith("DELETE /api/subscriptions/orders?force=true deletes them too")
    assert Subscription.objects.filter(name="orders").exists()
    assert DeadLetter.objects.count() == 2

    forced = api.delete("/api/subscriptions/orders?force=true")
    assert forced.status_code == 200, forced.content
    assert not Subscription.objects.exists() and not DeadLetter.objects.exists()


def test_the_api_deletes_one_without_dead_letters_as_before(api: Client) -> None:
    with_dead_letters("orders", 0)
    assert api.delete("/api/subscriptions/orders").status_code == 200
    assert not Subscription.objects.exists()


def test_the_admin_confirmation_says_how_many_and_needs_the_box_ticked(admin: Client) -> None:
    sub = with_dead_letters("orders", 4)
    url = reverse("admin:syncer_subscription_delete", args=[sub.pk])

    page = admin.get(url).content.decode()
    assert "Subscription orders still has 4 dead letters." in page
    assert 'name="delete_dead_letters" value="yes" required' in page
    assert "Also delete the 4 dead letters" in page

    refused = admin.post(url, {"post": "yes"}, follow=True)
    assert Subscription.objects.filter(pk=sub.pk).exists()
    assert DeadLetter.objects.count() == 4
    [error] = shown(refused, messages.ERROR)
    assert error.startswith("Nothing was deleted: subscription orders still has 4 dead letters")
    assert refused.redirect_chain == [(url, 302)]  # back on the confirmation page

    admin.post(url, {"post": "yes", "delete_dead_letters": "yes"})
    assert not Subscription.objects.exists() and not DeadLetter.objects.exists()


def test_the_admin_bulk_delete_needs_the_box_ticked_too(admin: Client) -> None:
    orders = with_dead_letters("orders", 2)
    customers = with_dead_letters("customers", 1)
    clean = with_dead_letters("products", 0)
    selected = [str(orders.pk), str(customers.pk), str(clean.pk)]
    action = {"action": "delete_selected", "_selected_action": selected}

    confirmation = admin.post(CHANGELIST, action)
    page = confirmation.content.decode()
    assert "These subscriptions still have 3 dead letters: customers (1), orders (2)." in page
    assert "Also delete the 3 dead letters" in page

    refused = admin.post(CHANGELIST, {**action, "post": "yes"})
    assert refused.status_code == 200  # the confirmation page again
    assert "Also delete the 3 dead letters" in refused.content.decode()
    [error] = shown(refused, messages.ERROR)
    assert "subscriptions customers (1), orders (2) still have 3 dead letters" in error
    assert Subscription.objects.count() == 3

    admin.post(CHANGELIST, {**action, "post": "yes", "delete_dead_letters": "yes"})
    assert not Subscription.objects.exists() and not DeadLetter.objects.exists()


def test_the_admin_deletes_one_without_dead_letters_without_the_box(admin: Client) -> None:
    sub = with_dead_letters("orders", 0)
    url = reverse("admin:syncer_subscription_delete", args=[sub.pk])

    assert "delete_dead_letters" not in admin.get(url).content.decode()
    admin.post(url, {"post": "yes"})

    assert not Subscription.objects.exists()


def test_apply_prune_needs_force_to_delete_subscriptions_with_dead_letters(
    tmp_path: Path,
) -> None:
    with_dead_letters("orders", 2)
    with_dead_letters("customers", 0)
    path = tmp_path / "subs.json"
    path.write_text(json.dumps({"subscriptions": []}))

    def apply(*flags: str) -> str:
        out = io.StringIO()
        call_command("subscriptions", "apply", str(path), *flags, stdout=out, stderr=io.StringIO())
        return out.getvalue()

    with pytest.raises(CommandError, match="still has 2 dead letters"):
        apply("--prune", "--dry-run")  # a dry run says so too
    with pytest.raises(CommandError) as caught:
        apply("--prune")
    message = str(caught.value)
    assert message.startswith("subscription orders still has 2 dead letters")
    assert message.endswith(
        "add --force to delete them with the subscriptions; nothing was applied"
    )
    assert Subscription.objects.count() == 2  # customers, which has none, is not deleted either

    assert "2 deleted" in apply("--prune", "--force")
    assert not Subscription.objects.exists() and not DeadLetter.objects.exists()
