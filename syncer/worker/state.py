"""What a worker reads to be controlled and writes about itself, in the console's database.

The names a worker may be limited to, the control poll (one cheap query a second),
the owner of each subscription, the figures published for the admin and the API (lag,
staleness, throughput), what the live monitor's snapshots read, the heartbeat, and the
worker's half of an operator's reset: every call here but `close_connections` is
synchronous ORM work, run by the worker through `syncer.stores.in_db`.
"""

from __future__ import annotations

import os
import secrets
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.db import connections, models
from django.db.models import (
    BigIntegerField,
    Count,
    DecimalField,
    Func,
    Sum,
    TextField,
    Value,
)
from django.db.models.functions import Cast
from django.utils import timezone

from syncer.models import LiveSubscription, Subscription, WorkerHeartbeat


def new_worker_id() -> str:
    """hostname:pid:random: unique even when a pid is reused after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def subscription_names() -> list[str]:
    """Every subscription's name, enabled or not, in name order."""
    return list(Subscription.objects.values_list("name", flat=True))


@dataclass(frozen=True)
class ControlRow:
    """The part of a subscription row the worker watches every control interval."""

    id: int
    name: str
    enabled: bool
    paused: bool
    updated_at: datetime
    control_version: int

    @property
    def version(self) -> tuple[datetime, int]:
        """Changes when the config is saved or an operator asks for something."""
        return self.updated_at, self.control_version


def subscription_row(subscription_id: int) -> Subscription | None:
    """The subscription's row as it is now; None once it has been deleted."""
    return Subscription.objects.filter(pk=subscription_id).first()


def control_rows(names: Sequence[str] | None) -> list[ControlRow]:
    """Every subscription (or the named ones), in one query of six columns."""
    query = Subscription.objects.all()
    if names is not None:
        query = query.filter(name__in=names)
    return [
        ControlRow(*row)
        for row in query.values_list(
            "id", "name", "enabled", "paused", "updated_at", "control_version"
        )
    ]


@dataclass(frozen=True)
class LiveRow:
    """The part of a subscription row a live-monitor snapshot shows."""

    checkpoint: int | None
    source_kind: str
    status: str
    status_message: str
    dead_letters: int


def live_rows(ids: Sequence[int]) -> dict[int, LiveRow]:
    """What the snapshots take from the database, for every owned subscription at once."""
    rows = (
        Subscription.objects.filter(pk__in=ids)
        .annotate(dead=Count("dead_letters"))
        .values_list("id", "checkpoint", "source_kind", "status", "status_message", "dead")
    )
    return {row[0]: LiveRow(*row[1:]) for row in rows}


def claim(subscription_id: int, worker_id: str) -> None:
    Subscription.objects.filter(pk=subscription_id).update(owner=worker_id)


def disown(subscription_ids: Sequence[int], worker_id: str) -> None:
    """Clear `owner` where it is still this worker (another may have taken over)."""
    Subscription.objects.filter(pk__in=subscription_ids, owner=worker_id).update(
        owner="",
        lag_seconds=None,
        staleness_seconds=None,
        throughput=None,
        copy_progress=None,
    )


def clear_stats(subscription_id: int) -> None:
    """Nothing runs (paused): no figures rather than the last ones, which would mislead."""
    Subscription.objects.filter(pk=subscription_id).update(
        lag_seconds=None,
        staleness_seconds=None,
        throughput=None,
        copy_progress=None,
        stats_at=timezone.now(),
    )


Figures = tuple[int, float, float | None, float | None, dict[str, Any] | None]
"""A subscription's id, lag, staleness, throughput and copy progress, as `publish_stats`
writes them."""


def publish_stats(figures: Sequence[Figures]) -> None:
    """Write every running subscription's figures in one UPDATE … FROM (VALUES …).

    A worker with a hundred subscriptions would otherwise send fifty UPDATEs a second;
    and `bulk_update`'s CASE expressions cost more to build than the rows they set."""
    if not figures:
        return
    meta = Subscription._meta
    quote = connections["default"].ops.quote_name
    column = {name: quote(_column(name)) for name in _STATS}
    rows = ", ".join(["(%s::bigint, %s::float8, %s::float8, %s::float8, %s::jsonb)"] * len(figures))
    query = (
        f"UPDATE {quote(meta.db_table)} AS s SET {column['lag_seconds']} = v.lag, "
        f"{column['staleness_seconds']} = v.staleness, {column['throughput']} = v.throughput, "
        f"{column['copy_progress']} = v.copy, {column['stats_at']} = %s "
        f"FROM (VALUES {rows}) AS v(id, lag, staleness, throughput, copy) "
        f"WHERE s.{quote(meta.pk.column)} = v.id"
    )
    params: list[Any] = [timezone.now()]
    for subscription_id, lag, staleness, throughput, copy in figures:
        params += [
            subscription_id,
            round(lag, 3),
            None if staleness is None else round(staleness, 3),
            None if throughput is None else round(throughput, 3),
            None if copy is None else orjson.dumps(copy).decode(),
        ]
    with connections["default"].cursor() as cursor:
        cursor.execute(query, params)


