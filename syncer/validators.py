"""Field validators shared by the model, the admin form and the config file."""

from __future__ import annotations

import math
import re
from typing import Any

from django.core.exceptions import ValidationError

from syncer import dsn
from syncer.sources.identifiers import is_query, parse_cluster, split_name, split_relation

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_INDEX_FORBIDDEN = set(' "*\\<|,>/?#:')


def validate_dsn(value: str) -> None:
    try:
        dsn.validate(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def validate_relation(value: str) -> None:
    """Accept `table` or `schema.table` (identifiers may be double-quoted): PostgreSQL's rule."""
    problem = postgres_relation_problem(value)
    if problem:
        raise ValidationError(problem)


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


def validate_cluster(value: str) -> None:
    """Accept a Materialize cluster name: an identifier, or a double-quoted name."""
    if parse_cluster(value) is None:
        raise ValidationError(
            f"'{value}' is not a cluster name; use letters, digits, _ and $, not starting with "
            'a digit (e.g. serving), or double-quote it ("Serving 2")'
        )


def validate_key_columns(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise ValidationError("key columns must be a list of column names, e.g. [order_id]")
    if len(set(value)) != len(value):
        raise ValidationError("key columns must not repeat a column")
    for column in value:
        problem = text_problem(column)
        if problem:
            raise ValidationError(f"a key column name {problem}")


def validate_index_name(value: str) -> None:
    """OpenSearch's index name rules, checked before OpenSearch has to refuse them."""
    problems = []
    if value != value.lower():
        problems.append("must be lowercase")
    bad = sorted(set(value) & _INDEX_FORBIDDEN)
    if bad:
        problems.append("must not contain " + " ".join(repr(c) for c in bad))
    if value[:1] in {"-", "_", "+"}:
        problems.append("must not start with -, _ or +")
    if value in {".", ".."}:
        problems.append("cannot be . or ..")
    if len(value.encode()) > 255:
        problems.append("must be at most 255 bytes")
    if problems:
        raise ValidationError(f"index name '{value}' " + ", ".join(problems))


# What `index_swap.new_index_name` appends: a new-index resync builds `<index>-<20 digits>`.
_RESYNC_TIME = re.compile(r"[0-9]{20}")


def index_clash(index: str, other_name: str, other_index: str) -> str | None:
    """Why `index` may not be a subscription's index beside subscription `other_name`'s.

    Two subscriptions writing one index would sweep, and delete at a resync, each other's
    documents; so would a name equal to the index a new-index resync of the other builds
    (`<its index>-<request time>`), or whose resync builds the other's index.
    """
    if index == other_index:
        return (
            f"index {index} is already the index of subscription {other_name}; each index "
            "belongs to one subscription, so choose another name"
        )
    if _resync_of(other_index, index):
        return (
            f"index {index} is a name a new-index resync of subscription {other_name} (index "
            f"{other_index}) gives its new index; choose a name that does not end in - and 20 "
            "digits after another subscription's index"
        )
    if _resync_of(index, other_index):
        return (
            f"subscription {other_name}'s index {other_index} is a name a new-index resync of "
            f"index {index} would build; choose another name"
        )
    return None


def _resync_of(index: str, candidate: str) -> bool:
    """Whether `candidate` is a name a new-index resync of `index` builds."""
    prefix = f"{index}-"
    suffix = candidate[len(prefix) :]
    return candidate.startswith(prefix) and _RESYNC_TIME.fullmatch(suffix) is not None


def validate_json_object(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("must be a JSON object")
    problem = _unstorable_json(value)
    if problem:
        raise ValidationError(problem)


def text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot store `value` as text, or None if it can."""
    if "\x00" in value:
        return "contains a NUL character (\\x00); remove it"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (not valid Unicode); remove it"
    return None


def _unstorable_json(value: Any) -> str | None:
    """What PostgreSQL's jsonb refuses: text it cannot store, numbers that are not finite."""
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, dict):
            for key in current:
                problem = text_problem(str(key))
                if problem:
                    return f"a key {problem}"
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
        elif isinstance(current, str) and text_problem(current):
            return f"a string {text_problem(current)}"
        elif isinstance(current, float) and not math.isfinite(current):
            return f"{current} is not a JSON number; use a finite number"
    return None
