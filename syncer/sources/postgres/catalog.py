"""What the source needs to know about its table, checked against the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from syncer.errors import SourceConfigError
from syncer.sources.identifiers import split_relation
from syncer.sources.postgres.queries import QUERIES
from syncer.sources.sqlerrors import translated

_TABLE_KINDS = {"r": "table", "p": "partitioned table"}
_OTHER_KINDS = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence"}


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    columns: tuple[tuple[str, int], ...]
    """(name, type OID) in table order; domains resolved to their base type."""
    key: tuple[str, ...]
    replica_identity: str

    @property
    def identifier(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def type_oid(self, column: str) -> int | None:
        return dict(self.columns).get(column)


async def describe_table(
    conn: AsyncConnection[tuple[Any, ...]], relation: str, key: tuple[str, ...]
) -> Table:
    """Look up `relation` and check it can be streamed by key; raise SourceConfigError."""
    parts = split_relation(relation)
    if parts is None:
        raise SourceConfigError(f"source.relation {relation!r} is not a table name")
    database = conn.info.dbname
    schema, name = parts
    regname = ".".join(sql.Identifier(p).as_string(conn) for p in (schema, name) if p)
    row = await (await conn.execute(QUERIES["relation_info"], {"name": regname})).fetchone()
    if row is None:
        raise SourceConfigError(
            f"relation {relation} does not exist in database {database}; "
            "create the table or fix source.relation"
        )
    oid, nspname, relname, relkind, replident = row
    qualified = f"{nspname}.{relname}"
    if relkind not in _TABLE_KINDS:
        kind = _OTHER_KINDS.get(str(relkind), "not a table")
        raise SourceConfigError(
            f"{qualified} is a {kind}; PostgreSQL logical decoding streams tables only: "
            "point source.relation at the underlying table"
        )
    cursor = await conn.execute(QUERIES["relation_columns"], {"oid": oid})
    columns = tuple((str(n), int(t)) for n, t in await cursor.fetchall())
    names = [c for c, _ in columns]
    primary = await _identity_columns(conn, oid, "p")
    if not key:
        if not primary:
            raise SourceConfigError(
                f"{qualified} has no primary key; add one, or set source.key to unique "
                "columns and make them the replica identity "
                f"(ALTER TABLE {qualified} REPLICA IDENTITY FULL)"
            )
        key = primary
    unknown = [c for c in key if c not in names]
    if unknown:
        raise SourceConfigError(
            f"key column(s) {', '.join(unknown)} not in {qualified}; "
            f"its columns are: {', '.join(names)}"
        )
    identity = {"d": primary, "i": await _identity_columns(conn, oid, "i"), "f": tuple(names)}
    covered = identity.get(str(replident), ())
    if str(replident) == "n" or not covered:
        raise SourceConfigError(
            f"{qualified} has no replica identity, so PostgreSQL cannot publish its updates "
            f"and deletes; add a primary key or run ALTER TABLE {qualified} REPLICA IDENTITY FULL"
        )
    if not set(key) <= set(covered):
        raise SourceConfigError(
            f"key column(s) {', '.join(key)} are not part of {qualified}'s replica identity "
            f"({', '.join(covered)}), so deletes could not name the document; use the primary "
            f"key or run ALTER TABLE {qualified} REPLICA IDENTITY FULL"
        )
    return Table(int(oid), str(nspname), str(relname), columns, tuple(key), str(replident))


async def _identity_columns(
    conn: AsyncConnection[tuple[Any, ...]], oid: object, kind: str
) -> tuple[str, ...]:
    cursor = await conn.execute(QUERIES["identity_columns"], {"oid": oid, "kind": kind})
    return tuple(str(name) for (name,) in await cursor.fetchall())


def column_types(conninfo: str, relation: str, timeout: int = 3) -> dict[str, str] | None:
    """`relation`'s columns and their type names (`{"total": "numeric"}`), or None when
    it is not a relation name or does not exist. At most about `timeout` seconds to
    connect and as long to ask; driver errors come out as SourceConfigError or
    SourceUnavailable."""
    parts = split_relation(relation)
    if parts is None:
        return None
    with translated(f"reading the columns of {relation}"):
        # libpq's connect_timeout is whole seconds, at least 2.
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=max(2, timeout)) as conn:
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(timeout * 1000)))
            name = ".".join(sql.Identifier(p).as_string(conn) for p in parts if p)
            rows = conn.execute(QUERIES["relation_column_types"], {"name": name}).fetchall()
    return {str(column): str(type_name) for column, type_name in rows} or None
