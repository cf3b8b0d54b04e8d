"""Check a subscription against the systems it points at, before it is saved.

The model's validators check the shape of each field; these checks ask the real
systems: can the source be reached with the DSN, does the relation exist with the key
columns, is the index name one OpenSearch takes. `check(subscription)` returns
problems by field name (the admin form puts each under its field), each written for an
operator: what is wrong and what to fix. Nothing here raises a driver exception, waits
longer than `timeout`, or lets a password through.

- PostgreSQL: connect, then `describe_table` (the worker's own check: table, key
  columns, replica identity).
- Materialize: connect, `SET CLUSTER` when configured, then in a transaction
  `DECLARE c CURSOR FOR SUBSCRIBE <relation> WITH (SNAPSHOT = false)` and `FETCH 0`
  to read the columns without reading data, and `ROLLBACK`.
- OpenSearch: the cluster answers, and the index (or alias) either exists or is a name
  it would accept.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg.conninfo
import structlog
from psycopg import AsyncConnection, sql

from syncer import conf, dsn
from syncer.errors import SourceConfigError, SyncError, UnsetVariable
from syncer.models import Subscription
from syncer.sinks.opensearch.client import Answer, answer_of, async_client, translated
from syncer.sources import kinds
from syncer.sources.identifiers import is_query, parse_cluster, split_name
from syncer.sources.postgres.catalog import describe_table
from syncer.sources.sqlerrors import describe
from syncer.text import redact

log = structlog.get_logger(__name__)

Problems = dict[str, list[str]]

TIMEOUT = 5.0
"""Seconds a whole check may take; each system gets its own share of it."""
_CONNECT_TIMEOUT = 3  # libpq's connect_timeout is whole seconds, at least 2
_CURSOR = "searchsync_check"
_SKIP_HINT = "or tick “skip live checks” to save anyway"

LABELS = {
    "source_dsn": "source DSN",
    "relation": "relation",
    "key_columns": "key columns",
    "source_cluster": "cluster",
    "index_name": "index",
}


def check(subscription: Subscription, timeout: float = TIMEOUT) -> Problems:
    """What the source and OpenSearch say is wrong with `subscription`, by field."""
    return asyncio.run(check_async(subscription, timeout))


async def check_async(subscription: Subscription, timeout: float = TIMEOUT) -> Problems:
    source, sink = await asyncio.gather(
        _bounded(_check_source(subscription), "source_dsn", "the source", timeout),
        _bounded(
            _check_index(subscription.index_name, timeout), "index_name", "OpenSearch", timeout
        ),
    )
    problems: Problems = {}
    for part in (source, sink):
        for field, messages in part.items():
            problems.setdefault(field, []).extend(messages)
    secret = _password(subscription.source_dsn)
    cleaned = {field: [_clean(m, secret) for m in messages] for field, messages in problems.items()}
    if cleaned:
        log.info(
            "subscription_live_check_failed", subscription=subscription.name, fields=sorted(cleaned)
        )
    return cleaned


def as_lines(problems: Problems) -> list[str]:
    """`field: message` lines, for output that has no form to put them under."""
    return [
        f"{LABELS.get(field, field)}: {message}"
        for field, messages in problems.items()
        for message in messages
    ]


async def _bounded(work: Awaitable[Problems], field: str, system: str, timeout: float) -> Problems:
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        return {
            field: [
                f"{system} did not answer within {timeout:g} s; check that it is up, {_SKIP_HINT}"
            ]
        }
    except (psycopg.Error, SyncError, OSError) as exc:
        # Not one of the failures the checks expect: still an answer, never a crash.
        log.warning("subscription_live_check_error", system=system, error=describe(exc))
        return {
            field: [f"checking {system} failed: {describe(exc)}; check that it is up, {_SKIP_HINT}"]
        }


# -- source --------------------------------------------------------------------------


async def _check_source(subscription: Subscription) -> Problems:
    if not subscription.kind.reads_database:
        return {}  # push: no source to reach (its queue is in the console's own database)
    try:
        conninfo = dsn.resolve(subscription.source_dsn)
    except UnsetVariable as exc:
        return {
            "source_dsn": [
                f"the environment variable {exc.name} is not set in the console's environment, "
                f"so the source cannot be checked; set it here as for the worker, {_SKIP_HINT}"
            ]
        }
    except SourceConfigError as exc:  # its message names the variable, never the value
        return {"source_dsn": [str(exc)]}
    params = psycopg.conninfo.conninfo_to_dict(conninfo)  # resolve() made sure it parses
    try:
        conn = await AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
        )
    except psycopg.Error as exc:
        return {"source_dsn": [connect_problem(params, exc)]}
    async with conn:
        return await SOURCE_CHECKS[subscription.source_kind](conn, subscription)


def connect_problem(params: dict[str, Any], exc: BaseException) -> str:
    """Why a connection failed, in an operator's words, naming host, port and what to check."""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    where = f"{host}:{params.get('port') or 5432}"
    text = describe(exc)
    lower = text.lower()
    if "connection refused" in lower:
        return f"could not connect to {where}: connection refused; check host and port"
    if "resolve host" in lower or "translate host name" in lower:
        return f"could not connect to {where}: host {host} not found; check the host name"
    if "timeout" in lower or "timed out" in lower:
        return (
            f"could not connect to {where}: no answer within {_CONNECT_TIMEOUT} s; check host, "
            "port and any firewall between the console and the source"
        )
    if "password authentication failed" in lower or "no password supplied" in lower:
        user = params.get("user") or "(default)"
        return (
            f"could not log in to {where} as {user}: wrong or missing password; "
            "check the user and password"
        )
    if match := re.search(r'database "([^"]*)" does not exist', text):
        return f"database {match.group(1)} does not exist on {where}; check the database name"
    if match := re.search(r'role "([^"]*)" does not exist', text):
        return f"user {match.group(1)} does not exist on {where}; check the user name"
    detail = text.removeprefix("connection failed: ")
    return f"could not connect to {where}: {detail}; check the DSN"


