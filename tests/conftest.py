"""Shared fixtures: a real PostgreSQL source database and real osmem-server clones."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest
from opensearchpy import OpenSearch
from osmem_server import OsmemServer

from syncer.models import Subscription
from syncer.sources.postgres.replication import drop_replication
from tests.support.httpfaults import FaultProxy
from tests.support.jetstream import Stream, make_config
from tests.support.tcpproxy import TcpProxy

ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Several test runs may share one PostgreSQL: each sets its own suffix.
# pytest-xdist workers (gw0, gw1, ...) each take their own databases as well.
DB_SUFFIX = os.environ.get("SEARCHSYNC_TEST_DB_SUFFIX", "") + (
    f"_{os.environ['PYTEST_XDIST_WORKER']}" if "PYTEST_XDIST_WORKER" in os.environ else ""
)
SOURCE_DB = f"searchsync_source_test{DB_SUFFIX}"
_table_ids = itertools.count(1)


def _drop_slots(conn: psycopg.Connection, database: str) -> None:
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE database = %s AND NOT active",
        (database,),
    )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Give the console's test database the run's suffix too."""
    if DB_SUFFIX:
        from django.conf import settings

        db = settings.DATABASES["default"]
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}{DB_SUFFIX}"


@pytest.fixture(scope="session")
def source_dsn() -> Iterator[str]:
    """A source database of its own, made fresh for the test session."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        _drop_slots(conn, SOURCE_DB)
        conn.execute(f"DROP DATABASE IF EXISTS {SOURCE_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SOURCE_DB}")
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + SOURCE_DB
    yield dsn
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        _drop_slots(conn, SOURCE_DB)


@pytest.fixture
def source_conn(source_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the source; slots left by the test are dropped after."""
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        yield conn
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
        ).fetchall():
            drop_replication(source_dsn, slot)  # ends a walsender still stopping
        for (pub,) in conn.execute("SELECT pubname FROM pg_publication").fetchall():
            conn.execute(f'DROP PUBLICATION IF EXISTS "{pub}"')


@pytest.fixture
def table_name() -> str:
    """A table name no other test of the session uses."""
    return f"t{os.getpid()}_{next(_table_ids)}"


@pytest.fixture(scope="session")
def osmem_server() -> Iterator[OsmemServer]:
    """One osmem-server for the session; tests take clones of it (`osmem_clone`)."""
    server = OsmemServer.start(japanese=False)
    yield server
    server.close()
    if server.process.stdout is not None:
        server.process.stdout.close()  # the plugin's fixture leaves it to the GC


@pytest.fixture
def opensearch_url(osmem_clone: Any, settings: Any) -> str:
    """A fresh osmem-server clone, set as the worker's OPENSEARCH_URL."""
    settings.OPENSEARCH_URL = osmem_clone.url
    return str(osmem_clone.url)


@pytest.fixture
def opensearch_proxy(opensearch_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of osmem: `with proxy.down():` is OpenSearch stopping."""
    target = urlparse(opensearch_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def opensearch_faults(opensearch_url: str) -> Iterator[FaultProxy]:
    """An HTTP proxy in front of osmem that answers chosen requests with chosen errors."""
    proxy = FaultProxy(opensearch_url)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def search(opensearch_url: str) -> Iterator[OpenSearch]:
    client = OpenSearch(hosts=[opensearch_url], timeout=60)
    yield client
    client.close()


@pytest.fixture
def fast_password_hashing(settings: Any) -> None:
    """Hash passwords with MD5, not PBKDF2 (half a second for each user a test makes).

    Only for users this process checks: a daphne a test starts hashes as
    console.settings says, so the browser tests' users keep the default hasher.
    """
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def fast_retries(settings: Any) -> None:
    """Reconnect after 0.2, 0.4 ... 2 s instead of 1 ... 30 s."""
    settings.SYNCER_BACKOFF_BASE = 0.2
    settings.SYNCER_BACKOFF_CAP = 2.0


@pytest.fixture
def make_subscription(transactional_db: None, source_dsn: str) -> Callable[..., Subscription]:
    """Create a subscription on the test source database (validated like the admin does)."""

    def make(name: str, relation: str, validate: bool = True, **fields: Any) -> Subscription:
        fields.setdefault("index_name", name)
        fields.setdefault("source_dsn", source_dsn)
        sub = Subscription(name=name, relation=relation, **fields)
        if validate:
            sub.full_clean()
        sub.save()
        return sub

    return make


@pytest.fixture
def nats_stream(settings: Any) -> Iterator[Stream]:
    """The worker's NATS settings: the real server, a stream and prefix of this test's own
    (deleted at the end)."""
    config = make_config(f"t{uuid.uuid4().hex[:12]}")
    settings.LIVE_NATS_URL = config.url
    settings.LIVE_NATS_STREAM = config.stream
    settings.LIVE_NATS_SUBJECT_PREFIX = config.subject_prefix
    settings.LIVE_NATS_MAX_AGE_SECONDS = config.max_age
    settings.LIVE_NATS_DUPLICATE_WINDOW_SECONDS = config.duplicate_window
    settings.LIVE_CHECKPOINT_HOLD_SECONDS = config.duplicate_window / 2  # must be below it
    stream = Stream(config)
    yield stream
    asyncio.run(stream.delete())
