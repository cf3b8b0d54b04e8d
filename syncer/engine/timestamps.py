"""Timestamped diffs (Materialize's SUBSCRIBE) turned into whole transactions.

A SUBSCRIBE streams updates `(mz_timestamp, mz_diff, row)` and progress messages.
A progress message at F says no update below F will ever arrive (more may still
arrive at F). So updates are held per timestamp, and when progress passes a
timestamp, its updates are consolidated per document key into one transaction,
followed by a PROGRESS transaction that moves the checkpoint to F. A timestamp is
never split: an update arrives as a retraction of the old row and an insertion of
the new one at the same timestamp, in no promised order, and only their sum says
whether the document changed, went away, or stayed.

The rows of a key form a multiset: a row is present while its net count is
positive (`mz_diff` may be above 1). Counts are kept only for keys that are not
plain (one row, counted once), so memory follows the exceptions, not the view: a
key not tracked is taken to hold, before this timestamp, exactly what its
retractions remove. A key with more than one distinct live row means the view's
key is not unique: that is reported as a data error and the document keeps the
newest row, without stopping the sync. Detection covers what one timestamp (or
one snapshot chunk) shows together and the keys already tracked: like
Materialize's own upsert sinks, it is best effort, not a uniqueness check.

The tracked keys are what a restart needs beside the checkpoint: resuming with
SNAPSHOT = false, a retraction of one of two copies must not read as a delete. So
whenever they change, the next transaction handed out carries them as
`source_state` (the state below its position), which the pipeline saves with the
checkpoint, and a resumed assembler starts from them.

With `ENVELOPE UPSERT`, Materialize does the per-key work itself: each update is
already `upsert`, `delete` or `key_violation` for its key and timestamp.

The old row: with the diff envelope an update is a retraction of the old row and an
insertion of the new one, so the row retracted at a timestamp is the change's `old`
(for a key already tracked, the one row it held before, when it held one). ENVELOPE
UPSERT sends only the new value: no old row.

Snapshots: the first progress message of a SUBSCRIBE is its AS OF time, and a
snapshot's rows all carry that time. They are only insertions, so they are handed
out in chunks as they arrive (SNAPSHOT_CHUNK) instead of being held whole; the
snapshot ends (SNAPSHOT_END) at the first progress beyond it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncer.engine.changes import DocKey, Document, Position, RowChange, RowOp, Transaction, TxKind


class Envelope(enum.StrEnum):
    DIFF = "diff"
    UPSERT = "upsert"


class UpsertState(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"
    KEY_VIOLATION = "key_violation"


@dataclass(frozen=True, slots=True)
class Update:
    """One update row of a SUBSCRIBE, its values already JSON-ready.

    `diff` is mz_diff for the diff envelope; with ENVELOPE UPSERT, `state` is
    mz_state and `row` holds the key and value columns (values None on a delete).
    """

    timestamp: Position
    row: Document
    diff: int = 0
    state: UpsertState | None = None


def timestamp_seconds(timestamp: Position) -> float:
    """Materialize's timestamps are milliseconds since the epoch."""
    return timestamp / 1000


@dataclass
class _Counted:
    row: Document
    count: int


@dataclass
class _Pending:
    timestamp: Position
    updates: list[Update] = field(default_factory=list)