async def _check_postgres(
    conn: AsyncConnection[tuple[Any, ...]], subscription: Subscription
) -> Problems:
    try:
        await describe_table(conn, subscription.relation, tuple(subscription.key_columns))
    except SourceConfigError as exc:
        message = _admin_wording(str(exc))
        return {_field_of(message): [message]}
    except psycopg.Error as exc:
        return {"relation": [f"could not read {subscription.relation}: {describe(exc)}"]}
    return {}


def _field_of(message: str) -> str:
    """Which field a catalog problem is about: the key columns, or else the relation."""
    about_key = ("key column", "no primary key")
    return "key_columns" if any(m in message for m in about_key) else "relation"


def _admin_wording(message: str) -> str:
    """The worker's wording names the config file's fields; say the form's instead."""
    return message.replace("source.relation", "the relation").replace(
        "source.key", "the key columns"
    )


async def _check_materialize(
    conn: AsyncConnection[tuple[Any, ...]], subscription: Subscription
) -> Problems:
    cluster = parse_cluster(subscription.source_cluster) if subscription.source_cluster else None
    try:
        if cluster:
            await conn.execute(sql.SQL("SET CLUSTER = {}").format(sql.Identifier(cluster)))
    except psycopg.Error as exc:
        return {"source_cluster": [f"cannot use cluster {cluster}: {describe(exc)}"]}
    try:
        columns = await _subscribe_columns(conn, subscription.relation)
    except psycopg.Error as exc:
        return {_materialize_field(exc): [_subscribe_problem(subscription, cluster, exc)]}
    names = [c for c in columns if not c.startswith("mz_")]
    unknown = [c for c in subscription.key_columns if c not in names]
    if unknown:
        return {
            "key_columns": [
                f"key column(s) {', '.join(unknown)} not in {display_relation(subscription)}; "
                f"its columns are: {', '.join(names)}"
            ]
        }
    return {}


SourceCheck = Callable[[AsyncConnection[tuple[Any, ...]], Subscription], Awaitable[Problems]]
# How each kind's relation and key columns are checked, by kind name (syncer.sources.kinds).
SOURCE_CHECKS: dict[str, SourceCheck] = {
    kinds.POSTGRES.name: _check_postgres,
    kinds.MATERIALIZE.name: _check_materialize,
}


