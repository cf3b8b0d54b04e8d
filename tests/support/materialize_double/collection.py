"""The scripted collection and what a SUBSCRIBE on it emits.

A collection is a list of updates (timestamp, row, diff) and a frontier (upper):
every timestamp below the frontier is closed. `Subscription.pump` turns the
collection into SUBSCRIBE output rows, already rendered in PostgreSQL text format.

The output of one subscription does not depend on when its FETCHes run, only on
the history of writes and frontier moves, so tests are deterministic:

- first a progress row at the AS OF (Materialize emits it when the SUBSCRIBE starts);
- once the frontier is past the AS OF, the snapshot at the AS OF (if SNAPSHOT);
- then the history between the AS OF and the frontier the DECLARE saw, as one
  batch closed by a progress row at that frontier (as Materialize reads history);
- then, for every frontier the collection reaches later (in order), the updates
  below it and a progress row at it: one batch per step, like Materialize's;
- with the diffs envelope, updates at the first open timestamp (written with
  `close=False`) are emitted at once, before their progress row: the documented
  contract allows it (a progress row only promises nothing more below it), and it
  lets a test cut a connection in the middle of a timestamp. The upsert envelope
  needs a whole timestamp to decide a key's state, so it waits for the progress.

Within a timestamp the diffs envelope keeps the order writes were made in and does
not consolidate. The upsert envelope consolidates per (timestamp, key) and applies
Materialize's rules (src/adapter/src/active_compute_sink.rs): [+1] → upsert,
[-1] → delete, [-1 old, +1 new] → upsert, anything else (two live rows, a diff of
2, two retractions) → key_violation; keys are ordered within a timestamp.

Dataflow errors (`Collection.errors`, e.g. "Evaluation error: division by zero")
behave as in src/compute/src/sink/subscribe.rs: the batch that holds one is not
sent; the SUBSCRIBE is poisoned and its next FETCH fails with XX000 and the error's
text (src/pgwire/src/protocol.rs). A snapshot holds the errors that are live at the
AS OF; with SNAPSHOT = false those at or before the AS OF are not sent, like rows.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .sql import SqlError

TextRow = tuple[str | None, ...]

# type name -> (OID, typlen)
COLUMN_TYPES: dict[str, tuple[int, int]] = {
    "int8": (20, 8),
    "int4": (23, 4),
    "text": (25, -1),
    "numeric": (1700, -1),
    "bool": (16, 1),
    "float8": (701, 8),
    "jsonb": (3802, -1),
    "timestamptz": (1184, 8),
    "mz_timestamp": (16552, 8),  # doc/user/content/sql/types/mz_timestamp.md
}


# type name -> how Materialize names it in SHOW COLUMNS (mz_columns.type: the humanized
# SQL name, e.g. "boolean", "smallint" in test/testdrive; not pg_type's "bool", "int2")
SHOWN_TYPES: dict[str, str] = {
    "int8": "bigint",
    "int4": "integer",
    "text": "text",
    "numeric": "numeric",
    "bool": "boolean",
    "float8": "double precision",
    "jsonb": "jsonb",
    "timestamptz": "timestamp with time zone",
    "mz_timestamp": "mz_timestamp",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    @property
    def oid(self) -> int:
        return COLUMN_TYPES[self.type][0]

    @property
    def size(self) -> int:
        return COLUMN_TYPES[self.type][1]


def render(value: object, type_name: str) -> str | None:
    """A Python value in PostgreSQL text format. A str is sent as it is, for any type."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if type_name == "bool":
        return "t" if value else "f"
    if type_name in ("int8", "int4"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
        return str(value)
    if type_name == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise ValueError(f"{value!r} is not a number")
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        return "NaN" if number.is_nan() else format(number, "f")
    if type_name == "float8":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise ValueError(f"{value!r} is not a number")
        real = float(value)
        if math.isnan(real):
            return "NaN"
        if math.isinf(real):
            return "Infinity" if real > 0 else "-Infinity"
        return repr(real)
    if type_name == "text":
        return str(value)
    if type_name == "jsonb":
        return json.dumps(value)
    if type_name == "mz_timestamp":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not a timestamp")
        return str(value)
    if type_name == "timestamptz":
        if not isinstance(value, datetime):
            raise ValueError(f"{value!r} is not a datetime")
        utc = value.astimezone(UTC) if value.tzinfo else value
        text = utc.strftime("%Y-%m-%d %H:%M:%S")
        if utc.microsecond:
            text += f".{utc.microsecond:06d}".rstrip("0")
        return text + "+00"
    raise ValueError(f"unknown column type {type_name!r}")


_TYPE_NAMES = {
    "int8": "bigint",
    "int4": "integer",
    "numeric": "numeric",
    "float8": "double precision",
}


def comparable(text: str, type_name: str) -> object:
    """A value given as text (a literal, a parameter) as its column's type compares it:
    SQLSTATE 22P02, in Materialize's words, when it is not one (src/repr/src/strconv.rs)."""
    try:
        if type_name in ("int8", "int4"):
            if not text.strip().lstrip("+-").isdigit():
                raise ValueError(f'invalid digit found in string: "{text}"')
            return int(text)
        if type_name == "numeric":
            return Decimal(text)
        if type_name == "float8":
            return float(text)
    except (ValueError, ArithmeticError) as exc:
        why = str(exc) if type_name in ("int8", "int4") else f'"{text}"'
        raise SqlError(
            "22P02", f"invalid input syntax for type {_TYPE_NAMES[type_name]}: {why}"
        ) from None
    if type_name == "bool":
        return text.strip().lower() in ("t", "true", "on", "1", "yes", "y")
    return text


@dataclass(frozen=True)
class Update:
    ts: int
    row: tuple[Any, ...]
    text: TextRow
    diff: int
    seq: int


class Collection:
    """Updates sorted by (timestamp, write order), the frontier and its history, the since.

    Not thread-safe: the double guards it with its condition's lock.
    """

    def __init__(self, columns: Sequence[Column], start_at: int) -> None:
        self.columns = tuple(columns)
        self.updates: list[Update] = []
        self._ts: list[int] = []  # parallel to updates, for bisect
        self.frontier = start_at
        self.steps = [start_at]  # every frontier reached, ascending
        self.since = 0
        self.errors: list[tuple[int, str, int]] = []  # (ts, message, diff)
        self._seq = 0

    def render_row(self, row: Sequence[Any]) -> TextRow:
        if len(row) != len(self.columns):
            raise ValueError(f"row {row!r} has {len(row)} values for {len(self.columns)} columns")
        try:
            return tuple(render(v, c.type) for v, c in zip(row, self.columns, strict=True))
        except ValueError as exc:
            raise ValueError(f"row {row!r}: {exc}") from None

    def append(self, ts: int, updates: Iterable[tuple[tuple[Any, ...], TextRow, int]]) -> None:
        for row, text, diff in updates:
            self._seq += 1
            index = bisect_right(self._ts, ts)
            self.updates.insert(index, Update(ts, row, text, diff, self._seq))
            self._ts.insert(index, ts)

    def advance(self, frontier: int) -> None:
        if frontier > self.frontier:
            self.frontier = frontier
            self.steps.append(frontier)

    def between(self, lo: int, hi: int) -> list[Update]:
        """Updates with lo <= ts < hi, in (ts, write) order."""
        return self.updates[bisect_left(self._ts, lo) : bisect_left(self._ts, hi)]

    def errors_between(self, lo: int, hi: int) -> list[str]:
        """Messages of errors with lo <= ts < hi whose diffs do not cancel out."""
        counts: dict[str, int] = {}
        for ts, message, diff in self.errors:
            if lo <= ts < hi:
                counts[message] = counts.get(message, 0) + diff
        return [message for message, count in counts.items() if count]

    def consolidated(self, t: int) -> list[tuple[tuple[Any, ...], TextRow, int]]:
        """(row, text, count) of the multiset at t, in order of first appearance, no zeros."""
        counts: dict[TextRow, list[Any]] = {}
        for update in self.between(-(2**63), t + 1):
            entry = counts.setdefault(update.text, [update.row, 0])
            entry[1] += update.diff
        return [(row, text, count) for text, (row, count) in counts.items() if count]


def _order_key(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple((v is None, type(v).__name__, v if v is not None else 0) for v in values)


class Subscription:
    """One SUBSCRIBE: its output columns and a buffer of rows not yet fetched."""

    def __init__(
        self,
        collection: Collection,
        *,
        as_of: int,
        snapshot: bool,
        progress: bool,
        keys: Sequence[str] | None,
        refused: SqlError | None = None,
        cluster: str = "",
    ) -> None:
        self.collection = collection
        self.as_of = as_of
        self.snapshot = snapshot
        self.progress = progress
        self.cluster = cluster
        self.refused = refused  # reported at the next FETCH, like Materialize does
        self.poisoned: SqlError | None = None  # reported once the rows before it are read
        self.fetched = False  # the first FETCH ran (Materialize starts the SUBSCRIBE then)
        names = [c.name for c in collection.columns]
        self.key_index = [names.index(k) for k in keys] if keys is not None else None
        head = [Column("mz_timestamp", "numeric")]
        if progress:
            head.append(Column("mz_progressed", "bool"))
        data = list(collection.columns)
        if self.key_index is None:
            head.append(Column("mz_diff", "int8"))
        else:
            head.append(Column("mz_state", "text"))
            self.value_index = [i for i in range(len(names)) if i not in self.key_index]
            data = [collection.columns[i] for i in [*self.key_index, *self.value_index]]
        self.columns = [*head, *data]
        self.buffer: deque[TextRow] = deque()
        self._started = False
        self._snapshot_done = False
        self._reported = as_of  # the last progress emitted
        self._next_ts = as_of + 1  # updates below this were emitted (or are not wanted)
        self._declared_at = collection.frontier  # earlier steps collapse into one batch
        self._early: dict[int, int] = {}  # seq -> ts of updates emitted before their ts closed

    def take(self, count: int | None) -> list[TextRow]:
        n = len(self.buffer) if count is None else min(count, len(self.buffer))
        return [self.buffer.popleft() for _ in range(n)]

    def pump(self) -> None:
        """Append to the buffer whatever the collection now allows."""
        coll = self.collection
        if not self._started:
            self._started = True
            self._emit_progress(self.as_of)
        if coll.frontier <= self.as_of:
            return  # the snapshot is not complete yet
        if self.poisoned is not None:
            return
        if not self._snapshot_done:
            self._snapshot_done = True
            if self.snapshot and self._poison(coll.errors_between(-(2**63), self.as_of + 1)):
                return
            if self.snapshot:
                rows = coll.consolidated(self.as_of)
                if self.key_index is None:
                    for _row, text, count in rows:
                        self._emit_diff(self.as_of, text, count)
                else:
                    self._emit_upsert(self.as_of, [(row, text, count) for row, text, count in rows])
        for frontier in coll.steps[bisect_right(coll.steps, self._reported) :]:
            if frontier < self._declared_at:
                continue
            if self._poison(coll.errors_between(self._next_ts, frontier)):
                return
            batch = [u for u in coll.between(self._next_ts, frontier) if u.seq not in self._early]
            if self.key_index is None:
                for update in batch:
                    self._emit_diff(update.ts, update.text, update.diff)
            else:
                for ts in sorted({u.ts for u in batch}):
                    self._emit_upsert(ts, [(u.row, u.text, u.diff) for u in batch if u.ts == ts])
            self._emit_progress(frontier)
            self._reported, self._next_ts = frontier, frontier
            self._early = {seq: ts for seq, ts in self._early.items() if ts >= frontier}
        if self.key_index is None and coll.frontier >= self._next_ts:
            for update in coll.between(coll.frontier, coll.frontier + 1):
                if update.seq not in self._early:
                    self._early[update.seq] = update.ts
                    self._emit_diff(update.ts, update.text, update.diff)

    def _poison(self, errors: list[str]) -> bool:
        if errors:
            self.poisoned = SqlError("XX000", errors[0])
        return bool(errors)

    # -- rows --------------------------------------------------------------------------

    def _head(self, ts: int, progressed: bool) -> list[str | None]:
        head: list[str | None] = [str(ts)]
        if self.progress:
            head.append("t" if progressed else "f")
        return head

    def _emit_progress(self, ts: int) -> None:
        if self.progress:
            width = len(self.columns) - 2
            self.buffer.append((*self._head(ts, True), *([None] * width)))

    def _emit_diff(self, ts: int, text: TextRow, diff: int) -> None:
        self.buffer.append((*self._head(ts, False), str(diff), *text))

    def _emit_upsert(self, ts: int, updates: list[tuple[tuple[Any, ...], TextRow, int]]) -> None:
        key_index = self.key_index
        assert key_index is not None
        consolidated: dict[TextRow, list[Any]] = {}
        for row, text, diff in updates:
            consolidated.setdefault(text, [row, 0])[1] += diff
        groups: dict[TextRow, list[tuple[tuple[Any, ...], TextRow, int]]] = {}
        for text, (row, diff) in consolidated.items():
            if diff:
                key = tuple(text[i] for i in key_index)
                groups.setdefault(key, []).append((row, text, diff))
        ordered = list(groups.items())
        try:
            ordered.sort(key=lambda item: _order_key([item[1][0][0][i] for i in key_index]))
        except TypeError:
            pass  # keys of types that do not compare: keep the order of first appearance
        nulls: list[str | None] = [None] * len(self.value_index)
        for key, group in ordered:
            group.sort(key=lambda entry: entry[2])
            diffs = [diff for _row, _text, diff in group]
            if diffs == [1] or diffs == [-1, 1]:
                text = group[-1][1]
                state, values = "upsert", [text[i] for i in self.value_index]
            elif diffs == [-1]:
                state, values = "delete", nulls
            else:
                state, values = "key_violation", nulls
            self.buffer.append((*self._head(ts, False), state, *key, *values))
