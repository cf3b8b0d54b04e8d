"""The chunked copy's decisions, without a database: which rows of a chunk go out, at
what position, with which cursor; when a chunk is read again; how big the next one is.
(tests/integration/test_postgres_copy.py runs it against PostgreSQL.)"""

from __future__ import annotations

import pytest

from syncer.engine.changes import RowChange, RowOp, TxKind
from syncer.sources.postgres.catalog import Table
from syncer.sources.postgres.copy import ChunkedCopy, CopyCursor, CopyOrder, Xids, _Chunk, precedes

TABLE = Table(1, "public", "t", (("id", 23), ("v", 23)), ("id",), "d")
ORDER = CopyOrder("t_pkey", ("id",), ("integer",))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def row(key: int) -> RowChange:
    return RowChange(RowOp.INSERT, (key,), {"id": key, "v": 0})


def make_copy(cursor: CopyCursor | None = None, clock: Clock | None = None) -> ChunkedCopy:
    copy = ChunkedCopy(
        "",
        1,
        "slot",
        TABLE,
        ORDER,
        cursor or CopyCursor("", 100, sweep=True),
        clock=clock or Clock(),
    )
    copy.advance = lambda: None  # type: ignore[method-assign]  # no database to read from
    return copy


def read_chunk(copy: ChunkedCopy, keys: list[int], full: bool = True, xids: Xids | None = None):
    chunk = _Chunk(len(copy._chunks) + 1, copy._next_after)
    chunk.rows = [row(k) for k in keys]
    chunk.last = [str(keys[-1])] if keys else None
    chunk.asked = len(keys) if full else len(keys) + 1
    chunk.full = full
    chunk.xids = xids or Xids(50, 60, frozenset())
    copy._chunks.append(chunk)
    copy._next_after = chunk.last or copy._next_after  # as reading it does
    return chunk


def mark(copy: ChunkedCopy, chunk: _Chunk, kind: str, position: int, slot: str = "slot"):
    content = f"{slot} {copy._session} {chunk.seq} {kind}".encode()
    return copy.marked(content, position, 1.0)


def test_rows_changed_between_the_watermarks_are_left_to_the_stream():
    copy = make_copy()
    chunk = read_chunk(copy, [1, 2, 3, 4, 5])
    copy.committed(40, 150, [row(9)])  # before the low watermark: the chunk saw it
    assert mark(copy, chunk, "low", 200) == []
    update = RowChange(RowOp.UPDATE, (2,), {"id": 2, "v": 1})
    moved = RowChange(RowOp.UPDATE, (70,), {"id": 70, "v": 0}, old_key=(4,))
    copy.committed(55, 250, [update, moved])
    copy.committed(56, 260, [RowChange(RowOp.DELETE, (5,))])
    [out] = mark(copy, chunk, "high", 300)
    assert out.kind is TxKind.COPY_CHUNK and out.position == 300
    assert [r.key for r in out.changes] == [(1,), (3,)]
    assert out.source_state == {
        "copy": {
            "request": "",
            "since": 100,
            "sweep": True,
            "after": ["5"],  # the chunk's last row, even though it was left out
            "rows": 2,
            "resumes": 0,
        }
    }
    assert out.copied is not None and out.copied.rows == 2


def test_changes_after_the_high_watermark_do_not_touch_the_chunk():
    copy = make_copy()
    first = read_chunk(copy, [1, 2])
    mark(copy, first, "low", 200)
    mark(copy, first, "high", 300)
    second = read_chunk(copy, [3, 4])
    copy.committed(57, 310, [row(3)])  # after the first's high, before the second's low
    mark(copy, second, "low", 320)
    [out] = mark(copy, second, "high", 400)
    assert [r.key for r in out.changes] == [(3,), (4,)]
    assert out.source_state["copy"]["rows"] == 4


def test_a_transaction_committed_before_the_low_watermark_but_unseen_by_the_snapshot_rereads():
    copy = make_copy()
    read_chunk(copy, [1, 2], xids=Xids(50, 60, frozenset()))  # emitted fine
    mark(copy, copy._chunks[0], "low", 90)
    mark(copy, copy._chunks[0], "high", 95)
    chunk = read_chunk(copy, [3, 4, 5], xids=Xids(50, 60, frozenset({52})))
    after = chunk.after
    read_chunk(copy, [6, 7])  # read ahead of it
    copy.committed(52, 150, [row(3)])  # its commit record came first, visible only later
    mark(copy, chunk, "low", 200)
    assert mark(copy, chunk, "high", 300) == []
    assert copy.rereads == 1
    assert len(copy._chunks) == 1  # only the first (emitted) is left: both later are dropped
    assert copy._next_after == after == ["2"]
    assert copy.cursor.rows == 2


def test_marks_of_other_slots_sessions_and_dropped_chunks_are_ignored():
    copy = make_copy()
    chunk = read_chunk(copy, [1])
    assert mark(copy, chunk, "low", 200, slot="other") == []
    assert chunk.low is None
    assert copy.marked(b"slot feedbeef 1 low", 200, 1.0) == []
    assert copy.marked(b"garbage", 200, 1.0) == []
    assert copy.marked(f"slot {copy._session} 99 high".encode(), 300, 1.0) == []
    assert mark(copy, chunk, "high", 300) == []  # no low watermark met yet: not emitted


