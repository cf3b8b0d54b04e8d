"""The worker's verifications: those asked for its subscriptions, and its schedule's.

Every `POLL` seconds it fails the verifications whose runner stopped writing
(`verify.abandon_stale`), asks for one of each owned subscription whose last is older
than `every` (`runsyncer --verify-every`, with `--verify-sample`), and runs the oldest
one requested of the subscriptions it owns, one at a time: a verification reads the
whole table and index, and the sync must keep its share of the source and OpenSearch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import structlog
from django.utils import timezone

from syncer.engine.pipeline import sleep_unless_stopped
from syncer.errors import ConsoleDatabaseUnavailable, OperatorError
from syncer.models import Subscription, Verification
from syncer.operations import verify
from syncer.stores import in_db

log = structlog.get_logger(__name__)

POLL = 2.0


class Verifications:
    def __init__(
        self,
        worker_id: str,
        owned: Callable[[], list[int]],
        every: float | None = None,
        sample: int | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.every = every
        self.sample = sample
        self._owned = owned

    async def run(self, stop: asyncio.Event) -> None:
        while not await sleep_unless_stopped(stop, POLL):
            try:
                await self.once()
            except ConsoleDatabaseUnavailable as exc:
                log.warning("verifications_not_polled", error=str(exc))

    async def once(self) -> Verification | None:
        """One round: abandon, schedule, run the next; return what ran, if anything."""
        owned = self._owned()
        if not owned:
            return None
        await in_db(verify.abandon_stale)
        if self.every:
            await in_db(lambda: self._schedule(owned))
        found = await in_db(lambda: self._next(owned))
        if found is None:
            return None
        return await verify.run(found, worker=self.worker_id)

    def _schedule(self, owned: list[int]) -> None:
        assert self.every
        since = timezone.now() - timedelta(seconds=self.every)
        recent = set(
            Verification.objects.filter(
                subscription_id__in=owned, requested_at__gte=since
            ).values_list("subscription_id", flat=True)
        )
        for sub in Subscription.objects.filter(pk__in=set(owned) - recent):
            try:
                verify.request(sub, requested_by="schedule", sample=self.sample)
            except OperatorError as exc:  # paused, copying, one running: the next round
                log.info("verification_not_scheduled", subscription=sub.name, reason=str(exc))

    @staticmethod
    def _next(owned: list[int]) -> Verification | None:
        return (
            Verification.objects.filter(
                subscription_id__in=owned, state=Verification.State.REQUESTED
            )
            .order_by("requested_at")
            .first()
        )