async def _subscribe_columns(conn: AsyncConnection[tuple[Any, ...]], relation: str) -> list[str]:
    """The columns SUBSCRIBE returns for `relation`, read without reading any row."""
    cursor = sql.Identifier(_CURSOR)
    await conn.execute("BEGIN")
    try:
        await conn.execute(
            sql.SQL("DECLARE {} CURSOR FOR SUBSCRIBE {} WITH (SNAPSHOT = false)").format(
                cursor, _subscribe_target(relation)
            )
        )
        fetched = await conn.execute(sql.SQL("FETCH 0 {}").format(cursor))
        return [column.name for column in fetched.description or ()]
    finally:
        if not conn.closed:
            await conn.execute("ROLLBACK")


def _subscribe_target(relation: str) -> sql.Composable:
    if is_query(relation):
        return sql.SQL("({})").format(sql.SQL(relation.strip()))
    parts = split_name(relation, 3) or [relation]
    return sql.Identifier(*parts)


def _materialize_field(exc: psycopg.Error) -> str:
    if "cluster" in str(exc).lower():
        return "source_cluster"
    if isinstance(exc, psycopg.errors.UndefinedColumn):
        return "key_columns"
    return "relation"


def _subscribe_problem(subscription: Subscription, cluster: str | None, exc: psycopg.Error) -> str:
    what = display_relation(subscription)
    # Materialize says so with XX000 (src/adapter/src/error.rs), PostgreSQL with 42P01.
    if isinstance(exc, psycopg.errors.UndefinedTable) or "unknown catalog item" in str(exc):
        return (
            f"{what} does not exist in Materialize ({describe(exc)}); create it or fix the relation"
        )
    if "cluster" in str(exc).lower():
        return f"cannot run SUBSCRIBE on cluster {cluster}: {describe(exc)}; check the cluster name"
    return f"SUBSCRIBE to {what} failed: {describe(exc)}; fix the relation"


def display_relation(subscription: Subscription) -> str:
    relation = " ".join(subscription.relation.split())
    return "the query" if is_query(relation) else relation


# -- OpenSearch ----------------------------------------------------------------------


async def _check_index(index: str, timeout: float) -> Problems:
    connection = conf.opensearch()
    client = async_client(connection, timeout=min(timeout, 3.0))
    try:
        with translated(f"checking index {index}"):
            await client.indices.exists(index=index)
    except SyncError as exc:
        return _index_problems(answer_of(exc), index, redact(connection.url))
    finally:
        await client.close()
    return {}  # it exists, or it does not yet and the worker will create it


def _index_problems(answer: Answer, index: str, where: str) -> Problems:
    if not answer.status:
        return {
            "index_name": [
                f"OpenSearch at {where} is unreachable, so the index cannot be checked; check "
                f"OPENSEARCH_URL and that OpenSearch is up, {_SKIP_HINT}"
            ]
        }
    if answer.status == 401:
        return {
            "index_name": [
                f"OpenSearch at {where} refused the console's credentials; "
                "check OPENSEARCH_USER and OPENSEARCH_PASSWORD"
            ]
        }
    if answer.status == 400:
        return {
            "index_name": [
                f"OpenSearch refuses the index name {index!r}: {answer.reason}; choose another name"
            ]
        }
    return {
        "index_name": [
            f"OpenSearch at {where} answered HTTP {answer.status} for index {index}: "
            f"{answer.reason}; check the cluster, {_SKIP_HINT}"
        ]
    }


# -- never a password ----------------------------------------------------------------


def _password(source_dsn: str) -> str | None:
    try:
        password = psycopg.conninfo.conninfo_to_dict(dsn.resolve(source_dsn)).get("password")
    except (psycopg.ProgrammingError, SourceConfigError):
        return None
    return str(password) if password else None


def _clean(message: str, secret: str | None) -> str:
    text = redact(message)
    # A very short password would match ordinary words; redact() already hid it in DSNs.
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text
