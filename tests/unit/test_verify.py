"""The verification rules (syncer.engine.verify): what is drift, what is newer, and
what a repair writes; and a whole verification over in-memory fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

import pytest

from syncer.engine.changes import Change, Op, doc_id
from syncer.engine.testing import InMemorySink, InMemorySnapshot, StoredDoc
from syncer.engine.verify import (
    EXAMPLES,
    DriftKind,
    Indexed,
    Phase,
    Progress,
    Scope,
    Tally,
    Verifier,
    compare_documents,
    compare_rows,
    key_of_document,
    key_of_id,
    repairs,
)

AT = 1000


def test_a_row_without_its_document_is_missing_and_one_unlike_it_differs() -> None:
    rows = [((1,), {"id": 1, "v": 1}), ((2,), {"id": 2, "v": 2}), ((3,), {"id": 3, "v": 3})]
    indexed = {"2": Indexed(900, {"id": 2, "v": 2}), "3": Indexed(900, {"id": 3, "v": 30})}
    drifts, compared, skipped = compare_rows(rows, indexed, AT, set())
    assert [(d.kind, d.doc_id) for d in drifts] == [
        (DriftKind.MISSING, "1"),
        (DriftKind.DIFFERS, "3"),
    ]
    assert (compared, skipped) == (3, 0)
    assert drifts[1].as_dict()["fields"] == {"v": {"source": 3, "index": 30}}


def test_what_changed_after_the_snapshot_is_not_drift() -> None:
    rows = [((1,), {"id": 1, "v": 1}), ((2,), {"id": 2, "v": 2})]
    # Written after the snapshot (its version is newer), or its key changed since.
    indexed = {"1": Indexed(AT + 50, {"id": 1, "v": 7})}
    assert compare_rows(rows, indexed, AT, {"2"}) == ([], 0, 2)


def test_a_document_written_exactly_at_the_snapshot_is_compared() -> None:
    drifts, _, _ = compare_rows([((1,), {"id": 1})], {"1": Indexed(AT, {"id": 2})}, AT, ())
    assert [d.kind for d in drifts] == [DriftKind.DIFFERS]


def test_values_compare_as_the_sink_writes_them() -> None:
    # A tuple becomes a JSON list: what OpenSearch holds.
    row = {"id": 1, "tags": ("a", "b"), "score": 1.5, "nested": {"k": [1, 2]}}
    indexed = {
        "1": Indexed(10, {"id": 1, "tags": ["a", "b"], "score": 1.5, "nested": {"k": [1, 2]}})
    }
    assert compare_rows([((1,), row)], indexed, AT, ()) == ([], 1, 0)


def test_a_document_without_a_row_is_extra_unless_newer() -> None:
    documents = {
        "1": Indexed(900, {"id": 1}),
        "2": Indexed(900, {"id": 2}),
        "3": Indexed(AT + 1, {"id": 3}),
        "4": Indexed(900, {"id": 4}),
    }
    drifts, compared, skipped = compare_documents(documents, {"1"}, AT, {"4"})
    assert [(d.kind, d.doc_id) for d in drifts] == [(DriftKind.EXTRA, "2")]
    assert (compared, skipped) == (1, 2)


def test_repairs_write_rows_just_above_the_snapshot() -> None:
    drifts, _, _ = compare_rows([((1,), {"id": 1})], {}, AT, ())
    (change,) = repairs(drifts, AT, now=5.0)
    assert (change.op, change.doc_id, change.version, change.doc) == (
        Op.UPSERT,
        "1",
        AT + 1,
        {"id": 1},
    )


def test_examples_are_bounded_per_kind() -> None:
    tally = Tally()
    drifts, _, _ = compare_rows([((i,), {"id": i}) for i in range(EXAMPLES * 3)], {}, AT, ())
    tally.count(drifts)
    assert tally.missing == EXAMPLES * 3
    assert len(tally.examples[DriftKind.MISSING]) == EXAMPLES


def test_document_ids_turn_back_into_keys() -> None:
    for key in [("a|b", "c"), ("a", "b|c"), ("x\\y", "z"), ("", "q")]:
        assert key_of_id(doc_id(key), 2) == key
    assert key_of_id("plain", 1) == ("plain",)
    with pytest.raises(ValueError, match="not a key of 2 columns"):
        key_of_id("no-separator", 2)
    assert key_of_document({"a": 1, "b": True}, ("a", "b")) == ("1", "true")
    assert key_of_document({"a": 1}, ("a", "b")) is None


# -- a whole verification ------------------------------------------------------------


def _table(n: int) -> dict[tuple[object, ...], dict[str, object]]:
    return {(i,): {"id": i, "v": f"row {i}"} for i in range(n)}


def _synced(table: dict[tuple[object, ...], dict[str, object]], version: int) -> InMemorySink:
    sink = InMemorySink()
    for key, row in table.items():
        sink.docs[doc_id(key)] = StoredDoc(version, dict(row))
    return sink


class Run:
    """A Verifier over fakes, recording progress and the order of things."""

    def __init__(
        self,
        snapshot: InMemorySnapshot,
        sink: InMemorySink,
        scope: Scope | None = None,
        lettered: Collection[str] = (),
        chunk_rows: int = 7,
        **options: Any,
    ) -> None:
        self.events: list[str] = []
        self.progress: list[Progress] = []
        self.lettered = set(lettered)

        async def caught_up(at: int) -> None:
            self.events.append(f"caught up {at}")

        async def dead_lettered(ids: Sequence[str]) -> Collection[str]:
            return self.lettered.intersection(ids)

        async def report(progress: Progress) -> None:
            self.progress.append(progress)

        self.verifier = Verifier(
            snapshot,
            sink,
            scope or Scope(),
            caught_up=caught_up,
            dead_lettered=dead_lettered,
            report=report,
            chunk_rows=chunk_rows,
            **options,
        )

    def __call__(self) -> Tally:
        return asyncio.run(self.verifier.run())


def test_a_verification_finds_each_kind_of_drift_and_repairs_exactly_that() -> None:
    table = _table(50)
    sink = _synced(table, 900)
    sink.docs["3"] = StoredDoc(900, {"id": 3, "v": "tampered"})
    del sink.docs["7"]
    sink.docs["99"] = StoredDoc(900, {"id": 99, "v": "no row"})
    requests = sink.requests
    tally = Run(InMemorySnapshot(table, AT), sink, Scope(repair=True))()
    assert (tally.differs, tally.missing, tally.extra) == (1, 1, 1)
    # The documents pass reads the one repaired meanwhile too.
    assert (tally.rows, tally.documents, tally.repaired) == (50, 51, 3)
    assert sink.live == {doc_id(k): r for k, r in table.items()}
    # The two chunks with drift wrote once, together (the extra went by delete_unchanged).
    assert sink.requests == requests + 1
    assert sink.docs["3"].version == sink.docs["7"].version == AT + 1
    assert sink.docs["0"].version == 900  # what was right was not written again
    again = Run(InMemorySnapshot(table, AT + 5), sink)()
    assert (again.drifted, again.checked, again.documents) == (0, 50, 50)


def test_nothing_is_compared_before_the_subscription_caught_up() -> None:
    table = _table(3)
    sink = _synced(table, 900)
    run = Run(InMemorySnapshot(table, AT), sink)
    original = sink.indexed

    async def indexed(ids: Sequence[str]) -> dict[str, Indexed]:
        run.events.append("read")
        return await original(ids)

    sink.indexed = indexed  # type: ignore[method-assign,assignment]
    run()
    assert run.events[0] == f"caught up {AT}"
    assert "read" in run.events[1:]


def test_changes_during_the_verification_are_neither_drift_nor_repaired() -> None:
    table = _table(20)
    sink = _synced(table, 900)
    snapshot = InMemorySnapshot(table, AT)

    def meanwhile() -> None:
        # Row 4 updated and row 5 deleted after the snapshot, both already indexed;
        # row 30 inserted.
        sink.docs["4"] = StoredDoc(AT + 10, {"id": 4, "v": "newer"})
        sink.docs.pop("5", None)
        sink.docs["30"] = StoredDoc(AT + 12, {"id": 30, "v": "new"})
        snapshot.later |= {"4", "5", "30"}

    snapshot.on_read = meanwhile
    tally = Run(snapshot, sink, Scope(repair=True), chunk_rows=100)()
    assert (tally.drifted, tally.repaired) == (0, 0)
    assert tally.skipped == 3  # rows 4 and 5, document 30
    assert sink.docs["4"].doc == {"id": 4, "v": "newer"} and "5" not in sink.live


def test_a_repair_loses_to_a_newer_write() -> None:
    table = _table(5)
    sink = _synced(table, 900)
    sink.docs["2"] = StoredDoc(900, {"id": 2, "v": "tampered"})
    original = sink.write

    async def write(changes: Sequence[Change]) -> list:  # type: ignore[type-arg]
        # A change of row 2 lands between the comparison and the repair.
        sink.docs["2"] = StoredDoc(AT + 100, {"id": 2, "v": "concurrent"})
        return await original(changes)

    sink.write = write  # type: ignore[method-assign]
    tally = Run(InMemorySnapshot(table, AT), sink, Scope(repair=True))()
    assert (tally.differs, tally.repaired, tally.superseded) == (1, 0, 1)
    assert sink.docs["2"].doc == {"id": 2, "v": "concurrent"}


def test_a_dead_lettered_document_is_counted_apart() -> None:
    table = _table(5)
    sink = _synced(table, 900)
    del sink.docs["1"]
    tally = Run(InMemorySnapshot(table, AT), sink, Scope(repair=True), lettered={"1"})()
    assert (tally.missing, tally.dead_lettered, tally.repaired) == (0, 1, 0)
    assert "1" not in sink.live


def test_a_sample_reads_about_that_many_rows_and_documents() -> None:
    table = _table(100)
    sink = _synced(table, 900)
    tally = Run(InMemorySnapshot(table, AT), sink, Scope(sample=10), chunk_rows=4)()
    assert tally.documents == 10
    assert tally.rows == 100  # the fake does not sample; the documents pass stops at 10


def test_only_the_given_ids_are_verified() -> None:
    table = _table(30)
    sink = _synced(table, 900)
    sink.docs["3"] = StoredDoc(900, {"id": 3, "v": "tampered"})
    sink.docs["77"] = StoredDoc(900, {"id": 77})
    del sink.docs["4"]
    sink.docs["5"] = StoredDoc(900, {"id": 5, "v": "also tampered, not asked"})
    tally = Run(InMemorySnapshot(table, AT), sink, Scope(ids=("3", "4", "77", "12")))()
    assert (tally.differs, tally.missing, tally.extra) == (1, 1, 1)
    assert (tally.rows, tally.checked) == (3, 4)


def test_progress_goes_through_the_phases_with_a_percent() -> None:
    table = _table(40)
    run = Run(InMemorySnapshot(table, AT), _synced(table, 900), chunk_rows=10)
    run()
    phases = [p.phase for p in run.progress]
    assert phases[0] is Phase.WAITING and phases[-1] is Phase.DONE
    assert Phase.ROWS in phases and Phase.DOCUMENTS in phases
    last = run.progress[-1].figures
    assert last is not None and last.rows == 80 and last.percent == pytest.approx(100.0)


def test_a_document_whose_key_field_was_changed_by_hand_differs_and_is_not_extra() -> None:
    table = _table(10)
    sink = _synced(table, 900)
    sink.docs["5"] = StoredDoc(900, {"id": 6, "v": "row 5"})  # its id field says 6
    tally = Run(InMemorySnapshot(table, AT), sink, Scope(repair=True))()
    assert (tally.differs, tally.extra, tally.repaired) == (1, 0, 1)
    assert sink.docs["5"].doc == {"id": 5, "v": "row 5"}


def test_the_source_s_changes_are_asked_only_for_a_chunk_with_drift() -> None:
    """Agreeing or newer documents need no proof; a drifted one does (a source may take
    a moment to answer: Materialize waits for its progress to pass the present)."""
    table = _table(30)
    sink = _synced(table, 900)
    sink.docs["4"] = StoredDoc(AT + 1, {"id": 4, "v": "newer"})
    del sink.docs["17"]  # deleted at the source after the snapshot, the index knows it
    snapshot = InMemorySnapshot(table, AT)
    snapshot.later = {"17"}
    asked = []
    original = snapshot.changed

    async def changed() -> Collection[str]:
        asked.append(snapshot._read)
        return await original()

    snapshot.changed = changed  # type: ignore[method-assign]
    tally = Run(snapshot, sink, chunk_rows=10)()
    assert asked == [30]  # once: the drift of rows 10 to 19 was held for the next chunks
    assert (tally.drifted, tally.skipped, tally.checked) == (0, 2, 28)


def test_drifts_are_confirmed_together_every_so_many_or_so_long() -> None:
    table = _table(60)
    sink = _synced(table, 900)
    for i in range(0, 60, 5):  # two drifts in each chunk of 10
        sink.docs[str(i)] = StoredDoc(900, {"id": i, "v": "tampered"})
    snapshot = InMemorySnapshot(table, AT)
    asked: list[int] = []
    original = snapshot.changed

    async def changed() -> Collection[str]:
        asked.append(snapshot._read)
        return await original()

    snapshot.changed = changed  # type: ignore[method-assign]
    by_count = Run(snapshot, sink, Scope(), chunk_rows=10, confirm_drifts=5)()
    assert asked == [30, 60] and by_count.differs == 12  # 6 held at 30, the rest at the end

    ticks = iter(range(1000))
    asked.clear()
    snapshot = InMemorySnapshot(table, AT)
    snapshot.changed = changed  # type: ignore[method-assign]
    by_time = Run(snapshot, sink, chunk_rows=10, confirm_seconds=3, clock=lambda: next(ticks))
    assert by_time().differs == 12
    assert len(asked) > 2  # a tick per call of the clock: held 3 "seconds" at most


def test_without_a_row_estimate_the_index_s_count_gives_the_percent() -> None:
    table = _table(40)
    snapshot = InMemorySnapshot(table, AT, knows_size=False)
    run = Run(snapshot, _synced(table, 900), chunk_rows=10)
    run()
    rows_phase = [p.figures for p in run.progress if p.phase is Phase.ROWS and p.figures]
    assert rows_phase and rows_phase[-1].percent is not None
    assert rows_phase[-1].estimated_rows == 80  # 40 documents: about 40 rows, then 40
