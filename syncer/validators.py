"""Field validators shared by the model, the admin form and the config file."""

from __future__ import annotations

import math
import re
from typing import Any

from django.core.exceptions import ValidationError

from syncer import dsn
from syncer.sources.identifiers import parse_cluster
from syncer.sources.relations import postgres_relation_problem

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


GATEWAY_ID_MAX = 128
_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]+")


def gateway_id_problem(value: str) -> str | None:
    """Why `value` cannot be a live subscription's gateway_id, or None if it can.

    It is one token of the NATS subject `events.{gateway_id}.{id}`, so it holds no `.`,
    `*`, `>` or spaces; letters, digits, `_` and `-` keep it the same in a URL too.
    """
    if not value:
        return "required: the caller's own stable name, e.g. gateway-eu-1"
    if len(value) > GATEWAY_ID_MAX:
        return f"is {len(value)} characters long; use at most {GATEWAY_ID_MAX}"
    if not _GATEWAY_ID.fullmatch(value):
        return (
            f"{value[:GATEWAY_ID_MAX]!r} may hold only letters, digits, _ and - (it is a NATS "
            "subject token), e.g. gateway-eu-1"
        )
    return None


def validate_gateway_id(value: str) -> None:
    problem = gateway_id_problem(value)
    if problem:
        raise ValidationError(f"gateway_id {problem}")
