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
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.abc import Transformer
from psycopg.pq import Format

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


def make_decoder(transformer: Transformer, type_oid: int) -> Decoder:
    """A function from the server's text for `type_oid` to a JSON-ready value."""
    loader = transformer.get_loader(type_oid, Format.TEXT)

    def decode(data: bytes) -> Any:
        try:
            return jsonable(loader.load(data))
        except (psycopg.DataError, ValueError, OverflowError):
            return bytes(data).decode()

    return decode


def _iso_duration(value: dt.timedelta) -> str:
    seconds = value.seconds + value.microseconds / 1_000_000
    return f"P{value.days}DT{seconds:g}S"
