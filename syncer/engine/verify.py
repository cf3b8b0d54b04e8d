"""Verification: a source snapshot against the index, one bounded chunk at a time.

The source is read in one snapshot that stands exactly at a position `at` (PostgreSQL:
a temporary slot's exported snapshot and its consistent point; Materialize: a SUBSCRIBE
AS OF a timestamp). Nothing is compared before the subscription has written everything
up to `at` (`caught_up`). A document is then compared with its row only if nothing
changed it after `at`: its version (the source position of its last write) is at most
`at`, and the source shows no change of its key since. A delete after `at` leaves no
document, and no version to tell it by: that is why the source's own record of changes
decides, not the index. That record (`Snapshot.changed`) is asked only about drift,
after the documents were read, so that it covers every change the index could already
hold: a document that agrees with its row, or is newer than `at`, needs no such proof.
A source may take a moment to answer (Materialize waits for its progress to pass the
present), so drifts are held and confirmed together, CONFIRM_DRIFTS or CONFIRM_SECONDS'
worth at a time, and only then counted and repaired. What differs then is drift:

- missing: a row with no document;
- extra: a document with no row;
- differs: a document whose content is not the row's, as the sink would write it.

A document newer than the snapshot is counted as skipped, never as drift; one whose
last change is a dead letter is counted apart (the dead-letter queue explains it, and a
retry is its repair). A repair writes the row (or deletes the document) at version
`at + 1`: above every write the snapshot contains and below every change not yet seen
when the chunk's changes were asked (PostgreSQL: a later commit's record ends at least
a record's length after `at`; Materialize: its adapter reads the changes past `at + 1`
before it answers), so a concurrent change always wins over the repair. A delete is
also guarded by the document's sequence number (`Index.delete_unchanged`): a server
that applies a versioned delete whatever its version still keeps a write that landed
in between.

Memory stays flat: the rows go `chunk_rows` at a time in key order, the index's
documents a page at a time; what grows is `changed`, the ids the source changed during
the verification.
"""

from __future__ import annotations

import enum
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import orjson

from syncer.engine.changes import (
    Change,
    CopyProgress,
    DocKey,
    Document,
    Op,
    Position,
    doc_id,
    key_parts,
    key_text,
)
from syncer.engine.outcomes import ItemResult, Outcome
from syncer.engine.progress import CopyFigures, CopyMeter

EXAMPLES = 20
"""Drifted documents kept per kind, to show."""
CHUNK_ROWS = 1_000
"""Rows (and documents) compared at a time: one mget of as many ids."""
CONFIRM_DRIFTS = 1_000
CONFIRM_SECONDS = 2.0
"""Drifts are held until this many, or for this long, then confirmed together."""
_EXAMPLE_BYTES = 2_000
"""A row or document shown in an example is cut to about this much JSON."""

Row = tuple[DocKey, Document]
"""A snapshot's row: its key, and its values as the source decodes them."""
KeyText = tuple[str | None, ...]
"""A key as text (what an operator types, or a document's key fields), one per column."""


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
    key: DocKey | None
    """The row's key; None for an extra document (it has no row)."""
    row: Document | None
    """The row in the snapshot; None for an extra document."""
    indexed: Indexed | None
    """The document; None for a missing one."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, bounded: for a differing document only the fields that differ."""
        shown: dict[str, Any] = {"kind": self.kind.value, "id": self.doc_id}
        if self.indexed is not None:
            shown["version"] = self.indexed.version
        if self.kind is DriftKind.DIFFERS and self.row is not None and self.indexed is not None:
            shown["fields"] = differing_fields(as_written(self.row), self.indexed.source)
        elif self.row is not None:
            shown["row"] = _bounded(as_written(self.row))
        elif self.indexed is not None:
            shown["document"] = _bounded(self.indexed.source)
        return shown


