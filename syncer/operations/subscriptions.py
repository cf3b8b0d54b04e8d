"""Operations on subscriptions shared by the admin, the commands and the API.

`named` / `anamed` are the one lookup by name: every surface that takes a subscription's
name finds it there, and an unknown one is UnknownSubscription, said the same way.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Count

from syncer import dsn
from syncer.errors import DeadLettersRemain, IndexNameTaken, SyncError, UnknownSubscription
from syncer.models import Subscription, SubscriptionQuerySet
from syncer.sources import kinds
from syncer.text import redact
from syncer.validators import index_clash

log = structlog.get_logger(__name__)

# The fields a declaration sets. Everything else on a subscription (slot name,
# checkpoint, status, errors, timestamps) belongs to the worker and is never applied.
CONFIG_FIELDS: tuple[str, ...] = (
    "enabled",
    "source_kind",
    "source_dsn",
    "relation",
    "key_columns",
    "source_cluster",
    "source_envelope",
    "index_name",
    "index_settings",
    "index_mappings",
    "adopt_index",
    "snapshot_mode",
    "batch_max_size",
    "batch_max_age_ms",
    "backpressure_pause_at",
    "backpressure_resume_at",
)
_MAX_SHOWN = 200


def known_names() -> list[str]:
    """Every subscription's name, in order: what an unknown name's message lists."""
    return list(Subscription.objects.values_list("name", flat=True))


def named(
    name: str, within: SubscriptionQuerySet | None = None, *, known: bool = False
) -> Subscription:
    """The subscription called `name` (among `within`, by default all of them).

    Else UnknownSubscription, which lists the names there are when `known`: the commands
    show them, the API (whose callers list subscriptions themselves) does not.
    """
    found = (Subscription.objects.all() if within is None else within).named(name).first()
    if found is None:
        raise UnknownSubscription(name, known_names() if known else None)
    return found


async def anamed(
    name: str, within: SubscriptionQuerySet | None = None, *, known: bool = False
) -> Subscription:
    """`named` for async callers."""
    found = await (Subscription.objects.all() if within is None else within).named(name).afirst()
    if found is None:
        raise UnknownSubscription(name, await sync_to_async(known_names)() if known else None)
    return found


def dead_letter_counts(subscriptions: Sequence[Subscription]) -> dict[str, int]:
    """How many dead letters each of `subscriptions` has, for those that have any."""
    found = (
        Subscription.objects.filter(pk__in=[s.pk for s in subscriptions])
        .annotate(count=Count("dead_letters"))
        .filter(count__gt=0)
        .order_by("name")
        .values_list("name", "count")
    )
    return dict(found)


def check_deletable(subscriptions: Sequence[Subscription], force: bool) -> None:
    """Raise DeadLettersRemain unless `force` or none of them has dead letters."""
    if force:
        return
    counts = dead_letter_counts(subscriptions)
    if counts:
        raise DeadLettersRemain(counts)


def delete_subscription(subscription: Subscription, force: bool = False) -> str | None:
    """Delete a subscription and drop its slot and publication on a PostgreSQL source.

    Its dead letters go with it, so one that has any is deleted only with `force`
    (else DeadLettersRemain). The subscription is deleted even when the source cannot
    be reached; the returned warning then says what to drop by hand, so WAL does not
    pile up unseen.
    """
    check_deletable([subscription], force)
    warning = None
    # The row goes first: a worker that lost the slot under it and reconnects then finds
    # no subscription, instead of creating the slot again just before it is told to stop.
    subscription.delete()
    # named(), not .kind: a row whose kind was broken by hand is still deleted.
    kind = kinds.named(subscription.source_kind)
    cleanup = kind.cleanup if kind else None
    if cleanup is None:
        return None  # e.g. Materialize's SUBSCRIBE leaves nothing on the source
    try:
        cleanup(dsn.resolve(subscription.source_dsn), subscription.slot_name)
    except SyncError as exc:
        warning = (
            f"subscription {subscription.name}: could not drop replication slot and "
            f"publication '{subscription.slot_name}' on the source ({exc}). Drop them by "
            f"hand, or the source keeps WAL for them: SELECT pg_drop_replication_slot("
            f"'{subscription.slot_name}'); DROP PUBLICATION \"{subscription.slot_name}\";"
        )
        log.warning("replication_drop_failed", subscription=subscription.name, error=str(exc))
    else:
        log.info("replication_dropped", subscription=subscription.name, slot=subscription.slot_name)
    return warning


def validate_config(subscription: Subscription) -> None:
    """Run the model's validation of the declared fields; raise ValidationError.

    Uniqueness is left to the caller (a declaration updates by name), and the check
    constraints are not queried: `Subscription.clean` states them in an operator's words.
    """
    declared = {"name", *CONFIG_FIELDS}
    runtime = [f.name for f in Subscription._meta.concrete_fields if f.name not in declared]
    subscription.full_clean(exclude=runtime, validate_unique=False, validate_constraints=False)


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a declaration says one subscription should be.

    `values` holds every field of CONFIG_FIELDS, defaults filled in, already validated
    (see `validate_config`).
    """

    name: str
    values: Mapping[str, Any]


