"""timestamptz and jsonb decoded from the server's own text, in sessions of several time
zones: `make_decoder`'s shorter roads (a UTC session's timestamps written from their text,
json by orjson) give what psycopg's loader and `jsonable` give."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import abc
from psycopg.adapt import Transformer
from psycopg.pq import Format

from syncer.sources.values import jsonable, make_decoder

TIMESTAMPS = [
    "2026-06-01 09:16:53+00",
    "2026-06-01 09:16:53.5+00",
    "2026-01-01 00:00:00.000001+00",
    "2026-03-29 01:30:00.123456+00",  # Paris changes its clocks that night
    "1900-01-01 00:00:00+00",  # before standard time zones: an offset with seconds
    "0001-01-01 00:00:00+00",
    "infinity",
]


def reference(transformer: abc.Transformer, oid: int, data: bytes) -> Any:
    loader = transformer.get_loader(oid, Format.TEXT)
    try:
        return jsonable(loader.load(data))
    except (psycopg.DataError, ValueError, OverflowError):
        return data.decode()


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", "Europe/Paris", "America/St_Johns"])
def test_timestamptz_text_of_each_session_decodes_as_psycopg_does(
    source_conn: psycopg.Connection, zone: str
) -> None:
    source_conn.execute(f"SET TIME ZONE '{zone}'")
    transformer = Transformer(source_conn)
    decode = make_decoder(transformer, 1184)
    for value in TIMESTAMPS:
        row = source_conn.execute("SELECT %s::timestamptz::text", (value,)).fetchone()
        assert row is not None
        text = row[0].encode()
        got, want = decode(text), reference(transformer, 1184, text)
        assert got == want, f"{zone}: {text!r} gave {got!r}, psycopg {want!r}"
    if zone.endswith("UTC"):
        assert decode(b"2026-06-01 09:16:53.5+00") == "2026-06-01T09:16:53.500000+00:00"


def test_jsonb_text_from_the_server_decodes_as_the_standard_library_does(
    source_conn: psycopg.Connection,
) -> None:
    transformer = Transformer(source_conn)
    decode = make_decoder(transformer, 3802)
    for value in (
        '{"a": [1, 2.5, null, true], "b": {"c": "d"}}',
        '{"big": 123456789012345678901234567890, "small": 1e-300}',
        '["\\u00e9", "\\n", ""]',
        "3.14159265358979323846264338327950288",
    ):
        row = source_conn.execute("SELECT %s::jsonb::text", (value,)).fetchone()
        assert row is not None
        text = row[0].encode()
        got, want = decode(text), reference(transformer, 3802, text)
        assert got == want and type(got) is type(want), f"{text!r}: {got!r} != {want!r}"
