"""One PostgreSQL row by its key, as it is now (`syncer.sources.lookup`).

The table is described as the worker describes it (`catalog.describe_table`: the same
columns, the primary key when no key columns are set), then read with

    SELECT "c1", "c2", ... FROM "schema"."table" WHERE "k1" = $1 AND "k2" = $2

each value sent as text of unknown type, so PostgreSQL reads it as the key column's
type and the primary key's index answers (a bytea key is decoded from the base64 its
document id holds: `values.from_written`). Every column is decoded from its text by the
decoder of its type in the table, as the copy decodes it.
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection, sql

from syncer.sources.lookup import FoundRow, RowLookup, decode_row, not_a_key_value, parse_key
from syncer.sources.postgres.catalog import describe_table
from syncer.sources.sqlerrors import translated
from syncer.sources.values import from_written


async def read_row(lookup: RowLookup) -> FoundRow:
    """The row of `lookup.relation` whose key is `lookup.doc_id`, or None in `row`."""
    with translated("connecting to the source"):
        conn = await AsyncConnection.connect(
            lookup.conninfo, autocommit=True, connect_timeout=max(2, lookup.connect_timeout)
        )
    async with conn:
        with translated(f"describing {lookup.relation}"):
            await conn.execute(
                sql.SQL("SET statement_timeout = {}").format(
                    sql.Literal(lookup.statement_timeout_ms)
                )
            )
            table = await describe_table(conn, lookup.relation, lookup.key_columns)
        key = parse_key(lookup.doc_id, table.key, table.qualified)
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.Identifier(name) for name, _ in table.columns),
            table.identifier,
            sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(
                    sql.Identifier(column),
                    from_written(sql.Placeholder(), table.type_oid(column) or 0),
                )
                for column in table.key
            ),
        )
        with translated(f"reading {table.qualified}"):
            try:
                cursor = await conn.execute(query, key)
            except psycopg.DataError as exc:  # "x" for an integer key, a bad date...
                raise not_a_key_value(lookup.doc_id, table.key, exc) from exc
            row = decode_row(conn, cursor.pgresult, [oid for _, oid in table.columns])
    return FoundRow(table.key, key, row)
