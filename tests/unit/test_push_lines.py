"""Push lines: a body cut into bounded lines, each parsed alone; push subscriptions declared."""

from __future__ import annotations

import io
import json
import textwrap

import pytest

from syncer.errors import DeclarationError
from syncer.operations.declarations import parse as parse_file
from syncer.sources.push.lines import Line, Operation, Overflow, TooLong, parse, split


def cut(body: bytes, max_line: int = 20, max_body: int = 1000, chunk: int = 7) -> list[object]:
    return list(split(io.BytesIO(body).read, max_line, max_body, chunk))


def test_lines_are_cut_at_newlines_across_chunks_with_crlf_and_no_final_newline() -> None:
    assert cut(b"a\r\nbb\n\nccc") == [
        Line(1, b"a"),
        Line(2, b"bb"),
        Line(3, b""),
        Line(4, b"ccc"),
    ]


def test_a_line_too_long_is_skipped_to_its_newline_and_said_with_its_size() -> None:
    body = b"short\n" + b"x" * 45 + b"\nafter\n" + b"y" * 21
    assert cut(body) == [Line(1, b"short"), TooLong(2, 45), Line(3, b"after"), TooLong(4, 21)]
    # Exactly the bound is allowed, with or without a CR before the newline.
    assert cut(b"z" * 20 + b"\r\n" + b"z" * 20) == [Line(1, b"z" * 20), Line(2, b"z" * 20)]


def test_reading_stops_at_the_body_bound_naming_the_first_line_not_read_whole() -> None:
    body = b"aaaa\nbbbb\ncccc\n"
    assert cut(body, max_body=10) == [Line(1, b"aaaa"), Line(2, b"bbbb"), Overflow(3)]
    assert cut(body, max_body=12) == [Line(1, b"aaaa"), Line(2, b"bbbb"), Overflow(3)]
    assert cut(body, max_body=15) == [Line(1, b"aaaa"), Line(2, b"bbbb"), Line(3, b"cccc")]


def test_the_body_is_read_no_further_than_its_bound() -> None:
    reads: list[int] = []
    stream = io.BytesIO(b"x\n" * 10_000)

    def read(n: int) -> bytes:
        reads.append(n)
        return stream.read(n)

    list(split(read, 10, 100, chunk=64))
    assert sum(reads) <= 101 and stream.tell() <= 101


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"op": "upsert", "id": "a", "doc": {"t": 1}}, Operation("upsert", "a", {"t": 1})),
        ({"op": "upsert", "id": 7, "doc": {}}, Operation("upsert", "7", {})),
        ({"op": "delete", "id": "a"}, Operation("delete", "a")),
        (
            {"op": "upsert", "id": "big", "doc": {"n": 123456789012345678901234567890}},
            Operation("upsert", "big", {"n": 123456789012345678901234567890}),
        ),
    ],
)
def test_a_well_formed_line_is_its_operation(line: object, expected: Operation) -> None:
    assert parse(json.dumps(line).encode()) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"op": "upsert", "id": "a", "doc": {}, "extra": 1}', "unknown key 'extra'"),
        (b'{"op": "put", "id": "a", "doc": {}}', '"op" must be "upsert" or "delete", not "put"'),
        (b'{"id": "a", "doc": {}}', '"op" must be "upsert" or "delete", not missing'),
        (b'{"op": "delete", "id": ""}', '"id" must be a non-empty string or an integer'),
        (b'{"op": "delete", "id": true}', '"id" must be a non-empty string or an integer'),
        (b'{"op": "delete", "id": 1.5}', '"id" must be a non-empty string or an integer'),
        (b'{"op": "upsert", "id": "a"}', 'an upsert needs "doc", a JSON object'),
        (b'{"op": "upsert", "id": "a", "doc": [1]}', 'an upsert needs "doc", a JSON object'),
        (b'{"op": "delete", "id": "a", "doc": {}}', 'a delete takes no "doc"'),
        (b'{"op": "upsert", "id": "a", "doc": {"k": "x\\u0000y"}}', "\\u0000"),
        (b'{"op": "upsert", "id": "a\\u0000", "doc": {}}', "\\u0000"),
        (b'{"op": "upsert", "id": "a", "doc": {"k": NaN}}', "NaN is not a JSON number"),
        (b'{"op": "upsert", "id": "a", "doc": {"k": 1e999}}', "beyond a double's range"),
        (b'{"op": "upsert", "id": "a", "doc": {"k": "\\ud800"}}', "lone surrogate"),
        (b'{"op": "upsert", "id": "a", "doc": {"k": "\xff"}}', "not UTF-8 text"),
    ],
)
def test_a_malformed_line_says_why(text: bytes, reason: str) -> None:
    answer = parse(text)
    assert isinstance(answer, str) and reason in answer, answer


def test_an_id_longer_than_opensearch_takes_is_refused() -> None:
    assert parse(json.dumps({"op": "delete", "id": "é" * 256}).encode()) == Operation(
        "delete", "é" * 256
    )
    answer = parse(json.dumps({"op": "delete", "id": "é" * 257}).encode())
    assert isinstance(answer, str) and "512 bytes" in answer


def _file(source: str) -> str:
    return textwrap.dedent(
        f"""
        subscriptions:
          - name: books
            source: {source}
            index: {{name: books}}
        """
    )


def test_a_push_subscription_is_declared_with_its_kind_alone() -> None:
    (spec,) = parse_file(_file("{kind: push}"), filename="s.yaml")
    assert spec.values["source_kind"] == "push"
    assert spec.values["source_dsn"] == "" and spec.values["relation"] == ""


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ("{kind: push, dsn: env:SOURCE_DATABASE_URL}", "source.dsn"),
        ("{kind: push, relation: public.books}", "source.relation"),
        ("{kind: push, key: [id]}", "source.key"),
    ],
)
def test_a_push_subscription_has_no_database_fields(source: str, field: str) -> None:
    with pytest.raises(DeclarationError) as caught:
        parse_file(_file(source), filename="s.yaml")
    [problem] = caught.value.problems
    assert problem.path == field
    assert "push subscriptions read no database" in problem.message


def test_other_kinds_still_need_a_dsn_and_a_relation() -> None:
    with pytest.raises(DeclarationError) as caught:
        parse_file(_file("{kind: postgres}"), filename="s.yaml")
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("source.dsn", "required; add it (e.g. env:SOURCE_DATABASE_URL)"),
        ("source.relation", "required; add it (e.g. public.orders)"),
    ]
    with pytest.raises(DeclarationError) as caught:
        parse_file(_file("{kind: materialize, dsn: '', relation: ''}"), filename="s.yaml")
    assert sorted(p.path for p in caught.value.problems) == [
        "source.dsn",
        "source.key",
        "source.relation",
    ]
