"""A resumable copy in the engine: its chunks move the checkpoint with their cursor, its
progress (percent, rows/s, time left) reaches the status, its resumes are counted."""

from __future__ import annotations

from syncer.engine.changes import CopyProgress, RowChange, RowOp, Transaction, TxKind
from syncer.engine.interfaces import NoticeKind, SourceNotice
from syncer.engine.pipeline import Pipeline, PipelineConfig, Status
from syncer.engine.progress import CopyMeter, duration
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    run_until,
)

FAST = PipelineConfig(name="t", batch_max_size=100, poll_interval=0.005)


def ins(key: int) -> RowChange:
    return RowChange(RowOp.INSERT, (key,), {"id": key})


def chunk(position: int, keys: range, rows: int, estimated: int | None = 10) -> Transaction:
    return Transaction(
        position,
        0.0,
        [ins(k) for k in keys],
        TxKind.COPY_CHUNK,
        source_state={"copy": {"rows": rows}},
        copied=CopyProgress(rows, estimated, 1),
    )


def test_the_meter_measures_this_sessions_rate_and_the_time_left():
    meter = CopyMeter()
    assert meter.figures() is None
    meter.update(CopyProgress(1000, 10_000, 2), 100.0)
    first = meter.figures()
    assert first is not None and first.rows_per_second is None and first.eta_seconds is None
    meter.update(CopyProgress(3000, 10_000, 2), 110.0)
    figures = meter.figures()
    assert figures is not None
    assert (figures.percent, figures.rows_per_second, figures.eta_seconds) == (30.0, 200.0, 35.0)
    assert figures.describe() == (
        "30.0% (3,000 of about 10,000 rows), 200 rows/s, about 35 s left, resumed 2 times"
    )


def test_the_meter_never_says_done_before_the_copy_is_and_says_when_it_cannot_estimate():
    meter = CopyMeter()
    meter.update(CopyProgress(12_000, 10_000, 0), 0.0)
    figures = meter.figures()
    assert figures is not None and figures.percent == 99.9 and figures.eta_seconds is None
    meter.update(CopyProgress(500, None, 0), 1.0)
    assert meter.figures().describe().startswith("500 rows (the table has no size estimate")  # type: ignore[union-attr]


def test_the_meter_forgets_rates_older_than_its_window():
    meter = CopyMeter(window=10)
    meter.update(CopyProgress(0, None, 0), 0.0)
    meter.update(CopyProgress(100, None, 0), 1.0)  # 100 rows/s at first
    meter.update(CopyProgress(110, None, 0), 20.0)
    meter.update(CopyProgress(120, None, 0), 30.0)
    assert meter.figures().rows_per_second == 1.0  # type: ignore[union-attr]


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (4.6, 200, 7500)] == ["5 s", "3 min 20 s", "2 h 05 min"]


async def test_copy_chunks_move_the_checkpoint_with_their_cursor_and_show_progress():
    source = InMemorySource(
        [
            chunk(10, range(1, 4), rows=3),
            Transaction(15, 0.0, [ins(50)]),
            chunk(20, range(4, 6), rows=5),
        ]
    )
    sink, store = InMemorySink(), InMemoryStore(snapshot_done=False)
    pipeline = Pipeline(FAST, source, sink, store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 20)
    assert store.source_state == {"copy": {"rows": 5}}
    assert set(sink.live) == {"1", "2", "3", "4", "5", "50"}
    assert sink.docs["4"].version == 20  # a chunk's rows carry its position as their version
    copying = [m for status, m in store.statuses if status == Status.SNAPSHOTTING]
    assert any("50.0% (5 of about 10 rows)" in m and "resumed 1 time" in m for m in copying)
    assert not store.snapshot_done


async def test_the_copys_end_saves_the_checkpoint_without_the_cursor():
    end = Transaction(30, 0.0, [], TxKind.SNAPSHOT_END, sweep_below=5, source_state={})
    source = InMemorySource([chunk(20, range(1, 3), rows=2), end])
    store = InMemoryStore(snapshot_done=False, source_state={"copy": {"rows": 0}})
    pipeline = Pipeline(FAST, source, InMemorySink(), store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.snapshot_done)
    assert store.checkpoint == 30 and store.source_state == {}
    assert pipeline.copy_figures() is None  # not copying any more


async def test_a_resumed_copy_is_counted_not_reported_as_an_error():
    source = InMemorySource([chunk(10, range(1, 2), rows=101)])
    source.notices.append(SourceNotice(NoticeKind.COPY_RESUMED, "resumed after 100 rows"))
    store = InMemoryStore(snapshot_done=False)
    pipeline = Pipeline(FAST, source, InMemorySink(), store, InMemoryDeadLetters())
    await run_until(pipeline, lambda: store.checkpoint == 10)
    assert pipeline.stats.snapshot_resumes == 1
    assert store.last_error == ""
