"""One owned subscription's life in the worker: apply requests, run, restart, stop.

The runner's control loop tells a supervisor when the subscription's row changed
(config saved, or an operator's request: pause, resume, resync, reset) by setting
`changed`; the supervisor stops the running pipeline (flush and checkpoint), reads
the row again and does what it now says. `leave()` ends it (deleted, disabled, or
no longer this worker's); cancelling the task stops the pipeline at once, without a
flush (the worker lost its ownership).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Protocol

import structlog

from syncer import dsn
from syncer.engine.pipeline import Pipeline, Status, sleep_unless_stopped
from syncer.errors import ConsoleDatabaseUnavailable, ForeignIndex, SyncError
from syncer.models import Subscription
from syncer.sinks.opensearch.aliases import check_resync, new_index_name, point_alias
from syncer.sources.kinds import format_position
from syncer.stores import DjangoStateStore, in_db
from syncer.wiring import sink_config
from syncer.worker.state import clear_checkpoint, clear_stats, subscription_row

log = structlog.get_logger(__name__)


class BuildPipeline(Protocol):
    def __call__(
        self,
        sub: Subscription,
        *,
        index: str | None = ...,
        on_resync_copied: Callable[[], Awaitable[None]] | None = ...,
    ) -> Pipeline: ...


_RETRY_REQUEST_AFTER = 5.0


class Supervisor:
    """Runs one subscription for as long as this worker owns it."""

    def __init__(
        self,
        subscription_id: int,
        name: str,
        version: tuple[datetime, int],
        *,
        build: BuildPipeline,
        running: dict[str, Pipeline],
        worker_stop: asyncio.Event,
        shutdown_timeout: float,
    ) -> None:
        self.subscription_id = subscription_id
        self.name = name
        self.version = version
        self.changed = asyncio.Event()
        self.leaving: str | None = None
        self.stop_timed_out = False
        self.pipeline: Pipeline | None = None
        """The pipeline running now, started at `pipeline_started_at` (epoch seconds)."""
        self.pipeline_started_at = 0.0
        self.settled = asyncio.Event()
        """Set once the first decision is taken: running, paused, or waiting to retry."""
        self._build = build
        self._running = running
        self._worker_stop = worker_stop
        self._shutdown_timeout = shutdown_timeout
        self._store = DjangoStateStore(subscription_id, name)
        self._log = log.bind(subscription=name)

    def notice(self, version: tuple[datetime, int], name: str) -> None:
        """The row's config or control version moved: apply it."""
        if version != self.version:
            self.version, self.name = version, name
            self.changed.set()

    def leave(self, reason: str) -> None:
        """Stop the pipeline (flushing) and end; `reason` says why, for the status."""
        if self.leaving is None:
            self.leaving = reason
            self.changed.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.settled.set()

    async def _run(self) -> None:
        while not self._worker_stop.is_set() and self.leaving is None:
            self.changed.clear()
            try:
                sub = await in_db(partial(subscription_row, self.subscription_id))
            except ConsoleDatabaseUnavailable as exc:
                self._log.warning("subscription_not_loaded", error=str(exc))
                await self._wait(_RETRY_REQUEST_AFTER)
                continue
            if sub is None:
                return  # deleted: the control loop notices too
            if sub.reset_requested_at is not None and not await self._reset(sub):
                self.settled.set()
                await self._wait(_RETRY_REQUEST_AFTER)
                continue
            if sub.paused:
                await self._store.set_status(
                    Status.PAUSED,
                    "paused by an operator: reading stopped, checkpoint kept at "
                    f"{format_position(sub.source_kind, sub.checkpoint)}; resume to go on",
                )
                self._log.info("subscription_paused")
                with contextlib.suppress(ConsoleDatabaseUnavailable):
                    await in_db(lambda: clear_stats(self.subscription_id))
                self.settled.set()
                await self._wait(None)
                continue
            if sub.resync_requested_at is not None and not await self._resync_allowed(sub):
                self.settled.set()
                await self._wait(None)
                continue
            await self._run_until_changed(self._pipeline_for(sub))
        if self.leaving == "disabled":
            await self._store.set_status(Status.STOPPED, "disabled: no worker runs it")

    def _pipeline_for(self, sub: Subscription) -> Pipeline:
        """The pipeline for the row as it is; a new-index resync writes elsewhere first."""
        requested = sub.resync_requested_at
        if requested is None or sub.resync_mode != Subscription.ResyncMode.NEW_INDEX:
            return self._build(sub)
        target = new_index_name(sub.index_name, requested)
        config = sink_config(sub, target)
        self._log.info("resync_new_index", index=target, alias=sub.index_name)

        async def swap() -> None:
            await point_alias(config, sub.index_name)

        return self._build(sub, index=target, on_resync_copied=swap)

    async def _resync_allowed(self, sub: Subscription) -> bool:
        """False, the status saying why, if the resync would remove what is not ours.

        Checked before the copy, which would otherwise run in full only to be refused at
        the sweep or the swap. The request stays: adopting the index lets it go on.
        """
        new_index = sub.resync_mode == Subscription.ResyncMode.NEW_INDEX
        try:
            await check_resync(sink_config(sub), new_index)
        except ForeignIndex as exc:
            self._log.error("resync_refused", error=str(exc))
            await self._store.set_status(
                Status.ERROR,
                f"{exc} Nothing was copied; the resync request stays (not retried: waiting "
                "for the subscription to change)",
                error=str(exc),
            )
            return False
        except SyncError as exc:
            # E.g. OpenSearch down: the pipeline waits for it; the sweep and the swap
            # check again.
            self._log.warning("resync_check_failed", error=str(exc))
        return True

    async def _reset(self, sub: Subscription) -> bool:
        """Forget the checkpoint; for PostgreSQL drop the slot, so the next start is a first."""
        requested = sub.reset_requested_at
        assert requested is not None
        cleanup = sub.kind.cleanup
        if cleanup is not None:
            try:
                conninfo = dsn.resolve(sub.source_dsn)
                await asyncio.to_thread(cleanup, conninfo, sub.slot_name)
            except SyncError as exc:
                message = (
                    f"checkpoint reset waiting: could not drop replication slot "
                    f"{sub.slot_name} on the source ({exc}); retrying"
                )
                self._log.warning("checkpoint_reset_failed", error=str(exc))
                await self._store.set_status(Status.ERROR, message, error=message)
                return False
        try:
            await in_db(lambda: clear_checkpoint(sub.pk, requested))
        except ConsoleDatabaseUnavailable as exc:
            self._log.warning("checkpoint_reset_failed", error=str(exc))
            return False
        sub.checkpoint = sub.checkpoint_at = sub.snapshot_completed_at = None
        sub.source_state = sub.reset_requested_at = None
        self._log.info("checkpoint_reset", slot=sub.slot_name)
        return True

    async def _run_until_changed(self, pipeline: Pipeline) -> None:
        stop = asyncio.Event()
        name = self.name  # a rename restarts the pipeline under the new name
        self._running[name] = pipeline
        self.pipeline, self.pipeline_started_at = pipeline, time.time()
        task = asyncio.create_task(self._guarded(pipeline, stop), name=f"run {name}")
        self.settled.set()
        try:
            await self._wait(None)
            stop.set()
            if not self._worker_stop.is_set():
                self._log.info("pipeline_restarting", reason=self.leaving or "changed")
            # On the worker's own stop the runner bounds the wait and cancels us.
            _, pending = await asyncio.wait({task}, timeout=self._shutdown_timeout)
            if pending:
                self.stop_timed_out = True
                self._log.error("pipeline_stop_timed_out", timeout_s=self._shutdown_timeout)
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._running.get(name) is pipeline:
                del self._running[name]
            self.pipeline = None

    async def _guarded(self, pipeline: Pipeline, stop: asyncio.Event) -> None:
        # Pipeline.run handles every failure itself; this guards against our own bugs.
        while not stop.is_set():
            try:
                await pipeline.run(stop)
            except Exception:
                self._log.exception("pipeline_task_crashed")
                await sleep_unless_stopped(stop, 5)

    async def _wait(self, timeout: float | None) -> None:
        """Until the row changes, the worker stops, or `timeout` seconds pass."""
        waits = [
            asyncio.ensure_future(self.changed.wait()),
            asyncio.ensure_future(self._worker_stop.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
