"""Whether a relation is one a source kind reads: PostgreSQL tables, Materialize names, queries.

Pure string checks, each returning why a value will not do (or None); the source kinds
(`syncer.sources.kinds`) name theirs, and `syncer.validators` wraps them for Django.
"""

from __future__ import annotations

import re

from syncer.sources.identifiers import is_query, split_name, split_relation

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def postgres_relation_problem(value: str) -> str | None:
    """Why `value` is not a PostgreSQL source's relation (table or schema.table), or None."""
    if split_relation(value) is not None:
        return None
    if is_query(value):
        return (
            "postgres sources need a table, not a query: write table or schema.table "
            "(a query works only with materialize sources)"
        )
    return (
        f"'{value}' is not a table name; write table or schema.table "
        '(double-quote names with capitals or dots: "My Schema"."Orders")'
    )


def materialize_relation_problem(value: str) -> str | None:
    """Why `value` is neither a Materialize relation name nor a query SUBSCRIBE can take."""
    if is_query(value):
        return query_problem(value)
    if split_name(value, 3) is not None:
        return None
    return (
        f"'{value}' is neither a relation name nor a query; write view, schema.view or "
        'database.schema.view (double-quote names with capitals or dots: "My Schema"."Orders"), '
        "or a query starting with SELECT or WITH"
    )


def query_problem(query: str) -> str | None:
    """Why `query` cannot be placed inside `SUBSCRIBE (...)`, or None.

    Quoted strings, quoted names and comments are skipped, so a `;` or a parenthesis
    inside them is fine; outside them a `;` would end the statement and an unbalanced
    parenthesis would close (or leave open) SUBSCRIBE's own.
    """
    opened: list[int] = []  # offsets of the ( not closed yet
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c == "'" or c == '"':
            end = _quote_end(query, i)
            if end < 0:
                what = "single quote" if c == "'" else "double quote"
                return f"the {what} at character {i + 1} is never closed; close it"
            i = end
        elif query.startswith("--", i):
            end = query.find("\n", i)
            if end < 0:
                return (
                    f"the -- comment at character {i + 1} runs to the end of the query and would "
                    "hide the parenthesis that closes SUBSCRIBE (...); end it with a line break "
                    "or write /* ... */"
                )
            i = end + 1
        elif query.startswith("/*", i):
            end = _block_comment_end(query, i)
            if end < 0:
                return f"the comment /* at character {i + 1} is never closed; add */"
            i = end
        elif c == "$" and (tag := _dollar_tag(query, i)):
            end = query.find(tag, i + len(tag))
            if end < 0:
                return f"the string {tag} at character {i + 1} is never closed; add {tag}"
            i = end + len(tag)
        elif c == ";":
            return (
                f"remove the semicolon at character {i + 1}: the query runs as "
                "SUBSCRIBE (<query>), so it must be one statement without a semicolon"
            )
        else:
            if c == "(":
                opened.append(i)
            elif c == ")":
                if not opened:
                    return (
                        f"the closing parenthesis at character {i + 1} has no opening one; "
                        "remove it or add the missing ("
                    )
                opened.pop()
            i += 1
    if opened:
        return (
            f"the opening parenthesis at character {opened[-1] + 1} is never closed; "
            "add the missing )"
        )
    return None


def _quote_end(text: str, start: int) -> int:
    """The offset after the quote closing the one at `start`, or -1 if it is never closed."""
    quote = text[start]
    # E'...' strings take backslash escapes; E must not be the end of a longer word.
    escapes = (
        quote == "'"
        and start > 0
        and text[start - 1] in "eE"
        and (start < 2 or not _is_word_char(text[start - 2]))
    )
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if escapes and c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < n and text[i + 1] == quote:  # a doubled quote stands for itself
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return -1


def _block_comment_end(text: str, start: int) -> int:
    """The offset after the */ closing the /* at `start` (they nest), or -1."""
    depth, i, n = 0, start, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def _dollar_tag(text: str, start: int) -> str | None:
    """The `$tag$` opening a dollar-quoted string at `start`, or None ($1, a$b are not)."""
    if start > 0 and _is_word_char(text[start - 1]):
        return None
    match = _DOLLAR_TAG.match(text, start)
    return match.group(0) if match else None


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c in "_$"
