"""Live subscriptions' operations: register, heartbeat, delete, list and expire.

The REST API, the admin and the websocket all call these, so the quotas, the TTL and
who may touch what are written once:

- an owner (the API token's user) sees, renews and deletes only its own live
  subscriptions: another owner's id is unknown (`UnknownLiveSubscription`), never
  "forbidden", so ids tell nothing about what exists;
- an expired live subscription is gone for every operation, even before `expire`
  deletes its row;
- registering is all or nothing: every registration of a batch is checked first and
  all problems are reported together (`InvalidLiveSubscriptions`), then the quotas
  (`QuotaExceeded`) are checked and the rows inserted in one transaction. The quotas:
  per owner, over all owners, and per sync subscription for the filters that pin no
  value (the matcher evaluates those on every change; `pinned` records which).

Quotas count unexpired rows. Two registrations counting at once could each see room
for themselves and together pass a quota, so the count and the insert run under one
transaction-scoped advisory lock (`pg_advisory_xact_lock`). The global quota needs
every registration serialized anyway (a lock on the owner's row would let two owners
pass it together), so one lock serves both; it is held for one count per quota and one
bulk insert, and expiry and deletes, which only make room, do not take it.

Every registration request adds to console-wide totals (`LiveSubscriptionCount`: how
many were registered, how many requests each quota refused), one UPDATE per request
whatever its size, which the worker exports at /metrics.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from syncer import conf
from syncer.errors import (
    FilterError,
    InvalidLiveSubscriptions,
    LiveSubscriptionProblem,
    NotPermitted,
    QuotaExceeded,
    UnknownLiveSubscription,
)
from syncer.models import LiveSubscription, LiveSubscriptionCount, Subscription
from syncer.operations import source_fields
from syncer.validators import gateway_id_problem, text_problem

if TYPE_CHECKING:
    from syncer.engine.matching.filters import Filter

log = structlog.get_logger(__name__)

LOCK_KEYS = (0x4C495645, 1)
"""The advisory lock registrations take ("LIVE", 1): apart from the workers' ("SYNC", id)."""
EXPIRE_BATCH = 5000
"""Rows one expiry statement deletes: bounds each statement's locks and WAL."""
DELETE_BATCH = 2000

# syncer.view_subscription, named from the model: syncer cannot import the console's list.
VIEW_SUBSCRIPTION = f"{Subscription._meta.app_label}.view_{Subscription._meta.model_name}"
DELIVERIES = frozenset(LiveSubscription.Delivery.values)


@dataclass(frozen=True)
class Registration:
    """One live subscription asked for: `subscription` is the sync subscription's name."""

    gateway_id: str
    subscription: str
    filter: str
    delivery: str


@dataclass(frozen=True)
class Renewed:
    """What a heartbeat of a whole gateway renewed."""

    count: int
    expires_at: datetime
    ids: frozenset[uuid.UUID] = frozenset()
    """Which were renewed, when they were named (heartbeat_ids)."""


@dataclass(frozen=True)
class Page:
    items: list[LiveSubscription]
    more: bool
    """Whether a next page exists: ask again after the last item."""


def active(now: datetime | None = None) -> QuerySet[LiveSubscription]:
    """Every unexpired live subscription."""
    return LiveSubscription.objects.filter(expires_at__gt=now or timezone.now())


def owned(owner: User) -> QuerySet[LiveSubscription]:
    """`owner`'s unexpired live subscriptions."""
    return active().filter(owner=owner)


# -- register ----------------------------------------------------------------------------


def register(owner: User, registrations: Sequence[Registration]) -> list[LiveSubscription]:
    """Register every one of `registrations` for `owner`, or none of them.

    InvalidLiveSubscriptions lists every problem of every entry; QuotaExceeded says which
    quota the batch would pass; NotPermitted when `owner` may not view subscriptions.
    """
    if not owner.has_perm(VIEW_SUBSCRIPTION):
        raise NotPermitted(
            f"user {owner.get_username()!r} lacks the permission {VIEW_SUBSCRIPTION}, which "
            "watching a subscription's changes needs; an administrator can grant it"
        )
    subscriptions = _subscriptions_named({r.subscription for r in registrations})
    problems: list[LiveSubscriptionProblem] = []
    pinned: list[bool] = []
    for entry, registration in enumerate(registrations):
        found, pins = _problems(entry, registration, subscriptions)
        problems.extend(found)
        pinned.append(pins)
    if problems:
        raise InvalidLiveSubscriptions(problems)
    if not registrations:
        return []
    try:
        created = _insert(owner, registrations, pinned, subscriptions)
    except QuotaExceeded as exc:
        # After the insert's transaction rolled back, so the refusal stays counted.
        add_to_count(LiveSubscriptionCount.Event.REFUSED, 1, exc.scope)
        raise
    except IntegrityError:
        # The foreign keys are checked at commit: a subscription (or the owner) deleted meanwhile.
        raise InvalidLiveSubscriptions(
            [
                LiveSubscriptionProblem(
                    None, "subscription", "a subscription was deleted meanwhile; check and retry"
                )
            ]
        ) from None
    log.info(
        "live_subscriptions_registered",
        owner=owner.get_username(),
        gateways=sorted({r.gateway_id for r in registrations}),
        count=len(created),
    )
    return created


