"""One Materialize row by its key, as it is now (`syncer.sources.lookup`).

The same read as PostgreSQL's, against the view or the query a subscription SUBSCRIBEs to:

    SET CLUSTER = <cluster>                                   (when configured)
    SELECT * FROM <relation | (query) AS searchsync_trace> WHERE "k1" = $1 AND ...

A SELECT returns the relation's columns as SUBSCRIBE does after its `mz_` columns, and
each value is decoded from its text by the decoder of the type Materialize reports,
as the source decodes a FETCH. Materialize chooses the SELECT's timestamp itself: the
row is the view as of about now.
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection, sql

from syncer.errors import SourceConfigError
from syncer.sources.identifiers import is_query, split_name
from syncer.sources.lookup import FoundRow, RowLookup, decode_row, not_a_key_value, parse_key
from syncer.sources.materialize.errors import translated
from syncer.sources.materialize.source import NEEDS_KEY

ALIAS = "searchsync_trace"
"""The name a query's rows go by in the SELECT."""


def select_statement(relation: str, key_columns: tuple[str, ...]) -> sql.Composed:
    """`SELECT * FROM <relation> WHERE <key column> = <placeholder> AND ...`."""
    if is_query(relation):
        source: sql.Composable = sql.SQL("({}) AS {}").format(
            sql.SQL(relation.strip()), sql.Identifier(ALIAS)
        )
    else:
        parts = split_name(relation, 3)
        if parts is None:
            raise SourceConfigError(
                f"{relation!r} is not a view name or a query; fix source.relation"
            )
        source = sql.Identifier(*parts)
    return sql.SQL("SELECT * FROM {} WHERE {}").format(
        source,
        sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder())
            for column in key_columns
        ),
    )


async def read_row(lookup: RowLookup) -> FoundRow:
    """The row of `lookup.relation` whose key is `lookup.doc_id`, or None in `row`."""
    if not lookup.key_columns:
        raise SourceConfigError(NEEDS_KEY)
    key = parse_key(lookup.doc_id, lookup.key_columns, lookup.relation)
    statement = select_statement(lookup.relation, lookup.key_columns)
    with translated("connecting to Materialize"):
        conn = await AsyncConnection.connect(
            lookup.conninfo, autocommit=True, connect_timeout=max(2, lookup.connect_timeout)
        )
    async with conn:
        with translated("setting the session up"):
            await conn.execute(
                sql.SQL("SET statement_timeout = {}").format(
                    sql.Literal(f"{lookup.statement_timeout_ms}ms")
                )
            )
            if lookup.cluster:
                await conn.execute(
                    sql.SQL("SET CLUSTER = {}").format(sql.Identifier(lookup.cluster))
                )
        with translated(f"reading {lookup.relation}"):
            try:
                cursor = await conn.execute(statement, key)
            except psycopg.DataError as exc:
                raise not_a_key_value(lookup.doc_id, lookup.key_columns, exc) from exc
            row = decode_row(conn, cursor.pgresult)
    return FoundRow(lookup.key_columns, key, row)
