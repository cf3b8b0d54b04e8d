"""What flows from a source to a sink.

A source emits `Transaction`s of `RowChange`s; consolidation turns them into one
`Change` per document. Positions are the source's monotonic commit positions (the
commit LSN for PostgreSQL, `mz_timestamp` for Materialize) and double as each
document's external version.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Position = int
DocKey = tuple[Any, ...]
Document = dict[str, Any]


class RowOp(enum.StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class Op(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class TxKind(enum.StrEnum):
    CHANGES = "changes"
    """A committed source transaction: acknowledging it moves the checkpoint."""
    SNAPSHOT_CHUNK = "snapshot_chunk"
    """Rows of a one-pass copy; the checkpoint stays put until the copy ends."""
    COPY_CHUNK = "copy_chunk"
    """Rows of a resumable copy, placed in the change stream at `position` (their
    version): acknowledging it moves the checkpoint, with the copy's cursor in
    `source_state`, so a restart goes on with the next chunk."""
    SNAPSHOT_END = "snapshot_end"
    """The copy is complete at `position`; documents older than `sweep_below` are stale."""
    PROGRESS = "progress"
    """No changes, only word that the source is complete below `position` (a Materialize
    progress message): acknowledging it moves the checkpoint to `position`."""


class RowChange(NamedTuple):
    """One row event, its values already decoded to JSON-ready Python values.

    A NamedTuple rather than a frozen dataclass: as immutable, and built 2.3x faster (a
    frozen dataclass sets each field through object.__setattr__), once per row."""

    op: RowOp
    key: DocKey
    row: Document | None = None
    """The new row; None for a delete."""
    old_key: DocKey | None = None
    """Set on an update that changed the key: the document to delete."""
    unchanged: frozenset[str] = frozenset()
    """Columns whose (TOASTed) value did not change and was not sent by the source."""
    old: Document | None = None
    """The whole row before this update or delete, when the source sent it (PostgreSQL
    with REPLICA IDENTITY FULL, a Materialize retraction); None otherwise (an insert, or
    a source that sent only the key). Shared, never copied: nothing may change it."""


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """How far a resumable copy has come, as of the chunk it travels with."""

    rows: int
    """Rows copied since the copy began, every session's."""
    estimated_rows: int | None
    """The table's size as the planner estimates it; None when it has no estimate."""
    resumes: int
    """Times the copy went on from its cursor after a restart."""


@dataclass(slots=True)
class Transaction:
    position: Position
    commit_time: float
    """Seconds since the epoch, when the source committed it."""
    changes: list[RowChange] = field(default_factory=list)
    kind: TxKind = TxKind.CHANGES
    sweep_below: Position | None = None
    source_state: Any = None
    """What the source needs, beside `position`, to resume exactly at it (JSON; opaque to
    the engine). None: unchanged since the last transaction that carried one."""
    copied: CopyProgress | None = None
    """On a COPY_CHUNK: the copy's progress with it."""


@dataclass(slots=True)
class Change:
    """One document write: the consolidated result of a batch for one key."""

    op: Op
    doc_id: str
    key: DocKey
    version: Position
    commit_time: float
    doc: Document | None = None
    missing: frozenset[str] = frozenset()
    """Fields to carry over from the previous document (unchanged TOAST values)."""
    fill_from: str | None = None
    """The document holding those values when it is not `doc_id` (the key changed)."""
    fill_key: DocKey | None = None
    old: Document | None = None
    """The document before the batch, when the source sent it with the batch's first
    event of this key (live subscriptions' `old`); None: unknown, or there was none."""


def doc_id(key: DocKey) -> str:
    """The OpenSearch `_id` of a key.

    A single column is its value as text. Composite keys join their parts with `|`,
    escaping `\\` and `|` inside values, so that ('a|b', 'c') and ('a', 'b|c') differ.
    """
    if len(key) == 1:
        return key_text(key[0])
    return "|".join(key_text(part).replace("\\", "\\\\").replace("|", "\\|") for part in key)


def key_parts(doc_id_text: str, count: int) -> tuple[str, ...] | None:
    """The key, as text, that `doc_id` made `doc_id_text` of, for a key of `count`
    columns; None when the text is not such an id (the wrong number of parts, or a `\\`
    that escapes neither `\\` nor `|`). The inverse of `doc_id` for keys given as text."""
    if count == 1:
        return (doc_id_text,)
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in doc_id_text:
        if escaped:
            if char not in "\\|":
                return None
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        return None
    parts.append("".join(current))
    return tuple(parts) if len(parts) == count else None


def key_text(value: Any) -> str:
    """A key value as a document id spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)
