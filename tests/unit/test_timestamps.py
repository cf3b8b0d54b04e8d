"""Timestamped diffs to transactions: progress closes timestamps, keys consolidate."""

from __future__ import annotations

import json

import pytest

from syncer.engine.changes import RowOp, TxKind
from syncer.engine.timestamps import Envelope, TimestampAssembler, Update, UpsertState


def row(order_id: int, total: str = "10", **extra: object) -> dict[str, object]:
    return {"order_id": order_id, "total": total, **extra}


def assembler(**kwargs: object) -> TimestampAssembler:
    return TimestampAssembler(["order_id"], relation="orders_mv", **kwargs)  # type: ignore[arg-type]


def ops(tx) -> list[tuple[str, tuple[object, ...], object]]:
    return [(str(c.op), c.key, c.row) for c in tx.changes]


def test_a_timestamp_is_handed_out_only_once_progress_passes_it():
    a = assembler()
    a.add(Update(100, row(1), diff=1))
    assert a.take(100) == []
    a.progress(100)  # "nothing more below 100": 100 itself may still grow
    assert [tx.kind for tx in a.take(100)] == [TxKind.PROGRESS]
    a.add(Update(100, row(2), diff=1))
    a.progress(101)
    out = a.take(100)
    assert [(tx.kind, tx.position) for tx in out] == [(TxKind.CHANGES, 100), (TxKind.PROGRESS, 101)]
    assert [c.key for c in out[0].changes] == [(1,), (2,)]
    assert out[0].commit_time == pytest.approx(0.1)  # milliseconds since the epoch


def test_update_is_a_retraction_and_an_insertion_in_either_order():
    a = assembler()
    a.add(Update(5, row(1, "20"), diff=1))
    a.add(Update(5, row(1, "10"), diff=-1))
    a.progress(6)
    (tx, _progress) = a.take(100)
    assert ops(tx) == [("update", (1,), row(1, "20"))]


def test_a_lone_retraction_is_a_delete():
    a = assembler()
    a.add(Update(5, row(1), diff=-1))
    a.progress(6)
    assert ops(a.take(10)[0]) == [("delete", (1,), None)]


def test_inserted_and_retracted_in_one_timestamp_is_no_change():
    a = assembler()
    a.add(Update(5, row(1), diff=1))
    a.add(Update(5, row(1), diff=-1))
    a.progress(6)
    assert [tx.kind for tx in a.take(10)] == [TxKind.PROGRESS]


def test_a_row_counted_twice_stays_until_both_copies_are_retracted():
    a = assembler()
    a.add(Update(5, row(1), diff=2))
    a.progress(6)
    assert ops(a.take(10)[0]) == [("update", (1,), row(1))]
    a.add(Update(7, row(1), diff=-1))
    a.progress(8)
    assert [tx.kind for tx in a.take(10)] == [TxKind.PROGRESS]  # one copy left: unchanged
    a.add(Update(9, row(1), diff=-1))
    a.progress(10)
    assert ops(a.take(10)[0]) == [("delete", (1,), None)]


def test_multiplicity_above_one_then_an_update_of_every_copy():
    a = assembler()
    a.add(Update(5, row(1, "10"), diff=3))
    a.progress(6)
    a.take(10)
    a.add(Update(7, row(1, "10"), diff=-3))
    a.add(Update(7, row(1, "11"), diff=3))
    a.progress(8)
    assert ops(a.take(10)[0]) == [("update", (1,), row(1, "11"))]


def test_two_live_rows_for_one_key_is_a_data_error_not_a_crash():
    a = assembler()
    a.add(Update(5, row(1, "10"), diff=1))
    a.add(Update(5, row(1, "99"), diff=1))
    a.progress(6)
    (tx, _) = a.take(10)
    assert len(tx.changes) == 1 and tx.changes[0].op is RowOp.UPDATE
    errors = a.take_errors()
    assert len(errors) == 1
    assert "key 1 of orders_mv has 2 distinct rows at 5" in errors[0]
    assert "not unique" in errors[0]
    assert a.ambiguous_keys == [(1,)]
    # Retracting one of them leaves the other as the document, and the key is clean.
    a.add(Update(7, row(1, "99"), diff=-1))
    a.progress(8)
    assert ops(a.take(10)[0]) == [("update", (1,), row(1, "10"))]
    assert a.ambiguous_keys == [] and a.take_errors() == []


def test_snapshot_rows_are_chunks_and_the_snapshot_ends_at_the_next_progress():
    a = assembler(snapshot=True, sweep=True)
    a.progress(1000)  # the first progress names the AS OF: the snapshot's time
    a.add(Update(1000, row(1), diff=1))
    a.add(Update(1000, row(2), diff=2))
    a.flush_snapshot()
    chunk = a.take(10)
    assert [(tx.kind, tx.position) for tx in chunk] == [(TxKind.SNAPSHOT_CHUNK, 1000)]
    assert [c.key for c in chunk[0].changes] == [(1,), (2,)]
    a.add(Update(1000, row(3), diff=1))
    a.add(Update(1003, row(1, "11"), diff=1))
    a.add(Update(1003, row(1), diff=-1))
    a.progress(1005)
    out = a.take(100)
    assert [(tx.kind, tx.position) for tx in out] == [
        (TxKind.SNAPSHOT_CHUNK, 1000),
        # Complete below 1001 only: the update at 1003 must be written before the
        # checkpoint may pass it.
        (TxKind.SNAPSHOT_END, 1001),
        (TxKind.CHANGES, 1003),
        (TxKind.PROGRESS, 1005),
    ]
    assert out[1].sweep_below == 1000


