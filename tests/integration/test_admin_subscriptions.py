"""The subscription admin: a DSN's password never shown, deletes through the service."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import pytest
from django.contrib import messages
from django.db.models.signals import pre_save
from django.test import Client
from django.urls import reverse

from syncer.models import Subscription
from syncer.text import redact
from tests.support import factories
from tests.support.factories import admin_form
from tests.support.materialize_double import MaterializeDouble
from tests.support.process import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

SECRET_DSN = "postgresql://u:s3cret@h/db"
NO_SUCH_DB = "postgresql://postgres@127.0.0.1:5432/searchsync_no_such_database"
CHANGELIST = reverse("admin:syncer_subscription_changelist")


def change_url(subscription: Subscription) -> str:
    return reverse("admin:syncer_subscription_change", args=[subscription.pk])


def delete_url(subscription: Subscription) -> str:
    return reverse("admin:syncer_subscription_delete", args=[subscription.pk])


def make(name: str = "orders", **fields: Any) -> Subscription:
    return factories.subscription(name, **{"source_dsn": SECRET_DSN, **fields})


def form_data(subscription: Subscription, **changes: str) -> dict[str, str]:
    """What a browser posts when the change form is saved as shown, plus `changes`."""
    data = {
        "name": subscription.name,
        "source_kind": subscription.source_kind,
        "source_dsn": "postgresql://u:***@h/db",
        "relation": subscription.relation,
        "key_columns": ", ".join(subscription.key_columns),
        "source_cluster": subscription.source_cluster,
        "source_envelope": subscription.source_envelope,
        "index_name": subscription.index_name,
        "index_settings": json.dumps(subscription.index_settings),
        "index_mappings": json.dumps(subscription.index_mappings),
        "snapshot_mode": subscription.snapshot_mode,
        "batch_max_size": str(subscription.batch_max_size),
        "batch_max_age_ms": str(subscription.batch_max_age_ms),
        "backpressure_pause_at": str(subscription.backpressure_pause_at),
        "backpressure_resume_at": str(subscription.backpressure_resume_at),
        "skip_live_checks": "on",  # h and the tables are made up: tests of the checks omit it
        "_save": "Save",
    }
    if subscription.enabled:
        data["enabled"] = "on"
    data.update(changes)
    return data


def shown_messages(response: Any) -> list[tuple[int, str]]:
    return [(m.level, m.message) for m in response.context["messages"]]


def test_change_form_shows_the_dsn_without_its_password(admin_client: Client) -> None:
    subscription = make(key_columns=["order_id", "line_no"])

    response = admin_client.get(change_url(subscription))

    content = response.content.decode()
    assert response.status_code == 200
    assert "s3cret" not in content
    assert 'value="postgresql://u:***@h/db"' in content
    assert 'value="order_id, line_no"' in content
    assert subscription.slot_name in content


def test_saving_without_touching_the_dsn_keeps_the_stored_one(admin_client: Client) -> None:
    subscription = make()

    response = admin_client.post(
        change_url(subscription), form_data(subscription, batch_max_size="250")
    )

    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.source_dsn == SECRET_DSN
    assert subscription.batch_max_size == 250


def test_saving_the_form_never_undoes_what_the_worker_or_a_request_wrote_meanwhile(
    admin_client: Client,
) -> None:
    subscription = make(checkpoint=100)

    def worker_writes(sender: Any, instance: Subscription, **kwargs: Any) -> None:
        # Between the admin reading the row and saving it, the worker moves the
        # checkpoint and an operator asks for a resync.
        Subscription.objects.filter(pk=instance.pk).update(
            checkpoint=500,
            source_state={"multiset": []},
            resync_requested_at=dt.datetime.now(dt.UTC),
        )

    pre_save.connect(worker_writes, sender=Subscription)
    try:
        response = admin_client.post(
            change_url(subscription), form_data(subscription, batch_max_size="250")
        )
    finally:
        pre_save.disconnect(worker_writes, sender=Subscription)

    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.batch_max_size == 250
    assert subscription.checkpoint == 500 and subscription.source_state == {"multiset": []}
    assert subscription.resync_requested_at is not None


def test_typing_a_new_dsn_replaces_the_stored_one(admin_client: Client) -> None:
    subscription = make()

    response = admin_client.post(
        change_url(subscription), form_data(subscription, source_dsn="env:ORDERS_SOURCE_URL")
    )

    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.source_dsn == "env:ORDERS_SOURCE_URL"


def test_a_typed_password_is_not_shown_back_when_another_field_is_wrong(
    admin_client: Client,
) -> None:
    subscription = make()

    response = admin_client.post(
        change_url(subscription),
        form_data(subscription, source_dsn="postgresql://u:typed-pw@h2/db", index_name="Bad"),
    )

    content = response.content.decode()
    assert response.context["adminform"].form.errors["index_name"]
    assert "typed-pw" not in content
    assert 'value="postgresql://u:***@h2/db"' in content


def test_editing_the_shown_dsn_but_keeping_its_stars_is_refused(admin_client: Client) -> None:
    subscription = make()

    response = admin_client.post(
        change_url(subscription), form_data(subscription, source_dsn="postgresql://u:***@h2/db")
    )

    errors = response.context["adminform"].form.errors
    assert errors["source_dsn"][0].startswith("*** stands for the stored password only")
    subscription.refresh_from_db()
    assert subscription.source_dsn == SECRET_DSN


def test_key_columns_are_edited_as_comma_separated_text(admin_client: Client) -> None:
    subscription = make()

    admin_client.post(change_url(subscription), form_data(subscription, key_columns=" a, b ,,"))
    subscription.refresh_from_db()
    assert subscription.key_columns == ["a", "b"]

    admin_client.post(change_url(subscription), form_data(subscription, key_columns=""))
    subscription.refresh_from_db()
    assert subscription.key_columns == []


def test_model_validation_errors_show_as_form_errors(admin_client: Client) -> None:
    subscription = make()

    response = admin_client.post(
        change_url(subscription),
        form_data(
            subscription,
            index_name="Orders",
            relation="public..x",
            backpressure_pause_at="2000",
            backpressure_resume_at="3000",
            key_columns="id, id",
            index_settings="[1]",
        ),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["index_name"] == ["index name 'Orders' must be lowercase"]
    assert errors["relation"][0].startswith("'public..x' is not a table name")
    assert errors["backpressure_resume_at"] == ["resume_at (3000) must be below pause_at (2000)"]
    assert errors["key_columns"] == ["key columns must not repeat a column"]
    assert errors["index_settings"] == ["must be a JSON object"]
    assert "s3cret" not in response.content.decode()
    subscription.refresh_from_db()
    assert (subscription.index_name, subscription.relation) == ("orders", "public.orders")


def test_text_postgresql_cannot_store_is_a_form_error(admin_client: Client) -> None:
    subscription = make()

    response = admin_client.post(
        change_url(subscription),
        form_data(subscription, index_mappings='{"a": "\\u0000"}', key_columns="a\x00"),
    )

    errors = response.context["adminform"].form.errors
    assert errors["index_mappings"] == ["a string contains a NUL character (\\x00); remove it"]
    assert errors["key_columns"]


def test_add_form_creates_a_subscription_with_a_slot_name(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:syncer_subscription_add"))
    assert "State" not in [fs.name for fs in page.context["adminform"]]
    data = form_data(make("template"), name="fresh", index_name="fresh", index_settings="")
    data["source_dsn"] = SECRET_DSN

    response = admin_client.post(reverse("admin:syncer_subscription_add"), data)

    assert response.status_code == 302
    fresh = Subscription.objects.get(name="fresh")
    assert fresh.slot_name.startswith("searchsync_fresh_")
    assert fresh.source_dsn == SECRET_DSN
    assert fresh.index_settings == {}


def test_the_workers_fields_cannot_be_edited(admin_client: Client) -> None:
    subscription = make()

    admin_client.post(
        change_url(subscription),
        form_data(subscription, slot_name="stolen", checkpoint="5", status="error"),
    )

    refreshed = Subscription.objects.get(pk=subscription.pk)
    assert refreshed.slot_name == subscription.slot_name
    assert refreshed.checkpoint is None
    assert refreshed.status == Subscription.Status.STOPPED


def test_changelist_shows_state_without_passwords(admin_client: Client) -> None:
    now = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    make(
        checkpoint=0x16_B374D848,
        checkpoint_at=now,
        status=Subscription.Status.ERROR,
        status_message="cannot reach the source",
        last_error="connection to postgresql://u:s3cret@h/db refused",
    )
    make("customers", relation="customers")

    response = admin_client.get(CHANGELIST)

    content = response.content.decode()
    assert "16/B374D848" in content
    assert "Error</span>" in content
    assert "cannot reach the source" in content
    assert "connection to postgresql://u:***@h/db refused" in content
    assert "s3cret" not in content


def test_changelist_search_and_status_filter(admin_client: Client) -> None:
    make(status=Subscription.Status.ERROR)
    make("customers", relation="crm.people")

    by_relation = admin_client.get(CHANGELIST, {"q": "crm.people"})
    by_status = admin_client.get(CHANGELIST, {"status__exact": "error"})

    assert [s.name for s in by_relation.context["cl"].result_list] == ["customers"]
    assert [s.name for s in by_status.context["cl"].result_list] == ["orders"]


def test_change_form_shows_state_without_passwords(admin_client: Client) -> None:
    subscription = make(
        checkpoint=0x1_00000010,
        status_message="slot retains 2 GB of WAL",
        last_error="password=s3cret host=h failed",
    )

    content = admin_client.get(change_url(subscription)).content.decode()

    assert "1/10" in content
    assert "slot retains 2 GB of WAL" in content
    assert "password=*** host=h failed" in content
    assert "s3cret" not in content


def test_delete_drops_the_publication_on_the_source(
    admin_client: Client, source_dsn: str, source_conn: psycopg.Connection
) -> None:
    subscription = make(source_dsn=source_dsn)
    source_conn.execute(f'CREATE PUBLICATION "{subscription.slot_name}"')

    response = admin_client.post(delete_url(subscription), {"post": "yes"}, follow=True)

    assert response.status_code == 200
    assert not Subscription.objects.filter(pk=subscription.pk).exists()
    left = source_conn.execute(
        "SELECT count(*) FROM pg_publication WHERE pubname = %s", (subscription.slot_name,)
    ).fetchone()
    assert left == (0,)
    assert [level for level, _ in shown_messages(response)] == [messages.SUCCESS]


def test_delete_with_an_unreachable_source_deletes_and_warns(admin_client: Client) -> None:
    subscription = make(source_dsn=NO_SUCH_DB)

    response = admin_client.post(delete_url(subscription), {"post": "yes"}, follow=True)

    assert not Subscription.objects.filter(pk=subscription.pk).exists()
    warnings = [text for level, text in shown_messages(response) if level == messages.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("subscription orders: could not drop replication slot")
    assert "searchsync_no_such_database" in warnings[0]
    assert f"pg_drop_replication_slot('{subscription.slot_name}')" in warnings[0]


def test_bulk_delete_goes_through_the_service(
    admin_client: Client, source_dsn: str, source_conn: psycopg.Connection
) -> None:
    reachable = make(source_dsn=source_dsn)
    unreachable = make("customers", source_dsn=NO_SUCH_DB)
    source_conn.execute(f'CREATE PUBLICATION "{reachable.slot_name}"')

    response = admin_client.post(
        CHANGELIST,
        {
            "action": "delete_selected",
            "_selected_action": [str(reachable.pk), str(unreachable.pk)],
            "post": "yes",
        },
        follow=True,
    )

    assert not Subscription.objects.exists()
    left = source_conn.execute(
        "SELECT count(*) FROM pg_publication WHERE pubname = %s", (reachable.slot_name,)
    ).fetchone()
    assert left == (0,)
    warnings = [text for level, text in shown_messages(response) if level == messages.WARNING]
    assert [w.split(":")[0] for w in warnings] == ["subscription customers"]


ADD_URL = reverse("admin:syncer_subscription_add")
MZ_DSN = "postgresql://mz:s3cret@mz.internal:6875/materialize"
SEARCH_QUERY = (
    "SELECT o.order_id, o.status, c.name AS customer\r\n"
    "FROM orders o JOIN customers c ON (c.id = o.customer_id)\r\n"
    "WHERE o.note <> 'a; b (c'"
)


def add_data(**changes: str) -> dict[str, str]:
    """What a browser posts for a new materialize subscription, plus `changes`."""
    materialize = {
        "name": "orders-search",
        "source_kind": "materialize",
        "source_dsn": MZ_DSN,
        "relation": SEARCH_QUERY,
        "key_columns": "order_id",
        "source_cluster": "serving",
        "source_envelope": "upsert",  # skip_live_checks stays on: mz.internal is made up
    }
    return admin_form(**{**materialize, **changes})


def test_add_form_shows_the_materialize_fields_with_their_help(admin_client: Client) -> None:
    page = admin_client.get(ADD_URL)

    content = page.content.decode()
    form = page.context["adminform"].form
    assert [value for value, _ in form.fields["source_kind"].choices] == [
        "postgres",
        "materialize",
        "push",
    ]
    assert [value for value, _ in form.fields["source_envelope"].choices] == ["diff", "upsert"]
    assert form.fields["source_envelope"].initial == "diff"
    assert "Materialize only: the cluster to run SUBSCRIBE on (SET CLUSTER)" in content
    assert "ENVELOPE UPSERT (KEY (...)): Materialize consolidates per key" in content
    assert 'name="source_cluster"' in content
    assert '<textarea name="relation"' in content


def test_add_form_creates_a_materialize_subscription_on_a_query(admin_client: Client) -> None:
    response = admin_client.post(ADD_URL, add_data())

    assert response.status_code == 302
    saved = Subscription.objects.get(name="orders-search")
    assert saved.source_kind == Subscription.SourceKind.MATERIALIZE
    assert saved.relation == SEARCH_QUERY
    assert saved.key_columns == ["order_id"]
    assert (saved.source_cluster, saved.source_envelope) == ("serving", "upsert")
    assert saved.source_dsn == MZ_DSN


def test_add_form_takes_a_three_part_view_name_and_the_defaults(admin_client: Client) -> None:
    data = add_data(relation='materialize."Public".orders_search_source_mv', source_cluster="")
    data["source_envelope"] = "diff"

    response = admin_client.post(ADD_URL, data)

    assert response.status_code == 302
    saved = Subscription.objects.get(name="orders-search")
    assert (saved.source_cluster, saved.source_envelope) == ("", "diff")


def test_add_form_refuses_a_materialize_source_without_key_columns(admin_client: Client) -> None:
    response = admin_client.post(ADD_URL, add_data(key_columns=""))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "key_columns": [
            "materialize sources need key columns: the columns that identify a document, e.g. "
            "[order_id] (a view has no primary key to default to)"
        ]
    }
    assert "s3cret" not in response.content.decode()
    assert not Subscription.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        pytest.param(
            {"relation": "SELECT * FROM orders;"},
            "relation",
            "remove the semicolon at character 21: the query runs as SUBSCRIBE (<query>), so it "
            "must be one statement without a semicolon",
            id="semicolon",
        ),
        pytest.param(
            {"relation": "SELECT count(* FROM orders"},
            "relation",
            "the opening parenthesis at character 13 is never closed; add the missing )",
            id="unbalanced-parentheses",
        ),
        pytest.param(
            {"relation": "a.b.c.d"},
            "relation",
            "'a.b.c.d' is neither a relation name nor a query; write view, schema.view or "
            'database.schema.view (double-quote names with capitals or dots: "My Schema".'
            '"Orders"), or a query starting with SELECT or WITH',
            id="four-part-name",
        ),
        pytest.param(
            {"source_cluster": "serving cluster"},
            "source_cluster",
            "'serving cluster' is not a cluster name; use letters, digits, _ and $, not starting "
            'with a digit (e.g. serving), or double-quote it ("Serving 2")',
            id="bad-cluster",
        ),
        pytest.param(
            {"source_kind": "postgres", "relation": "public.orders", "source_envelope": "diff"},
            "source_cluster",
            "only materialize sources have a cluster; remove it",
            id="cluster-on-postgres",
        ),
        pytest.param(
            {"source_kind": "postgres", "relation": "public.orders", "source_cluster": ""},
            "source_envelope",
            "only materialize sources have an envelope; PostgreSQL sources use diff",
            id="upsert-on-postgres",
        ),
        pytest.param(
            {"source_kind": "postgres", "source_cluster": "", "source_envelope": "diff"},
            "relation",
            "postgres sources need a table, not a query: write table or schema.table (a query "
            "works only with materialize sources)",
            id="query-on-postgres",
        ),
    ],
)
def test_add_form_puts_each_source_error_on_its_field(
    admin_client: Client, changes: dict[str, str], field: str, expected: str
) -> None:
    response = admin_client.post(ADD_URL, add_data(**changes))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {field: [expected]}
    assert not Subscription.objects.exists()


def test_change_form_edits_a_materialize_subscription(admin_client: Client) -> None:
    subscription = make(
        "orders-search",
        source_kind="materialize",
        relation=SEARCH_QUERY,
        key_columns=["order_id"],
        source_cluster="serving",
    )
    page = admin_client.get(change_url(subscription))
    assert 'value="serving"' in page.content.decode()
    assert "s3cret" not in page.content.decode()

    response = admin_client.post(
        change_url(subscription),
        form_data(subscription, source_cluster='"Bulk Loads"', source_envelope="upsert"),
    )

    assert response.status_code == 302
    subscription.refresh_from_db()
    assert (subscription.source_cluster, subscription.source_envelope) == (
        '"Bulk Loads"',
        "upsert",
    )
    assert subscription.relation == SEARCH_QUERY
    assert subscription.source_dsn == SECRET_DSN


def test_changelist_shows_a_long_query_on_one_short_line(admin_client: Client) -> None:
    make("orders-search", source_kind="materialize", relation=SEARCH_QUERY, key_columns=["id"])

    content = admin_client.get(CHANGELIST).content.decode()

    assert "SELECT o.order_id, o.status, c.name AS customer FROM orders…" in content
    assert "o.customer_id" not in content


def test_deleting_a_materialize_subscription_drops_no_replication_slot(
    admin_client: Client,
) -> None:
    subscription = make(
        "orders-search",
        source_kind="materialize",
        source_dsn=NO_SUCH_DB,
        relation="orders_search_source_mv",
        key_columns=["order_id"],
    )

    response = admin_client.post(delete_url(subscription), {"post": "yes"}, follow=True)

    assert not Subscription.objects.filter(pk=subscription.pk).exists()
    assert [level for level, _ in shown_messages(response)] == [messages.SUCCESS]


# -- saving checks the subscription against the real systems ----------------------------


def live(data: dict[str, str]) -> dict[str, str]:
    """`data` posted without ticking “skip live checks”."""
    return {k: v for k, v in data.items() if k != "skip_live_checks"}


@pytest.fixture
def orders_table(source_conn: psycopg.Connection, table_name: str) -> str:
    source_conn.execute(f"CREATE TABLE {table_name} (order_id int PRIMARY KEY, total numeric)")
    return table_name


def postgres_data(source_dsn: str, table: str, **changes: str) -> dict[str, str]:
    data = add_data(
        source_kind="postgres",
        source_dsn=source_dsn,
        relation=table,
        key_columns="",
        source_cluster="",
        source_envelope="diff",
    )
    data.update(changes)
    return live(data)


def test_saving_a_subscription_that_the_systems_accept(
    admin_client: Client, admin_user: Any, source_dsn: str, orders_table: str, opensearch_url: str
) -> None:
    response = admin_client.post(ADD_URL, postgres_data(source_dsn, orders_table))

    assert response.status_code == 302
    saved = Subscription.objects.get(name="orders-search")
    page = admin_client.get(change_url(saved))
    assert [e.get_change_message() for e in page.context["recent_changes"]] == ["Added."]
    assert admin_user.username in page.content.decode().split("Recent changes", 1)[1]


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        pytest.param(
            {"relation": "public.no_such_orders"},
            "relation",
            "relation public.no_such_orders does not exist in database {db}; create the table "
            "or fix the relation",
            id="missing-table",
        ),
        pytest.param(
            {"key_columns": "order_no"},
            "key_columns",
            "key column(s) order_no not in public.{table}; its columns are: order_id, total",
            id="unknown-key-column",
        ),
        pytest.param(
            {"index_name": "Orders"},
            "index_name",
            "index name 'Orders' must be lowercase",
            id="bad-index-name",
        ),
    ],
)
def test_saving_shows_what_the_source_says_is_wrong_on_its_field(
    admin_client: Client,
    source_dsn: str,
    orders_table: str,
    opensearch_url: str,
    changes: dict[str, str],
    field: str,
    expected: str,
) -> None:
    db = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]

    response = admin_client.post(ADD_URL, postgres_data(source_dsn, orders_table, **changes))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors == {field: [expected.format(db=db, table=orders_table)]}
    assert not Subscription.objects.exists()


def test_an_unreachable_source_is_a_dsn_error_that_never_shows_the_password(
    admin_client: Client, opensearch_url: str
) -> None:
    port = free_port()
    data = postgres_data(f"postgresql://orders:typed-s3cret@127.0.0.1:{port}/shop", "orders")

    response = admin_client.post(ADD_URL, data)

    content = response.content.decode()
    assert response.context["adminform"].form.errors == {
        "source_dsn": [
            f"could not connect to 127.0.0.1:{port}: connection refused; check host and port"
        ]
    }
    assert "typed-s3cret" not in content
    assert f'value="postgresql://orders:***@127.0.0.1:{port}/shop"' in content
    assert not Subscription.objects.exists()


def test_editing_a_subscription_whose_source_is_down_needs_skip_live_checks(
    admin_client: Client, opensearch_url: str
) -> None:
    subscription = make(source_dsn=f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db")
    shown = redact(subscription.source_dsn)

    refused = admin_client.post(
        change_url(subscription),
        live(form_data(subscription, source_dsn=shown, batch_max_size="250")),
    )
    skipped = admin_client.post(
        change_url(subscription), form_data(subscription, source_dsn=shown, batch_max_size="250")
    )

    assert list(refused.context["adminform"].form.errors) == ["source_dsn"]
    assert "s3cret" not in refused.content.decode()
    assert skipped.status_code == 302
    subscription.refresh_from_db()
    assert subscription.batch_max_size == 250
    assert subscription.source_dsn.startswith("postgresql://u:s3cret@")


def test_an_unreachable_opensearch_is_an_index_error(
    admin_client: Client, source_dsn: str, orders_table: str, settings: Any
) -> None:
    settings.OPENSEARCH_URL = f"http://127.0.0.1:{free_port()}"

    response = admin_client.post(ADD_URL, postgres_data(source_dsn, orders_table))

    errors = response.context["adminform"].form.errors
    assert list(errors) == ["index_name"]
    assert "is unreachable, so the index cannot be checked" in errors["index_name"][0]


def test_the_form_offers_to_skip_live_checks_unticked(admin_client: Client) -> None:
    page = admin_client.get(ADD_URL)

    checkbox = str(page.context["adminform"].form["skip_live_checks"])
    assert 'name="skip_live_checks"' in checkbox
    assert "checked" not in checkbox


def test_a_materialize_subscription_is_checked_against_the_double(
    admin_client: Client, opensearch_url: str
) -> None:
    with MaterializeDouble("orders_search_source_mv") as mz:
        mz_dsn = mz.dsn.replace("postgresql://materialize@", "postgresql://mz:mz-s3cret@", 1)
        base = live(add_data(source_dsn=mz_dsn, relation="orders_search_source_mv"))
        wrong_cluster = admin_client.post(ADD_URL, {**base, "source_cluster": "bulk"})
        wrong_key = admin_client.post(ADD_URL, {**base, "key_columns": "id"})
        accepted = admin_client.post(ADD_URL, base)

    assert list(wrong_cluster.context["adminform"].form.errors) == ["source_cluster"]
    assert wrong_key.context["adminform"].form.errors == {
        "key_columns": [
            "key column(s) id not in orders_search_source_mv; its columns are: order_id, "
            "customer, total"
        ]
    }
    for page in (wrong_cluster, wrong_key):
        assert "mz-s3cret" not in page.content.decode()
    assert accepted.status_code == 302
    assert Subscription.objects.get(name="orders-search").source_cluster == "serving"


def test_a_push_subscription_s_page_has_no_source_fields_and_keeps_its_kind(
    admin_client: Client,
) -> None:
    pushed = Subscription(name="books", source_kind="push", index_name="books")
    pushed.full_clean()
    pushed.save()

    page = admin_client.get(change_url(pushed))
    form = page.context["adminform"].form
    assert not set(form.fields) & {"source_dsn", "relation", "key_columns", "source_cluster"}
    assert "source_kind" not in form.fields
    assert "Push (NDJSON posted to the API)" in page.content.decode()  # its kind, shown

    data = {
        key: value
        for key, value in form_data(pushed, batch_max_size="250").items()
        if key in form.fields or key in ("_save", "enabled")
    }
    data["source_kind"] = "postgres"  # a read-only field: what is posted is not used
    response = admin_client.post(change_url(pushed), data)

    assert response.status_code == 302, response.content.decode()[:2000]
    saved = Subscription.objects.get(pk=pushed.pk)
    assert (saved.batch_max_size, saved.source_kind, saved.source_dsn) == (250, "push", "")
