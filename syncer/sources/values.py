"""JSON-ready document values from what psycopg loads, shared by every SQL source.

- numeric becomes a string with every digit kept ("12345.6700"): a JSON float would
  round it. Map the field as `scaled_float`/`double` (OpenSearch parses the string)
  or `keyword` to keep it exact.
- timestamptz becomes ISO 8601 with its offset, timestamp without one, date as
  YYYY-MM-DD.
- json/jsonb become nested objects; arrays become lists; uuid, inet and enum text.
- bytea becomes base64; float NaN/Infinity become strings (JSON has no such numbers).

`make_decoder` goes from the server's text to such a value through psycopg's own
loader for the column's type, so every SQL source builds the same document from the
same row. A value psycopg cannot hold (infinity, a year past 9999, an interval past
what timedelta holds) keeps the server's text rather than failing the whole read.

Decoding is the worker's largest cost per change, so a few types take a shorter road to
the very same value (tests/unit/test_values.py compares both): integers, text and
booleans (and arrays of them) skip `jsonable`, json/jsonb are parsed by orjson
(`syncer.jsonload`, 5x the standard library), a timestamptz in a UTC session is
written from the server's ISO text instead of through a datetime and `isoformat` (4 of
the 5 µs it took), and a numeric is its text when `str(Decimal(text))` is that text.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Loader, Transformer
from psycopg.postgres import types
from psycopg.pq import Format

from syncer import jsonload

Decoder = Callable[[bytes], Any]


def jsonable(value: Any) -> Any:
    """Convert a value loaded by psycopg into something orjson writes faithfully."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _iso_duration(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return value  # json/jsonb: already plain JSON values
    return str(value)


_BYTEA = types["bytea"].oid


def from_written(value: sql.Composable, type_oid: int, cast: str | None = None) -> sql.Composable:
    """A key's value as the sync writes it (a document id's part, a key field's text),
    back in its column's type for a query: bytea from its base64 (`jsonable`); anything
    else as its text, cast to `cast` (None: the server reads it as the column's type).
    The other types' written text is their input text (ISO times and durations, numeric
    digits, uuid, true/false)."""
    if type_oid == _BYTEA:
        return sql.SQL("decode({}, 'base64')").format(value)
    return value if cast is None else sql.SQL("{}::{}").format(value, sql.SQL(cast))


def make_decoder(transformer: Transformer, type_oid: int) -> Decoder:
    """A function from the server's text for `type_oid` to a JSON-ready value."""
    loader = transformer.get_loader(type_oid, Format.TEXT)
    info = types.get(type_oid)  # a built-in type or an array of one; None: anything else
    if info is None:
        return _generic(loader)
    base = type_oid == info.oid
    if info.name in _JSON_TYPES and base:
        return _tolerant(jsonload.loads)
    if info.name in _PLAIN_TYPES and _loads_plain(loader, info.name, base):
        return _tolerant(loader.load)
    if info.name == "timestamptz" and base and _utc_session(transformer):
        return _utc_timestamp(loader)
    if info.name == "numeric" and base:
        return _numeric(loader)
    return _generic(loader)


def _generic(loader: Loader) -> Decoder:
    def decode(data: bytes) -> Any:
        try:
            return jsonable(loader.load(data))
        except (psycopg.DataError, ValueError, OverflowError):
            return bytes(data).decode()

    return decode


def _tolerant(convert: Decoder) -> Decoder:
    """`convert`, keeping the server's text for a value it cannot hold (as `_generic`)."""

    def decode(data: bytes) -> Any:
        try:
            return convert(data)
        except (psycopg.DataError, ValueError, OverflowError):
            return bytes(data).decode()

    return decode


# Types whose psycopg value is already JSON-ready (int, str, bool; lists of them for
# their arrays), checked on a sample by `_loads_plain` (text is bytes in SQL_ASCII).
_PLAIN_TYPES = {
    "int2": (b"1", int),
    "int4": (b"1", int),
    "int8": (b"1", int),
    "oid": (b"1", int),
    "text": (b"a", str),
    "varchar": (b"a", str),
    "bpchar": (b"a", str),
    "name": (b"a", str),
    "bool": (b"t", bool),
}
_JSON_TYPES = ("json", "jsonb")


def _loads_plain(loader: Loader, name: str, base: bool) -> bool:
    sample, kind = _PLAIN_TYPES[name]
    try:
        if base:
            return type(loader.load(sample)) is kind
        value = loader.load(b"{" + sample + b"}")
        return isinstance(value, list) and len(value) == 1 and type(value[0]) is kind
    except (psycopg.DataError, ValueError):
        return False


def _utc_session(transformer: Transformer) -> bool:
    """Whether psycopg gives this session's timestamptz values in UTC."""
    conn = transformer.connection
    zone = conn.info.timezone if conn is not None else dt.UTC
    return zone is dt.UTC or getattr(zone, "key", None) in _UTC_ZONES


_UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal"})
# PostgreSQL's ISO output of a timestamptz in a UTC session: 2026-06-01 09:16:53.5+00.
_UTC_TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?\+00")


def _utc_timestamp(loader: Loader) -> Decoder:
    """`datetime.isoformat()` of the value, written from the server's text; anything
    but the plain ISO form (another date style, BC, a 5-digit year) goes to `loader`."""
    fallback = _generic(loader)

    def decode(data: bytes) -> Any:
        match = _UTC_TIMESTAMP.fullmatch(data)
        if match is None:
            return fallback(data)
        day, time, fraction = match.groups()
        if fraction is None:
            return f"{day.decode()}T{time.decode()}+00:00"
        return f"{day.decode()}T{time.decode()}.{fraction.decode():0<6}+00:00"

    return decode


# PostgreSQL's numeric text that `str(Decimal(text))` gives back as it is: no exponent
# (Decimal writes one from 7 zeros after the point on: 0.0000001 is 1E-7, 0.0000000 0E-7).
_PLAIN_NUMERIC = re.compile(rb"-?(?:[1-9]\d*(?:\.\d+)?|0(?:\.(?:0{0,5}[1-9]\d*|0{1,6}))?)")


def _numeric(loader: Loader) -> Decoder:
    """`str(Decimal(text))`, the text itself when that is the same (3x faster); NaN,
    infinities and what would take an exponent go through `loader` and `jsonable`."""
    fallback = _generic(loader)

    def decode(data: bytes) -> Any:
        if _PLAIN_NUMERIC.fullmatch(data) is None:
            return fallback(data)
        return data.decode()

    return decode


def _iso_duration(value: dt.timedelta) -> str:
    seconds = value.seconds + value.microseconds / 1_000_000
    return f"P{value.days}DT{seconds:g}S"
