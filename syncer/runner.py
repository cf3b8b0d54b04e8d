"""The worker: every enabled subscription's pipeline in one asyncio loop.

Builds each pipeline from its Subscription row and real adapters, runs them side by
side, restarts one that crashes (one bad subscription does not stop the others),
and on stop gives them `shutdown_timeout` seconds to flush and checkpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from asgiref.sync import sync_to_async
from django.db import connections

from syncer import conf, dlq, metrics
from syncer.engine.interfaces import Source
from syncer.engine.pipeline import Observer, Pipeline, PipelineConfig, sleep_unless_stopped
from syncer.models import Subscription
from syncer.sinks.opensearch import OpenSearchSink, OpenSearchSinkConfig
from syncer.sources.materialize.source import MaterializeSource, MaterializeSourceConfig
from syncer.sources.postgres.source import PostgresSource, PostgresSourceConfig
from syncer.store import DjangoDeadLetters, DjangoStateStore

log = structlog.get_logger(__name__)


class UnknownSubscription(ValueError):
    """A subscription named on the command line does not exist."""


class MetricsPortUnavailable(OSError):
    """The metrics port cannot be listened on (taken, or not allowed)."""


def build_sink(sub: Subscription) -> OpenSearchSink:
    """The OpenSearch sink of one subscription, as the worker and DLQ retries use it."""
    search = conf.opensearch()
    return OpenSearchSink(
        OpenSearchSinkConfig(
            name=sub.name,
            index=sub.index_name,
            url=search.url,
            settings=sub.index_settings or {},
            mappings=sub.index_mappings or {},
            user=search.user,
            password=search.password,
            ca_certs=search.ca_certs,
            verify_certs=search.verify_certs,
        )
    )


def build_source(sub: Subscription) -> Source:
    """The source adapter for the subscription's kind."""
    if sub.source_kind == Subscription.SourceKind.MATERIALIZE:
        return MaterializeSource(
            MaterializeSourceConfig(
                name=sub.name,
                dsn=sub.source_dsn,
                relation=sub.relation,
                key_columns=tuple(sub.key_columns or ()),
                cluster=sub.source_cluster,
                envelope=sub.source_envelope,
            )
        )
    return PostgresSource(
        PostgresSourceConfig(
            name=sub.name,
            dsn=sub.source_dsn,
            relation=sub.relation,
            key_columns=tuple(sub.key_columns or ()),
            slot_name=sub.slot_name,
            wal_warn_bytes=conf.worker().slot_wal_warn_bytes,
        )
    )


def build_pipeline(sub: Subscription, observer: Observer | None = None) -> Pipeline:
    """Wire one subscription's source, sink and store into a pipeline."""
    worker = conf.worker()
    source = build_source(sub)
    sink = build_sink(sub)
    config = PipelineConfig(
        name=sub.name,
        batch_max_size=sub.batch_max_size,
        batch_max_age=sub.batch_max_age_ms / 1000,
        pause_at=sub.backpressure_pause_at,
        resume_at=sub.backpressure_resume_at,
        max_attempts=worker.max_attempts,
        poll_interval=worker.poll_interval,
        backoff_base=worker.backoff_base,
        backoff_cap=worker.backoff_cap,
        warnings_every=worker.slot_check_interval,
    )
    return Pipeline(
        config,
        source,
        sink,
        DjangoStateStore(sub.pk, sub.name),
        DjangoDeadLetters(sub.pk, sub.name),
        observer=observer,
    )


def load_subscriptions(names: Sequence[str] = ()) -> list[Subscription]:
    """The enabled subscriptions, or the named ones (which must exist)."""
    if names:
        found = {s.name: s for s in Subscription.objects.filter(name__in=names)}
        unknown = sorted(set(names) - set(found))
        if unknown:
            known = ", ".join(Subscription.objects.values_list("name", flat=True)) or "none"
            raise UnknownSubscription(
                f"no subscription named {', '.join(unknown)} (known: {known})"
            )
        return [found[n] for n in names if found[n].enabled]
    return list(Subscription.objects.filter(enabled=True))


class Runner:
    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        shutdown_timeout: float,
        dlq_retry_every: float | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.subscriptions = list(subscriptions)
        self.shutdown_timeout = shutdown_timeout
        self.dlq_retry_every = dlq_retry_every
        self.metrics_port = metrics_port
        self.pipelines: dict[str, Pipeline] = {}

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until `stop`; return False if the pipelines did not stop in time."""
        stop_metrics = None
        if self.metrics_port is not None:
            try:
                stop_metrics = metrics.serve(self.metrics_port, lambda: self.pipelines)
            except OSError as exc:
                raise MetricsPortUnavailable(
                    f"cannot serve metrics on port {self.metrics_port}: {exc.strerror or exc}; "
                    "choose another --metrics-port"
                ) from None
            log.info("metrics_serving", port=self.metrics_port)
        try:
            return await self._run(stop)
        finally:
            if stop_metrics is not None:
                stop_metrics()
            # The store's thread holds a connection to the console database.
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    async def _run(self, stop: asyncio.Event) -> bool:
        if not self.subscriptions:
            log.warning("no_enabled_subscriptions")
        tasks = {}
        for sub in self.subscriptions:
            pipeline = build_pipeline(sub)
            self.pipelines[sub.name] = pipeline
            tasks[sub.name] = asyncio.create_task(self._supervise(sub.name, pipeline, stop))
        log.info("worker_started", subscriptions=sorted(tasks))
        retrier = None
        if self.dlq_retry_every:
            retrier = asyncio.create_task(self._retry_dead_letters(self.dlq_retry_every, stop))
        await stop.wait()
        if retrier is not None:
            retrier.cancel()
            await asyncio.gather(retrier, return_exceptions=True)
        log.info("worker_stopping", timeout_s=self.shutdown_timeout)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks.values(), timeout=self.shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            late = sorted(name for name, task in tasks.items() if task in pending)
            log.error("worker_stop_timed_out", subscriptions=late)
            return False
        log.info("worker_stopped")
        return True

    async def _supervise(self, name: str, pipeline: Pipeline, stop: asyncio.Event) -> None:
        # Pipeline.run handles every failure itself; this guards against our own bugs.
        while not stop.is_set():
            try:
                await pipeline.run(stop)
            except Exception:
                log.exception("pipeline_task_crashed", subscription=name)
                await sleep_unless_stopped(stop, 5)

    async def _retry_dead_letters(self, every: float, stop: asyncio.Event) -> None:
        """Retry each subscription's dead letters every `every` seconds, a bounded round each."""
        limit = conf.worker().dlq_retry_batch
        while not await sleep_unless_stopped(stop, every):
            for sub in self.subscriptions:
                try:
                    report = await dlq.aretry(dlq.Selection(subscription=sub.name), limit)
                except Exception as exc:  # the next round tries again; the sync goes on
                    log.warning("dead_letter_retry_failed", subscription=sub.name, error=str(exc))
                    continue
                if report.retried:
                    log.info(
                        "dead_letter_retry_round",
                        subscription=sub.name,
                        succeeded=report.succeeded,
                        superseded=report.superseded,
                        failed=report.failed,
                    )


load_subscriptions_async = sync_to_async(load_subscriptions, thread_sensitive=True)
