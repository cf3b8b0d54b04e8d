"""`manage.py trace`, `GET /api/subscriptions/{name}/trace/{key}` and the admin's trace page,
against a real PostgreSQL source, a real osmem-server and, where it matters, the real worker."""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from opensearchpy import OpenSearch

from console.models import ApiToken
from syncer.models import Subscription
from tests.support.factories import entry
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.materialize_double import MaterializeDouble
from tests.support.process import free_port
from tests.support.users import bearer, staff_with, token_client, viewer

pytestmark = pytest.mark.usefixtures("fast_retries")

EVERY_TYPE = """
CREATE TABLE {t} (
  id int PRIMARY KEY, label text, amount numeric(12, 4), ratio real, flag boolean,
  uid uuid, day date, at timestamptz, doc jsonb, tags text[], raw bytea, nothing text
)
"""
EVERY_TYPE_ROW = """
INSERT INTO {t} VALUES (
  1, 'héllo | there', 12.5, 0.25, true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
  '2024-02-29 13:14:15.5+02', '{{"a": {{"b": [1, null, 3]}}}}', ARRAY['x', NULL], '\\x00ff', NULL
)
"""


def traced(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("trace", *args, "--json", stdout=out)
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def trace_text(*args: str) -> str:
    out = io.StringIO()
    call_command("trace", *args, stdout=out)
    return out.getvalue()


def api_url(name: str, key: str) -> str:
    return f"/api/subscriptions/{name}/trace/{quote(key, safe='')}"


def page_url(name: str, key: str) -> str:
    query = urlencode({"subscription": name, "key": key})
    return f"{reverse('admin:syncer_subscription_trace')}?{query}"


def put(search: OpenSearch, index: str, doc_id: str, body: dict[str, Any], version: int) -> None:
    search.index(index=index, id=doc_id, body=body, version=version, version_type="external")
    search.indices.refresh(index=index)


@pytest.fixture
def orders(
    source_conn: psycopg.Connection, table_name: str, make_subscription: Any
) -> Subscription:
    """A table of rows 1 and 2 and its subscription, never run: its index is the test's."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, label text)")
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 'one'), (2, 'two')")
    sub: Subscription = make_subscription("orders", table_name)
    return sub


# -- agreement, after the real sync and behind its back ----------------------------------


def test_a_synced_row_of_every_type_agrees_then_differs_once_the_index_is_changed_behind_its_back(
    source_conn: psycopg.Connection, table_name: str, make_subscription: Any, search: OpenSearch
) -> None:
    source_conn.execute(EVERY_TYPE.format(t=table_name))
    source_conn.execute(EVERY_TYPE_ROW.format(t=table_name))
    sub = make_subscription("typed", table_name)
    with WorkerThread([sub]):
        wait_for(lambda: "1" in index_docs(search, "typed"), what="the copy")
        wait_for(lambda: status_of("typed").checkpoint is not None, what="a checkpoint")

    synced = traced("typed", "1")

    assert synced["agreement"] == "agree", synced
    assert synced["row"] == synced["document"]["source"]
    assert synced["row"]["amount"] == "12.5000"  # numeric as text, every digit: as written
    assert synced["row"]["doc"] == {"a": {"b": [1, None, 3]}}
    assert synced["document"]["version"] <= synced["checkpoint"]
    assert synced["in_flight"] is False
    assert synced["dead_letter"] is None
    assert synced["recent_events"] == {
        "known": False,
        "events": [],
        "note": synced["recent_events"]["note"],
    }
    assert "keeps no record of past live events" in synced["recent_events"]["note"]

    # Someone writes to the index behind the product's back, at a version above the checkpoint.
    ahead = (status_of("typed").checkpoint or 0) + 1_000
    put(search, "typed", "1", {**synced["row"], "label": "tampered", "extra": 1}, ahead)

    drifted = traced("typed", "1")

    assert drifted["agreement"] == "differ"
    assert drifted["differing"] == ["extra", "label"]
    assert drifted["document"]["version"] == ahead
    assert drifted["in_flight"] is True
    assert any("change in flight" in note for note in drifted["notes"])


def test_each_agreement_state_of_rows_and_documents(
    orders: Subscription, search: OpenSearch
) -> None:
    search.indices.create(index="orders")
    put(search, "orders", "2", {"id": 2, "label": "two"}, 10)
    put(search, "orders", "3", {"id": 3, "label": "gone"}, 10)

    states = {key: traced("orders", key) for key in ("1", "2", "3", "4")}

    assert {key: t["agreement"] for key, t in states.items()} == {
        "1": "document_missing",
        "2": "agree",
        "3": "row_missing",
        "4": "both_absent",
    }
    assert states["1"]["row"] == {"id": 1, "label": "one"}
    assert states["1"]["document"] is None
    assert states["3"]["row"] is None and states["3"]["document"]["source"]["label"] == "gone"
    # No checkpoint yet: every document is newer than it.
    assert states["2"]["checkpoint"] is None and states["2"]["in_flight"] is True
    assert states["2"]["key"] == {"id": "2"} and states["2"]["key_columns"] == ["id"]


def test_a_missing_index_is_a_missing_document_with_a_note_and_is_not_created(
    orders: Subscription, search: OpenSearch
) -> None:
    found = traced("orders", "1")

    assert found["agreement"] == "document_missing"
    assert found["document_error"] is None
    assert any("does not exist yet" in note for note in found["notes"])
    assert not search.indices.exists(index="orders")


# -- keys ----------------------------------------------------------------------------------


@pytest.fixture
def regions(source_conn: psycopg.Connection, table_name: str, make_subscription: Any) -> str:
    source_conn.execute(
        f"CREATE TABLE {table_name} (tenant text, id int, v text, PRIMARY KEY (tenant, id))"
    )
    source_conn.execute(f"INSERT INTO {table_name} VALUES ('a|b', 1, 'x'), ('a', 7, 'y')")
    make_subscription("regions", table_name)
    return table_name


def test_a_composite_key_is_typed_as_its_document_id(regions: str, search: OpenSearch) -> None:
    client = token_client(viewer())

    escaped = client.get(api_url("regions", "a\\|b|1"))
    plain = client.get(api_url("regions", "a|7"))

    assert escaped.status_code == 200, escaped.content
    assert escaped.json()["key"] == {"tenant": "a|b", "id": "1"}
    assert escaped.json()["row"] == {"tenant": "a|b", "id": 1, "v": "x"}
    assert escaped.json()["doc_id"] == "a\\|b|1"
    assert plain.json()["row"] == {"tenant": "a", "id": 7, "v": "y"}


def test_a_bytea_key_is_found_by_the_base64_its_document_id_holds(
    source_conn: psycopg.Connection, table_name: str, make_subscription: Any
) -> None:
    source_conn.execute(f"CREATE TABLE {table_name} (k bytea PRIMARY KEY, v text)")
    source_conn.execute(f"INSERT INTO {table_name} VALUES ('\\x00ff10', 'binary')")
    make_subscription("blobs", table_name)
    found = traced("blobs", "AP8Q")  # base64 of 00 ff 10, as the sync writes the key
    assert found["row"] == {"k": "AP8Q", "v": "binary"}


@pytest.mark.parametrize("key", ["a", "a|b|1", "a\\x|1", "a|1\\"])
def test_a_key_that_does_not_fit_is_refused_naming_the_key_columns(
    regions: str, search: OpenSearch, key: str
) -> None:
    response = token_client(viewer()).get(api_url("regions", key))

    assert response.status_code == 422, response.content
    (error,) = response.json()["errors"]
    assert error["field"] == "key"
    assert "(tenant, id)" in error["message"] and "joined by |" in error["message"]
    with pytest.raises(CommandError, match=r"its key is \(tenant, id\)"):
        trace_text("regions", key)


def test_a_value_the_key_column_cannot_hold_is_refused_and_05_finds_5(
    orders: Subscription, search: OpenSearch
) -> None:
    put_index = search.indices.create(index="orders")
    assert put_index["acknowledged"]
    put(search, "orders", "1", {"id": 1, "label": "one"}, 10)

    with pytest.raises(CommandError, match=r"invalid input syntax for type integer"):
        trace_text("orders", "x")
    found = traced("orders", "01")

    assert found["doc_id"] == "1"  # the id the sync writes, from the row's key
    assert found["agreement"] == "agree"


def test_an_unknown_subscription_is_refused_with_the_known_ones(orders: Subscription) -> None:
    with pytest.raises(CommandError, match=r"no subscription named 'nope' \(known: orders\)"):
        trace_text("nope", "1")
    response = token_client(viewer()).get(api_url("nope", "1"))
    assert response.status_code == 404


# -- the dead letter, unreachable systems, secrets ---------------------------------------------


def test_the_dead_letter_is_shown_and_linked_both_ways(
    orders: Subscription, search: OpenSearch, fast_password_hashing: None
) -> None:
    dead = entry(orders, "2", version=77, error_reason="failed to parse field [label]")
    client = Client()
    client.force_login(viewer())

    found = traced("orders", "2")
    page = client.get(page_url("orders", "2"))
    dead_page = client.get(reverse("admin:syncer_deadletter_change", args=[dead.pk]))

    assert found["dead_letter"]["id"] == dead.pk
    assert found["dead_letter"]["version"] == 77
    assert "failed to parse field [label]" in found["dead_letter"]["error"]
    assert page.status_code == 200
    assert reverse("admin:syncer_deadletter_change", args=[dead.pk]) in page.content.decode()
    assert page_url("orders", "2").replace("&", "&amp;") in dead_page.content.decode()


def test_unreachable_source_and_opensearch_are_said_without_the_password(
    make_subscription: Any, settings: Any
) -> None:
    settings.OPENSEARCH_URL = f"http://admin:os-s3cret-pw@127.0.0.1:{free_port()}"
    make_subscription(
        "away",
        "public.orders",
        validate=False,
        source_dsn=f"postgresql://tracer:hunter2-secret@127.0.0.1:{free_port()}/db",
    )

    found = traced("away", "1")
    shown = trace_text("away", "1")
    answered = token_client(viewer()).get(api_url("away", "1"))

    assert found["agreement"] == "unknown"
    assert "connection refused" in found["row_error"].lower()
    assert found["document_error"].startswith("cannot reach OpenSearch")
    assert answered.status_code == 200
    for text in (json.dumps(found), shown, answered.content.decode()):
        assert "hunter2-secret" not in text and "os-s3cret-pw" not in text
    assert "could not be read" in shown


def test_the_text_output_says_what_differs_and_that_no_events_are_known(
    orders: Subscription, search: OpenSearch
) -> None:
    search.indices.create(index="orders")
    put(search, "orders", "1", {"id": 1, "label": "ONE"}, 10)

    shown = trace_text("orders", "1")

    assert "agreement     differ: the document is not the row" in shown
    assert "(fields: label)" in shown
    assert 'source row    {"id": 1, "label": "one"}' in shown
    assert "live events   none known" in shown


# -- who may ---------------------------------------------------------------------------------


def test_the_api_needs_the_view_permission_and_a_live_token(
    orders: Subscription, search: OpenSearch
) -> None:
    user = viewer()
    token, text = ApiToken.issue(user, "ci")

    assert bearer(text).get(api_url("orders", "1")).status_code == 200
    refused = token_client(staff_with("bare", ())).get(api_url("orders", "1"))
    assert refused.status_code == 403
    assert "syncer.view_subscription" in refused.json()["detail"]
    token.revoke()
    assert bearer(text).get(api_url("orders", "1")).status_code == 401


def test_the_admin_page_needs_the_view_permission(
    orders: Subscription, search: OpenSearch, fast_password_hashing: None
) -> None:
    allowed, bare, anonymous = Client(), Client(), Client()
    allowed.force_login(viewer())
    bare.force_login(staff_with("bare", ()))

    page = allowed.get(page_url("orders", "1"))
    form_only = allowed.get(reverse("admin:syncer_subscription_trace"))

    assert page.status_code == 200
    assert 'data-agreement="document_missing"' in page.content.decode()
    assert form_only.status_code == 200
    assert 'data-testid="agreement"' not in form_only.content.decode()
    assert bare.get(page_url("orders", "1")).status_code == 403
    assert anonymous.get(page_url("orders", "1")).status_code == 302  # to the login page


def test_the_admin_page_says_a_bad_key_under_the_key_field(
    regions: str, search: OpenSearch, fast_password_hashing: None
) -> None:
    client = Client()
    client.force_login(viewer())

    page = client.get(page_url("regions", "a"))

    assert page.status_code == 200
    assert "its key is (tenant, id)" in page.content.decode()
    assert 'data-testid="agreement"' not in page.content.decode()


# -- Materialize -------------------------------------------------------------------------------


def test_a_materialize_trace_reads_the_row_by_its_key_and_the_document(
    make_subscription: Any, search: OpenSearch
) -> None:
    """The pgwire double answers the trace's SELECT by key as Materialize does: the row
    as of now, each value decoded from its type's text; a key that is not of its
    column's type is Materialize's 22P02, said as what to fix."""
    with MaterializeDouble("orders_mv", (("order_id", "int8"), ("total", "numeric"))) as mz:
        mz.insert((7, "1.50"), (8, "2.00"))
        make_subscription(
            "mz-orders",
            "orders_mv",
            source_kind="materialize",
            source_dsn=mz.dsn,
            key_columns=["order_id"],
            source_cluster="serving",
        )
        search.indices.create(index="mz-orders")
        put(search, "mz-orders", "7", {"order_id": 7, "total": "1.50"}, 1_700_000_000_000)
        put(search, "mz-orders", "8", {"order_id": 8, "total": "9.99"}, 1_700_000_000_000)

        agreeing = traced("mz-orders", "7")
        differing = traced("mz-orders", "8")
        missing = traced("mz-orders", "9")
        with pytest.raises(CommandError, match=r"give a document key: the value of order_id"):
            trace_text("mz-orders", "")
        with pytest.raises(CommandError, match=r"'abc' does not fit the key \(order_id\)"):
            trace_text("mz-orders", "abc")
        statements = mz.statements

    assert agreeing["agreement"] == "agree", agreeing
    assert agreeing["row"] == {"order_id": 7, "total": "1.50"} == agreeing["document"]["source"]
    assert agreeing["document"]["position_shown"].startswith("1700000000000 (2023-11-14")
    assert (differing["agreement"], differing["differing"]) == ("differ", ["total"])
    assert missing["row"] is None and missing["document"] is None
    assert 'SET CLUSTER = "serving"' in statements
    assert 'SELECT * FROM "orders_mv" WHERE "order_id" = $1' in statements


def test_a_dead_letter_is_shown_only_to_who_may_view_dead_letters(
    orders: Subscription, search: OpenSearch, fast_password_hashing: None
) -> None:
    entry(orders, "2")
    reader = staff_with("subscriptions-only", ())
    reader.user_permissions.add(Permission.objects.get(codename="view_subscription"))
    session = Client()
    session.force_login(reader)

    answered = token_client(reader).get(api_url("orders", "2")).json()
    page = session.get(page_url("orders", "2")).content.decode()

    assert answered["dead_letter"] is None
    assert any("syncer.view_deadletter" in note for note in answered["notes"])
    assert "not shown: it needs the permission to view dead letters" in page
    assert token_client(viewer()).get(api_url("orders", "2")).json()["dead_letter"] is not None