def _insert(
    owner: User,
    registrations: Sequence[Registration],
    pinned: Sequence[bool],
    subscriptions: dict[str, Subscription],
) -> list[LiveSubscription]:
    """Check the quotas and insert, under the registrations' lock."""
    limits = conf.live_subscriptions()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", LOCK_KEYS)
        now = timezone.now()
        requested = len(registrations)
        mine = active(now).filter(owner=owner).count()
        if mine + requested > limits.per_owner:
            _refused(owner, QuotaExceeded(limits.per_owner, "owner", mine, requested))
        everyone = active(now).count()
        if everyone + requested > limits.total:
            _refused(owner, QuotaExceeded(limits.total, "global", everyone, requested))
        unpinned = Counter(
            r.subscription for r, pins in zip(registrations, pinned, strict=True) if not pins
        )
        for name, count in sorted(unpinned.items()):
            held = active(now).filter(subscription=subscriptions[name], pinned=False).count()
            if held + count > limits.unpinned_per_subscription:
                quota = limits.unpinned_per_subscription
                _refused(owner, QuotaExceeded(quota, "unpinned", held, count, name))
        expires_at = now + limits.ttl
        created = LiveSubscription.objects.bulk_create(
            LiveSubscription(
                owner=owner,
                gateway_id=r.gateway_id,
                subscription=subscriptions[r.subscription],
                filter=r.filter,
                pinned=pins,
                delivery=r.delivery,
                created_at=now,
                expires_at=expires_at,
            )
            for r, pins in zip(registrations, pinned, strict=True)
        )
        add_to_count(LiveSubscriptionCount.Event.REGISTERED, len(created))
    return created


def add_to_count(event: LiveSubscriptionCount.Event, n: int, quota: str = "") -> None:
    """Add `n` to the running total of `event` (refused: by `quota`), in one statement
    once its row exists; the first request of a database creates the row."""
    row = LiveSubscriptionCount.objects.filter(event=event, quota=quota)
    if row.update(total=F("total") + n):
        return
    # get_or_create survives a concurrent creation (it reads the winner's row back).
    _, created = LiveSubscriptionCount.objects.get_or_create(
        event=event, quota=quota, defaults={"total": n}
    )
    if not created:
        row.update(total=F("total") + n)


def counts() -> dict[tuple[str, str], int]:
    """The running totals, as (event, quota) -> total."""
    return {
        (event, quota): total
        for event, quota, total in LiveSubscriptionCount.objects.values_list(
            "event", "quota", "total"
        )
    }


def _refused(owner: User, error: QuotaExceeded) -> None:
    log.warning(
        "live_subscriptions_refused_by_quota",
        owner=owner.get_username(),
        scope=error.scope,
        limit=error.limit,
        active=error.active,
        requested=error.requested,
    )
    raise error


def _subscriptions_named(names: Iterable[str]) -> dict[str, Subscription]:
    # A name PostgreSQL cannot store matches nothing, and must not be sent to it.
    storable = [name for name in names if text_problem(name) is None]
    return {s.name: s for s in Subscription.objects.filter(name__in=storable)}


def _problems(
    entry: int, registration: Registration, subscriptions: dict[str, Subscription]
) -> tuple[list[LiveSubscriptionProblem], bool]:
    """The entry's problems, and whether its filter pins a value."""
    problems = []

    def problem(field: str, message: str, position: int | None = None) -> None:
        problems.append(LiveSubscriptionProblem(entry, field, message, position))

    gateway = gateway_id_problem(registration.gateway_id)
    if gateway:
        problem("gateway_id", gateway)
    if registration.subscription not in subscriptions:
        problem(
            "subscription",
            f"no subscription named {registration.subscription!r}; check the name",
        )
    if registration.delivery not in DELIVERIES:
        problem(
            "delivery",
            f"{registration.delivery!r} is not a delivery; use one of "
            + ", ".join(sorted(DELIVERIES)),
        )
    subscription = subscriptions.get(registration.subscription)
    fields = None if subscription is None else source_fields.fields_of(subscription)
    compiled, found = checked_filter(registration.filter, fields)
    for position, message in found:
        problem("filter", message, position)
    return problems, compiled is not None and bool(compiled.pins or compiled.ranges)


def checked_filter(
    text: str, fields: Mapping[str, str] | None = None
) -> tuple[Filter | None, list[tuple[int | None, str]]]:
    """A filter's text compiled, or None and what is wrong with it, as (character offset
    or None, message); field names are checked against `fields` (column -> source type)
    when they are known."""
    # Imported here, not at the top: CEL (about 40 MB) stays out of the worker, which
    # imports this module for the expiry loop and never checks a filter.
    from syncer.engine.matching.filters import compile_filter

    stored = text_problem(text)
    if stored:
        return None, [(None, stored)]
    try:
        return compile_filter(text, fields), []
    except FilterError as exc:
        return None, [(problem.position, problem.message) for problem in exc.problems]