_STATS = ("lag_seconds", "staleness_seconds", "throughput", "copy_progress", "stats_at")


def _column(name: str) -> str:
    field = Subscription._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field.column


def beat(worker_id: str, started_at: datetime, names: Sequence[str]) -> None:
    host, pid, _ = worker_id.rsplit(":", 2)
    WorkerHeartbeat.objects.update_or_create(
        worker_id=worker_id,
        defaults={
            "hostname": host,
            "pid": int(pid),
            "started_at": started_at,
            "last_seen_at": timezone.now(),
            "subscriptions": sorted(names),
        },
    )


def remove_heartbeat(worker_id: str) -> None:
    WorkerHeartbeat.objects.filter(worker_id=worker_id).delete()


def clear_checkpoint(subscription_id: int, requested_at: datetime) -> bool:
    """Forget where the subscription stands; False if the reset was already applied."""
    updated = Subscription.objects.filter(
        pk=subscription_id, reset_requested_at=requested_at
    ).update(
        checkpoint=None,
        checkpoint_at=None,
        snapshot_completed_at=None,
        source_state=None,
        reset_requested_at=None,
    )
    return bool(updated)


async def close_connections() -> None:
    """Close the worker's database thread's connection (`in_db` runs there), on stop."""
    await sync_to_async(connections.close_all, thread_sensitive=True)()


@dataclass(frozen=True, slots=True)
class LiveSubscriptionRow:
    """The part of a live subscription the worker's matching needs (none of it changes
    after registration: a heartbeat moves only `expires_at`)."""

    filter: str
    delivery: str
    gateway_id: str


Fingerprint = tuple[int, Decimal]
"""(count, sum of a hash of each id) of a sync subscription's unexpired live subscriptions:
it changes when one is registered, deleted or expires."""


def live_subscription_fingerprints(subscription_ids: Sequence[int]) -> dict[int, Fingerprint]:
    """Each sync subscription's fingerprint, in one aggregate query (no row leaves the
    database): what a refresh reads every control interval to learn whether to diff."""
    digest = Func(
        Cast("id", TextField()),
        Value(0),
        function="hashtextextended",
        output_field=BigIntegerField(),
    )
    rows = (
        LiveSubscription.objects.filter(
            subscription_id__in=subscription_ids, expires_at__gt=timezone.now()
        )
        .values("subscription_id")
        .annotate(count=Count("id"), digest=Sum(digest, output_field=DecimalField()))
        .values_list("subscription_id", "count", "digest")
    )
    return {sub_id: (count, Decimal(digest)) for sub_id, count, digest in rows}


def live_subscription_ids(subscription_id: int) -> set[str]:
    """The ids of the sync subscription's unexpired live subscriptions, as text, in no
    order: at 100,000 rows, the model's ordering (a sort) and UUID objects made this
    five times as long (a refresh reads them whenever one was added or removed)."""
    return set(
        LiveSubscription.objects.filter(
            subscription_id=subscription_id, expires_at__gt=timezone.now()
        )
        .order_by()
        .annotate(text=Cast("id", TextField()))
        .values_list("text", flat=True)
    )


def live_subscription_rows_of(
    subscription_id: int,
) -> list[tuple[uuid.UUID, LiveSubscriptionRow]]:
    """What matching needs of every unexpired live subscription of the sync subscription,
    in one query: a first load, where reading the ids and then the rows by id costs
    several times as much (10,000 ids to a statement)."""
    rows = LiveSubscription.objects.filter(
        subscription_id=subscription_id, expires_at__gt=timezone.now()
    ).values_list("id", "filter", "delivery", "gateway_id")
    return [(live_id, LiveSubscriptionRow(text, d, g)) for live_id, text, d, g in rows]


def live_subscription_rows(ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, LiveSubscriptionRow]:
    """What matching needs of these live subscriptions (those still there)."""
    rows = (
        LiveSubscription.objects.filter(pk__in=ids)
        .order_by()  # a mapping: the model's ordering would only sort
        .values_list("id", "filter", "delivery", "gateway_id")
    )
    return {live_id: LiveSubscriptionRow(text, d, g) for live_id, text, d, g in rows}
