"""The shorter roads of `make_decoder` give exactly what psycopg's loader and `jsonable`
give (the value and its type), and fall back the same way on what psycopg cannot hold."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.adapt import Transformer
from psycopg.pq import Format

from syncer import jsonload
from syncer.sources.values import jsonable, make_decoder

INT2, INT4, INT8, OID, TEXT, VARCHAR, BPCHAR, NAME, BOOL = 21, 23, 20, 26, 25, 1043, 1042, 19, 16
INT4_ARRAY, TEXT_ARRAY, BOOL_ARRAY, JSON_ARRAY = 1007, 1009, 1000, 199
JSON, JSONB, TIMESTAMPTZ, TIMESTAMP, NUMERIC = 114, 3802, 1184, 1114, 1700

SAMPLES: list[tuple[int, bytes]] = [
    (INT2, b"-32768"),
    (INT4, b"0"),
    (INT8, b"9223372036854775807"),
    (OID, b"4294967295"),
    (TEXT, "héllo, wörld".encode()),
    (TEXT, b""),
    (VARCHAR, b"abc"),
    (BPCHAR, b"ab  "),
    (NAME, b"pg_class"),
    (BOOL, b"t"),
    (BOOL, b"f"),
    (INT4_ARRAY, b"{1,NULL,3}"),
    (INT4_ARRAY, b"{{1,2},{3,4}}"),
    (INT4_ARRAY, b"{}"),
    (TEXT_ARRAY, b'{a,"b c",NULL,"\\"q\\""}'),
    (BOOL_ARRAY, b"{t,f,NULL}"),
    (JSON_ARRAY, b'{"{\\"a\\": 1}"}'),
    (JSONB, b'{"a": [1, 2.5, null, true], "b": {"c": "d"}, "e": ""}'),
    (JSONB, b"[0.1, 1E2, -0, 1.7976931348623157e308, -5e-324]"),
    (JSONB, b'{"big": 123456789012345678901234567890}'),  # beyond 64 bits: kept exact
    (JSONB, b'{"id": "12345678901234567890"}'),  # a long run of digits in a string
    (JSONB, b"18446744073709551615"),
    (JSONB, b'{"n": 1e400}'),  # orjson refuses it; the standard library makes it inf
    (JSONB, b'"\\ud800"'),  # a lone surrogate, which orjson refuses too
    (JSONB, b'"caf\\u00e9 \\n"'),
    (JSON, b'{"a": 1, "a": 2}'),
    (JSON, b"not json"),  # impossible from the server; falls back to the text
    (TIMESTAMPTZ, b"2026-06-01 09:16:53+00"),
    (TIMESTAMPTZ, b"2026-06-01 09:16:53.5+00"),
    (TIMESTAMPTZ, b"2026-06-01 09:16:53.000123+00"),
    (TIMESTAMPTZ, b"2026-06-01 09:16:53.123456+00"),
    (TIMESTAMPTZ, b"0001-01-01 00:00:00+00"),
    (TIMESTAMPTZ, b"9999-12-31 23:59:59.999999+00"),
    (TIMESTAMPTZ, b"infinity"),
    (TIMESTAMPTZ, b"10000-01-01 00:00:00+00"),
    (TIMESTAMPTZ, b"0044-03-15 12:00:00+00 BC"),
    (TIMESTAMPTZ, b"2026-06-01 11:16:53+02"),
    (TIMESTAMP, b"2026-06-01 09:16:53.25"),
    (NUMERIC, b"0.0000001"),
    *(
        (NUMERIC, text)
        for text in (
            b"0",
            b"-0",
            b"7",
            b"-12",
            b"100",
            b"123.45",
            b"-123.4500",
            b"0.5",
            b"-0.10",
            b"0.000001",
            b"0.0000010",
            b"-0.0000001",
            b"0.000000",
            b"0.0000000",
            b"-0.0000000",
            b"0.00000000001234",
            b"123456789012345678901234567890.0123456789",
            b"1" + b"0" * 130 + b".5",
            b"NaN",
            b"Infinity",
            b"-Infinity",
        )
    ),
]


def reference(oid: int, data: bytes) -> Any:
    """The decoding every type had before its shorter road: psycopg's loader, then
    `jsonable`, else the server's text."""
    loader = Transformer().get_loader(oid, Format.TEXT)
    try:
        return jsonable(loader.load(data))
    except (psycopg.DataError, ValueError, OverflowError):
        return data.decode()


def same(a: Any, b: Any) -> bool:
    """Equal values of the very same types, all the way down (1 == 1.0 == True is not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) or (a != a and b != b)  # NaN


@pytest.mark.parametrize(("oid", "data"), SAMPLES, ids=[f"{o}:{d[:30]!r}" for o, d in SAMPLES])
def test_each_type_decodes_as_psycopg_and_jsonable_do(oid: int, data: bytes) -> None:
    decode = make_decoder(Transformer(), oid)
    got, want = decode(data), reference(oid, data)
    assert same(got, want), f"{got!r} != {want!r}"


def test_the_fast_roads_give_the_documented_values() -> None:
    tx = Transformer()
    assert make_decoder(tx, TIMESTAMPTZ)(b"2026-06-01 09:16:53.5+00") == (
        "2026-06-01T09:16:53.500000+00:00"
    )
    big = make_decoder(tx, JSONB)(b"[123456789012345678901234567890, 0.1]")
    assert big == [123456789012345678901234567890, 0.1] and type(big[0]) is int
    assert make_decoder(tx, INT4_ARRAY)(b"{1,NULL}") == [1, None]
    assert make_decoder(tx, BOOL)(b"t") is True
    assert make_decoder(tx, NUMERIC)(b"0.0000001") == "1E-7"  # as str(Decimal) writes it
    assert make_decoder(tx, NUMERIC)(b"-0.0000010") == "-0.0000010"


@pytest.mark.parametrize(
    "text",
    [
        '{"items": [{"index": {"_id": "1", "_version": 23456789012, "status": 201}}]}',
        '{"big": 123456789012345678901234567890, "id": "1234567890123456"}',
        "[1e400, -1e400]",
        '"\\ud800"',
        "\ud800",
        '{"a": 1, "a": 2}',
    ],
)
def test_jsonload_gives_what_the_standard_library_gives(text: str) -> None:
    for data in (text, text.encode(errors="surrogatepass")):
        try:
            want = json.loads(data)
        except ValueError:
            with pytest.raises(ValueError):
                jsonload.loads(data)
            continue
        assert same(jsonload.loads(data), want)
