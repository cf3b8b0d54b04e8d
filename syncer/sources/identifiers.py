"""Names as PostgreSQL and Materialize read them: dotted, double-quoted, folded; queries.

Pure string parsing, shared by the source adapters and by the validators of the
console's forms and files (`syncer.validators`); no Django here.
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")  # used with fullmatch: no \n at the end
_QUERY_START = re.compile(r"\s*(?:select|with)\b", re.IGNORECASE)


def is_query(value: str) -> bool:
    """Whether a relation is a query (`SELECT ...`, `WITH ...`) rather than a name."""
    return _QUERY_START.match(value) is not None


def parse_cluster(value: str) -> str | None:
    """The cluster's name as Materialize reads `value` (unquoted folds to lower case), or None.

    This is the name to pass to `psycopg.sql.Identifier` for `SET CLUSTER`.
    """
    parts = split_name(value, 1)
    return parts[0] if parts else None


def split_relation(value: str) -> tuple[str | None, str] | None:
    """Split `schema.table` into its parts, honouring double quotes; None if malformed."""
    parts = split_name(value, 2)
    if parts is None:
        return None
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


def split_name(value: str, max_parts: int) -> list[str] | None:
    """Split a dotted name of 1 to `max_parts` identifiers, honouring double quotes.

    Unquoted identifiers fold to lower case, as the server reads them; None if malformed.
    """
    parts: list[str] = []
    i, n = 0, len(value)
    while i < n:
        if value[i] == '"':
            j, name = i + 1, []
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        name.append('"')
                        j += 2
                        continue
                    break
                name.append(value[j])
                j += 1
            if j >= n or not name:
                return None
            parts.append("".join(name))
            i = j + 1
        else:
            j = value.find(".", i)
            j = n if j < 0 else j
            name_ = value[i:j]
            if not _IDENTIFIER.fullmatch(name_):
                return None
            parts.append(name_.lower())  # unquoted identifiers fold to lower case
            i = j
        if i < n:
            if value[i] != "." or i + 1 >= n:
                return None
            i += 1
    if not 1 <= len(parts) <= max_parts:
        return None
    return parts
