"""The pipeline's state in the console's database: checkpoint and status on the
Subscription row, and the subscription's dead letters."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
import structlog
from asgiref.sync import sync_to_async
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from syncer.engine.changes import Change, Op, Position
from syncer.engine.interfaces import Rejected, ResumeState
from syncer.errors import ConfigError, ConsoleDatabaseUnavailable
from syncer.models import DeadLetter, Subscription, doc_id_digest

log = structlog.get_logger(__name__)
T = TypeVar("T")

_MESSAGE_LIMIT = 4000


async def in_db(function: Callable[[], T]) -> T:
    """Run ORM work in the worker's database thread; raise ConsoleDatabaseUnavailable."""

    def call() -> T:
        close_old_connections()  # a long-lived worker must survive a database restart
        try:
            return function()
        except DatabaseError as exc:
            close_old_connections()
            raise ConsoleDatabaseUnavailable(f"console database: {exc}") from exc

    return await sync_to_async(call, thread_sensitive=True)()


class DjangoStateStore:
    """Reads and writes one subscription's checkpoint and status."""

    def __init__(
        self,
        subscription_id: int,
        name: str,
        on_resync_copied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.subscription_id = subscription_id
        self.name = name
        self.on_resync_copied = on_resync_copied
        """Runs once a resync's copy is complete, before the request is cleared."""
        self._resync_loaded: datetime | None = None

    def _update(self, **fields: Any) -> None:
        Subscription.objects.filter(pk=self.subscription_id).update(**fields)

    async def load(self) -> ResumeState:
        """The resume point; an operator's resync asks for a copy and a sweep.

        While `resync_requested_at` is set the snapshot counts as not done, in index
        mode, so every source copies everything again and then removes the documents
        the copy did not contain; the request stays until that completes.
        """

        def load() -> ResumeState:
            sub = Subscription.objects.filter(pk=self.subscription_id).first()
            if sub is None:
                raise ConfigError(f"subscription {self.name} no longer exists")
            self._resync_loaded = sub.resync_requested_at
            if sub.resync_requested_at is not None:
                return ResumeState(
                    sub.checkpoint,
                    False,
                    Subscription.SnapshotMode.INDEX,
                    sub.source_state,
                    copy_request=sub.resync_requested_at.isoformat(),
                )
            return ResumeState(
                sub.checkpoint,
                sub.snapshot_completed_at is not None,
                sub.snapshot_mode,
                sub.source_state,
            )

        return await in_db(load)

    async def save_checkpoint(self, position: Position, source_state: Any = None) -> None:
        fields: dict[str, Any] = {"checkpoint": position, "checkpoint_at": timezone.now()}
        if source_state is not None:
            fields["source_state"] = source_state  # one UPDATE: they must never disagree
        await in_db(lambda: self._update(**fields))

    async def snapshot_completed(self, position: Position, source_state: Any = None) -> None:
        resync = self._resync_loaded
        if resync is not None and self.on_resync_copied is not None:
            # E.g. swap the alias to the new index: a crash before the request is
            # cleared below copies again into the same index and swaps again.
            await self.on_resync_copied()
        now = timezone.now()

        def completed() -> None:
            with transaction.atomic():
                fields: dict[str, Any] = {}
                if source_state is not None:
                    fields["source_state"] = source_state
                self._update(
                    checkpoint=position, checkpoint_at=now, snapshot_completed_at=now, **fields
                )
                if resync is not None:
                    # Only the request this copy answered: a newer one starts another.
                    Subscription.objects.filter(
                        pk=self.subscription_id, resync_requested_at=resync
                    ).update(resync_requested_at=None, resync_mode="")

        await in_db(completed)
        if resync is not None:
            self._resync_loaded = None
            log.info("resync_completed", subscription=self.name)

    async def set_status(self, status: str, message: str = "", error: str | None = None) -> None:
        now = timezone.now()
        fields: dict[str, Any] = {
            "status": status,
            "status_message": message[:_MESSAGE_LIMIT],
            "status_changed_at": now,
        }
        if error is not None:
            fields["last_error"] = error[:_MESSAGE_LIMIT]
            fields["last_error_at"] = now
        try:
            await in_db(lambda: self._update(**fields))
        except ConsoleDatabaseUnavailable as exc:
            # The status is for people; losing one update must not stop the sync.
            log.warning("status_not_saved", subscription=self.name, status=status, error=str(exc))


_PUT_SQL = """
INSERT INTO {table} (subscription_id, doc_id, doc_id_digest, action, payload, version,
                     attempts, error_status, error_type, error_reason, first_failed_at,
                     last_attempt_at)
VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT ON CONSTRAINT deadletter_one_per_document DO UPDATE SET
    action = EXCLUDED.action, payload = EXCLUDED.payload, version = EXCLUDED.version,
    attempts = EXCLUDED.attempts, error_status = EXCLUDED.error_status,
    error_type = EXCLUDED.error_type, error_reason = EXCLUDED.error_reason,
    last_attempt_at = EXCLUDED.last_attempt_at
WHERE {table}.version <= EXCLUDED.version
"""

_SUPERSEDE_SQL = """
DELETE FROM {table} AS d
USING unnest(%s::text[], %s::text[], %s::bigint[]) AS w(doc_id, digest, version)
WHERE d.subscription_id = %s AND d.doc_id_digest = w.digest AND d.doc_id = w.doc_id
  AND d.version <= w.version
"""


class DjangoDeadLetters:
    """One subscription's dead-letter queue, in the console's database.

    Superseding runs after every successful bulk, so it is skipped while the
    subscription has no entries: only this worker adds them, and an `exists` check
    every `recheck_every` seconds notices entries removed by an operator.
    """

    def __init__(self, subscription_id: int, name: str, recheck_every: float = 30.0) -> None:
        self.subscription_id = subscription_id
        self.name = name
        self.recheck_every = recheck_every
        self._has_entries: bool | None = None
        self._checked_at = 0.0

    async def put(self, rejected: Sequence[Rejected]) -> None:
        now = timezone.now()
        params = [
            (
                self.subscription_id,
                item.change.doc_id,  # whole: entries are told apart by its digest
                doc_id_digest(item.change.doc_id),
                DeadLetter.Action.DELETE
                if item.change.op is Op.DELETE
                else DeadLetter.Action.INDEX,
                None
                if item.change.doc is None
                else orjson.dumps(item.change.doc, option=orjson.OPT_NON_STR_KEYS).decode(),
                item.change.version,
                item.attempts,
                item.result.status or None,
                item.result.error_type[:200],
                item.result.reason[:_MESSAGE_LIMIT],
                now,
                now,
            )
            for item in rejected
        ]

        def put() -> None:
            with connection.cursor() as cursor:
                cursor.executemany(_PUT_SQL.format(table=_table()), params)

        await in_db(put)
        self._has_entries = True

    async def supersede(self, written: Sequence[Change]) -> int:
        if not written or not await self._may_have_entries():
            return 0
        doc_ids = [change.doc_id for change in written]
        digests = [doc_id_digest(doc_id) for doc_id in doc_ids]
        versions = [change.version for change in written]

        def supersede() -> int:
            with connection.cursor() as cursor:
                cursor.execute(
                    _SUPERSEDE_SQL.format(table=_table()),
                    [doc_ids, digests, versions, self.subscription_id],
                )
                return int(cursor.rowcount)

        removed = await in_db(supersede)
        if removed:
            log.info("dead_letters_superseded", subscription=self.name, count=removed)
        return removed

    async def _may_have_entries(self) -> bool:
        now = time.monotonic()
        if self._has_entries is None or now - self._checked_at >= self.recheck_every:
            self._checked_at = now
            self._has_entries = await in_db(
                DeadLetter.objects.filter(subscription_id=self.subscription_id).exists
            )
        return self._has_entries


def _table() -> str:
    return connection.ops.quote_name(DeadLetter._meta.db_table)
