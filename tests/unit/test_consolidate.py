from __future__ import annotations

import pytest

from syncer.engine.changes import Op, RowChange, RowOp, Transaction, TxKind, doc_id
from syncer.engine.consolidate import consolidate


def tx(position: int, *changes: RowChange) -> Transaction:
    return Transaction(position, 1000.0 + position, list(changes))


def ins(key: int, **row: object) -> RowChange:
    return RowChange(RowOp.INSERT, (key,), {"id": key, **row})


def upd(key: int, old_key: int | None = None, unchanged: frozenset[str] = frozenset(), **row):
    return RowChange(
        RowOp.UPDATE, (key,), {"id": key, **row}, (old_key,) if old_key else None, unchanged
    )


def dele(key: int) -> RowChange:
    return RowChange(RowOp.DELETE, (key,))


def test_last_event_per_key_wins_with_its_own_position():
    changes = consolidate([tx(10, ins(1, v="a"), ins(2, v="b")), tx(20, upd(1, v="c"))])
    by_id = {c.doc_id: c for c in changes}
    assert by_id["1"].doc == {"id": 1, "v": "c"} and by_id["1"].version == 20
    assert by_id["2"].doc == {"id": 2, "v": "b"} and by_id["2"].version == 10


def test_insert_then_delete_in_one_batch_is_a_delete():
    changes = consolidate([tx(10, ins(1, v="a")), tx(11, dele(1))])
    assert [(c.op, c.doc_id, c.version) for c in changes] == [(Op.DELETE, "1", 11)]


def test_key_change_deletes_old_document_and_writes_new_one():
    changes = consolidate([tx(30, upd(2, old_key=1, v="x"))])
    assert [(c.op, c.doc_id) for c in changes] == [(Op.DELETE, "1"), (Op.UPSERT, "2")]
    assert all(c.version == 30 for c in changes)


def test_unchanged_toast_value_is_carried_from_earlier_image_in_batch():
    big = "z" * 10
    changes = consolidate(
        [tx(1, ins(1, v="a", body=big)), tx(2, upd(1, unchanged=frozenset({"body"}), v="b"))]
    )
    assert changes[0].doc == {"id": 1, "v": "b", "body": big}
    assert not changes[0].missing


def test_unchanged_toast_without_earlier_image_is_marked_missing_not_blank():
    changes = consolidate([tx(2, upd(1, unchanged=frozenset({"body"}), v="b", body=None))])
    assert changes[0].missing == {"body"}
    assert "body" not in (changes[0].doc or {})
    assert changes[0].fill_from is None


def test_unchanged_toast_on_key_change_is_filled_from_old_document():
    changes = consolidate([tx(5, upd(2, old_key=1, unchanged=frozenset({"body"}), v="b"))])
    upsert = next(c for c in changes if c.op is Op.UPSERT)
    assert upsert.missing == {"body"} and upsert.fill_from == "1" and upsert.fill_key == (1,)


def test_snapshot_end_marker_writes_nothing():
    end = Transaction(9, 0.0, [], TxKind.SNAPSHOT_END)
    assert consolidate([end]) == []


def test_composite_keys_cannot_collide_through_the_separator():
    assert doc_id(("a|b", "c")) != doc_id(("a", "b|c"))
    assert doc_id(("a\\", "|b")) != doc_id(("a\\|", "b"))
    assert doc_id((7, True)) == "7|true"
    assert doc_id(("x",)) == "x"


def test_a_row_change_cannot_be_changed_once_made() -> None:
    change = RowChange(RowOp.INSERT, (1,), {"id": 1})
    with pytest.raises(AttributeError):
        change.row = {"id": 2}  # type: ignore[misc]
