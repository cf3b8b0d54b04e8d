"""Source DSNs never reach a secret: `env:` reads only allowed variables, no message holds
a value read from the environment, the console's own database is no source unless an
operator says so, and a DSN sent back as shown (`***`) keeps the stored password.

Through the admin form, the API, `subscriptions apply` and the worker's status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from syncer import dsn
from syncer.errors import DeclarationError
from syncer.models import Subscription
from syncer.operations import declarations
from tests.support.factories import admin_form
from tests.support.harness import WorkerThread, status_of, wait_for
from tests.support.users import operator, token_client

ADD_URL = reverse("admin:syncer_subscription_add")
JSON = "application/json"
CONSOLE_KEY = "django-insecure-Zq9-console-signing-key"
NOT_A_DSN = "s3cr3t-value-Qx7 that is no DSN"


@pytest.fixture(autouse=True)
def _secrets_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, settings: Any, fast_password_hashing: None
) -> None:
    """The console's key is in the environment, and a source variable holds no DSN."""
    monkeypatch.setenv("SECRET_KEY", CONSOLE_KEY)
    monkeypatch.setenv("BROKEN_SOURCE_URL", NOT_A_DSN)
    settings.SECRET_KEY = CONSOLE_KEY


def form(source_dsn: str, *, live: bool = False) -> dict[str, str]:
    data = admin_form(source_dsn=source_dsn)
    if live:
        del data["skip_live_checks"]
    return data


def dsn_errors(response: Any) -> list[str]:
    assert response.status_code == 200, response.status_code
    return list(response.context["adminform"].form.errors.get("source_dsn", []))


def console_database(host: str | None = None, port: str | None = None) -> str:
    db = django_settings.DATABASES["default"]
    where = host or db["HOST"]
    if port != "":
        where += f":{port or db['PORT']}"
    return f"postgresql://{db['USER']}@{where}/{db['NAME']}"


# -- the allow-list, in the admin form ------------------------------------------------------