def test_the_last_chunk_ends_the_copy_with_the_sweep_below_its_start():
    copy = make_copy(CopyCursor("", 100, sweep=True, after=["7"], rows=7, resumes=2))
    chunk = read_chunk(copy, [8, 9], full=False)
    mark(copy, chunk, "low", 200)
    out, end = mark(copy, chunk, "high", 300)
    assert out.kind is TxKind.COPY_CHUNK and out.copied is not None
    assert (out.copied.rows, out.copied.resumes) == (9, 2)
    assert end.kind is TxKind.SNAPSHOT_END and end.position == 300
    assert end.sweep_below == 100 and end.source_state == {}
    assert copy.done


def test_a_first_copy_sweeps_nothing():
    copy = make_copy(CopyCursor("", 100, sweep=False))
    chunk = read_chunk(copy, [], full=False)
    mark(copy, chunk, "low", 200)
    out, end = mark(copy, chunk, "high", 300)
    assert out.changes == [] and end.sweep_below is None


def test_chunks_start_small_and_are_sized_to_a_quarter_second_of_the_sinks_writing():
    clock = Clock()
    copy = make_copy(clock=clock)
    assert copy.chunk_rows == 200  # a live change waits behind little, even on a slow sink
    chunk = read_chunk(copy, list(range(1, 1001)))
    mark(copy, chunk, "low", 200)
    mark(copy, chunk, "high", 300)
    clock.now = 2.0  # 1,000 rows in 2 s: 500 rows/s
    copy.acknowledged(300)
    assert copy.chunk_rows == 125
    assert not copy._chunks


def test_a_fixed_chunk_size_does_not_adapt():
    clock = Clock()
    copy = ChunkedCopy("", 1, "slot", TABLE, ORDER, CopyCursor("", 0, False), chunk_rows=40)
    copy.advance = lambda: None  # type: ignore[method-assign]
    chunk = read_chunk(copy, list(range(1, 41)))
    mark(copy, chunk, "low", 200)
    mark(copy, chunk, "high", 300)
    clock.now = 10.0
    copy.acknowledged(300)
    assert copy.chunk_rows == 40


def test_xids_parse_pg_snapshot_text_to_32_bit_ids():
    epoch = 3 << 32
    xids = Xids.parse(f"{epoch + 100}:{epoch + 110}:{epoch + 102},{epoch + 105}")
    assert (xids.xmin, xids.xmax, xids.running) == (100, 110, frozenset({102, 105}))
    assert xids.sees(99) and xids.sees(101) and not xids.sees(102)
    assert not xids.sees(110) and not xids.sees(4000)
    assert Xids.parse("7:7:") == Xids(7, 7, frozenset())


def test_xid_order_wraps_around_as_postgresql_compares():
    assert precedes(5, 6) and not precedes(6, 5) and not precedes(6, 6)
    assert precedes(0xFFFF_FFF0, 3)  # 3 came after the wraparound
    wrapped = Xids(0xFFFF_FFF0, 10, frozenset({2}))
    assert wrapped.sees(0xFFFF_FFF5) and wrapped.sees(1) and not wrapped.sees(2)
    assert not wrapped.sees(11)


@pytest.mark.parametrize(
    "state",
    [
        None,
        {},
        {"copy": None},
        {"copy": {"request": ""}},
        {"copy": {"request": "", "since": "x", "sweep": False}},
        {"copy": {"request": "", "since": 1, "sweep": False, "after": [1]}},
        {"copy": {"request": "", "since": 1, "sweep": False, "surprise": 1}},
        [1, 2],
    ],
)
def test_a_saved_state_that_is_not_a_cursor_is_no_cursor(state):
    assert CopyCursor.from_state(state) is None


def test_a_cursor_survives_its_json_state():
    cursor = CopyCursor("2026-12-02T10:00:00+00:00", 5, True, ["a|b", "7"], 10, 1)
    assert CopyCursor.from_state(cursor.state()) == cursor


def test_chunks_written_in_one_batch_are_measured_together_and_sizes_grow_at_most_twofold():
    clock = Clock()
    copy = make_copy(clock=clock)
    for keys, (low, high) in ((range(1, 1001), (200, 300)), (range(1001, 2001), (310, 320))):
        chunk = read_chunk(copy, list(keys))
        mark(copy, chunk, "low", low)
        mark(copy, chunk, "high", high)
    clock.now = 2.0  # both in one batch: 2,000 rows in 2 s, 1,000 rows/s
    copy.acknowledged(320)
    assert copy.chunk_rows == 250
    chunk = read_chunk(copy, list(range(2001, 2251)))
    mark(copy, chunk, "low", 400)
    mark(copy, chunk, "high", 410)
    clock.now = 2.01  # very fast this once: not more than twice the last size
    copy.acknowledged(410)
    assert copy.chunk_rows == 500
