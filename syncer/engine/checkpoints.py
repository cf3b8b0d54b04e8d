"""Saving a pipeline's checkpoint, at most once per `interval`.

Every acknowledged batch moves the checkpoint; saving it is a write to the console
database (a round trip, ~1.5 ms). At a trickle of changes, batches hold one change
each, and a save per batch was 40% of the writer's time at 300 changes/s. So a save
comes at once when the last one is `interval` old, and otherwise once that much time
has passed, with the latest position (later positions supersede earlier ones: a
checkpoint is "everything up to here is in OpenSearch").

A crash loses at most `interval` of checkpoint progress: those changes are written
again on resume, which versioned writes make harmless. Positions saved only go up,
whoever saves them (a batch, the trailing save, a completed snapshot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from syncer.engine.changes import Position
from syncer.engine.interfaces import StateStore

_RETRY_AFTER = 0.1
"""Seconds at least before a failed delayed save is tried again."""


class CheckpointSaver:
    """One pipeline's checkpoint saves; `on_saved` is told each position saved."""

    def __init__(
        self,
        store: StateStore,
        interval: float,
        clock: Callable[[], float],
        on_saved: Callable[[Position, float], None],
        log: Any,
    ) -> None:
        self.store = store
        self.interval = interval
        """Seconds between saves at most (0: every batch's checkpoint is saved)."""
        self.clock = clock
        self._on_saved = on_saved
        self._log = log
        self._saved: Position | None = None
        self._saved_at = float("-inf")
        """When the last save began."""
        self._pending: tuple[Position, Any] | None = None
        """The latest position not saved yet, with the latest source state seen."""
        self._lock = asyncio.Lock()
        self._trailing: asyncio.Task[None] | None = None
        self._failing = False

    def resumed(self, checkpoint: Position | None) -> None:
        """A session starts from `checkpoint`: nothing is pending."""
        self.cancel()
        self._saved, self._pending = checkpoint, None
        self._saved_at = float("-inf")

    async def save(self, position: Position, source_state: Any, now: float) -> None:
        """Save `position`, now or within `interval` (raises what the store raises)."""
        if self._pending is not None:
            _, earlier = self._pending
            source_state = earlier if source_state is None else source_state
        self._pending = (position, source_state)
        if now - self._saved_at >= self.interval and not self._lock.locked():
            await self.flush()
        elif self._trailing is None or self._trailing.done():
            self._trailing = asyncio.create_task(self._save_later())

    def saved_elsewhere(self, position: Position) -> None:
        """The store saved `position` itself (a completed snapshot)."""
        if self._saved is None or position > self._saved:
            self._saved = position
        if self._pending is not None and self._pending[0] <= position:
            self._pending = None

    async def flush(self) -> None:
        """Save what is pending now."""
        async with self._lock:
            if self._pending is None:
                return
            position, source_state = self._pending
            if self._saved is not None and position <= self._saved:
                self._pending = None
                return
            # From the start of the save: a batch acknowledged during it waits for the
            # next round instead of saving again right after it.
            self._saved_at = self.clock()
            await self.store.save_checkpoint(position, source_state)
            self._saved = position
            if self._pending is not None and self._pending[0] <= position:
                self._pending = None  # not if a later one came in meanwhile
            self._on_saved(position, self.clock())

    def cancel(self) -> None:
        if self._trailing is not None:
            self._trailing.cancel()
            self._trailing = None

    async def _save_later(self) -> None:
        """Save what is pending once the last save is `interval` old, until none is."""
        while self._pending is not None:
            due = self._saved_at + self.interval - self.clock()
            if due > 0:  # a batch's own save may have come meanwhile: wait from it
                await asyncio.sleep(due)
                continue
            try:
                await self.flush()
            except Exception as exc:  # a batch's own save raises it and ends the session
                if not self._failing:
                    self._log.warning("checkpoint_save_failed", error=str(exc))
                self._failing = True
                await asyncio.sleep(_RETRY_AFTER)  # also when `interval` is 0
            else:
                self._failing = False
