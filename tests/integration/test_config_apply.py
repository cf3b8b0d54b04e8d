"""`apply_subscriptions` against the real database: create, update, prune, dry run."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from django.db import IntegrityError

from syncer.config_file import parse
from syncer.models import Subscription
from syncer.services import (
    Action,
    FieldChange,
    Outcome,
    SubscriptionSpec,
    apply_subscriptions,
)

pytestmark = pytest.mark.django_db

NO_SUCH_DB = "postgresql://postgres@127.0.0.1:5432/searchsync_no_such_database"


def subscriptions_yaml(*items: str) -> str:
    return "subscriptions:\n" + "".join(items)


def item(
    name: str,
    relation: str = "public.orders",
    dsn: str = "env:SOURCE_DATABASE_URL",
    extra: str = "",
    key: str = "[]",
) -> str:
    return (
        f"  - name: {name}\n"
        f"    source: {{kind: postgres, dsn: '{dsn}', relation: '{relation}', key: {key}}}\n"
        f"    index: {{name: {name}}}\n" + extra
    )


def apply(text: str, *, prune: bool = False, dry_run: bool = False) -> list[Outcome]:
    specs = parse(text, filename="subs.yaml")
    return list(apply_subscriptions(specs, prune=prune, dry_run=dry_run).outcomes)


def test_new_subscriptions_are_created_then_reported_unchanged() -> None:
    text = subscriptions_yaml(item("orders"), item("customers", "customers"))

    assert apply(text) == [
        Outcome("orders", Action.CREATED),
        Outcome("customers", Action.CREATED),
    ]
    assert apply(text) == [
        Outcome("orders", Action.UNCHANGED),
        Outcome("customers", Action.UNCHANGED),
    ]
    orders = Subscription.objects.get(name="orders")
    assert orders.relation == "public.orders"
    assert orders.index_name == "orders"
    assert orders.key_columns == []
    assert orders.slot_name.startswith("searchsync_orders_")
    assert orders.status == Subscription.Status.STOPPED


def test_each_changed_field_is_reported_and_saved() -> None:
    apply(subscriptions_yaml(item("orders")))
    changed = item(
        "orders",
        extra="    batch: {max_size: 200}\n    snapshot: discard\n    enabled: false\n",
    )

    [outcome] = apply(subscriptions_yaml(changed))

    assert outcome == Outcome(
        "orders",
        Action.UPDATED,
        (
            FieldChange("enabled", "true", "false"),
            FieldChange("snapshot_mode", "index", "discard"),
            FieldChange("batch_max_size", "1000", "200"),
        ),
    )
    orders = Subscription.objects.get(name="orders")
    assert (orders.enabled, orders.snapshot_mode, orders.batch_max_size) == (False, "discard", 200)


def test_changing_relation_or_key_is_reported_as_a_change() -> None:
    apply(subscriptions_yaml(item("orders")))

    [outcome] = apply(subscriptions_yaml(item("orders", "public.orders_v2", key="[id, line]")))

    assert outcome.action == Action.UPDATED
    assert outcome.changes == (
        FieldChange("relation", "public.orders", "public.orders_v2"),
        FieldChange("key_columns", "[]", '["id", "line"]'),
    )
    assert Subscription.objects.get(name="orders").key_columns == ["id", "line"]


def test_removing_an_optional_setting_from_the_file_restores_its_default() -> None:
    apply(subscriptions_yaml(item("orders", extra="    batch: {max_age_ms: 10}\n")))
    assert Subscription.objects.get(name="orders").batch_max_age_ms == 10

    [outcome] = apply(subscriptions_yaml(item("orders")))

    assert outcome.changes == (FieldChange("batch_max_age_ms", "10", "5000"),)
    assert Subscription.objects.get(name="orders").batch_max_age_ms == 5000


def test_apply_never_touches_the_workers_fields() -> None:
    apply(subscriptions_yaml(item("orders")))
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    Subscription.objects.filter(name="orders").update(
        checkpoint=0x16_B374D848,
        checkpoint_at=now,
        snapshot_completed_at=now,
        status=Subscription.Status.STREAMING,
        status_message="streaming",
        last_error="earlier hiccup",
        last_error_at=now,
    )
    before = Subscription.objects.get(name="orders")

    apply(subscriptions_yaml(item("orders", "public.orders_v2")))

    after = Subscription.objects.get(name="orders")
    assert after.relation == "public.orders_v2"
    for field in (
        "slot_name",
        "checkpoint",
        "checkpoint_at",
        "snapshot_completed_at",
        "status",
        "status_message",
        "last_error",
        "last_error_at",
        "created_at",
    ):
        assert getattr(after, field) == getattr(before, field), field


def test_a_changed_dsn_is_reported_without_either_password() -> None:
    apply(subscriptions_yaml(item("orders", dsn="postgresql://app:old-s3cret@db1/shop")))

    [outcome] = apply(
        subscriptions_yaml(item("orders", dsn="postgresql://app:new-s3cret@db2/shop"))
    )
    [password_only] = apply(
        subscriptions_yaml(item("orders", dsn="postgresql://app:newer-s3cret@db2/shop"))
    )

    assert outcome.changes == (
        FieldChange("source_dsn", "postgresql://app:***@db1/shop", "postgresql://app:***@db2/shop"),
    )
    assert password_only.changes == (
        FieldChange(
            "source_dsn",
            "postgresql://app:***@db2/shop",
            "postgresql://app:***@db2/shop (password changed)",
        ),
    )
    assert "s3cret" not in repr([outcome, password_only])
    assert Subscription.objects.get(name="orders").source_dsn.endswith("newer-s3cret@db2/shop")


def test_subscriptions_missing_from_the_file_are_kept_without_prune() -> None:
    apply(subscriptions_yaml(item("orders"), item("customers", "customers")))

    assert apply(subscriptions_yaml(item("orders"))) == [Outcome("orders", Action.UNCHANGED)]
    assert set(Subscription.objects.values_list("name", flat=True)) == {"orders", "customers"}


def test_prune_deletes_undeclared_subscriptions_and_drops_their_publication(
    source_dsn: str, source_conn: psycopg.Connection
) -> None:
    apply(subscriptions_yaml(item("orders"), item("old-feed", "old_feed", dsn=source_dsn)))
    slot = Subscription.objects.get(name="old-feed").slot_name
    # A logical slot would wait for every open transaction of the cluster, this test's
    # included; the publication, named like the slot, shows the drop reached the source.
    source_conn.execute(f'CREATE PUBLICATION "{slot}"')

    outcomes = apply(subscriptions_yaml(item("orders")), prune=True)

    assert outcomes == [Outcome("orders", Action.UNCHANGED), Outcome("old-feed", Action.DELETED)]
    assert list(Subscription.objects.values_list("name", flat=True)) == ["orders"]
    publications = source_conn.execute(
        "SELECT count(*) FROM pg_publication WHERE pubname = %s", (slot,)
    ).fetchone()
    assert publications == (0,)


def test_prune_reports_a_warning_when_the_source_cannot_be_reached() -> None:
    apply(subscriptions_yaml(item("orders"), item("gone", dsn=NO_SUCH_DB)))
    slot = Subscription.objects.get(name="gone").slot_name

    report = apply_subscriptions(
        parse(subscriptions_yaml(item("orders")), filename="s.yaml"), prune=True
    )

    [deleted] = [o for o in report.outcomes if o.action == Action.DELETED]
    assert deleted.name == "gone"
    assert deleted.warning is not None
    assert "searchsync_no_such_database" in deleted.warning
    assert f"pg_drop_replication_slot('{slot}')" in deleted.warning
    assert report.warnings == [deleted.warning]
    assert not Subscription.objects.filter(name="gone").exists()


def test_prune_with_an_empty_list_deletes_everything() -> None:
    apply(subscriptions_yaml(item("orders", dsn=NO_SUCH_DB)))

    outcomes = apply("subscriptions: []\n", prune=True)

    assert [(o.name, o.action) for o in outcomes] == [("orders", Action.DELETED)]
    assert not Subscription.objects.exists()


def test_a_dry_run_reports_everything_and_writes_nothing(
    source_dsn: str, source_conn: psycopg.Connection
) -> None:
    apply(subscriptions_yaml(item("orders"), item("old-feed", dsn=source_dsn)))
    slot = Subscription.objects.get(name="old-feed").slot_name
    source_conn.execute(f'CREATE PUBLICATION "{slot}"')
    before = list(Subscription.objects.order_by("name").values())

    report = apply_subscriptions(
        parse(subscriptions_yaml(item("orders", "orders_v2"), item("new")), filename="s.yaml"),
        prune=True,
        dry_run=True,
    )

    assert report.dry_run
    assert [(o.name, o.action) for o in report.outcomes] == [
        ("orders", Action.UPDATED),
        ("new", Action.CREATED),
        ("old-feed", Action.DELETED),
    ]
    assert report.outcomes[0].changes == (FieldChange("relation", "public.orders", "orders_v2"),)
    assert report.counts == {
        Action.CREATED: 1,
        Action.UPDATED: 1,
        Action.UNCHANGED: 0,
        Action.DELETED: 1,
    }
    assert list(Subscription.objects.order_by("name").values()) == before
    publications = source_conn.execute(
        "SELECT count(*) FROM pg_publication WHERE pubname = %s", (slot,)
    ).fetchone()
    assert publications == (1,)


def test_a_failed_write_rolls_back_the_whole_apply() -> None:
    [good] = parse(subscriptions_yaml(item("orders")), filename="s.yaml")
    unchecked = SubscriptionSpec(
        "broken",
        {**good.values, "backpressure_pause_at": 10, "backpressure_resume_at": 20},
    )

    with pytest.raises(IntegrityError):
        apply_subscriptions([good, unchecked])

    assert not Subscription.objects.exists()


def test_a_name_declared_twice_is_refused() -> None:
    [spec] = parse(subscriptions_yaml(item("orders")), filename="s.yaml")

    with pytest.raises(ValueError, match="declared only once"):
        apply_subscriptions([spec, spec])
