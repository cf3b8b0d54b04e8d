"""The owner's side of a shared copy (`SharedCopy`), over an in-memory board."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from syncer.engine.changes import TxKind
from syncer.models import make_slot_name
from syncer.sources.postgres import shared
from syncer.sources.postgres.copy import CopyCursor
from syncer.sources.postgres.replication import temporary_slot_name
from syncer.sources.postgres.shared import KeyRange, RangesDone, SharedCopy


class Board:
    def __init__(self, ranges: int) -> None:
        self.figures = RangesDone(ranges, 0, 0)

    async def planned(self, copy: str) -> bool:
        return bool(self.figures.ranges)

    async def plan(self, copy: str, ranges: Sequence[KeyRange], index: str) -> None:
        self.figures = RangesDone(len(ranges), 0, 0)

    async def progress(self, copy: str) -> RangesDone:
        return self.figures


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "POLL_SECONDS", 0.0)


def _copy(board: Board, sweep: bool) -> SharedCopy:
    return SharedCopy(board, CopyCursor("r", since=100, sweep=sweep), 1000, "idx")


def test_progress_goes_out_as_the_cursor_when_it_moves_and_the_end_once_all_are_done() -> None:
    board = Board(ranges=3)
    copy = _copy(board, sweep=True)
    first = asyncio.run(copy.poll(500, 1.0))
    assert [tx.kind for tx in first] == [TxKind.COPY_CHUNK]  # the cursor, saved at once
    assert first[0].source_state == {"copy": copy.cursor.state()["copy"]}
    assert asyncio.run(copy.poll(510, 1.0)) == []  # nothing moved
    board.figures = RangesDone(3, 2, 700)
    moved = asyncio.run(copy.poll(520, 1.0))
    assert [tx.kind for tx in moved] == [TxKind.COPY_CHUNK]
    assert moved[0].copied is not None and moved[0].copied.rows == 700
    assert moved[0].position == 520 and copy.cursor.rows == 700
    board.figures = RangesDone(3, 3, 1000)
    end = asyncio.run(copy.poll(530, 1.0))
    assert [tx.kind for tx in end] == [TxKind.COPY_CHUNK, TxKind.SNAPSHOT_END]
    assert end[1].sweep_below == 100 and end[1].source_state == {}
    assert copy.done and asyncio.run(copy.poll(540, 1.0)) == []


def test_a_first_copy_ends_without_a_sweep() -> None:
    board = Board(ranges=1)
    board.figures = RangesDone(1, 1, 10)
    end = asyncio.run(_copy(board, sweep=False).poll(500, 1.0))
    assert end[-1].kind is TxKind.SNAPSHOT_END and end[-1].sweep_below is None


def test_the_owner_reads_the_ranges_no_more_than_once_a_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared, "POLL_SECONDS", 60.0)
    board = Board(ranges=2)
    copy = _copy(board, sweep=False)
    assert asyncio.run(copy.poll(500, 1.0))
    board.figures = RangesDone(2, 2, 10)
    assert asyncio.run(copy.poll(510, 1.0)) == []  # not yet looked at again
    assert not copy.done


def test_a_helper_s_temporary_slot_name_fits_however_long_the_subscription_s() -> None:
    longest = make_slot_name("x" * 63)  # the longest name a subscription's slot gets
    names = {temporary_slot_name(longest, purpose) for purpose in ("copy", "verify")}
    assert all(len(name) <= 63 for name in names)
    assert all(name.startswith(longest[:40]) for name in names)
    assert temporary_slot_name("searchsync_orders_1a2b3c4d", "verify").startswith(
        "searchsync_orders_1a2b3c4d_verify_"
    )
    assert temporary_slot_name("s", "copy") != temporary_slot_name("s", "copy")