def test_env_secret_key_is_refused_without_showing_its_value(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = admin_client.post(ADD_URL, form("env:SECRET_KEY"))

    (error,) = dsn_errors(response)
    assert "SECRET_KEY is named like a secret" in error
    assert CONSOLE_KEY not in response.content.decode()
    assert not Subscription.objects.exists()


def test_env_of_a_variable_not_on_the_allow_list_is_refused_and_says_how_to_allow_it(
    admin_client: Client, settings: Any
) -> None:
    (error,) = dsn_errors(admin_client.post(ADD_URL, form("env:HOME")))
    assert error.startswith(
        "env:HOME is not allowed: a source DSN may name only the environment variables of "
        "SYNCER_SOURCE_DSN_ENV (SOURCE_DATABASE_URL, MATERIALIZE_URL, *_SOURCE_URL, "
        "*_SOURCE_DSN)"
    )

    settings.SYNCER_SOURCE_DSN_ENV = "ORDERS_*, SOURCE_DATABASE_URL"
    assert admin_client.post(ADD_URL, form("env:ORDERS_DB")).status_code == 302
    assert Subscription.objects.get(name="orders").source_dsn == "env:ORDERS_DB"


@pytest.mark.parametrize(
    "name", ["SOURCE_DATABASE_URL", "MATERIALIZE_URL", "DEMO_SOURCE_URL", "ORDERS_SOURCE_DSN"]
)
def test_the_default_allow_list_takes_the_readme_and_demo_names(name: str) -> None:
    dsn.validate(f"env:{name}")


def test_an_allowed_variable_that_holds_no_dsn_is_named_never_quoted(
    admin_client: Client, opensearch_url: str
) -> None:
    response = admin_client.post(ADD_URL, form("env:BROKEN_SOURCE_URL", live=True))

    assert dsn_errors(response) == [
        "the environment variable BROKEN_SOURCE_URL does not hold a PostgreSQL DSN (it has a "
        'word without "=": write key=value pairs or a postgresql:// URL); set it to '
        "postgresql://user@host:5432/dbname or host=... dbname=... (with a password)"
    ]
    content = response.content.decode()
    assert "s3cr3t" not in content and "Qx7" not in content


def test_a_literal_dsn_that_does_not_parse_is_not_quoted_back(admin_client: Client) -> None:
    response = admin_client.post(ADD_URL, form("host=h password=pw one-Zt8 dbname=x"))

    assert dsn_errors(response) == [
        'not a valid PostgreSQL DSN: it has a word without "=": write key=value pairs or a '
        "postgresql:// URL"
    ]
    assert "Zt8" not in response.content.decode()


# -- the console's own database -------------------------------------------------------------


SPELLINGS: dict[str, Callable[[], str]] = {
    "DATABASE_URL": lambda: "env:DATABASE_URL",
    "same-dsn": lambda: console_database(),
    "localhost": lambda: console_database(host="localhost"),
    "default-port": lambda: console_database(host="127.0.0.1", port=""),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_consoles_own_database_is_no_source(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch, settings: Any, spelling: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", console_database())
    source = SPELLINGS[spelling]()  # the test database's name is known only now

    (error,) = dsn_errors(admin_client.post(ADD_URL, form(source)))
    assert "the console's own database" in error
    assert "SYNCER_ALLOW_CONSOLE_DATABASE_SOURCE=true" in error

    settings.SYNCER_ALLOW_CONSOLE_DATABASE_SOURCE = True
    assert admin_client.post(ADD_URL, form(source)).status_code == 302


def test_another_database_on_the_consoles_server_is_a_source(admin_client: Client) -> None:
    other = console_database().rsplit("/", 1)[0] + "/another_database"
    assert admin_client.post(ADD_URL, form(other)).status_code == 302


# -- the API --------------------------------------------------------------------------------


@pytest.fixture
def api(db: None) -> Client:
    return token_client(operator("ops", is_superuser=True))


def declaration(source_dsn: str) -> dict[str, Any]:
    return {
        "name": "orders",
        "source": {"kind": "postgres", "dsn": source_dsn, "relation": "public.orders"},
        "index": {"name": "orders"},
    }


def test_the_api_refuses_env_secret_key_without_showing_it(api: Client) -> None:
    response = api.post("/api/subscriptions", declaration("env:SECRET_KEY"), content_type=JSON)

    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert (
        error["field"] == "source.dsn" and "SECRET_KEY is named like a secret" in error["message"]
    )
    assert CONSOLE_KEY not in response.content.decode()


STORED = "postgresql://sync:st0red-pw@db1.internal/shop"


def test_patch_with_the_dsn_as_shown_keeps_the_stored_password(api: Client) -> None:
    api.post("/api/subscriptions", declaration(STORED), content_type=JSON)
    shown = api.get("/api/subscriptions/orders").json()
    assert shown["source"]["dsn"] == "postgresql://sync:***@db1.internal/shop"

    edited = {"source": {**shown["source"], "relation": "public.orders_v2"}}
    response = api.patch("/api/subscriptions/orders", edited, content_type=JSON)

    assert response.status_code == 200, response.content
    assert [c["field"] for c in response.json()["changes"]] == ["source.relation"]
    saved = Subscription.objects.get(name="orders")
    assert (saved.source_dsn, saved.relation) == (STORED, "public.orders_v2")


def test_patch_with_stars_in_a_changed_dsn_is_refused_and_stores_nothing(api: Client) -> None:
    api.post("/api/subscriptions", declaration(STORED), content_type=JSON)
    moved = {"source": {"dsn": "postgresql://sync:***@db2.internal/shop"}}

    response = api.patch("/api/subscriptions/orders", moved, content_type=JSON)

    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "source.dsn"
    assert error["message"].startswith("*** stands for the stored password only")
    assert Subscription.objects.get(name="orders").source_dsn == STORED


def test_a_subscriptions_file_with_a_redacted_dsn_is_refused() -> None:
    text = json.dumps({"subscriptions": [declaration("postgresql://sync:***@db1.internal/shop")]})

    with pytest.raises(DeclarationError) as refused:
        declarations.parse(text, filename="s.json")

    (error,) = refused.value.errors
    assert error.startswith("subscription 'orders': source.dsn: *** stands for the stored password")


# -- the worker's status, for rows saved before these checks --------------------------------


@pytest.mark.usefixtures("fast_retries")
def test_the_worker_names_the_variable_and_never_its_value(
    make_subscription: Callable[..., Subscription],
    source_conn: psycopg.Connection,
    table_name: str,
    search: Any,
    api: Client,
) -> None:
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    expected = {
        "secret-key": ("env:SECRET_KEY", "SECRET_KEY is named like a secret"),
        "broken": ("env:BROKEN_SOURCE_URL", "BROKEN_SOURCE_URL does not hold a PostgreSQL DSN"),
        "console-db": ("env:DATABASE_URL", "DATABASE_URL holds the console's own database"),
    }
    subs = [
        make_subscription(name, table_name, source_dsn=source, validate=False)
        for name, (source, _) in expected.items()
    ]
    with WorkerThread(subs):
        for name, (_, words) in expected.items():
            wait_for(
                lambda: (
                    status_of(name).status == "error"  # noqa: B023
                    and words in status_of(name).last_error  # noqa: B023
                ),
                what=f"{name} error status",
            )
    for name in expected:
        shown = api.get(f"/api/subscriptions/{name}").content.decode()
        stored = status_of(name)
        for text in (shown, stored.status_message, stored.last_error):
            assert CONSOLE_KEY not in text and "s3cr3t" not in text
