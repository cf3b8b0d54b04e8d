"""What Materialize says about a relation's columns, for checking live subscriptions' filters.

`SHOW COLUMNS FROM <relation>` answers (name, nullable, type, comment) in column order
(MaterializeInc/materialize, src/sql/src/plan/statement/show.rs, `show_columns`: a
select over mz_internal.mz_show_columns ordered by position; versions before COMMENT
ON have no `comment`). The type is mz_columns' humanized SQL name ("bigint",
"numeric", "timestamp with time zone", "integer list", "text[]"; see the SHOW
COLUMNS outputs in test/testdrive), which the filters' typing
(`syncer.engine.matching.activation.converter_for`) reads as it reads PostgreSQL's. A
name with a type modifier ("numeric(10,2)", "timestamp(3) with time zone") is taken
without it. Name resolution is Materialize's own (the session's database and search
path), the same as the SUBSCRIBE's.

A query (`SELECT ...`) has no cheap answer (only planning it would tell): None, and its
filters are accepted without the field check.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from syncer.errors import SourceConfigError
from syncer.sources.identifiers import is_query, split_name
from syncer.sources.materialize.errors import translated, unknown_relation

_MODIFIER = re.compile(r"\s*\([^)]*\)")


def column_types(conninfo: str, relation: str, timeout: int = 3) -> dict[str, str] | None:
    """`relation`'s columns and their type names (`{"total": "numeric"}`), or None when
    it is a query, not a name, or unknown to Materialize. At most about `timeout`
    seconds to connect and as long to ask; driver errors come out as
    SourceConfigError or SourceUnavailable."""
    if is_query(relation):
        return None
    parts = split_name(relation, 3)
    if parts is None:
        return None
    try:
        with (
            translated(f"reading the columns of {relation}"),
            psycopg.connect(conninfo, autocommit=True, connect_timeout=max(2, timeout)) as conn,
        ):
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{timeout}s")))
            cursor = conn.execute(sql.SQL("SHOW COLUMNS FROM {}").format(sql.Identifier(*parts)))
            names = [column.name for column in cursor.description or ()]
            rows = cursor.fetchall()
    except SourceConfigError as exc:
        if unknown_relation(exc):
            return None
        raise
    if "name" not in names or "type" not in names:
        raise SourceConfigError(
            f"SHOW COLUMNS FROM {relation} answered columns {', '.join(names)}; expected "
            "name and type (is this a Materialize server?)"
        )
    name_at, type_at = names.index("name"), names.index("type")
    return {str(row[name_at]): _type_name(str(row[type_at])) for row in rows} or None


def _type_name(shown: str) -> str:
    return " ".join(_MODIFIER.sub("", shown).split()).lower()
