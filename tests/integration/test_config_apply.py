"""`apply_subscriptions` against the real database: create, update, prune, dry run."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import IntegrityError

from syncer.errors import DeclarationError
from syncer.models import Subscription
from syncer.operations.declarations import parse
from syncer.operations.subscriptions import (
    Action,
    Applied,
    FieldChange,
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


def apply(text: str, *, prune: bool = False, dry_run: bool = False) -> list[Applied]:
    specs = parse(text, filename="subs.yaml")
    return list(apply_subscriptions(specs, prune=prune, dry_run=dry_run).outcomes)


def test_new_subscriptions_are_created_then_reported_unchanged() -> None:
    text = subscriptions_yaml(item("orders"), item("customers", "customers"))

    assert apply(text) == [
        Applied("orders", Action.CREATED),
        Applied("customers", Action.CREATED),
    ]
    assert apply(text) == [
        Applied("orders", Action.UNCHANGED),
        Applied("customers", Action.UNCHANGED),
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

    assert outcome == Applied(
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

    assert apply(subscriptions_yaml(item("orders"))) == [Applied("orders", Action.UNCHANGED)]
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

    assert outcomes == [Applied("orders", Action.UNCHANGED), Applied("old-feed", Action.DELETED)]
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
        {
            **good.values,
            "index_name": "broken",
            "backpressure_pause_at": 10,
            "backpressure_resume_at": 20,
        },
    )

    with pytest.raises(IntegrityError):
        apply_subscriptions([good, unchecked])

    assert not Subscription.objects.exists()


def test_a_name_declared_twice_is_refused() -> None:
    [spec] = parse(subscriptions_yaml(item("orders")), filename="s.yaml")

    with pytest.raises(ValueError, match="declared only once"):
        apply_subscriptions([spec, spec])


SEARCH_QUERY = (
    "SELECT o.order_id, o.status, c.name AS customer\n"
    "FROM orders o JOIN customers c ON (c.id = o.customer_id)\n"
    "WHERE o.note <> 'a; b (c'\n"
)


def materialize_item(
    name: str = "orders-search",
    relation: str = SEARCH_QUERY,
    key: str = "[order_id]",
    options: str = "      cluster: serving\n      envelope: upsert\n",
) -> str:
    relation_yaml = (
        "|\n" + "".join(f"        {line}\n" for line in relation.splitlines())
        if "\n" in relation
        else f"{json.dumps(relation)}\n"
    )
    return (
        f"  - name: {name}\n"
        "    source:\n"
        "      kind: materialize\n"
        "      dsn: 'postgresql://mz:s3cret@mz.internal:6875/materialize'\n"
        f"      relation: {relation_yaml}"
        f"      key: {key}\n" + options + f"    index: {{name: {name}}}\n"
    )


def show_json(name: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("subscriptions", "show", name, "--json", stdout=out)
    shown: dict[str, Any] = json.loads(out.getvalue())
    return shown


def test_a_materialize_subscription_is_applied_and_shown_as_declared() -> None:
    assert apply(subscriptions_yaml(materialize_item())) == [
        Applied("orders-search", Action.CREATED)
    ]

    saved = Subscription.objects.get(name="orders-search")
    assert saved.source_kind == Subscription.SourceKind.MATERIALIZE
    assert saved.relation == SEARCH_QUERY
    assert (saved.source_cluster, saved.source_envelope) == ("serving", "upsert")
    assert saved.key_columns == ["order_id"]
    shown = show_json("orders-search")
    assert shown["source"] == {
        "kind": "materialize",
        "dsn": "postgresql://mz:***@mz.internal:6875/materialize",
        "relation": SEARCH_QUERY,
        "key": ["order_id"],
        "cluster": "serving",
        "envelope": "upsert",
    }
    assert "s3cret" not in json.dumps(shown)
    assert apply(subscriptions_yaml(materialize_item())) == [
        Applied("orders-search", Action.UNCHANGED)
    ]


def test_the_shown_subscription_applies_back_unchanged() -> None:
    apply(subscriptions_yaml(materialize_item()))
    shown = show_json("orders-search")
    source = dict(shown["source"])
    source["dsn"] = "postgresql://mz:s3cret@mz.internal:6875/materialize"
    document = {
        "subscriptions": [
            {
                "name": shown["name"],
                "enabled": shown["enabled"],
                "source": source,
                "index": shown["index"],
                "snapshot": shown["snapshot"],
                "batch": shown["batch"],
                "backpressure": shown["backpressure"],
            }
        ]
    }

    report = apply_subscriptions(parse(json.dumps(document), filename="shown.json"))

    assert report.outcomes == (Applied("orders-search", Action.UNCHANGED),)


def test_show_text_names_the_cluster_and_envelope() -> None:
    apply(subscriptions_yaml(materialize_item(options="")))
    out = io.StringIO()

    call_command("subscriptions", "show", "orders-search", stdout=out)

    fields = {
        key: value.strip()
        for key, value in (
            line.split(":", 1) for line in out.getvalue().splitlines() if not line.startswith(" ")
        )
    }
    assert fields["source.kind"] == "materialize"
    assert fields["source.cluster"] == "(the connection's default)"
    assert fields["source.envelope"] == "diff"
    assert fields["source.relation"] == "SELECT o.order_id, o.status, c.name AS customer"
    assert "FROM orders o JOIN customers c" in out.getvalue()


def test_changes_to_cluster_and_envelope_are_reported_and_saved() -> None:
    apply(subscriptions_yaml(materialize_item(options="")))

    [added] = apply(subscriptions_yaml(materialize_item()))
    [changed] = apply(
        subscriptions_yaml(
            materialize_item(relation="orders_search_source_mv", options="      cluster: bulk\n")
        )
    )

    assert added.changes == (
        FieldChange("source_cluster", "(none)", "serving"),
        FieldChange("source_envelope", "diff", "upsert"),
    )
    assert changed.changes == (
        FieldChange("relation", SEARCH_QUERY, "orders_search_source_mv"),
        FieldChange("source_cluster", "serving", "bulk"),
        FieldChange("source_envelope", "upsert", "diff"),
    )
    saved = Subscription.objects.get(name="orders-search")
    assert (saved.relation, saved.source_cluster, saved.source_envelope) == (
        "orders_search_source_mv",
        "bulk",
        "diff",
    )


def test_a_postgres_subscription_can_become_a_materialize_one() -> None:
    apply(subscriptions_yaml(item("orders")))

    [outcome] = apply(subscriptions_yaml(materialize_item("orders")))

    assert [c.field for c in outcome.changes] == [
        "source_kind",
        "source_dsn",
        "relation",
        "key_columns",
        "source_cluster",
        "source_envelope",
    ]
    assert Subscription.objects.get(name="orders").source_kind == "materialize"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            subscriptions_yaml(materialize_item(key="[]")),
            "subscription 'orders-search': source.key: materialize sources need key columns: "
            "the columns that identify a document, e.g. [order_id] (a view has no primary key "
            "to default to)",
            id="materialize-without-key",
        ),
        pytest.param(
            subscriptions_yaml(item("orders", extra="")).replace(
                "key: []}", "key: [], cluster: serving}"
            ),
            "subscription 'orders': source.cluster: only materialize sources have a cluster; "
            "remove it",
            id="cluster-on-postgres",
        ),
        pytest.param(
            subscriptions_yaml(materialize_item(options="      cluster: 'serving cluster'\n")),
            "subscription 'orders-search': source.cluster: 'serving cluster' is not a cluster "
            "name; use letters, digits, _ and $, not starting with a digit (e.g. serving), or "
            'double-quote it ("Serving 2")',
            id="bad-cluster-name",
        ),
        pytest.param(
            subscriptions_yaml(materialize_item(relation="SELECT * FROM orders;")),
            "subscription 'orders-search': source.relation: remove the semicolon at character "
            "21: the query runs as SUBSCRIBE (<query>), so it must be one statement without a "
            "semicolon",
            id="query-with-semicolon",
        ),
        pytest.param(
            subscriptions_yaml(materialize_item(relation="SELECT count(* FROM orders")),
            "subscription 'orders-search': source.relation: the opening parenthesis at "
            "character 13 is never closed; add the missing )",
            id="query-with-unbalanced-parentheses",
        ),
        pytest.param(
            subscriptions_yaml(item("orders", relation="SELECT * FROM orders")),
            "subscription 'orders': source.relation: postgres sources need a table, not a "
            "query: write table or schema.table (a query works only with materialize sources)",
            id="query-for-postgres",
        ),
    ],
)
def test_an_invalid_source_is_refused_and_nothing_is_applied(text: str, expected: str) -> None:
    apply(subscriptions_yaml(item("existing")))
    before = list(Subscription.objects.values())

    with pytest.raises(DeclarationError) as caught:
        apply(text)

    assert caught.value.errors == [expected]
    assert list(Subscription.objects.values()) == before


def test_an_existing_postgres_row_gets_the_default_envelope_and_no_cluster() -> None:
    apply(subscriptions_yaml(item("orders")))

    orders = Subscription.objects.get(name="orders")

    assert (orders.source_cluster, orders.source_envelope) == ("", "diff")
    assert "cluster" not in show_json("orders")["source"]


def test_the_database_refuses_an_unknown_envelope() -> None:
    [good] = parse(subscriptions_yaml(materialize_item()), filename="s.yaml")
    unchecked = SubscriptionSpec("broken", {**good.values, "source_envelope": "debezium"})

    with pytest.raises(IntegrityError, match="subscription_envelope_known"):
        apply_subscriptions([unchecked])
