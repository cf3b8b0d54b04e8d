"""This worker's share of the shared copies (SYNCER_COPY_SHARED; `syncer.leases`).

Every worker runs one, whether or not it owns the subscription being copied: it looks
for a subscription with a range left, takes one, and runs a helper pipeline
(`wiring.build_copy_helper`) that copies that range and the next ones until none is
left; then it looks again. One helper at a time: a worker is one process, and the
point of sharing is to spread the copy over processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from syncer.dsn import console_conninfo
from syncer.engine.pipeline import Pipeline, sleep_unless_stopped
from syncer.errors import SyncError
from syncer.leases import LeaseHolder
from syncer.models import CopyLease, Subscription
from syncer.sources.postgres.helper import CopyHelperSource
from syncer.stores import in_db
from syncer.wiring import build_copy_helper

log = structlog.get_logger(__name__)

LOOK_EVERY = 1.0
"""Seconds between looks for a range to copy, while there is none."""
STOP_TIMEOUT = 30.0


def _wanting(names: Sequence[str] | None) -> list[Subscription]:
    """The subscriptions (of `names`, if given) with a shared copy's range left."""
    open_ranges = CopyLease.objects.filter(done=False).values("subscription_id")
    subs = Subscription.objects.filter(pk__in=open_ranges, enabled=True, paused=False)
    if names is not None:
        subs = subs.filter(name__in=names)
    return list(subs)


class CopyCrew:
    def __init__(self, worker_id: str, names: Sequence[str] | None = None) -> None:
        self.worker_id = worker_id
        self.names = None if names is None else list(names)

    async def run(self, stop: asyncio.Event) -> None:
        """Help until `stop`."""
        while not stop.is_set():
            helped = False
            try:
                for sub in await in_db(lambda: _wanting(self.names)):
                    if stop.is_set():
                        break
                    helped = await self._help(sub, stop) or helped
            except SyncError as exc:  # the console database or a source: look again later
                log.warning("copy_help_failed", worker=self.worker_id, error=str(exc))
            if not helped:
                await sleep_unless_stopped(stop, LOOK_EVERY)

    async def _help(self, sub: Subscription, stop: asyncio.Event) -> bool:
        """Copy ranges of `sub`'s copy until none is left; False if there was none free."""
        leases = LeaseHolder(sub.pk, self.worker_id, console_conninfo())
        try:
            first = await leases.take()
            if first is None:
                return False
            pipeline = build_copy_helper(sub, leases, first)
            log.info("copy_help_started", subscription=sub.name, worker=self.worker_id)
            await self._run(pipeline, stop)
            return True
        finally:
            await leases.close()

    async def _run(self, pipeline: Pipeline, stop: asyncio.Event) -> None:
        source = pipeline.source
        assert isinstance(source, CopyHelperSource)
        halt = asyncio.Event()
        running = asyncio.create_task(pipeline.run(halt), name=f"copy help {pipeline.config.name}")
        finished = asyncio.create_task(source.finished.wait())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({running, finished, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halt.set()
            for waiting in (finished, stopping):
                waiting.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running), STOP_TIMEOUT)
            log.info(
                "copy_help_ended",
                subscription=pipeline.config.name,
                worker=self.worker_id,
                ranges=source.ranges_done,
            )
