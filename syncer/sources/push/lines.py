"""NDJSON push lines: a request body cut into bounded lines, each line checked alone.

    {"op": "upsert", "id": "42", "doc": {"title": "..."}}
    {"op": "delete", "id": "42"}

`split` reads a body a chunk at a time and never holds more than one line (of at most
`max_line` bytes) and one chunk: a longer line is skipped to its newline and reported
as `TooLong`, and reading stops at `max_body` bytes with `Overflow`, naming the first
line not read whole. `parse` turns one line into an `Operation` or says why it cannot.
Pure: no I/O but the `read` it is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

MAX_ID_BYTES = 512
"""OpenSearch's limit on a document `_id`, in UTF-8 bytes."""
CHUNK = 1 << 16

_KEYS = frozenset({"op", "id", "doc"})
_NUL = b"\\u0000"
# Every digit made a 0, so that a run of 16 digits is one bytes.find (as syncer.jsonload).
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 16


@dataclass(frozen=True, slots=True)
class Operation:
    """One accepted line: an upsert (with its whole document) or a delete of one id."""

    op: str
    doc_id: str
    doc: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    """1 for the body's first line."""
    text: bytes


@dataclass(frozen=True, slots=True)
class TooLong:
    number: int
    size: int


@dataclass(frozen=True, slots=True)
class Overflow:
    number: int
    """The first line not read whole: it and every later one were not read."""


def split(
    read: Callable[[int], bytes], max_line: int, max_body: int, chunk: int = CHUNK
) -> Iterator[Line | TooLong | Overflow]:
    """The body's lines (without their newline or a CR before it), in order."""
    number = 0
    pending = bytearray()
    skipped = -1  # >= 0 while skipping a line too long: the bytes it has so far
    total = 0
    while True:
        want = min(chunk, max_body + 1 - total)
        data = read(want) if want > 0 else b""
        if not data:
            break
        total += len(data)
        over = total > max_body
        if over:
            data = data[: len(data) - (total - max_body)]
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start : len(data) if end < 0 else end]
            if skipped >= 0:
                skipped += len(piece)
            elif len(pending) + len(piece) > max_line + 1:  # + 1: a CR before the newline
                skipped = len(pending) + len(piece)
                pending.clear()
            else:
                pending += piece
            if end < 0:
                break
            number += 1
            yield _line(number, pending, skipped, max_line)
            pending.clear()
            skipped = -1
            start = end + 1
        if over:
            yield Overflow(number + 1)
            return
    if pending or skipped >= 0:
        yield _line(number + 1, pending, skipped, max_line)


def _line(number: int, pending: bytearray, skipped: int, max_line: int) -> Line | TooLong:
    if pending.endswith(b"\r"):
        del pending[-1]
    if skipped >= 0 or len(pending) > max_line:
        return TooLong(number, max(skipped, len(pending)))
    return Line(number, bytes(pending))


def parse(text: bytes) -> Operation | str:
    """The operation a line asks for, or why it is refused (said to the client)."""
    value = _loads(text)
    if isinstance(value, str):
        return value
    value, checked = value
    if not isinstance(value, dict):
        return 'a line must be a JSON object: {"op": "upsert", "id": ..., "doc": {...}}'
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        return f"unknown key {unknown[0]!r}; a line has op, id and (for an upsert) doc"
    op = value.get("op")
    if op not in ("upsert", "delete"):
        return f'"op" must be "upsert" or "delete", not {_shown(op)}'
    doc_id = _doc_id(value.get("id"))
    if doc_id is None:
        return '"id" must be a non-empty string or an integer: the document\'s _id'
    if len(doc_id.encode()) > MAX_ID_BYTES:
        return f'"id" is longer than {MAX_ID_BYTES} bytes, OpenSearch\'s limit for an _id'
    doc = value.get("doc")
    if op == "upsert" and not isinstance(doc, dict):
        return 'an upsert needs "doc", a JSON object: the whole document'
    if op == "delete" and "doc" in value:
        return 'a delete takes no "doc"; remove it'
    if not checked and _NUL in text and _has_nul(value):
        return "a string holds \\u0000, which PostgreSQL's jsonb cannot store; remove it"
    return Operation(op, doc_id, doc if op == "upsert" else None)


def _loads(text: bytes) -> tuple[Any, bool] | str:
    """The line's value and whether it was checked for what jsonb refuses; else why not."""
    if text.translate(_DIGITS_AS_ZEROS).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(text), False
        except orjson.JSONDecodeError:
            pass  # the standard library says why, or parses what orjson refuses (1e400)
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
        json.dumps(value, ensure_ascii=False).encode()  # a lone surrogate cannot be stored
    except UnicodeError:
        return "not UTF-8 text, or a string holds a lone surrogate (\\ud800...)"
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    except RecursionError:
        return "not valid JSON: nested too deeply"
    if _has_nul(value):
        return "a string holds \\u0000, which PostgreSQL's jsonb cannot store; remove it"
    return value, True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond a double's range")
    return number


def _doc_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _has_nul(value: Any) -> bool:
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, str):
            if "\x00" in current:
                return True
        elif isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return False


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not None else "missing"
    return text if len(text) <= 40 else text[:39] + "…"
