"""The verification rules (syncer.engine.verify): what is drift, what is newer, and
what a repair writes."""

from __future__ import annotations

from syncer.engine.changes import Op
from syncer.engine.verify import (
    EXAMPLES,
    DriftKind,
    Indexed,
    Tally,
    compare_documents,
    compare_rows,
    repairs,
)

AT = 1000


def test_a_row_without_its_document_is_missing_and_one_unlike_it_differs() -> None:
    rows = {(1,): {"id": 1, "v": 1}, (2,): {"id": 2, "v": 2}, (3,): {"id": 3, "v": 3}}
    indexed = {
        "2": Indexed(900, {"id": 2, "v": 2}),
        "3": Indexed(900, {"id": 3, "v": 30}),
    }
    tally = Tally()
    drifts = compare_rows(rows, indexed, AT, set(), tally)
    assert [(d.kind, d.doc_id) for d in drifts] == [
        (DriftKind.MISSING, "1"),
        (DriftKind.DIFFERS, "3"),
    ]
    assert (tally.checked, tally.missing, tally.differs, tally.drifted) == (3, 1, 1, 2)


def test_what_changed_after_the_snapshot_is_not_drift() -> None:
    rows = {(1,): {"id": 1, "v": 1}, (2,): {"id": 2, "v": 2}}
    # Written after the snapshot (its version is newer), or its key changed since.
    indexed = {"1": Indexed(AT + 50, {"id": 1, "v": 7})}
    tally = Tally()
    assert compare_rows(rows, indexed, AT, {(2,)}, tally) == []
    assert (tally.checked, tally.skipped, tally.drifted) == (0, 2, 0)


def test_a_document_written_exactly_at_the_snapshot_is_compared() -> None:
    tally = Tally()
    drifts = compare_rows({(1,): {"id": 1}}, {"1": Indexed(AT, {"id": 2})}, AT, (), tally)
    assert [d.kind for d in drifts] == [DriftKind.DIFFERS]


def test_values_compare_as_the_sink_writes_them() -> None:
    # A tuple becomes a JSON list: what OpenSearch holds.
    row = {"id": 1, "tags": ("a", "b"), "score": 1.5, "nested": {"k": [1, 2]}}
    indexed = {
        "1": Indexed(10, {"id": 1, "tags": ["a", "b"], "score": 1.5, "nested": {"k": [1, 2]}})
    }
    tally = Tally()
    assert compare_rows({(1,): row}, indexed, AT, (), tally) == []
    assert tally.checked == 1


def test_a_document_without_its_row_is_extra_unless_newer() -> None:
    documents = {
        (1,): Indexed(10, {"id": 1}),  # its row is in the snapshot
        (2,): Indexed(10, {"id": 2}),  # no row: extra
        (3,): Indexed(AT + 1, {"id": 3}),  # inserted after the snapshot
        (4,): Indexed(10, {"id": 4}),  # no row, but its key changed since
    }
    tally = Tally()
    drifts = compare_documents(documents, {(1,)}, AT, {(4,)}, tally)
    assert [(d.kind, d.key) for d in drifts] == [(DriftKind.EXTRA, (2,))]
    assert (tally.checked, tally.skipped, tally.extra) == (1, 2, 1)


def test_a_repair_writes_just_above_the_snapshot() -> None:
    tally = Tally()
    drifts = compare_rows(
        {(1,): {"id": 1, "v": 1}, (2,): {"id": 2, "v": 2}},
        {"2": Indexed(5, {"id": 2, "v": 0})},
        AT,
        (),
        tally,
    )
    drifts += compare_documents({(9,): Indexed(5, {"id": 9})}, set(), AT, (), tally)
    changes = repairs(drifts, AT, now=0.0)
    assert [(c.op, c.doc_id, c.version, c.doc) for c in changes] == [
        (Op.UPSERT, "1", AT + 1, {"id": 1, "v": 1}),
        (Op.UPSERT, "2", AT + 1, {"id": 2, "v": 2}),
        (Op.DELETE, "9", AT + 1, None),
    ]


def test_the_tally_keeps_a_few_examples_of_each_kind() -> None:
    tally = Tally()
    rows = {(i,): {"id": i} for i in range(EXAMPLES * 3)}
    compare_rows(rows, {}, AT, (), tally)
    assert tally.missing == EXAMPLES * 3
    assert len(tally.examples[DriftKind.MISSING]) == EXAMPLES
