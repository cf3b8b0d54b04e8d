"""One row of a source by its key, as it is now: what a trace compares with the index.

Each kind reads it its own way (`postgres/lookup.py`, `materialize/lookup.py`) and the
registry (`syncer.sources.kinds`, `Kind.read_row`) names the function. The key is typed
by an operator as the document id the monitor and the dead letters show
(`syncer.engine.changes.doc_id`): a single column's value as text, or a composite key's
values joined by `|`, with `\\` and `|` inside a value written `\\\\` and `\\|`. The row
comes back decoded by `syncer.sources.values.make_decoder` from the server's text, as
the sync decodes every row, so that it can be compared with the document like for like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.adapt import Transformer
from psycopg.pq.abc import PGresult

from syncer.engine.changes import Document, key_parts
from syncer.errors import InvalidKey
from syncer.sources.values import make_decoder

Conn = AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True)
class RowLookup:
    """What a kind's `read_row` needs: where the source is and which row to read."""

    conninfo: str
    """The DSN to connect with, already resolved (`syncer.dsn.resolve`)."""
    relation: str
    key_columns: tuple[str, ...]
    """As configured; empty: the table's primary key (PostgreSQL)."""
    doc_id: str
    """The key as the operator typed it: a document id."""
    cluster: str = ""
    """Materialize: the cluster to run the SELECT on; empty: the connection's default."""
    connect_timeout: int = 3
    """Seconds to connect (libpq's connect_timeout: whole seconds, at least 2)."""
    statement_timeout_ms: int = 5000


@dataclass(frozen=True)
class FoundRow:
    """What the source holds for a key now."""

    key_columns: tuple[str, ...]
    """The key columns the row was looked up by (the primary key, when none are set)."""
    key: tuple[str, ...]
    """The key's values as typed, one per key column."""
    row: Document | None
    """The row, decoded as the sync decodes it; None when the source has no such row."""


def parse_key(doc_id: str, key_columns: Sequence[str], relation: str) -> tuple[str, ...]:
    """The values of `doc_id` for `key_columns`; InvalidKey, naming them, if it has not
    as many values as they are columns."""
    columns = tuple(key_columns)
    parts = key_parts(doc_id, len(columns)) if doc_id else None
    if parts is not None:
        return parts
    listed = ", ".join(columns)
    if not doc_id:
        raise InvalidKey(f"give a document key: the value of {listed} in {relation}")
    example = "|".join(f"<{column}>" for column in columns)
    raise InvalidKey(
        f"{doc_id!r} is not a key of {relation}: its key is ({listed}), so give its "
        f"{len(columns)} values in that order joined by |, e.g. {example}, as the monitor and "
        "the dead letters show document ids (write \\ as \\\\ and | as \\| inside a value)"
    )


def not_a_key_value(doc_id: str, key_columns: Sequence[str], exc: psycopg.Error) -> InvalidKey:
    """The server refused a value of the key for its column's type (SQLSTATE class 22)."""
    primary = exc.diag.message_primary if exc.sqlstate else None
    reason = " ".join((primary or str(exc)).split())
    return InvalidKey(
        f"{doc_id!r} does not fit the key ({', '.join(key_columns)}): {reason}; give the "
        "value(s) as the document id shows them"
    )


def decode_row(
    conn: Conn, result: PGresult | None, oids: Sequence[int] | None = None
) -> Document | None:
    """The first row of `result` ({column: value}, each decoded from the server's text by
    `make_decoder` for its type: `oids`, or else the types the result says); None if it
    has none."""
    if result is None or not result.ntuples:
        return None
    width = result.nfields
    types = tuple(oids) if oids is not None else tuple(result.ftype(i) for i in range(width))
    transformer = Transformer(conn)
    row: Document = {}
    for column in range(width):
        name = (result.fname(column) or b"").decode()
        value = result.get_value(0, column)
        row[name] = None if value is None else make_decoder(transformer, types[column])(value)
    return row
