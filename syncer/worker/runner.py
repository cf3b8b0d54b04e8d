"""The worker: every enabled subscription it owns, each a pipeline, in one asyncio loop.

Every `SYNCER_CONTROL_INTERVAL` (1 s) the control loop reads the subscriptions
table (one query): it takes the advisory lock of each enabled subscription no other
worker holds and starts a supervisor for it (`syncer.worker.supervisor`), tells running
supervisors when their row changed (config saved, pause, resume, resync, reset),
and stops those deleted or disabled. Several workers may run: each subscription is
run by the one holding its lock (`syncer.worker.ownership`); when a worker dies, the others
take its subscriptions within a few control intervals. If this worker's lock
connection fails it owns nothing any more and stops every pipeline at once.

Beside it: the heartbeat (a WorkerHeartbeat row every 2 s), the figures the admin
shows (lag, staleness, throughput on each Subscription row every 2 s), the live
monitor's feed (`syncer.live.publisher`: each pipeline's events, and once a second a
snapshot per subscription and a heartbeat on the channel layer), and the periodic
dead-letter retry. On stop, pipelines get `shutdown_timeout` seconds to
flush and checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import structlog
from channels.layers import get_channel_layer
from django.db import connections
from django.utils import timezone

from syncer import conf
from syncer.engine.pipeline import Observer, Pipeline, sleep_unless_stopped
from syncer.errors import (
    ConsoleDatabaseUnavailable,
    MetricsPortUnavailable,
    OwnershipLost,
    UnknownSubscription,
)
from syncer.live.messages import SnapshotMessage
from syncer.live.publisher import LivePublisher
from syncer.models import Subscription
from syncer.operations import dead_letters, source_fields, verify
from syncer.operations import live_subscriptions as live_subscription_ops
from syncer.sources.kinds import format_position
from syncer.stores import in_db
from syncer.wiring import build_pipeline
from syncer.worker import http, metrics, state
from syncer.worker.copy_crew import CopyCrew
from syncer.worker.live_subscriptions import LiveMatching, MatchingObserver, Observers
from syncer.worker.ownership import Ownership
from syncer.worker.supervisor import Supervisor
from syncer.worker.throughput import Throughput
from syncer.worker.verifier import Verifications

log = structlog.get_logger(__name__)
T = TypeVar("T")


def check_names(names: Sequence[str]) -> None:
    """Raise UnknownSubscription unless each name is a subscription's (any, enabled or not).

    It reads the subscriptions table even with no names: `runsyncer` calls it first, to
    find the console database missing or not migrated before anything starts.
    """
    known = state.subscription_names()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise UnknownSubscription(unknown, known)


class Runner:
    """Run the subscriptions this worker owns until `stop`.

    `names` limits the worker to those subscriptions (None: every subscription in the
    table, including ones created later); `check_names` says whether they exist.
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        shutdown_timeout: float = 30.0,
        dlq_retry_every: float | None = None,
        metrics_port: int | None = None,
        *,
        live: bool = True,
        live_subscriptions: bool = True,
        metrics_host: str = http.DEFAULT_HOST,
        verify_every: float | None = None,
        verify_sample: int | None = None,
    ) -> None:
        self.names = None if names is None else list(names)
        self.shutdown_timeout = shutdown_timeout
        self.dlq_retry_every = dlq_retry_every
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.live = live
        self.worker_id = state.new_worker_id()
        self.verifications = Verifications(
            self.worker_id, lambda: list(self.supervisors), verify_every, verify_sample
        )
        """Runs the verifications of the subscriptions this worker owns (and schedules)."""
        self.publisher: LivePublisher | None = None
        """The live monitor's feed, while the worker runs (None with live off)."""
        self.matching: LiveMatching | None = None
        """Live subscriptions' matching and delivery, while the worker runs (None if off)."""
        self.live_subscriptions = live_subscriptions
        self.ownership = Ownership(self.worker_id)
        self.pipelines: dict[str, Pipeline] = {}
        """The pipelines running now, by subscription name (metrics read it)."""
        self.supervisors: dict[int, Supervisor] = {}
        """The subscriptions this worker owns, by id."""
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._throughput: dict[str, tuple[Pipeline, Throughput]] = {}
        self._verified_cache: tuple[float, Mapping[str, dict[str, Any]]] = (0.0, {})
        self._stop = asyncio.Event()
        self.started = False
        self._locks_down = False
        """True once the first control pass has started what this worker could own."""

    def _not_ready_reason(self) -> str | None:
        """Why the worker as a whole is not ready (for /ready), or None."""
        if not self.started:
            return "starting: taking the subscriptions this worker can own"
        if not self.ownership.connected:
            return "lost its connection to the console database (ownership locks): reconnecting"
        return None

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until `stop`; return False if the pipelines did not stop in time."""
        stop_metrics = None
        if self.metrics_port is not None:
            try:
                stop_metrics = metrics.serve(
                    self.metrics_port,
                    lambda: self.pipelines,
                    host=self.metrics_host,
                    stall_after=conf.worker().stall_after,
                    worker_ready=self._not_ready_reason,
                    live=lambda: self.publisher,
                    nats=lambda: None if self.matching is None else self.matching.nats,
                    matching=lambda: self.matching,
                )
            except OSError as exc:
                raise MetricsPortUnavailable(
                    f"cannot serve metrics on {self.metrics_host}:{self.metrics_port}: "
                    f"{exc.strerror or exc}; choose another --metrics-port (or --metrics-host)"
                ) from None
            log.info("metrics_serving", host=self.metrics_host, port=self.metrics_port)
        self._stop = stop
        try:
            return await self._run(stop)
        finally:
            if stop_metrics is not None:
                stop_metrics()
            await self.ownership.close()
            await state.close_connections()

    async def _run(self, stop: asyncio.Event) -> bool:
        started_at = timezone.now()
        log.info("worker_started", worker=self.worker_id, only=self.names)
        live_stop = asyncio.Event()
        publishing = self._start_live(live_stop)
        matching_stop = asyncio.Event()
        matching = self._start_matching(matching_stop)
        await self._control_once()  # start what we can at once, not a second later
        if self.matching is not None:
            await self.refresh_live_subscriptions()  # before the first batch is written
        await self._settle()
        helpers = [
            asyncio.create_task(self._control(), name="control"),
            asyncio.create_task(self._heartbeat(started_at), name="heartbeat"),
            asyncio.create_task(self._publish_stats(), name="stats"),
            asyncio.create_task(self.verifications.run(stop), name="verifications"),
        ]
        if self.dlq_retry_every:
            helpers.append(asyncio.create_task(self._retry_dead_letters(self.dlq_retry_every)))
        if self.publisher is not None:
            helpers.append(asyncio.create_task(self._feed_live(self.publisher), name="live"))
        if self.matching is not None:
            helpers.append(asyncio.create_task(self._refresh_live(), name="live refresh"))
            helpers.append(asyncio.create_task(self._expire_live(), name="live expiry"))
        crew = None
        if conf.worker().copy_shared:
            crew = asyncio.create_task(
                CopyCrew(self.worker_id, self.names).run(stop), name="copy crew"
            )
        await stop.wait()
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if crew is not None:
            await asyncio.gather(crew, return_exceptions=True)  # it stops with `stop`
        log.info("worker_stopping", timeout_s=self.shutdown_timeout)
        flushed = await self._stop_all()
        await self._stop_live(publishing, live_stop)
        await self._stop_matching(matching, matching_stop)
        await self._quietly(lambda: state.remove_heartbeat(self.worker_id))
        if flushed:
            log.info("worker_stopped")
        return flushed

    async def _settle(self, timeout: float = 10.0) -> None:
        """Wait (a bounded while) until the first subscriptions run, are paused or wait."""
        settling = [asyncio.ensure_future(sup.settled.wait()) for sup in self.supervisors.values()]
        if settling:
            _, pending = await asyncio.wait(settling, timeout=timeout)
            for waiting in pending:
                waiting.cancel()
        self.started = True

    async def _stop_all(self) -> bool:
        """Stop every supervisor (the stop event is set); False if one did not flush."""
        tasks = dict(self._tasks)
        if tasks:
            # Each supervisor bounds its own flush; this is the backstop.
            _, pending = await asyncio.wait(tasks.values(), timeout=self.shutdown_timeout + 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        late = sorted(
            sup.name
            for sub_id, sup in self.supervisors.items()
            if sup.stop_timed_out or not tasks[sub_id].done() or tasks[sub_id].cancelled()
        )
        owned = list(self.supervisors)
        self.supervisors.clear()
        self._tasks.clear()
        if owned:
            await self._quietly(lambda: state.disown(owned, self.worker_id))
        if late:
            log.error("worker_stop_timed_out", subscriptions=late)
            return False
        return True

    # -- control: what to own and run ----------------------------------------------------

    async def _control(self) -> None:
        interval = conf.worker().control_interval
        while not await sleep_unless_stopped(self._stop, interval):
            await self._control_once()

    async def _control_once(self) -> None:
        try:
            await self._reap()
            await self.ownership.connect()
            await self.ownership.check()
            self._locks_down = False
            rows = await in_db(lambda: state.control_rows(self.names))
            await self._apply(rows)
        except OwnershipLost as exc:
            await self._lost(str(exc))
        except ConsoleDatabaseUnavailable as exc:
            log.warning("control_poll_failed", error=str(exc))

    async def _apply(self, rows: list[state.ControlRow]) -> None:
        present = {row.id for row in rows}
        wanted = {row.id: row for row in rows if row.enabled}
        for sub_id, supervisor in self.supervisors.items():
            row = wanted.get(sub_id)
            if row is None:
                supervisor.leave("deleted" if sub_id not in present else "disabled")
            else:
                supervisor.notice(row.version, row.name)
        free = [sub_id for sub_id in wanted if sub_id not in self.supervisors]
        acquired = await self.ownership.try_acquire(free)
        if acquired:
            # Its live subscriptions are loaded before its pipeline starts: a change
            # acknowledged before its matcher existed would never be matched.
            await self.refresh_live_subscriptions({i: wanted[i].name for i in acquired})
        for sub_id in acquired:
            self._start(wanted[sub_id])

    def _build(
        self,
        sub: Subscription,
        *,
        index: str | None = None,
        on_resync_copied: Callable[[], Awaitable[None]] | None = None,
    ) -> Pipeline:
        """`build_pipeline`, observed by the live publisher when there is one, and by live
        subscriptions' matching, which also holds its checkpoint for NATS."""
        observers: list[Observer] = []
        hold: MatchingObserver | None = None
        if self.publisher is not None:
            observers.append(self.publisher.observer(sub.name, sub.source_kind))
        if self.matching is not None:
            hold = self.matching.observer(sub.pk)
            observers.append(hold)
        observer = (
            observers[0] if len(observers) == 1 else Observers(observers) if observers else None
        )
        hold_seconds = conf.live_matching().checkpoint_hold if hold is not None else 0.0
        return build_pipeline(
            sub,
            observer,
            index=index,
            on_resync_copied=on_resync_copied,
            hold=hold if hold_seconds > 0 else None,
            hold_seconds=hold_seconds,
        )

    def _start(self, row: state.ControlRow) -> None:
        supervisor = Supervisor(
            row.id,
            row.name,
            row.version,
            build=self._build,
            running=self.pipelines,
            worker_stop=self._stop,
            shutdown_timeout=self.shutdown_timeout,
        )
        self.supervisors[row.id] = supervisor
        self._tasks[row.id] = asyncio.create_task(self._own(supervisor), name=f"own {row.name}")
        log.info("subscription_acquired", subscription=row.name, worker=self.worker_id)

    async def _own(self, supervisor: Supervisor) -> None:
        await self._quietly(lambda: state.claim(supervisor.subscription_id, self.worker_id))
        await supervisor.run()

    async def _reap(self) -> None:
        """Release the lock of each supervisor that ended (its pipeline has stopped)."""
        for sub_id, task in list(self._tasks.items()):
            if not task.done():
                continue
            supervisor = self.supervisors.pop(sub_id)
            del self._tasks[sub_id]
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "supervisor_crashed",
                    subscription=supervisor.name,
                    error=repr(task.exception()),
                )
            await self._quietly(lambda: state.disown([sub_id], self.worker_id))  # noqa: B023
            await self.ownership.release(sub_id)
            if self.publisher is not None:
                self.publisher.forget(supervisor.name)
            log.info(
                "subscription_released", subscription=supervisor.name, reason=supervisor.leaving
            )

    async def _lost(self, error: str) -> None:
        """The locks are gone: another worker may start these now, so stop at once."""
        names = sorted(sup.name for sup in self.supervisors.values())
        if names:
            log.error("ownership_lost", error=error, subscriptions=names)
        elif not self._locks_down:  # once per outage, not every control interval
            log.warning("ownership_unavailable", error=error)
        self._locks_down = True
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self.supervisors.clear()
        await self.ownership.close()

    # -- what the worker publishes -------------------------------------------------------

    async def _heartbeat(self, started_at: datetime) -> None:
        interval = conf.worker().heartbeat_interval
        while True:
            names = sorted(sup.name for sup in self.supervisors.values())
            await self._quietly(
                lambda: state.beat(self.worker_id, started_at, names)  # noqa: B023
            )
            if await sleep_unless_stopped(self._stop, interval):
                return

    async def _publish_stats(self) -> None:
        interval = conf.worker().stats_interval
        while not await sleep_unless_stopped(self._stop, interval):
            await self.publish_stats_once()

    async def publish_stats_once(self) -> None:
        """Write each running subscription's lag, staleness and throughput on its row."""
        now = time.time()
        figures: list[state.Figures] = []
        for sub_id, supervisor in list(self.supervisors.items()):
            pipeline = supervisor.pipeline
            if pipeline is None:
                continue  # paused, or between two runs
            rate = self._rate(supervisor, pipeline, now)
            copy = pipeline.copy_figures()
            figures.append(
                (
                    sub_id,
                    pipeline.stats.lag(now),
                    pipeline.staleness(now),
                    rate,
                    None if copy is None else copy.as_dict(),
                )
            )
        for gone in set(self._throughput) - set(self.pipelines):
            del self._throughput[gone]

        if figures:
            await self._quietly(lambda: state.publish_stats(figures))

    def _rate(self, supervisor: Supervisor, pipeline: Pipeline, now: float) -> float | None:
        """Changes/s over the last minute of the subscription's running pipeline."""
        known = self._throughput.get(supervisor.name)
        if known is None or known[0] is not pipeline:
            known = (pipeline, Throughput())
            known[1].add(supervisor.pipeline_started_at, 0)
            self._throughput[supervisor.name] = known
        stats = pipeline.stats
        known[1].add(now, stats.written + stats.stale + stats.dead_lettered)
        return known[1].rate()

    # -- the live monitor ------------------------------------------------------------------

    def _start_live(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Start the live publisher's send task, unless live is off or no layer is set."""
        if not self.live:
            return None
        layer = get_channel_layer()
        if layer is None:
            log.warning(
                "live_monitor_off",
                reason="no channel layer: set CHANNEL_LAYERS (channels-redis on REDIS_URL)",
            )
            return None
        settings = conf.live()
        self.publisher = LivePublisher(
            self.worker_id,
            events_per_second=settings.events_per_second,
            queue_size=settings.queue_size,
            send_timeout=settings.send_timeout,
            layer=layer,
        )
        return asyncio.create_task(self.publisher.run(stop), name="live publisher")

    async def _stop_live(
        self,
        task: asyncio.Task[None] | None,
        stop: asyncio.Event,
        send_timeout: float | None = None,
    ) -> None:
        """Send what the stopped pipelines left (bounded), then end the send task."""
        if task is None:
            return
        stop.set()
        timeout = conf.live().send_timeout if send_timeout is None else send_timeout
        _, pending = await asyncio.wait({task}, timeout=2 * timeout + 1)
        for late in pending:
            late.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # -- live subscriptions ----------------------------------------------------------------

    def _start_matching(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Start matching changes against live subscriptions, unless it is off."""
        if not self.live_subscriptions:
            return None
        settings = conf.live_matching()
        self.matching = LiveMatching(
            queue_size=settings.queue_size,
            send_timeout=settings.websocket_send_timeout,
            layer=get_channel_layer(),
            fields_of=_fields_of,
        )
        return asyncio.create_task(self.matching.run(stop), name="live matching")

    async def _stop_matching(self, task: asyncio.Task[None] | None, stop: asyncio.Event) -> None:
        """Match what the stopped pipelines left, then flush NATS within the shutdown timeout."""
        if task is None or self.matching is None:
            return
        # The same bounded end as the monitor's sender, with the matching's own timeout.
        await self._stop_live(task, stop, self.matching.send_timeout)
        await self.matching.stop_nats(self.shutdown_timeout)
        await self.matching.close()

    async def _refresh_live(self) -> None:
        interval = conf.worker().control_interval
        while not await sleep_unless_stopped(self._stop, interval):
            await self.refresh_live_subscriptions()

    async def refresh_live_subscriptions(self, starting: Mapping[int, str] | None = None) -> None:
        """Bring the matchers to the owned subscriptions' unexpired live subscriptions, and
        those of `starting` (id to name: acquired, their pipelines not started yet)."""
        if self.matching is None:
            return
        owned = {sub_id: sup.name for sub_id, sup in self.supervisors.items()}
        owned.update(starting or {})
        try:
            await self.matching.refresh(owned)
        except ConsoleDatabaseUnavailable as exc:
            log.warning("live_subscriptions_not_refreshed", error=str(exc))
        except Exception:  # a bug in live matching must not take the sync down
            log.exception("live_subscriptions_refresh_failed")

    async def _expire_live(self) -> None:
        """Remove expired live subscriptions; every worker may: the delete is idempotent."""
        interval = conf.live_subscriptions().expire_interval
        while not await sleep_unless_stopped(self._stop, interval):
            removed = await self._quietly(live_subscription_ops.expire)
            if removed and self.matching is not None:
                self.matching.expired += removed

    async def _feed_live(self, publisher: LivePublisher) -> None:
        """Once a second: a snapshot per owned subscription, and the worker's heartbeat."""
        interval = _LIVE_INTERVAL
        while True:
            await self.offer_live_once(publisher, interval)
            if await sleep_unless_stopped(self._stop, interval):
                return

    async def offer_live_once(self, publisher: LivePublisher, interval: float) -> None:
        now = time.time()
        owned = list(self.supervisors.items())
        try:
            rows = await in_db(lambda: state.live_rows([sub_id for sub_id, _ in owned]))
        except ConsoleDatabaseUnavailable:
            rows = {}  # the pipelines' own figures still go out
        live = self.matching.active() if self.matching is not None else {}
        verified = await self._verified(now, [sup.name for _, sup in owned])
        for sub_id, supervisor in owned:
            row = rows.get(sub_id)
            if row is None:
                continue  # deleted meanwhile, or the console database is down
            publisher.offer_snapshot(self._snapshot(supervisor, row, now, live, verified))
        publisher.offer_heartbeat([sup.name for _, sup in owned], interval)

    async def _verified(self, now: float, names: list[str]) -> Mapping[str, dict[str, Any]]:
        """The owned subscriptions' last verifications, read again every _VERIFIED_EVERY."""
        read_at, verified = self._verified_cache
        if now - read_at >= _VERIFIED_EVERY:
            found = await self._quietly(lambda: verify.latest_by_subscription(names))
            if found is not None:
                self._verified_cache = (now, found)
                verified = found
        return verified

    def _snapshot(
        self,
        supervisor: Supervisor,
        row: state.LiveRow,
        now: float,
        live: Mapping[str, int],
        verified: Mapping[str, dict[str, Any]],
    ) -> SnapshotMessage:
        snapshot = SnapshotMessage(
            type="sync.snapshot",
            subscription=supervisor.name,
            worker=self.worker_id,
            status=row.status,  # paused, or between two runs: what the row says
            message=row.status_message,
            lag=None,
            staleness=None,
            buffer=0,
            backpressure=False,
            throughput=0.0,
            dead_letters=row.dead_letters,
            live_subscriptions=live.get(supervisor.name, 0),
            checkpoint=row.checkpoint,
            checkpoint_shown=format_position(row.source_kind, row.checkpoint),
            copy=None,
            verification=verified.get(supervisor.name),
            at=now,
        )
        pipeline = supervisor.pipeline
        if pipeline is not None:
            snapshot["status"], snapshot["message"] = pipeline.status, pipeline.message
            snapshot["lag"] = round(pipeline.stats.lag(now), 3)
            snapshot["staleness"] = _rounded(pipeline.staleness(now))
            snapshot["buffer"], snapshot["backpressure"] = pipeline.buffered, pipeline.backpressure
            snapshot["throughput"] = round(self._rate(supervisor, pipeline, now) or 0.0, 3)
            copy = pipeline.copy_figures()
            snapshot["copy"] = None if copy is None else copy.as_dict()
        return snapshot

    async def _quietly(self, function: Callable[[], T]) -> T | None:
        """Database work whose failure must not stop the sync: logged, retried next round."""
        try:
            return await in_db(function)
        except ConsoleDatabaseUnavailable as exc:
            log.warning("worker_state_not_saved", error=str(exc))
            return None

    async def _retry_dead_letters(self, every: float) -> None:
        """Retry each owned subscription's dead letters every `every` seconds."""
        limit = conf.worker().dlq_retry_batch
        while not await sleep_unless_stopped(self._stop, every):
            for name in sorted(sup.name for sup in self.supervisors.values()):
                try:
                    report = await dead_letters.aretry(
                        dead_letters.Selection(subscription=name), limit
                    )
                except Exception as exc:  # the next round tries again; the sync goes on
                    log.warning("dead_letter_retry_failed", subscription=name, error=str(exc))
                    continue
                if report.retried:
                    log.info(
                        "dead_letter_retry_round",
                        subscription=name,
                        succeeded=report.succeeded,
                        superseded=report.superseded,
                        failed=report.failed,
                    )


_LIVE_INTERVAL = 1.0
_VERIFIED_EVERY = 10.0
"""Seconds between reads of the last verifications, for the monitor's snapshots."""


def _fields_of(subscription_id: int) -> Mapping[str, str] | None:
    """A sync subscription's field types (from its source, cached), for the activation."""
    try:
        row = state.subscription_row(subscription_id)
        return None if row is None else source_fields.fields_of(row)
    finally:
        connections.close_all()  # this thread's own: not the worker's database thread


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