class Action(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"


@dataclass(frozen=True)
class FieldChange:
    """One changed field, with values fit to show (a DSN's password is hidden)."""

    field: str
    old: str
    new: str


@dataclass(frozen=True)
class Applied:
    """What `apply_subscriptions` did (or would do) to one subscription."""

    name: str
    action: Action
    changes: tuple[FieldChange, ...] = ()
    warning: str | None = None


@dataclass(frozen=True)
class ApplyReport:
    """What `apply_subscriptions` did, or would do on a dry run, per subscription."""

    outcomes: tuple[Applied, ...]
    dry_run: bool

    @property
    def counts(self) -> dict[Action, int]:
        counts = dict.fromkeys(Action, 0)
        for outcome in self.outcomes:
            counts[outcome.action] += 1
        return counts

    @property
    def warnings(self) -> list[str]:
        return [o.warning for o in self.outcomes if o.warning]


def apply_subscriptions(
    specs: Sequence[SubscriptionSpec],
    prune: bool = False,
    dry_run: bool = False,
    force: bool = False,
) -> ApplyReport:
    """Create or update each declared subscription by name, in one transaction.

    With `prune`, subscriptions not declared are deleted (their slots dropped on the
    source), after every create and update, so a failed write never follows a drop;
    one with dead letters only with `force` (else DeadLettersRemain, nothing written).
    An index name that clashes with another subscription's, as they will be once
    applied, raises IndexNameTaken. With `dry_run`, nothing is written and the report
    says what would change.
    """
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError("each subscription may be declared only once")
    outcomes: list[Applied] = []
    with transaction.atomic():
        existing = {s.name: s for s in Subscription.objects.all()}
        pruned = sorted(set(existing) - set(names)) if prune else []
        _check_index_names(specs, existing, pruned)
        check_deletable([existing[name] for name in pruned], force)
        for spec in specs:
            current = existing.get(spec.name)
            if current is None:
                outcomes.append(_create(spec, dry_run))
            else:
                outcomes.append(_update(current, spec, dry_run))
        for name in pruned:
            warning = None if dry_run else delete_subscription(existing[name], force=True)
            outcomes.append(Applied(name, Action.DELETED, warning=warning))
    report = ApplyReport(tuple(outcomes), dry_run)
    log.info(
        "subscriptions_applied",
        dry_run=dry_run,
        prune=prune,
        **{action.value: count for action, count in report.counts.items()},
    )
    return report


def _check_index_names(
    specs: Sequence[SubscriptionSpec], existing: Mapping[str, Subscription], pruned: Sequence[str]
) -> None:
    """Raise IndexNameTaken if a declared index clashes with another's, after applying."""
    final = {name: s.index_name for name, s in existing.items() if name not in pruned}
    final.update({spec.name: str(spec.values["index_name"]) for spec in specs})
    errors = []
    for spec in specs:
        index = final[spec.name]
        for other, other_index in sorted(final.items()):
            problem = None if other == spec.name else index_clash(index, other, other_index)
            if problem:
                errors.append((spec.name, problem))
                break
    if errors:
        raise IndexNameTaken(errors)


def _create(spec: SubscriptionSpec, dry_run: bool) -> Applied:
    if not dry_run:
        subscription = Subscription(name=spec.name, **_config_values(spec))
        subscription.save()
    return Applied(spec.name, Action.CREATED)


def _update(current: Subscription, spec: SubscriptionSpec, dry_run: bool) -> Applied:
    changes: list[FieldChange] = []
    for name, new in _config_values(spec).items():
        old = getattr(current, name)
        if old != new:
            changes.append(_describe_change(name, old, new))
            setattr(current, name, new)
    if not changes:
        return Applied(spec.name, Action.UNCHANGED)
    if not dry_run:
        # Only the declared fields: the worker may be writing the runtime ones right now.
        current.save(update_fields=[c.field for c in changes] + ["updated_at"])
    return Applied(spec.name, Action.UPDATED, tuple(changes))


def _config_values(spec: SubscriptionSpec) -> dict[str, Any]:
    unknown = set(spec.values) - set(CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"not declarable fields: {', '.join(sorted(unknown))}")
    return {name: spec.values[name] for name in CONFIG_FIELDS if name in spec.values}


def _describe_change(name: str, old: Any, new: Any) -> FieldChange:
    if name == "source_dsn":
        shown_old, shown_new = redact(old), redact(new)
        if shown_old == shown_new:
            shown_new += " (password changed)"
        return FieldChange(name, shown_old, shown_new)
    return FieldChange(name, _show(old), _show(new))


def _show(value: Any) -> str:
    if value == "":
        return "(none)"
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"
