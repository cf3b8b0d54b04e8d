"""Field validators shared by the model, the admin form and the config file."""

from __future__ import annotations

import math
import re
from typing import Any

from django.core.exceptions import ValidationError

from syncer import dsn

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_INDEX_FORBIDDEN = set(' "*\\<|,>/?#:')


def validate_dsn(value: str) -> None:
    try:
        dsn.validate(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def validate_relation(value: str) -> None:
    """Accept `table` or `schema.table` (identifiers may be double-quoted)."""
    parts = split_relation(value)
    if parts is None:
        raise ValidationError(
            f"'{value}' is not a table name; write table or schema.table "
            '(double-quote names with capitals or dots: "My Schema"."Orders")'
        )


def split_relation(value: str) -> tuple[str | None, str] | None:
    """Split `schema.table` into its parts, honouring double quotes; None if malformed."""
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
            if not _IDENTIFIER.match(name_):
                return None
            parts.append(name_.lower())  # unquoted identifiers fold to lower case
            i = j
        if i < n:
            if value[i] != "." or i + 1 >= n:
                return None
            i += 1
    if len(parts) == 1:
        return None, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    return None


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
