"""Consolidation: many row events per key in a batch become one write per document.

Each document keeps only its last state in the batch, written with the position of
the transaction that produced it. That is safe because every write is versioned
with its position: the final state and version are what a replay of every event
would leave. Unchanged TOAST values are carried over from an earlier full image in
the same batch where one exists; the rest is left for the sink to fill from the
previous document (`Change.missing`, `Change.fill_from`).

A change's `old` is the document before the batch: the old row the source sent with
the batch's first event of that key, None when that first event was an insert or
came without one. Later events' old rows are states inside the batch, not kept.
"""

from __future__ import annotations

from collections.abc import Iterable

from syncer.engine.changes import (
    Change,
    DocKey,
    Document,
    Op,
    RowChange,
    RowOp,
    Transaction,
    TxKind,
    doc_id,
)


def consolidate(transactions: Iterable[Transaction]) -> list[Change]:
    """Return one `Change` per document, in order of each document's last event."""
    latest: dict[str, Change] = {}
    # Only keys whose first event carried an old row: nothing is kept (nor looked up
    # beyond one attribute test) for a source that never sends one.
    olds: dict[str, Document] = {}
    for tx in transactions:
        if tx.kind is TxKind.SNAPSHOT_END:
            continue
        for row in tx.changes:
            new_id = doc_id(row.key)
            if row.old is not None:
                _first_old(olds, latest, row, new_id)
            if row.op is RowOp.DELETE:
                _put(latest, Change(Op.DELETE, new_id, row.key, tx.position, tx.commit_time))
                continue
            assert row.row is not None, "inserts and updates carry a row"
            key_changed = row.old_key is not None and row.old_key != row.key
            source_key: DocKey = row.old_key if key_changed and row.old_key else row.key
            source_id = doc_id(source_key) if key_changed else new_id
            # The row is copied only when carrying values over will change the document:
            # nothing else alters a change's doc, and most rows have nothing to carry.
            change = Change(
                Op.UPSERT,
                new_id,
                row.key,
                tx.position,
                tx.commit_time,
                doc=dict(row.row) if row.unchanged else row.row,
            )
            if row.unchanged:
                _carry_over(change, row.unchanged, source_id, source_key, latest.get(source_id))
            if key_changed:
                _put(latest, Change(Op.DELETE, source_id, source_key, tx.position, tx.commit_time))
            _put(latest, change)
    if olds:
        for doc, old in olds.items():
            latest[doc].old = old
    return list(latest.values())


def _first_old(
    olds: dict[str, Document], latest: dict[str, Change], row: RowChange, new_id: str
) -> None:
    """Keep `row.old` as the document before the batch if this is its key's first event.

    On an update that changed the key, the old row is the document of the old key
    (deleted by this event); the new key's document did not exist before."""
    assert row.old is not None
    key_changed = row.old_key is not None and row.old_key != row.key
    doc = doc_id(row.old_key) if key_changed and row.old_key is not None else new_id
    if doc not in latest and doc not in olds:
        olds[doc] = row.old


def _put(latest: dict[str, Change], change: Change) -> None:
    # Re-insert so the dict order follows each document's last event.
    latest.pop(change.doc_id, None)
    latest[change.doc_id] = change


def _carry_over(
    change: Change,
    unchanged: frozenset[str],
    source_id: str,
    source_key: DocKey,
    previous: Change | None,
) -> None:
    """Fill `change`'s unchanged columns from `previous`, or say where to find them."""
    assert change.doc is not None
    for column in unchanged:
        change.doc.pop(column, None)
    missing = set(unchanged)
    fill_id, fill_key = source_id, source_key
    if previous is not None and previous.op is Op.UPSERT and previous.doc is not None:
        for column in unchanged:
            if column in previous.doc:
                change.doc[column] = previous.doc[column]
                missing.discard(column)
        # What the earlier image lacked, it was going to fetch from its own source.
        fill_id = previous.fill_from or previous.doc_id
        fill_key = previous.fill_key or previous.key
    change.missing = frozenset(missing)
    if missing and fill_id != change.doc_id:
        change.fill_from, change.fill_key = fill_id, fill_key
