"""The variables a filter reads for one change, typed as their source columns.

A document holds what OpenSearch was sent: a numeric column is a string with every digit
("12345.6700"), a timestamp an ISO 8601 string. A filter compares them as the source
typed them (`doc.total > 100.5`, `doc.created_at > timestamp("2026-01-01T00:00:00Z")`),
so the activation converts the fields whose source type it knows. A value that does not
convert (a numeric 'NaN' becomes a double NaN, a timestamp 'infinity' stays text) is left
as the document holds it; a filter comparing it then fails on that change and counts as
no match.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import cel

Converter = Callable[[Any], Any]

_INT64 = range(-(2**63), 2**63)
_INTEGER_TEXT = re.compile(r"[+-]?\d+")


class Activation:
    """One change's variables (`values`, plain Python for the index's look-ups) and the
    engine's context built from them once, shared by every filter evaluated on it."""

    __slots__ = ("_context", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self._context: cel.Context | None = None

    @property
    def context(self) -> cel.Context:
        if self._context is None:
            self._context = cel.Context(variables=self.values)
        return self._context

    def lookup(self, path: tuple[str, ...]) -> Any:
        """The value at a field path, or `MISSING` when a segment is absent or a value on
        the way is not an object (the engine then fails or answers false)."""
        value: Any = self.values
        for segment in path:
            if not isinstance(value, dict):
                return MISSING
            value = value.get(segment, MISSING)
            if value is MISSING:
                return MISSING
        return value


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def activation(
    doc: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    op: str,
    key: str,
    position: int,
    fields: Mapping[str, str] | None = None,
) -> Activation:
    """The variables of one change: `doc` (the document as indexed; None for a delete
    without it), `old` (the previous document when the source sent it), `op` ("upsert"
    or "delete"), `key` (the document's `_id`), `position` (the source position).
    `fields` maps field names to source type names; fields it does not name stay as the
    document holds them."""
    return Activation(
        {
            "doc": typed(doc, fields),
            "old": typed(old, fields),
            "op": op,
            "key": key,
            "position": position,
        }
    )


def typed(document: Mapping[str, Any] | None, fields: Mapping[str, str] | None) -> Any:
    """A copy of the document with each known field converted to its source type."""
    if document is None:
        return None
    if not fields:
        return dict(document)
    result = dict(document)
    for name, source_type in fields.items():
        value = result.get(name)
        if value is not None:
            converter = converter_for(source_type)
            if converter is not None:
                result[name] = converter(value)
    return result


@functools.lru_cache(maxsize=256)
def converter_for(source_type: str) -> Converter | None:
    """How a value of `source_type` (PostgreSQL or Materialize name) becomes what a
    filter compares; None: as the document holds it."""
    name = source_type.strip().lower()
    if name.endswith("[]") or name.startswith("_") or name.endswith(" list"):
        element_type = name.removesuffix("[]").removesuffix(" list").removeprefix("_")
        element = converter_for(element_type)
        return None if element is None else _each(element)
    return _CONVERTERS.get(name)


def _each(element: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [None if item is None else element(item) for item in value]

    return convert


def _integer(value: Any) -> Any:
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    return value


def _numeric(value: Any) -> Any:
    """An integral numeric is a CEL int (exact); any other a double (about 15 significant
    digits). CEL compares int and double with each other, so `doc.total > 100.5` holds
    for "101" and "100.75" alike."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _INTEGER_TEXT.fullmatch(text) and int(text) in _INT64:
        return int(text)
    try:
        return float(text)
    except ValueError:
        return value


def _double(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)  # 'NaN', 'Infinity': JSON has no such numbers
        except ValueError:
            return value
    return value


def _timestamp(value: Any) -> Any:
    """ISO 8601 text as a timestamp; one without an offset (timestamp without time
    zone) is read as UTC, as the engine reads a naive datetime."""
    if not isinstance(value, str):
        return value
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return value  # 'infinity', years past 9999: kept as text
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _boolean(value: Any) -> Any:
    if isinstance(value, str) and value in ("t", "true", "f", "false"):
        return value in ("t", "true")
    return value


_CONVERTERS: dict[str, Converter] = {
    **dict.fromkeys(
        (
            "int2",
            "int4",
            "int8",
            "smallint",
            "integer",
            "bigint",
            "oid",
            "uint2",
            "uint4",
            "uint8",
            "smallserial",
            "serial",
            "bigserial",
        ),
        _integer,
    ),
    **dict.fromkeys(("numeric", "decimal"), _numeric),
    **dict.fromkeys(("float4", "float8", "real", "double precision", "double"), _double),
    **dict.fromkeys(
        (
            "timestamp",
            "timestamptz",
            "timestamp with time zone",
            "timestamp without time zone",
            "date",
        ),
        _timestamp,
    ),
    **dict.fromkeys(("bool", "boolean"), _boolean),
}
