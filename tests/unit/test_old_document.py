"""`old`, the document before a change: from the sources' old rows, through consolidation,
to the filters' `old` variable."""

from __future__ import annotations

import struct

from psycopg.adapt import Transformer

from syncer.engine.changes import Op, RowChange, RowOp, Transaction
from syncer.engine.consolidate import consolidate
from syncer.engine.matching import Matcher, activation, compile_filter
from syncer.engine.timestamps import Envelope, TimestampAssembler, Update, UpsertState
from syncer.sources.postgres import pgoutput
from syncer.sources.postgres.source import PostgresSource, PostgresSourceConfig, _Stream
from syncer.sources.values import make_decoder


def tx(position: int, *changes: RowChange) -> Transaction:
    return Transaction(position, 1000.0 + position, list(changes))


def row(key: int, status: str) -> dict[str, object]:
    return {"id": key, "status": status}


def upd(key: int, status: str, old: str | None, old_key: int | None = None) -> RowChange:
    return RowChange(
        RowOp.UPDATE,
        (key,),
        row(key, status),
        (old_key or key,) if old is not None else None,
        old=row(old_key or key, old) if old is not None else None,
    )


# -- consolidation ----------------------------------------------------------------------


def test_a_batch_keeps_the_old_of_the_first_change_of_each_key():
    changes = consolidate(
        [tx(10, upd(1, "paid", old="open")), tx(11, upd(1, "shipped", old="paid"))]
    )
    assert [(c.doc, c.old) for c in changes] == [(row(1, "shipped"), row(1, "open"))]


def test_a_key_first_inserted_in_the_batch_has_no_old_whatever_follows():
    changes = consolidate(
        [
            tx(10, RowChange(RowOp.INSERT, (1,), row(1, "open"))),
            tx(11, upd(1, "paid", old="open")),
        ]
    )
    assert changes[0].doc == row(1, "paid") and changes[0].old is None


def test_a_first_change_without_an_old_row_leaves_old_unknown():
    changes = consolidate([tx(10, upd(1, "paid", old=None)), tx(11, upd(1, "x", old="paid"))])
    assert changes[0].old is None


def test_a_delete_carries_the_deleted_row_and_a_reinsert_the_row_before_the_batch():
    deleted = RowChange(RowOp.DELETE, (1,), old=row(1, "open"))
    assert consolidate([tx(10, deleted)])[0].old == row(1, "open")
    changes = consolidate([tx(10, deleted), tx(11, RowChange(RowOp.INSERT, (1,), row(1, "new")))])
    assert [(c.op, c.doc, c.old) for c in changes] == [(Op.UPSERT, row(1, "new"), row(1, "open"))]


def test_a_key_change_gives_the_old_row_to_the_old_key_s_delete_only():
    changes = consolidate([tx(10, upd(2, "paid", old="open", old_key=1))])
    by_id = {c.doc_id: c for c in changes}
    assert by_id["1"].op is Op.DELETE and by_id["1"].old == row(1, "open")
    assert by_id["2"].op is Op.UPSERT and by_id["2"].old is None


def test_changes_without_old_rows_keep_none():
    changes = consolidate([tx(10, RowChange(RowOp.INSERT, (k,), row(k, "a"))) for k in range(3)])
    assert [c.old for c in changes] == [None, None, None]


# -- Materialize: the timestamp assembler -----------------------------------------------


def mz_row(key: int, status: str) -> dict[str, object]:
    return {"order_id": key, "status": status}


def settle(updates: list[Update], **kwargs: object) -> list[RowChange]:
    assembler = TimestampAssembler(["order_id"], **kwargs)  # type: ignore[arg-type]
    for update in updates:
        assembler.add(update)
    assembler.progress(max(u.timestamp for u in updates) + 1)
    return [c for t in assembler.take(1000) for c in t.changes]


def test_a_retraction_and_an_insertion_at_one_timestamp_carry_the_retracted_row_as_old():
    for order in ((-1, 1), (1, -1)):
        updates = [
            Update(5, mz_row(1, "open") if diff < 0 else mz_row(1, "paid"), diff=diff)
            for diff in order
        ]
        (change,) = settle(updates)
        assert (change.op, change.row, change.old) == (
            RowOp.UPDATE,
            mz_row(1, "paid"),
            mz_row(1, "open"),
        )


def test_a_retraction_alone_is_a_delete_with_the_row_as_old_and_an_insertion_has_none():
    (deleted,) = settle([Update(5, mz_row(1, "open"), diff=-1)])
    assert (deleted.op, deleted.old) == (RowOp.DELETE, mz_row(1, "open"))
    (inserted,) = settle([Update(5, mz_row(2, "open"), diff=1)])
    assert inserted.old is None


def test_a_row_inserted_and_retracted_within_the_timestamp_is_not_the_old_one():
    updates = [
        Update(5, mz_row(1, "draft"), diff=1),
        Update(5, mz_row(1, "draft"), diff=-1),
        Update(5, mz_row(1, "open"), diff=-1),
        Update(5, mz_row(1, "paid"), diff=1),
    ]
    (change,) = settle(updates)
    assert change.old == mz_row(1, "open")


def test_the_upsert_envelope_has_no_old_row():
    updates = [Update(5, mz_row(1, "paid"), state=UpsertState.UPSERT)]
    (change,) = settle(updates, envelope=Envelope.UPSERT)
    assert change.row == mz_row(1, "paid") and change.old is None


# -- PostgreSQL: pgoutput's old tuple ---------------------------------------------------