def test_updates_below_the_resume_checkpoint_are_dropped():
    a = assembler(skip_below=500)
    a.progress(499)  # the first progress of AS OF 499: already acknowledged
    a.add(Update(499, row(1), diff=1))
    a.add(Update(500, row(2), diff=1))
    a.progress(501)
    out = a.take(10)
    assert [c.key for c in out[0].changes] == [(2,)] and out[0].position == 500
    assert a.skipped == 1


def test_take_returns_whole_transactions_about_max_changes():
    a = assembler()
    for t in range(10, 13):
        a.add(Update(t, row(t), diff=1))
        a.add(Update(t, row(t + 100), diff=1))
    a.progress(20)
    first = a.take(3)
    assert [len(tx.changes) for tx in first] == [2]  # a second would pass 3
    assert [len(tx.changes) for tx in a.take(100)] == [2, 2, 0]


def test_an_update_behind_the_frontier_is_a_bug_in_the_feed():
    a = assembler()
    a.progress(10)
    with pytest.raises(ValueError, match="below the progress frontier"):
        a.add(Update(9, row(1), diff=1))


def test_upsert_envelope_states():
    a = TimestampAssembler(["order_id"], envelope=Envelope.UPSERT, relation="orders_mv")
    a.add(Update(5, row(1, "10"), state=UpsertState.UPSERT))
    a.add(Update(5, {"order_id": 2, "total": None}, state=UpsertState.DELETE))
    a.add(Update(5, {"order_id": 3, "total": None}, state=UpsertState.KEY_VIOLATION))
    a.progress(6)
    (tx, _) = a.take(10)
    assert ops(tx) == [("update", (1,), row(1, "10")), ("delete", (2,), None)]
    (error,) = a.take_errors()
    assert "key 3 of orders_mv" in error and "key_violation" in error


def test_json_values_count_as_the_same_row():
    a = assembler()
    a.add(Update(5, row(1, tags=["a"], meta={"x": 1}), diff=2))
    a.progress(6)
    a.take(10)
    a.add(Update(7, row(1, tags=["a"], meta={"x": 1}), diff=-1))
    a.progress(8)
    assert [tx.kind for tx in a.take(10)] == [TxKind.PROGRESS]


def saved_state(transactions) -> object:
    """What the pipeline would save with the checkpoint after these transactions."""
    states = [tx.source_state for tx in transactions if tx.source_state is not None]
    return states[-1] if states else None


def test_a_row_counted_twice_survives_a_restart_through_the_saved_state():
    a = assembler()
    a.add(Update(5, row(1, tags=["a"], meta={"z": 1, "a": 2}), diff=2))
    a.progress(6)
    state = saved_state(a.take(10))
    assert state == {"multiset": [[[1], [[row(1, tags=["a"], meta={"z": 1, "a": 2}), 2]]]]}
    # Restart at checkpoint 6 with what was saved (jsonb sorts object keys): one
    # retraction leaves one copy.
    resumed = assembler(skip_below=6, state=json.loads(json.dumps(state, sort_keys=True)))
    resumed.progress(5)
    resumed.add(Update(7, row(1, tags=["a"], meta={"z": 1, "a": 2}), diff=-1))
    resumed.progress(8)
    assert [tx.kind for tx in resumed.take(10)] == [TxKind.PROGRESS]
    # Without the state, the same retraction would have deleted the document.
    forgetful = assembler(skip_below=6)
    forgetful.add(Update(7, row(1, tags=["a"]), diff=-1))
    forgetful.progress(8)
    assert ops(forgetful.take(10)[0]) == [("delete", (1,), None)]


def test_a_transaction_carries_the_state_below_its_own_position():
    a = assembler()
    a.add(Update(5, row(1), diff=2))
    a.add(Update(6, row(2), diff=1))
    a.add(Update(7, row(1), diff=-2))
    a.progress(8)
    t5, t6, t7, progress = a.take(100)
    assert [tx.position for tx in (t5, t6, t7, progress)] == [5, 6, 7, 8]
    # A checkpoint at 6 means 6 is read again after a restart: the state must not
    # include it, and must include 5's doubled row.
    assert t5.source_state is None  # nothing tracked yet, nothing changed
    assert t6.source_state == {"multiset": [[[1], [[row(1), 2]]]]}
    assert t7.source_state is None  # unchanged since t6
    assert progress.source_state == {"multiset": []}  # 7 retracted both copies


def test_a_snapshot_replaces_the_state_of_the_checkpoint_it_starts_over_from():
    a = assembler(snapshot=True, state={"multiset": [[[9], [[row(9), 3]]]]})
    a.progress(100)
    a.add(Update(100, row(1), diff=1))
    a.progress(101)
    end = next(tx for tx in a.take(10) if tx.kind is TxKind.SNAPSHOT_END)
    assert end.source_state == {"multiset": []}


def test_a_snapshot_row_before_the_first_progress_is_refused_not_guessed():
    a = assembler(snapshot=True, sweep=True)
    with pytest.raises(ValueError, match="before its first progress message"):
        a.add(Update(1000, row(1), diff=1))