def differing_fields(row: Document, document: Document) -> dict[str, Any]:
    """{field: {"source": value, "index": value}} for each field the two disagree on."""
    fields = {}
    for name in sorted(set(row) | set(document)):
        if row.get(name, _ABSENT) != document.get(name, _ABSENT):
            fields[name] = {
                "source": _bounded(row.get(name)),
                "index": _bounded(document.get(name)),
            }
    return fields


_ABSENT = object()


def _bounded(value: Any) -> Any:
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if len(text) <= _EXAMPLE_BYTES:
        return value
    return text[:_EXAMPLE_BYTES].decode(errors="ignore") + "…"


@dataclass
class Tally:
    """A verification's counts so far, with a few examples of each kind of drift."""

    rows: int = 0
    """Source rows read."""
    documents: int = 0
    """Index documents read in the pass for extras."""
    checked: int = 0
    """Rows and documents compared."""
    skipped: int = 0
    """Newer than the snapshot (changed since): not compared."""
    dead_lettered: int = 0
    """Different, but explained by the document's dead letter."""
    missing: int = 0
    extra: int = 0
    differs: int = 0
    repaired: int = 0
    superseded: int = 0
    """A repair a newer change beat to it: nothing to do."""
    repair_failed: int = 0
    repair_errors: list[str] = field(default_factory=list)
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

    def counts(self) -> dict[str, int]:
        """Every count by name, `drifted` included (what the row and the API keep)."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}
        return counts | {"drifted": self.drifted}

    def example_dicts(self) -> dict[str, list[dict[str, Any]]]:
        return {
            kind.value: [drift.as_dict() for drift in self.examples.get(kind, [])]
            for kind in DriftKind
        }


def as_written(row: Document) -> Document:
    """The row as OpenSearch holds it once the sink wrote it (its JSON, read back)."""
    loaded: Document = orjson.loads(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS))
    return loaded


def compare_rows(
    rows: Iterable[Row],
    indexed: dict[str, Indexed],
    at: Position,
    changed: Collection[str],
) -> tuple[list[Drift], int, int]:
    """Compare a chunk of the snapshot's rows with their documents (`indexed`, by id):
    the missing and differing ones, and how many were compared and skipped (newer)."""
    drifts, compared, skipped = [], 0, 0
    for key, row in rows:
        id_ = doc_id(key)
        document = indexed.get(id_)
        if id_ in changed or (document is not None and document.version > at):
            skipped += 1
            continue
        compared += 1
        if document is None:
            drifts.append(Drift(DriftKind.MISSING, id_, key, row, None))
        elif as_written(row) != document.source:
            drifts.append(Drift(DriftKind.DIFFERS, id_, key, row, document))
    return drifts, compared, skipped


def compare_documents(
    documents: dict[str, Indexed],
    present: Collection[str],
    at: Position,
    changed: Collection[str],
) -> tuple[list[Drift], int, int]:
    """Compare a page of the index's documents (by id) with the snapshot, whose rows
    `present` lists by id: the extra ones, and how many were compared and skipped.
    (Those with a row were compared row by row.)"""
    drifts, compared, skipped = [], 0, 0
    for id_, document in documents.items():
        if id_ in present:
            continue
        if id_ in changed or document.version > at:
            skipped += 1
            continue
        compared += 1
        drifts.append(Drift(DriftKind.EXTRA, id_, None, None, document))
    return drifts, compared, skipped


def repairs(drifts: Iterable[Drift], at: Position, now: float) -> list[Change]:
    """The writes that undo missing and differing documents, at version `at + 1` (see
    the module's docstring). Extra documents are deleted by `Index.delete_unchanged`."""
    version = at + 1
    return [
        Change(Op.UPSERT, drift.doc_id, drift.key or (drift.doc_id,), version, now, drift.row)
        for drift in drifts
        if drift.kind is not DriftKind.EXTRA
    ]


def key_of_id(value: str, columns: int) -> KeyText:
    """A document id back to its key's text, one value per column (`key_parts`); a
    ValueError says how to write one that does not fit."""
    parts = key_parts(value, columns)
    if parts is None:
        raise ValueError(
            f"{value!r} is not a key of {columns} columns: join the values with '|' "
            "(and write a '|' or '\\' inside a value as '\\|' or '\\\\')"
        )
    return parts


def key_of_document(source: Document, key_columns: Sequence[str]) -> KeyText | None:
    """The key a document's fields hold (as text), or None if it lacks a key field."""
    if any(source.get(column) is None for column in key_columns):
        return None
    return tuple(key_text(source[column]) for column in key_columns)


async def present_by_lookup(
    lookup: Callable[[Sequence[KeyText]], Awaitable[list[Row]]],
    key_columns: Sequence[str],
    documents: Mapping[str, Indexed],
) -> set[str]:
    """Which of these documents have a row, found through `lookup` (`Snapshot.lookup`).
    Each is looked up by the key its id spells and by the key its fields hold (an id
    whose text the source cannot read back, a document whose key field was changed by
    hand): it has a row if either finds one whose id is the document's."""
    keys: dict[KeyText, None] = {}
    for id_, document in documents.items():
        spelled = key_parts(id_, len(key_columns))
        if spelled is not None:
            keys[spelled] = None
        held = key_of_document(document.source, key_columns)
        if held is not None:
            keys[held] = None
    rows = await lookup(list(keys)) if keys else []
    return {doc_id(key) for key, _ in rows}


class Snapshot(Protocol):
    """A source read in one snapshot (the source kind's adapter)."""

    async def open(self) -> None:
        """Take the snapshot."""

    async def close(self) -> None: ...

    async def written_upto(self) -> Position:
        """How far the subscription has written everything, as the source can tell
        without it (0 when it cannot: then its checkpoint alone says)."""

    @property
    def position(self) -> Position:
        """The position the snapshot stands at: it holds every change up to it."""

    @property
    def caught_up_at(self) -> Position:
        """The checkpoint (or `written_upto`) from which the subscription has written
        everything the snapshot holds: `position` where a checkpoint counts the changes
        up to it (PostgreSQL), `position + 1` where it is a frontier, the first
        timestamp not yet written (Materialize)."""

    @property
    def estimate(self) -> int | None:
        """About how many rows a full read returns; None if unknown."""

    @property
    def key_columns(self) -> tuple[str, ...]: ...

    async def rows(self, limit: int) -> list[Row]:
        """The next rows in key order (a sample's, if sampling); [] after the last."""

    async def lookup(self, keys: Sequence[KeyText]) -> list[Row]:
        """The rows of these keys that the snapshot has."""

    async def present(self, documents: Mapping[str, Indexed]) -> Collection[str]:
        """Which of these documents (by id) have a row in the snapshot, once the rows
        are read (`present_by_lookup` where the source can look rows up by key)."""

    async def changed(self) -> Collection[str]:
        """The ids of documents whose rows changed after `position`, up to the source's
        present: every change committed before this call is in it."""


class Index(Protocol):
    """The subscription's index, as a verification reads and repairs it."""

    async def count(self) -> int: ...

    async def indexed(self, doc_ids: Sequence[str]) -> dict[str, Indexed]:
        """Those of `doc_ids` the index holds, with their versions."""

    def pages(self, size: int) -> AsyncIterator[dict[str, Indexed]]:
        """Every document, `size` at a time."""

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]: ...

    async def delete_unchanged(self, doc_ids: Sequence[str], upto: Position) -> int:
        """Delete those whose version is at most `upto` and that nothing writes
        meanwhile; return how many went."""