class TimestampAssembler:
    """Collects one SUBSCRIBE's updates and hands out the timestamps progress closed."""

    def __init__(
        self,
        key_columns: Sequence[str],
        *,
        envelope: Envelope = Envelope.DIFF,
        snapshot: bool = False,
        sweep: bool = False,
        skip_below: Position | None = None,
        relation: str = "the view",
        state: Any = None,
    ) -> None:
        """`state` is the `source_state` saved with the checkpoint being resumed from."""
        self.key_columns = tuple(key_columns)
        self.envelope = envelope
        self.relation = relation
        self.frontier: Position | None = None
        """The latest progress: every timestamp below it has been handed out."""
        self.snapshot_at: Position | None = None
        """The snapshot's timestamp, once the first progress message named it."""
        self._want_snapshot = snapshot
        self._sweep = sweep
        # Updates below the resume checkpoint were acknowledged before a restart.
        self._skip_below = skip_below
        self._snapshot_rows: list[Update] = []
        self._pending: deque[_Pending] = deque()
        self._ready: deque[Transaction] = deque()
        self._tracked: dict[DocKey, dict[Hashable, _Counted]] = {}
        # A snapshot counts every row afresh: it replaces the previous checkpoint's state.
        self._state_changed = snapshot
        if not snapshot:
            self._restore(state)
        self._errors: list[str] = []
        self.skipped = 0
        """Updates dropped because they were below the resume checkpoint."""

    # -- input -------------------------------------------------------------------

    def add(self, update: Update) -> None:
        t = update.timestamp
        if self._skip_below is not None and t < self._skip_below:
            self.skipped += 1
            return
        if self.frontier is not None and t < self.frontier:
            raise ValueError(f"update at {t} is below the progress frontier {self.frontier}")
        if self.frontier is None and self._want_snapshot:
            # Without the AS OF, snapshot rows cannot be told from later updates (and a
            # sweep would remove fresh documents). Materialize sends it first since v0.50.
            raise ValueError(
                f"SUBSCRIBE sent an update at {t} before its first progress message; "
                "Materialize v0.50 or later is needed"
            )
        if self.snapshot_at is not None and t == self.snapshot_at and self._in_snapshot:
            self._snapshot_rows.append(update)
            return
        if not self._pending or self._pending[-1].timestamp != t:
            if self._pending and self._pending[-1].timestamp > t:
                raise ValueError(f"update at {t} after one at {self._pending[-1].timestamp}")
            self._pending.append(_Pending(t))
        self._pending[-1].updates.append(update)

    def progress(self, frontier: Position) -> None:
        """Progress at `frontier`: hand out every timestamp below it."""
        if self.frontier is None and self._want_snapshot:
            self.snapshot_at = frontier  # the first progress names the AS OF time
            self.frontier = frontier
            return
        if self.frontier is not None and frontier <= self.frontier:
            return
        if self._skip_below is not None and frontier < self._skip_below:
            return  # from before the checkpoint: already acknowledged
        self.frontier = frontier
        if self._in_snapshot and self.snapshot_at is not None and frontier > self.snapshot_at:
            self.flush_snapshot()
            # Complete below snapshot_at + 1 only: updates between it and `frontier`
            # follow, and a checkpoint must not pass them before they are written.
            self._ready.append(
                Transaction(
                    self.snapshot_at + 1,
                    timestamp_seconds(self.snapshot_at),
                    [],
                    TxKind.SNAPSHOT_END,
                    sweep_below=self.snapshot_at if self._sweep else None,
                    source_state=self._take_state(),
                )
            )
            self._want_snapshot = False
        while self._pending and self._pending[0].timestamp < frontier:
            pending = self._pending.popleft()
            state_below = self._take_state()
            changes = self._consolidate(pending.timestamp, pending.updates)
            if changes:
                t = pending.timestamp
                self._ready.append(
                    Transaction(t, timestamp_seconds(t), changes, source_state=state_below)
                )
            elif state_below is not None:
                self._state_changed = True  # no transaction to carry it: the next one will
        self._ready.append(
            Transaction(
                frontier,
                timestamp_seconds(frontier),
                [],
                TxKind.PROGRESS,
                source_state=self._take_state(),
            )
        )

    def flush_snapshot(self) -> None:
        """Hand out the snapshot rows received so far as one chunk."""
        if not self._snapshot_rows or self.snapshot_at is None:
            return
        rows, self._snapshot_rows = self._snapshot_rows, []
        changes = self._consolidate(self.snapshot_at, rows)
        self._ready.append(
            Transaction(
                self.snapshot_at,
                timestamp_seconds(self.snapshot_at),
                changes,
                TxKind.SNAPSHOT_CHUNK,
            )
        )

    # -- output ------------------------------------------------------------------

    def take(self, max_changes: int) -> list[Transaction]:
        """Ready transactions, whole, up to about `max_changes` row changes."""
        out: list[Transaction] = []
        count = 0
        while self._ready and (not out or count + len(self._ready[0].changes) <= max_changes):
            tx = self._ready.popleft()
            out.append(tx)
            count += len(tx.changes)
        return out

    def take_errors(self) -> list[str]:
        errors, self._errors = self._errors, []
        return errors

    @property
    def held(self) -> int:
        """Updates received and not yet handed out (open timestamps, unread chunks)."""
        return len(self._snapshot_rows) + sum(len(p.updates) for p in self._pending)

    @property
    def ambiguous_keys(self) -> list[DocKey]:
        """Keys that map to more than one distinct live row right now."""
        return [key for key, rows in self._tracked.items() if len(rows) > 1]

    @property
    def _in_snapshot(self) -> bool:
        return self._want_snapshot

    # -- state saved with the checkpoint -----------------------------------------

    def _take_state(self) -> Any:
        """The tracked keys as JSON if they changed since last taken, else None."""
        if not self._state_changed:
            return None
        self._state_changed = False
        return {
            "multiset": [
                [list(key), [[c.row, c.count] for c in rows.values()]]
                for key, rows in self._tracked.items()
            ]
        }

    def _restore(self, state: Any) -> None:
        if not isinstance(state, dict):
            return
        for key, rows in state.get("multiset", ()):
            self._tracked[tuple(key)] = {_freeze(row): _Counted(row, count) for row, count in rows}

    # -- consolidation -----------------------------------------------------------

    def _key(self, row: Document) -> DocKey:
        return tuple(row.get(column) for column in self.key_columns)

    def _consolidate(self, timestamp: Position, updates: Iterable[Update]) -> list[RowChange]:
        by_key: dict[DocKey, list[Update]] = {}
        for update in updates:
            by_key.setdefault(self._key(update.row), []).append(update)
        changes = []
        for key, key_updates in by_key.items():
            if self.envelope is Envelope.UPSERT:
                change = self._settle_upsert(timestamp, key, key_updates)
            else:
                change = self._settle_diffs(timestamp, key, key_updates)
            if change is not None:
                changes.append(change)
        return changes

    def _settle_diffs(
        self, timestamp: Position, key: DocKey, updates: list[Update]
    ) -> RowChange | None:
        prior = self._tracked.pop(key, None)
        if prior is not None:
            self._state_changed = True
        rows = {identity: _Counted(c.row, c.count) for identity, c in (prior or {}).items()}
        newest: Hashable | None = None
        for update in updates:
            identity = _freeze(update.row)
            counted = rows.get(identity)
            if counted is None:
                counted = rows[identity] = _Counted(update.row, 0)
            counted.count += update.diff
            if update.diff > 0:
                newest = identity
        live = {identity: c for identity, c in rows.items() if c.count > 0}
        if prior is None and all(c.count == 0 for c in rows.values()):
            return None  # inserted and retracted within the timestamp: nothing changed
        if len(live) > 1 or any(c.count != 1 for c in live.values()):
            self._tracked[key] = live
            self._state_changed = True
        old = _old_row(prior, rows)
        if not live:
            return RowChange(RowOp.DELETE, key, old=old)
        if len(live) > 1:
            self._errors.append(
                f"key {_show(key)} of {self.relation} has {len(live)} distinct rows at "
                f"{timestamp}: the view's key ({', '.join(self.key_columns)}) is not unique; "
                "the document holds one of them"
            )
        chosen = live[newest] if newest in live else next(iter(live.values()))
        if prior is not None and newest not in live and len(live) == len(prior):
            if all(identity in prior for identity in live):
                return None  # only counts changed: the document is the same
        return RowChange(RowOp.UPDATE, key, dict(chosen.row), old=old)

    def _settle_upsert(
        self, timestamp: Position, key: DocKey, updates: list[Update]
    ) -> RowChange | None:
        last = updates[-1]
        if last.state is UpsertState.UPSERT:
            return RowChange(RowOp.UPDATE, key, dict(last.row))
        if last.state is UpsertState.DELETE:
            return RowChange(RowOp.DELETE, key)
        self._errors.append(
            f"key {_show(key)} of {self.relation} has more than one live row at {timestamp} "
            f"(Materialize reported a key_violation for KEY ({', '.join(self.key_columns)})); "
            "the document keeps its previous value"
        )
        return None


def _old_row(
    prior: dict[Hashable, _Counted] | None, rows: dict[Hashable, _Counted]
) -> Document | None:
    """The row a key held before this timestamp, given its counts after it (`rows`).

    An untracked key held exactly what its retractions removed: the row whose count
    went below zero. A tracked key held its rows of `prior`: the single one, or the
    first whose count went down."""
    if prior is None:
        return next((c.row for c in rows.values() if c.count < 0), None)
    if len(prior) == 1:
        return next(iter(prior.values())).row
    return next((c.row for i, c in prior.items() if rows[i].count < c.count), None)


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a row's value (JSON objects and arrays included).

    Objects compare whatever their key order: a row saved in a jsonb column comes back
    with its keys sorted.
    """
    if isinstance(value, dict):
        return tuple(sorted(((k, _freeze(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, list):
        return ("[]", *(_freeze(v) for v in value))
    return value  # type: ignore[no-any-return]


def _show(key: DocKey) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)