def tuple_data(*values: bytes | None) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == b"u":
            out += b"u"
        else:
            out += b"t" + struct.pack("!i", len(value)) + value
    return out


def test_pgoutput_tells_a_whole_old_row_from_an_old_key():
    full = b"U" + struct.pack("!I", 7) + b"O" + tuple_data(b"1", b"open")
    full += b"N" + tuple_data(b"1", b"paid")
    message = pgoutput.decode(full)
    assert isinstance(message, pgoutput.Update)
    assert message.old_is_row and message.old == (b"1", b"open")
    key_only = b"U" + struct.pack("!I", 7) + b"K" + tuple_data(b"1", None)
    key_only += b"N" + tuple_data(b"2", b"paid")
    message = pgoutput.decode(key_only)
    assert isinstance(message, pgoutput.Update) and not message.old_is_row
    plain = pgoutput.decode(b"U" + struct.pack("!I", 7) + b"N" + tuple_data(b"1", b"x"))
    assert isinstance(plain, pgoutput.Update) and plain.old is None and not plain.old_is_row
    deleted = pgoutput.decode(b"D" + struct.pack("!I", 7) + b"O" + tuple_data(b"1", b"x"))
    assert isinstance(deleted, pgoutput.Delete) and deleted.old_is_row
    deleted = pgoutput.decode(b"D" + struct.pack("!I", 7) + b"K" + tuple_data(b"1", None))
    assert isinstance(deleted, pgoutput.Delete) and not deleted.old_is_row


# -- filters -----------------------------------------------------------------------------


def test_filters_compare_old_and_new_and_see_a_null_old_when_unknown():
    matcher: Matcher[str] = Matcher()
    matcher.add("changed", compile_filter("old != null && old.status != doc.status"))
    matcher.add("unknown", compile_filter("old == null"))
    matcher.add("gone", compile_filter("op == 'delete' && old.status == 'open'"))

    def matched(doc: dict[str, object] | None, old: dict[str, object] | None) -> set[str]:
        op = "upsert" if doc is not None else "delete"
        return set(matcher.match(activation(doc, old, op, "1", 5)).ids)

    assert matched(row(1, "paid"), row(1, "open")) == {"changed"}
    assert matched(row(1, "open"), row(1, "open")) == set()
    assert matched(row(1, "paid"), None) == {"unknown"}
    assert matched(None, row(1, "open")) == {"gone"}


def test_old_fields_are_typed_like_doc_fields():
    numeric = compile_filter("old.total < 100 && doc.total > 100", {"total": "numeric"})
    assert numeric.evaluate(
        activation({"total": "120.50"}, {"total": "99.9"}, "upsert", "1", 5, {"total": "numeric"})
    )


# -- PostgreSQL: the old document decoded like the new row --------------------------------

U = pgoutput.UNCHANGED


def postgres() -> tuple[PostgresSource, _Stream]:
    oids = (23, 25, 1700, 25)  # id int4, status text, total numeric, body text
    decoders = tuple(make_decoder(Transformer(), oid) for oid in oids)
    stream = _Stream(("id", "status", "total", "body"), decoders, (0,))
    return PostgresSource(PostgresSourceConfig("t", "", "public.t", ("id",), "slot")), stream


def test_identity_full_gives_the_old_document_and_fills_unchanged_toast_from_it():
    source, stream = postgres()
    old = (b"1", b"open", b"10.50", b"big body")
    change = source._row_change(stream, pgoutput.Update(1, (b"1", b"paid", b"10.50", U), old, True))
    assert change is not None
    assert change.row == {"id": 1, "status": "paid", "total": "10.50", "body": "big body"}
    assert change.unchanged == frozenset(), "the old row holds the unchanged value"
    assert change.old == {"id": 1, "status": "open", "total": "10.50", "body": "big body"}
    assert change.old_key == (1,)


def test_identity_full_on_a_key_change_names_the_old_key_and_a_delete_carries_the_row():
    source, stream = postgres()
    old = (b"1", b"open", None, b"x")
    change = source._row_change(stream, pgoutput.Update(1, (b"2", b"open", None, b"x"), old, True))
    assert change is not None and (change.key, change.old_key) == ((2,), (1,))
    assert change.old == {"id": 1, "status": "open", "total": None, "body": "x"}
    deleted = source._row_change(stream, pgoutput.Delete(1, old, True))
    assert deleted is not None and deleted.op is RowOp.DELETE and deleted.key == (1,)
    assert deleted.old == change.old


def test_an_old_key_or_no_old_tuple_gives_no_old_document():
    source, stream = postgres()
    new = (b"2", b"paid", b"1", U)
    key_only = source._row_change(stream, pgoutput.Update(1, new, (b"1", None, None, None), False))
    assert key_only is not None and key_only.old is None and key_only.old_key == (1,)
    assert key_only.unchanged == {"body"}, "left for the sink to fill, as before"
    plain = source._row_change(stream, pgoutput.Update(1, new, None, False))
    assert plain is not None and plain.old is None
    deleted = source._row_change(stream, pgoutput.Delete(1, (b"1", None, None, None), False))
    assert deleted is not None and deleted.old is None


def test_an_old_value_neither_tuple_holds_makes_old_unknown_not_partial():
    source, stream = postgres()
    change = source._row_change(
        stream, pgoutput.Update(1, (b"1", b"paid", b"1", U), (b"1", b"open", b"1", U), True)
    )
    assert change is not None and change.old is None and change.unchanged == {"body"}
