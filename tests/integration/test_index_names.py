"""One index per subscription: the admin, the API, `subscriptions apply` and the database.

An index name is refused when another subscription has it, or when it is (or would
make) a name a new-index resync of another subscription builds (`<index>-<20 digits>`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse

from syncer.errors import IndexNameTaken
from syncer.models import Subscription
from syncer.operations.declarations import parse
from syncer.operations.subscriptions import apply_subscriptions
from tests.support.factories import admin_form, subscription
from tests.support.users import operator, token_client

pytestmark = pytest.mark.django_db

JSON = "application/json"
RESYNC_NAME = "orders-20261201210000123456"  # what a new-index resync of `orders` builds


@pytest.fixture
def api(db: None) -> Client:
    return token_client(operator())


def declaration(name: str, index: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"kind": "postgres", "dsn": "env:SOURCE_DATABASE_URL", "relation": "t"},
        "index": {"name": index},
    }


def file_of(*entries: dict[str, Any]) -> str:
    return json.dumps({"subscriptions": list(entries)})


# -- the admin ------------------------------------------------------------------------------


ADD_FORM = admin_form()


@pytest.fixture
def admin(fast_password_hashing: None, admin_client: Client) -> Client:
    return admin_client


def test_the_admin_form_has_the_adopt_setting(admin: Client) -> None:
    add = reverse("admin:syncer_subscription_add")
    assert 'name="adopt_index"' in admin.get(add).content.decode()

    admin.post(add, {**ADD_FORM, "name": "orders", "index_name": "orders", "adopt_index": "on"})

    assert Subscription.objects.get(name="orders").adopt_index is True


def test_the_admin_form_names_the_subscription_that_has_the_index(admin: Client) -> None:
    subscription("orders")
    data = {
        **ADD_FORM,
        "index_name": "orders",
    }

    response = admin.post(reverse("admin:syncer_subscription_add"), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["index_name"] == [
        "index orders is already the index of subscription orders; each index belongs to one "
        "subscription, so choose another name"
    ]
    response = admin.post(
        reverse("admin:syncer_subscription_add"), {**data, "index_name": RESYNC_NAME}
    )
    [error] = response.context["adminform"].form.errors["index_name"]
    assert "a new-index resync of subscription orders" in error
    assert Subscription.objects.count() == 1


def test_the_database_refuses_a_shared_index_whatever_the_validation(db: None) -> None:
    subscription("orders")
    with pytest.raises(IntegrityError, match="subscription_index_unique"), transaction.atomic():
        Subscription.objects.create(
            name="other", source_dsn="postgresql://u@h/db", relation="t", index_name="orders"
        )
        with connection.cursor() as cursor:  # deferred: what a commit would check
            cursor.execute("SET CONSTRAINTS subscription_index_unique IMMEDIATE")


# -- the API --------------------------------------------------------------------------------


def test_the_api_refuses_a_taken_index_with_409_naming_the_field(api: Client) -> None:
    subscription("orders")

    created = api.post("/api/subscriptions", declaration("copy", "orders"), content_type=JSON)
    assert created.status_code == 409, created.content
    [error] = created.json()["errors"]
    assert error["field"] == "index.name"
    assert "already the index of subscription orders" in error["message"]
    assert not Subscription.objects.filter(name="copy").exists()

    subscription("customers")
    patched = api.patch(
        "/api/subscriptions/customers", {"index": {"name": RESYNC_NAME}}, content_type=JSON
    )
    assert patched.status_code == 409
    assert patched.json()["errors"][0]["field"] == "index.name"
    assert Subscription.objects.get(name="customers").index_name == "customers"


def test_the_api_takes_and_shows_the_adopt_setting(api: Client) -> None:
    body = declaration("orders", "orders")
    body["index"]["adopt"] = True
    created = api.post("/api/subscriptions", body, content_type=JSON)
    assert created.status_code == 201, created.content
    assert created.json()["index"]["adopt"] is True
    assert Subscription.objects.get(name="orders").adopt_index is True

    patched = api.patch("/api/subscriptions/orders", {"index": {"adopt": False}}, content_type=JSON)
    assert patched.json()["changes"] == [{"field": "index.adopt", "old": "true", "new": "false"}]
    assert Subscription.objects.get(name="orders").adopt_index is False


# -- subscriptions apply -----------------------------------------------------------------------


def test_a_file_giving_two_subscriptions_one_index_is_rejected_whole() -> None:
    specs = parse(
        file_of(declaration("orders", "shop"), declaration("customers", "shop")),
        filename="s.json",
    )

    with pytest.raises(IndexNameTaken) as caught:
        apply_subscriptions(specs)

    assert [name for name, _ in caught.value.errors] == ["orders", "customers"]
    assert not Subscription.objects.exists()


def test_the_index_check_is_against_the_state_after_the_apply() -> None:
    subscription("orders")
    subscription("customers")
    swapped = file_of(declaration("orders", "customers"), declaration("customers", "orders"))

    apply_subscriptions(parse(swapped, filename="s.json"))  # each takes the other's index

    assert list(Subscription.objects.order_by("name").values_list("name", "index_name")) == [
        ("customers", "orders"),
        ("orders", "customers"),
    ]
    # A pruned subscription's index is free for a declared one.
    apply_subscriptions(
        parse(file_of(declaration("orders", "orders")), filename="s.json"), prune=True
    )
    assert list(Subscription.objects.values_list("name", "index_name")) == [("orders", "orders")]


def test_the_command_names_the_subscription_and_the_field(tmp_path: Path) -> None:
    subscription("orders")
    path = tmp_path / "subs.json"
    path.write_text(file_of(declaration("copy", "orders")))
    err = io.StringIO()

    with pytest.raises(CommandError, match=r"1 error in .*subs\.json; nothing was applied"):
        call_command("subscriptions", "apply", str(path), stdout=io.StringIO(), stderr=err)

    assert err.getvalue().startswith(
        "subscription 'copy': index.name: index orders is already the index of subscription orders"
    )
    assert not Subscription.objects.filter(name="copy").exists()


# -- the migration ------------------------------------------------------------------------------

BEFORE = ("syncer", "0005_deadletter_last_attempt")
OWNERSHIP = ("syncer", "0006_index_ownership")


@pytest.mark.django_db(transaction=True)
def test_the_migration_refuses_subscriptions_that_share_an_index() -> None:
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([BEFORE])
    try:
        old = MigrationExecutor(connection).loader.project_state([BEFORE]).apps
        model = old.get_model("syncer", "Subscription")
        for name in ("orders", "orders-copy", "customers"):
            model.objects.create(
                name=name,
                source_dsn="postgresql://u@h/db",
                relation="t",
                index_name="customers" if name == "customers" else "orders",
                slot_name=f"slot_{name.replace('-', '_')}",
            )
        with pytest.raises(RuntimeError) as caught:
            MigrationExecutor(connection).migrate([OWNERSHIP])
        assert "index orders: subscriptions orders, orders-copy" in str(caught.value)
        assert "nothing was changed" in str(caught.value)

        model.objects.filter(name="orders-copy").update(index_name="orders-2")
        MigrationExecutor(connection).migrate([OWNERSHIP])
    finally:
        MigrationExecutor(connection).migrate(latest)
    assert Subscription.objects.get(name="orders-copy").adopt_index is False
