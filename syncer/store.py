"""The pipeline's state store, kept on the Subscription row in the console's database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from asgiref.sync import sync_to_async
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from syncer.engine.changes import Position
from syncer.engine.interfaces import ResumeState
from syncer.errors import UnavailableError
from syncer.models import Subscription

log = structlog.get_logger(__name__)
T = TypeVar("T")

_MESSAGE_LIMIT = 4000


class ConsoleDatabaseUnavailable(UnavailableError):
    """The console's own database cannot be written: checkpoints cannot be saved."""


async def _db(function: Callable[[], T]) -> T:
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

    def __init__(self, subscription_id: int, name: str) -> None:
        self.subscription_id = subscription_id
        self.name = name

    def _update(self, **fields: Any) -> None:
        Subscription.objects.filter(pk=self.subscription_id).update(**fields)

    async def load(self) -> ResumeState:
        def load() -> ResumeState:
            sub = Subscription.objects.get(pk=self.subscription_id)
            return ResumeState(
                sub.checkpoint, sub.snapshot_completed_at is not None, sub.snapshot_mode
            )

        return await _db(load)

    async def save_checkpoint(self, position: Position) -> None:
        await _db(lambda: self._update(checkpoint=position, checkpoint_at=timezone.now()))

    async def snapshot_completed(self, position: Position) -> None:
        now = timezone.now()
        await _db(
            lambda: self._update(checkpoint=position, checkpoint_at=now, snapshot_completed_at=now)
        )

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
            await _db(lambda: self._update(**fields))
        except ConsoleDatabaseUnavailable as exc:
            # The status is for people; losing one update must not stop the sync.
            log.warning("status_not_saved", subscription=self.name, status=status, error=str(exc))
