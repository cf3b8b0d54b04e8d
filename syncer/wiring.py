"""A Subscription row -> its source, its sink, its pipeline: the only place that builds them.

The worker (`syncer.worker.runner`, `syncer.worker.supervisor`), the dead-letter retries
(`syncer.operations.dead_letters`) and the console's document view all reach a
subscription's adapters through here, so each reaches them the same way. This module
imports the adapters and the ORM state; nothing it imports may import it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from syncer import conf, dsn
from syncer.engine.interfaces import CheckpointHold, Source
from syncer.engine.pipeline import Observer, Pipeline, PipelineConfig
from syncer.leases import CopyPlans, HelperState
from syncer.models import Subscription
from syncer.sinks.opensearch.sink import OpenSearchSink, OpenSearchSinkConfig
from syncer.sources.kinds import SourceValues
from syncer.sources.postgres.shared import Lease, RangeLeases
from syncer.stores import DjangoDeadLetters, DjangoStateStore


def sink_config(sub: Subscription, index: str | None = None) -> OpenSearchSinkConfig:
    """Where the subscription writes: its index (or alias), or `index` instead."""
    return OpenSearchSinkConfig(
        name=sub.name,
        index=index or sub.index_name,
        connection=conf.opensearch(),
        settings=sub.index_settings or {},
        mappings=sub.index_mappings or {},
        adopt_index=sub.adopt_index,
    )


def build_sink(sub: Subscription) -> OpenSearchSink:
    """The OpenSearch sink of one subscription, as the worker and DLQ retries use it."""
    return OpenSearchSink(sink_config(sub))


def source_values(sub: Subscription, index: str | None = None) -> SourceValues:
    """What the subscription's source adapter is built from; `index`: as for the sink."""
    worker = conf.worker()
    shared = worker.copy_shared and sub.kind.copy_helper is not None
    return SourceValues(
        name=sub.name,
        dsn=sub.source_dsn,
        relation=sub.relation,
        key_columns=tuple(sub.key_columns or ()),
        slot_name=sub.slot_name,
        cluster=sub.source_cluster,
        envelope=sub.source_envelope,
        wal_warn_bytes=worker.slot_wal_warn_bytes,
        copy_chunk_rows=worker.copy_chunk_rows,
        resolve_dsn=dsn.resolve,
        copy_board=CopyPlans(sub.pk) if shared else None,
        copy_index=index or sub.index_name,
        copy_range_rows=worker.copy_range_rows,
        subscription_id=sub.pk,
        console_conninfo="" if sub.kind.reads_database else dsn.console_conninfo(),
        push_queue_limit=conf.push().queue_limit,
    )


def build_source(sub: Subscription, index: str | None = None) -> Source:
    """The source adapter for the subscription's kind."""
    return sub.kind.build(source_values(sub, index))


def build_pipeline(
    sub: Subscription,
    observer: Observer | None = None,
    *,
    index: str | None = None,
    on_resync_copied: Callable[[], Awaitable[None]] | None = None,
    hold: CheckpointHold | None = None,
    hold_seconds: float = 0.0,
) -> Pipeline:
    """Wire one subscription's source, sink and store into a pipeline.

    `index` writes into another index than the subscription's (a new-index resync);
    `on_resync_copied` runs when an operator's resync has copied everything; `hold`
    keeps the checkpoint below undelivered live-subscription events, `hold_seconds` at most.
    """
    source = build_source(sub, index)
    sink = OpenSearchSink(sink_config(sub, index))
    return Pipeline(
        _pipeline_config(sub, hold_seconds),
        source,
        sink,
        DjangoStateStore(sub.pk, sub.name, on_resync_copied=on_resync_copied),
        DjangoDeadLetters(sub.pk, sub.name),
        observer=observer,
        hold=hold,
    )


def build_copy_helper(sub: Subscription, leases: RangeLeases, first: Lease) -> Pipeline:
    """A pipeline copying the ranges of the subscription's shared copy, `first` first,
    into the index the copy writes to; its progress is the leases' (`HelperState`)."""
    helper = sub.kind.copy_helper
    if helper is None:
        raise ValueError(f"{sub.kind.label} copies are not shared")
    sink = OpenSearchSink(sink_config(sub, first.index))
    source = helper(source_values(sub), leases, sink.delete_unchanged, first)
    return Pipeline(
        _pipeline_config(sub),
        source,
        sink,
        HelperState(),
        DjangoDeadLetters(sub.pk, sub.name),
    )


def _pipeline_config(sub: Subscription, hold_seconds: float = 0.0) -> PipelineConfig:
    worker = conf.worker()
    return PipelineConfig(
        name=sub.name,
        batch_max_size=sub.batch_max_size,
        batch_max_age=sub.batch_max_age_ms / 1000,
        pause_at=sub.backpressure_pause_at,
        resume_at=sub.backpressure_resume_at,
        max_attempts=worker.max_attempts,
        bulk_concurrency=worker.bulk_concurrency,
        checkpoint_interval=worker.checkpoint_interval,
        poll_interval=worker.poll_interval,
        backoff_base=worker.backoff_base,
        backoff_cap=worker.backoff_cap,
        warnings_every=worker.slot_check_interval,
        hold_seconds=hold_seconds,
    )
