"""Changes OpenSearch must never be sent: ids over 512 bytes, documents missing values.

Each becomes a dead letter that says why; nothing partial or refused reaches the sink.
"""

from __future__ import annotations

from syncer.engine.changes import RowChange, RowOp, Transaction
from syncer.engine.outcomes import ID_TOO_LONG, INCOMPLETE_DOCUMENT, MAX_ID_BYTES
from syncer.engine.pipeline import Pipeline, PipelineConfig
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
    run_until,
)

FAST = PipelineConfig(
    name="t", batch_max_size=100, poll_interval=0.005, backoff_base=0.001, backoff_cap=0.01
)


def tx(position: int, *changes: RowChange) -> Transaction:
    return Transaction(position, 0.0, list(changes))


async def run_until_checkpoint(pipeline: Pipeline, store: InMemoryStore, position: int) -> None:
    await run_until(pipeline, lambda: store.checkpoint == position)


def pipeline_for(
    source: InMemorySource,
) -> tuple[Pipeline, InMemorySink, InMemoryStore, InMemoryDeadLetters]:
    sink, store, dlq = InMemorySink(), InMemoryStore(snapshot_done=True), InMemoryDeadLetters()
    return Pipeline(FAST, source, sink, store, dlq), sink, store, dlq


async def test_an_id_over_512_bytes_is_dead_lettered_and_never_sent() -> None:
    at_limit = "é" * (MAX_ID_BYTES // 2)  # 256 characters, 512 bytes: allowed
    too_long = "é" * (MAX_ID_BYTES // 2 + 1)  # 257 characters, 514 bytes
    source = InMemorySource(
        [
            tx(
                10,
                RowChange(RowOp.INSERT, (at_limit,), {"k": at_limit}),
                RowChange(RowOp.INSERT, (too_long,), {"k": too_long}),
            )
        ]
    )
    pipeline, sink, store, dlq = pipeline_for(source)

    await run_until_checkpoint(pipeline, store, 10)

    assert set(sink.live) == {at_limit}
    (entry,) = dlq.entries.values()
    assert entry.change.doc_id == too_long
    assert entry.result.error_type == ID_TOO_LONG
    assert "514 bytes of UTF-8" in entry.result.reason
    assert "key the subscription on shorter columns" in entry.result.reason


async def test_a_delete_of_an_id_too_long_supersedes_its_dead_letter() -> None:
    too_long = "k" * (MAX_ID_BYTES + 1)
    source = InMemorySource([tx(10, RowChange(RowOp.INSERT, (too_long,), {"k": too_long}))])
    pipeline, sink, store, dlq = pipeline_for(source)
    await run_until_checkpoint(pipeline, store, 10)
    assert list(dlq.entries) == [too_long]

    source.push(tx(20, RowChange(RowOp.DELETE, (too_long,))))
    await run_until_checkpoint(pipeline, store, 20)

    assert dlq.entries == {} and sink.requests == 0


async def test_an_unchanged_toast_value_found_nowhere_is_a_dead_letter_not_a_partial_doc() -> None:
    unchanged = frozenset({"body"})
    source = InMemorySource(
        [tx(10, RowChange(RowOp.UPDATE, (1,), {"id": 1, "v": "b"}, None, unchanged))]
    )
    pipeline, sink, store, dlq = pipeline_for(source)

    await run_until_checkpoint(pipeline, store, 10)

    assert sink.live == {}
    (entry,) = dlq.entries.values()
    assert entry.result.error_type == INCOMPLETE_DOCUMENT
    assert entry.result.reason.startswith(
        "column body was unchanged and TOASTed; PostgreSQL did not send it and its current "
        "value could not be read"
    )
    assert "dead-lettered" in (store.last_error or "")


async def test_an_unchanged_value_is_read_from_the_row_under_its_new_key() -> None:
    # The key changed from 1 to 2 without an earlier image: the row now lives under 2.
    unchanged = frozenset({"body"})
    source = InMemorySource(
        [tx(10, RowChange(RowOp.UPDATE, (2,), {"id": 2, "v": "b"}, (1,), unchanged))]
    )
    source.rows[(2,)] = {"id": 2, "v": "b", "body": "big"}
    pipeline, sink, store, dlq = pipeline_for(source)

    await run_until_checkpoint(pipeline, store, 10)

    assert sink.live == {"2": {"id": 2, "v": "b", "body": "big"}}
    assert dlq.entries == {}