class Phase(enum.StrEnum):
    WAITING = "waiting"
    """For the subscription to write everything up to the snapshot's position."""
    ROWS = "rows"
    DOCUMENTS = "documents"
    DONE = "done"


@dataclass(frozen=True)
class Scope:
    """What to verify, and whether to repair."""

    repair: bool = False
    sample: int | None = None
    """About this many rows (the snapshot samples them) and the first as many
    documents of the index, rather than all."""
    ids: tuple[str, ...] | None = None
    """Only these documents (by id)."""


@dataclass
class Progress:
    """Where a verification stands: its phase, its counts and its pace."""

    phase: Phase
    tally: Tally
    figures: CopyFigures | None


Report = Callable[[Progress], Awaitable[None]]
CaughtUp = Callable[[Position], Awaitable[None]]
DeadLettered = Callable[[Sequence[str]], Awaitable[Collection[str]]]


class Verifier:
    """One verification of a snapshot against an index (see the module's docstring)."""

    def __init__(
        self,
        snapshot: Snapshot,
        index: Index,
        scope: Scope,
        *,
        caught_up: CaughtUp,
        dead_lettered: DeadLettered,
        report: Report,
        chunk_rows: int = CHUNK_ROWS,
        confirm_drifts: int = CONFIRM_DRIFTS,
        confirm_seconds: float = CONFIRM_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.snapshot = snapshot
        self.index = index
        self.scope = scope
        self.tally = Tally()
        self._caught_up = caught_up
        self._dead_lettered = dead_lettered
        self._report = report
        self._chunk_rows = chunk_rows
        self._clock = clock
        self._now = now
        self._meter = CopyMeter()
        self._total: int | None = None
        self._phase = Phase.WAITING
        self._changed: Collection[str] = frozenset()
        """The ids the source changed after the snapshot, as last asked."""
        self._confirm_drifts = confirm_drifts
        self._confirm_seconds = confirm_seconds
        self._held: list[Drift] = []
        self._held_since = 0.0

    async def run(self) -> Tally:
        await self._progress()
        await self._caught_up(self.snapshot.caught_up_at)
        if self.scope.ids is not None:
            self._total = len(self.scope.ids)
            await self._verify_ids(list(self.scope.ids))
        else:
            await self._verify_all()
        self._phase = Phase.DONE
        await self._progress()
        return self.tally

    async def _verify_all(self) -> None:
        sample = self.scope.sample
        rows_estimate = self.snapshot.estimate
        documents_estimate = await self.index.count()
        if rows_estimate is None and documents_estimate:
            rows_estimate = documents_estimate  # the index mirrors the source
        if sample is not None:
            rows_estimate = min(sample, rows_estimate or sample)
            documents_estimate = min(sample, documents_estimate)
        self._total = None if rows_estimate is None else rows_estimate + documents_estimate
        self._phase = Phase.ROWS
        await self._progress()
        while rows := await self.snapshot.rows(self._chunk_rows):
            self.tally.rows += len(rows)
            await self._compare_rows(rows)
        await self._confirm()  # the rows' repairs are in before the index is read whole
        self._phase = Phase.DOCUMENTS
        if self._total is not None:  # the rows are read: the rest is documents
            self._total = self.tally.rows + documents_estimate
        await self._progress()
        async for page in self.index.pages(self._chunk_rows):
            if sample is not None:
                page = dict(list(page.items())[: max(0, sample - self.tally.documents)])
                if not page:
                    break
            self.tally.documents += len(page)
            await self._compare_documents(page)
        await self._confirm()

    async def _verify_ids(self, ids: list[str]) -> None:
        columns = len(self.snapshot.key_columns)
        self._phase = Phase.ROWS
        await self._progress()
        # One lookup of them all (a scope holds a bounded number of ids): a source that
        # must read the whole snapshot to find rows by key (Materialize) reads it once.
        # A row counts only under its own id: asked "07", an integer key's row 7 is
        # document "7", not the one asked about.
        found = await self.snapshot.lookup([key_of_id(id_, columns) for id_ in ids])
        asked = set(ids)
        by_id = {id_: (key, row) for key, row in found if (id_ := doc_id(key)) in asked}
        for start in range(0, len(ids), self._chunk_rows):
            chunk = ids[start : start + self._chunk_rows]
            rows = [by_id[id_] for id_ in chunk if id_ in by_id]
            self.tally.rows += len(rows)
            indexed = await self.index.indexed(chunk)
            await self._compare_rows(rows, indexed)
            present = {id_ for id_ in chunk if id_ in by_id}
            others = {id_: indexed[id_] for id_ in chunk if id_ in indexed}
            self.tally.documents += len(others)
            await self._compare_documents(others, present)
        await self._confirm()

    async def _compare_rows(
        self, rows: list[Row], indexed: dict[str, Indexed] | None = None
    ) -> None:
        at = self.snapshot.position
        if indexed is None:
            indexed = await self.index.indexed([doc_id(key) for key, _ in rows])
        drifts, compared, skipped = compare_rows(rows, indexed, at, self._changed)
        self.tally.checked += compared
        self.tally.skipped += skipped
        await self._hold(drifts)
        await self._progress()

    async def _compare_documents(
        self, page: dict[str, Indexed], present: Collection[str] | None = None
    ) -> None:
        at = self.snapshot.position
        if present is None:
            present = await self.snapshot.present(page)
        drifts, compared, skipped = compare_documents(page, present, at, self._changed)
        self.tally.checked += compared
        self.tally.skipped += skipped
        await self._hold(drifts)
        await self._progress()

    async def _hold(self, drifts: list[Drift]) -> None:
        """Keep these drifts until the source's changes confirm them: a few chunks' at
        a time, so that a source slow to answer (Materialize waits for a progress
        tick) is asked about once per CONFIRM_SECONDS, not once per drifted chunk."""
        if not drifts:
            return
        if not self._held:
            self._held_since = self._clock()
        self._held += drifts
        if (
            len(self._held) >= self._confirm_drifts
            or self._clock() - self._held_since >= self._confirm_seconds
        ):
            await self._confirm()

    async def _confirm(self) -> None:
        """Ask the source's changes (see the module's docstring), then count and repair
        the drifts held: one whose key changed after the snapshot is skipped instead."""
        if not self._held:
            return
        held, self._held = self._held, []
        self._changed = await self.snapshot.changed()
        drifts = [d for d in held if d.doc_id not in self._changed]
        self.tally.checked -= len(held) - len(drifts)  # compared first, newer after all
        self.tally.skipped += len(held) - len(drifts)
        drifts = await self._explained(drifts)
        self.tally.count(drifts)
        if not self.scope.repair or not drifts:
            return
        rows = [d for d in drifts if d.kind is not DriftKind.EXTRA]
        if rows:
            await self._repair_rows(rows)
        extra = [d.doc_id for d in drifts if d.kind is DriftKind.EXTRA]
        if extra:
            removed = await self.index.delete_unchanged(extra, self.snapshot.position)
            self.tally.repaired += removed
            self.tally.superseded += len(extra) - removed

    async def _explained(self, drifts: list[Drift]) -> list[Drift]:
        """Drop the drifts whose document has a dead letter (counted apart)."""
        if not drifts:
            return drifts
        lettered = await self._dead_lettered([d.doc_id for d in drifts])
        if not lettered:
            return drifts
        kept = [d for d in drifts if d.doc_id not in lettered]
        self.tally.dead_lettered += len(drifts) - len(kept)
        return kept

    async def _repair_rows(self, drifts: list[Drift]) -> None:
        changes = repairs(drifts, self.snapshot.position, self._now())
        results = await self.index.write(changes)
        for change, result in zip(changes, results, strict=True):
            if result.outcome is Outcome.OK:
                self.tally.repaired += 1
            elif result.outcome is Outcome.STALE:
                self.tally.superseded += 1
            else:
                self.tally.repair_failed += 1
                if len(self.tally.repair_errors) < EXAMPLES:
                    reason = result.reason or result.error_type or f"status {result.status}"
                    self.tally.repair_errors.append(f"{change.doc_id}: {reason}")

    async def _progress(self) -> None:
        done = self.tally.rows + self.tally.documents
        self._meter.update(CopyProgress(done, self._total, 0), self._clock())
        figures = self._meter.figures()
        if figures is not None and self._phase is Phase.DONE:
            figures = replace(figures, estimated_rows=done, percent=100.0, eta_seconds=0.0)
        await self._report(Progress(self._phase, self.tally, figures))
