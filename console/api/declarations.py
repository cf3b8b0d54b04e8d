"""Subscriptions as the API receives them: the shape of one entry of a subscriptions file.

A POST body is one entry; a PATCH body is the part of an entry to change, merged into
the subscription's current declaration. Either way the result goes through
`syncer.operations.declarations.parse`, so the API accepts exactly what `manage.py subscriptions
apply` accepts, with the same messages.
"""

from __future__ import annotations

import json
from typing import Any

from console.api.errors import FieldErrors
from syncer.errors import DeclarationError, Problem
from syncer.models import Subscription
from syncer.operations import declarations
from syncer.operations.subscriptions import SubscriptionSpec
from syncer.sources import kinds

_SECTIONS = ("source", "index", "batch", "backpressure")

_TOP_LEVEL = ("name", "enabled", "snapshot", *_SECTIONS)


def _field_error(problem: Problem) -> tuple[str, str]:
    """A file's problem as the API's (field, message): the body is one entry, so the entry
    is not named; a problem outside the entry's fields is the body's."""
    head = problem.path.split(".", 1)[0].split("[", 1)[0]
    if head in _TOP_LEVEL:
        return problem.path, problem.message
    return "(body)", ": ".join(part for part in (problem.path, problem.message) if part)


def to_spec(entry: dict[str, Any]) -> SubscriptionSpec:
    """Check one declared subscription as `subscriptions apply` does; raise FieldErrors."""
    text = json.dumps({"subscriptions": [entry]}, ensure_ascii=False)
    try:
        (spec,) = declarations.parse(text, filename="request.json")
    except DeclarationError as exc:
        raise FieldErrors([_field_error(problem) for problem in exc.problems]) from None
    return spec


def declaration_of(subscription: Subscription) -> dict[str, Any]:
    """The subscription's current declaration, DSN included as stored (never shown)."""
    entry: dict[str, Any] = {}
    options = subscription.kind.options
    for field, path in declarations.FIELD_PATHS.items():
        if path[0] == "source" and path[-1] in kinds.OPTIONS and path[-1] not in options:
            continue  # a source of a kind without the option must not name it at all
        target = entry
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = getattr(subscription, field)
    return entry


def merge(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`current` with `patch` applied: sections merge key by key, null resets to the default.

    Turning a source into a kind without some options (postgres) drops those it had, and
    into one that reads no database (push) its DSN, relation and key.
    """
    merged = {
        key: dict(value) if isinstance(value, dict) else value for key, value in current.items()
    }
    for key, value in patch.items():
        if key in _SECTIONS and isinstance(value, dict):
            section = merged.setdefault(key, {})
            new_kind = kinds.named(value.get("kind")) if key == "source" else None
            if new_kind is not None:
                for option in kinds.OPTIONS:
                    if option not in new_kind.options and option not in value:
                        section.pop(option, None)
                if not new_kind.reads_database:  # push: a database's fields have no place
                    for name in ("dsn", "relation", "key"):
                        if name not in value:
                            section.pop(name, None)
            for name, item in value.items():
                if item is None:
                    section.pop(name, None)
                else:
                    section[name] = item
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