# -- heartbeat, delete, list -----------------------------------------------------------


def get(owner: User, live_id: uuid.UUID) -> LiveSubscription:
    """`owner`'s live subscription `live_id`; UnknownLiveSubscription if it has none."""
    found = owned(owner).select_related("subscription").filter(pk=live_id).first()
    if found is None:
        raise UnknownLiveSubscription(live_id)
    return found


def heartbeat(owner: User, live_id: uuid.UUID) -> LiveSubscription:
    """Renew one live subscription: it now expires a TTL from now."""
    expires_at = timezone.now() + conf.live_subscriptions().ttl
    if not owned(owner).filter(pk=live_id).update(expires_at=expires_at):
        raise UnknownLiveSubscription(live_id)
    return get(owner, live_id)


def heartbeat_gateway(owner: User, gateway_id: str) -> Renewed:
    """Renew every live subscription of `owner`'s gateway `gateway_id`; none is 0 renewed
    (a gateway that finds 0 has lost them all and registers again)."""
    _check_gateway_id(gateway_id)
    expires_at = timezone.now() + conf.live_subscriptions().ttl
    count = owned(owner).filter(gateway_id=gateway_id).update(expires_at=expires_at)
    return Renewed(count, expires_at)


def heartbeat_ids(owner: User, live_ids: Iterable[uuid.UUID]) -> Renewed:
    """Renew those of `live_ids` that are still `owner`'s: they now expire at
    `expires_at`; `ids` says which (the others were deleted or have expired, and the
    caller stops waiting for their events)."""
    ids = list(live_ids)
    expires_at = timezone.now() + conf.live_subscriptions().ttl
    alive: set[uuid.UUID] = set()
    for start in range(0, len(ids), DELETE_BATCH):
        chunk = owned(owner).filter(pk__in=ids[start : start + DELETE_BATCH])
        alive.update(chunk.values_list("pk", flat=True))
        chunk.update(expires_at=expires_at)
    return Renewed(len(alive), expires_at, frozenset(alive))


def of_gateway(owner: User, gateway_id: str, delivery: str) -> list[LiveSubscription]:
    """`owner`'s unexpired live subscriptions of gateway `gateway_id` delivered by
    `delivery`, oldest first (what a reconnecting socket resumes)."""
    _check_gateway_id(gateway_id)
    found = owned(owner).select_related("subscription")
    return list(found.filter(gateway_id=gateway_id, delivery=delivery).order_by("created_at", "pk"))


def delete(owner: User, live_id: uuid.UUID) -> None:
    deleted, _ = owned(owner).filter(pk=live_id).delete()
    if not deleted:
        raise UnknownLiveSubscription(live_id)
    log.info("live_subscription_deleted", owner=owner.get_username(), id=str(live_id))


def delete_selected(selected: QuerySet[LiveSubscription], batch_size: int = DELETE_BATCH) -> int:
    """Delete the selected live subscriptions (the admin's action), in batches; how many."""
    removed = 0
    ordered = selected.order_by("pk")
    while ids := list(ordered.values_list("pk", flat=True)[:batch_size]):
        removed += LiveSubscription.objects.filter(pk__in=ids).delete()[0]
    log.info("live_subscriptions_deleted", count=removed)
    return removed


def page(
    owner: User,
    *,
    gateway_id: str | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 100,
) -> Page:
    """`owner`'s live subscriptions (of one gateway if given), oldest first, `limit` at a
    time from after (created_at, id) `after`: new registrations join the end, so paging
    stays stable while the gateway registers more."""
    found = owned(owner).select_related("subscription")
    if gateway_id is not None:
        _check_gateway_id(gateway_id)
        found = found.filter(gateway_id=gateway_id)
    if after is not None:
        when, last = after
        found = found.filter(Q(created_at__gt=when) | Q(created_at=when, pk__gt=last))
    items = list(found.order_by("created_at", "pk")[: limit + 1])
    return Page(items[:limit], more=len(items) > limit)


def _check_gateway_id(gateway_id: str) -> None:
    problem = gateway_id_problem(gateway_id)
    if problem:
        raise InvalidLiveSubscriptions([LiveSubscriptionProblem(None, "gateway_id", problem)])


# -- expiry ------------------------------------------------------------------------------


def expire(now: datetime | None = None, batch_size: int = EXPIRE_BATCH) -> int:
    """Delete the live subscriptions expired at `now`, `batch_size` rows per statement;
    return how many. Safe beside registrations and heartbeats: a row renewed meanwhile
    is no longer expired, and the delete checks again."""
    cutoff = now or timezone.now()
    expired = LiveSubscription.objects.filter(expires_at__lte=cutoff)
    removed = 0
    while ids := list(expired.order_by("expires_at").values_list("pk", flat=True)[:batch_size]):
        removed += expired.filter(pk__in=ids).delete()[0]
    if removed:
        log.info("live_subscriptions_expired", count=removed)
    return removed
