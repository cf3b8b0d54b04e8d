"""The seams of the engine: a source, a sink, a state store and a checkpoint hold.

Adapters implement these for real systems (`syncer.sources`, `syncer.sinks`,
`syncer.stores`); `syncer.engine.testing` implements them in memory.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from syncer.engine.changes import Change, DocKey, Document, Position, Transaction
from syncer.engine.outcomes import ItemResult


class NoticeKind(enum.StrEnum):
    DATA_ERROR = "data_error"
    """The source's data breaks a rule the sync relies on (e.g. a key that is not unique)."""
    RESNAPSHOT = "resnapshot"
    """The source could not resume from the checkpoint and copies everything again."""
    COPY_RESUMED = "copy_resumed"
    """An interrupted copy goes on from its cursor, not from the first row."""
    COPY_ONE_PASS = "copy_one_pass"
    """The copy cannot be chunked (the message says why): a restart starts it over."""


@dataclass(frozen=True, slots=True)
class SourceNotice:
    """Something an operator should learn at once, reported by a source as it happens."""

    kind: NoticeKind
    message: str


@dataclass(frozen=True, slots=True)
class ResumeState:
    """Where a subscription stands when its pipeline starts."""

    checkpoint: Position | None
    snapshot_done: bool
    snapshot_mode: str  # "index" | "discard"
    source_state: Any = None
    """The `Transaction.source_state` saved with the checkpoint, if any."""
    copy_request: str = ""
    """Which request a wanted copy answers: "" for the first copy, an operator's resync
    its time. A source resumes an interrupted copy only if it was made for the same one."""


class Source(Protocol):
    async def open(self, resume: ResumeState) -> None:
        """Connect and validate; prepare to read after the checkpoint (or to snapshot)."""

    async def read(self, max_changes: int) -> list[Transaction]:
        """Return transactions ready now, about `max_changes` row changes at most.

        Whole transactions only. An empty list means nothing is pending. Reading
        again before `acknowledge` returns the transactions after those already read.
        """

    async def wait(self, timeout: float) -> None:
        """Return when `read` may have something new, or after `timeout` seconds.

        A source that is pushed changes returns as they arrive; one that polls sleeps."""

    async def acknowledge(self, position: Position) -> None:
        """Everything at or before `position` is in the sink: the source may forget it."""

    async def fetch_rows(self, keys: Sequence[DocKey]) -> dict[DocKey, Document]:
        """Current rows by key, for values the change feed did not carry."""

    async def warnings(self) -> list[str]:
        """Conditions an operator should see in the status (e.g. WAL piling up)."""

    def take_notices(self) -> list[SourceNotice]:
        """What happened since the last call that the status and counters must show."""

    def progressed_at(self) -> float | None:
        """Wall-clock time (epoch seconds) the source last said it is complete up to.

        Staleness is now minus this: it grows when the source stalls, even when
        nothing changes. None until the source has said anything.
        """

    async def close(self) -> None: ...


class Sink(Protocol):
    async def open(self) -> None:
        """Connect and create the index if it is missing (never empty it)."""

    async def write(self, changes: Sequence[Change]) -> list[ItemResult]:
        """Write `changes` in one bulk request; one result per change, in order.

        Raises SinkUnavailable when the request as a whole fails.
        """

    async def fetch(self, doc_ids: Sequence[str]) -> dict[str, Document]:
        """The indexed documents among `doc_ids`."""

    async def sweep(self, below: Position) -> int:
        """Delete documents whose version is below `below`; return how many."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Rejected:
    """A change the sink refused for good (or after the retry budget): a dead letter."""

    change: Change
    result: ItemResult
    attempts: int


class DeadLetterQueue(Protocol):
    async def put(self, rejected: Sequence[Rejected]) -> None:
        """Record rejected changes, one entry per document.

        An entry for a document already in the queue is replaced only by a change of
        an equal or newer version.
        """

    async def supersede(self, written: Sequence[Change]) -> int:
        """Remove entries that these successful writes made obsolete; return how many.

        An entry goes when its document was written at its version or a newer one, so
        a later retry can never bring back stale data.
        """


class StateStore(Protocol):
    async def load(self) -> ResumeState: ...

    async def save_checkpoint(self, position: Position, source_state: Any = None) -> None:
        """Save the checkpoint and, unless None, the source's state that goes with it."""

    async def snapshot_completed(self, position: Position, source_state: Any = None) -> None:
        """The copy is complete at `position`: save it as the checkpoint, with the
        source's state there unless None (a chunked copy's cursor is gone from it)."""

    async def set_status(self, status: str, message: str = "", error: str | None = None) -> None:
        """Record the status; `error`, when given, becomes the last error."""


class CheckpointHold(Protocol):
    """Deliveries the checkpoint must wait for (live subscriptions' NATS events).

    A change handed to an observer (`BatchObserver.batch_written`) may still be on its
    way to a durable consumer when OpenSearch has acknowledged it. Saving a checkpoint at
    or past it would make a crash lose it: the source resumes after the checkpoint. So
    the pipeline saves only positions below `lowest_unsettled`, up to a time bound.
    """

    def lowest_unsettled(self) -> Position | None:
        """The lowest position among the changes handed over whose delivery is not
        settled (delivered or given up, counted); None when none is pending.

        Called on every acknowledged batch and every re-check: it must be cheap."""
