"""Verification: a source snapshot against the index, one bounded chunk at a time.

The source is read in one snapshot that stands exactly at a position `at` (PostgreSQL:
a temporary slot's exported snapshot and its consistent point). A document is compared
with its row only if nothing changed it after `at`: its version (the source position of
its last write) is at most `at`, and the source shows no change of its key since (the
caller's `changed`, from that slot's stream). What differs then is drift:

- missing: a row with no document;
- extra: a document with no row;
- differs: a document whose content is not the row's, as the sink would write it.

A document with a newer version, or a key changed since `at`, is newer than the
snapshot: counted as skipped, never as drift. A repair writes the row (or deletes the
document) at version `at + 1`: above every write the snapshot contains (a commit ending
exactly at `at` included) and below every later commit, whose record ends at least a
record's length after `at`; so a concurrent change always wins over the repair.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from syncer.engine.changes import Change, DocKey, Document, Op, Position, doc_id

EXAMPLES = 20
"""Drifted documents kept per kind, to show."""


class DriftKind(enum.StrEnum):
    MISSING = "missing"
    EXTRA = "extra"
    DIFFERS = "differs"


@dataclass(frozen=True, slots=True)
class Indexed:
    """A document as the index holds it."""

    version: Position
    source: Document


@dataclass(frozen=True, slots=True)
class Drift:
    kind: DriftKind
    doc_id: str
    key: DocKey
    row: Document | None
    """The row in the snapshot; None for an extra document."""
    indexed: Indexed | None
    """The document; None for a missing one."""


@dataclass
class Tally:
    """A verification's counts so far, with a few examples of each kind of drift."""

    checked: int = 0
    """Rows and documents compared."""
    skipped: int = 0
    """Newer than the snapshot (changed since): not compared."""
    missing: int = 0
    extra: int = 0
    differs: int = 0
    repaired: int = 0
    examples: dict[DriftKind, list[Drift]] = field(default_factory=dict)

    @property
    def drifted(self) -> int:
        return self.missing + self.extra + self.differs

    def count(self, drifts: Iterable[Drift]) -> None:
        for drift in drifts:
            setattr(self, drift.kind.value, getattr(self, drift.kind.value) + 1)
            kept = self.examples.setdefault(drift.kind, [])
            if len(kept) < EXAMPLES:
                kept.append(drift)


def as_written(row: Document) -> Document:
    """The row as OpenSearch holds it once the sink wrote it (its JSON, read back)."""
    loaded: Document = orjson.loads(orjson.dumps(row))
    return loaded


def compare_rows(
    rows: Mapping[DocKey, Document],
    indexed: Mapping[str, Indexed],
    at: Position,
    changed: Container[DocKey],
    tally: Tally,
) -> list[Drift]:
    """Compare a chunk of the snapshot's rows with their documents (`indexed`, by id):
    the missing and differing ones."""
    drifts = []
    for key, row in rows.items():
        document = indexed.get(doc_id(key))
        if key in changed or (document is not None and document.version > at):
            tally.skipped += 1
            continue
        tally.checked += 1
        if document is None:
            drifts.append(Drift(DriftKind.MISSING, doc_id(key), key, row, None))
        elif as_written(row) != document.source:
            drifts.append(Drift(DriftKind.DIFFERS, doc_id(key), key, row, document))
    tally.count(drifts)
    return drifts


def compare_documents(
    documents: Mapping[DocKey, Indexed],
    present: Container[DocKey],
    at: Position,
    changed: Container[DocKey],
    tally: Tally,
) -> list[Drift]:
    """Compare a page of the index's documents (by key) with the snapshot: those whose
    row is not `present` in it are extra. (The others were compared row by row.)"""
    drifts = []
    for key, document in documents.items():
        if key in present:
            continue
        if key in changed or document.version > at:
            tally.skipped += 1
            continue
        tally.checked += 1
        drifts.append(Drift(DriftKind.EXTRA, doc_id(key), key, None, document))
    tally.count(drifts)
    return drifts


def repairs(drifts: Iterable[Drift], at: Position, now: float) -> list[Change]:
    """The writes that undo `drifts`, at version `at + 1` (see the module's docstring)."""
    version = at + 1
    changes = []
    for drift in drifts:
        if drift.kind is DriftKind.EXTRA:
            changes.append(Change(Op.DELETE, drift.doc_id, drift.key, version, now))
        else:
            changes.append(Change(Op.UPSERT, drift.doc_id, drift.key, version, now, drift.row))
    return changes
