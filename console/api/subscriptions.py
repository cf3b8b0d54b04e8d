"""`/api/subscriptions`: read, create, change, delete, pause, resume and resync.

Thin over `syncer.operations.subscriptions` (apply, delete) and `syncer.operations.control`
(pause, resume, resync); each change is written to the admin's history for the acting user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count
from django.http import HttpRequest
from ninja import Query, Router, Status

from console.api import audit, declarations
from console.api.auth import caller
from console.api.errors import Conflict
from console.api.permissions import (
    ADD_SUBSCRIPTION,
    CHANGE_SUBSCRIPTION,
    DELETE_SUBSCRIPTION,
    VIEW_SUBSCRIPTION,
    requires,
)
from console.api.schemas import (
    ChangedOut,
    ControlOut,
    DeletedOut,
    ResyncIn,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPatch,
    subscription_out,
)
from syncer import dsn
from syncer.errors import DeadLettersRemain
from syncer.models import Subscription, SubscriptionQuerySet
from syncer.operations import control, subscriptions, verify
from syncer.operations.control import ControlResult
from syncer.operations.declarations import FIELD_LABELS
from syncer.sources import kinds

router = Router(tags=["subscriptions"])


def _with_counts() -> SubscriptionQuerySet:
    return Subscription.objects.annotate(dead_letter_count=Count("dead_letters"))


def _get(name: str) -> Subscription:
    return subscriptions.named(name, _with_counts())


def _locked(name: str) -> Subscription:
    """The subscription, its row locked until the transaction ends (call inside atomic)."""
    return subscriptions.named(name, Subscription.objects.select_for_update())


def _out(
    subscription: Subscription, verified: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    count = getattr(subscription, "dead_letter_count", None)
    if count is None:
        count = subscription.dead_letters.count()
    if verified is None:
        verified = verify.latest_by_subscription([subscription.name])
    return subscription_out(subscription, count, verified.get(subscription.name))


@router.get("", response=list[SubscriptionOut], summary="List subscriptions")
@requires(VIEW_SUBSCRIPTION)
def list_subscriptions(
    request: HttpRequest,
    status: Query[str | None] = None,
) -> list[dict[str, Any]]:
    """Every subscription with its status, lag and dead-letter count; optionally one status."""
    found = _with_counts().order_by("name")
    if status:
        # No status holds a NUL, and PostgreSQL could not even be asked about one.
        found = found.filter(status=status) if "\x00" not in status else found.none()
    listed = list(found)
    verified = verify.latest_by_subscription([s.name for s in listed])
    return [_out(s, verified) for s in listed]


@router.post("", response={201: SubscriptionOut}, summary="Create a subscription")
@requires(ADD_SUBSCRIPTION)
def create_subscription(request: HttpRequest, payload: SubscriptionIn) -> Status[Any]:
    """Validated as `manage.py subscriptions apply` validates a file's entry."""
    spec = declarations.to_spec(payload.model_dump(exclude_unset=True))
    taken = Conflict(
        f"a subscription named {spec.name!r} already exists; "
        f"PATCH /api/subscriptions/{spec.name} to change it"
    )
    try:
        with transaction.atomic():
            if Subscription.objects.filter(name=spec.name).exists():
                raise taken
            report = subscriptions.apply_subscriptions([spec])
            if report.outcomes[0].action != subscriptions.Action.CREATED:
                raise taken  # created by someone else meanwhile: undo our update
            subscription = _get(spec.name)
            audit.record(caller(request), subscription, audit.ADDITION, "Created")
    except IntegrityError:
        raise taken from None
    return Status(201, _out(subscription))


@router.get("/{name}", response=SubscriptionOut, summary="Read a subscription")
@requires(VIEW_SUBSCRIPTION)
def get_subscription(request: HttpRequest, name: str) -> dict[str, Any]:
    return _out(_get(name))


@router.patch("/{name}", response=ChangedOut, summary="Change a subscription")
@requires(CHANGE_SUBSCRIPTION)
def patch_subscription(
    request: HttpRequest, name: str, payload: SubscriptionPatch
) -> dict[str, Any]:
    """Change the given fields; the result is validated like a subscriptions file entry."""
    with transaction.atomic():
        current = _locked(name)
        patch = payload.model_dump(exclude_unset=True)
        if isinstance(patch.get("source"), dict):
            _keep_as_shown(patch["source"], current)
        entry = declarations.merge(declarations.declaration_of(current), patch)
        spec = declarations.to_spec(entry)
        outcome = subscriptions.apply_subscriptions([spec]).outcomes[0]
        changes = [
            {"field": FIELD_LABELS.get(c.field, c.field), "old": c.old, "new": c.new}
            for c in outcome.changes
        ]
        if changes:
            changed = ", ".join(f"{c['field']} ({c['old']} → {c['new']})" for c in changes)
            audit.record(caller(request), current, audit.CHANGE, f"Changed {changed}")
    return {
        "subscription": _out(_get(name)),
        "changed": bool(changes),
        "changes": changes,
    }


def _keep_as_shown(source: dict[str, Any], current: Subscription) -> None:
    """Source fields sent back exactly as GET shows them keep what is stored.

    The DSN as shown (password as ***) keeps the stored DSN, as the admin form does; a
    postgres source's cluster and envelope, which GET shows though only Materialize has
    them, are left out instead of being refused.
    """
    if isinstance(source.get("dsn"), str):
        source["dsn"] = dsn.unredacted(source["dsn"], current.source_dsn)
    sent = kinds.named(source.get("kind", current.source_kind))
    for option in kinds.OPTIONS:
        if sent is None or option in sent.options or option in current.kind.options:
            continue
        if option in source and source[option] == getattr(current, f"source_{option}"):
            del source[option]


@router.delete("/{name}", response=DeletedOut, summary="Delete a subscription")
@requires(DELETE_SUBSCRIPTION)
def delete_subscription(
    request: HttpRequest, name: str, force: Query[bool] = False
) -> dict[str, Any]:
    """Delete it; a PostgreSQL source's slot and publication are dropped (or the warning
    says what to drop by hand). Its dead letters go with it: a subscription that has any
    is deleted only with `force=true` (409 otherwise, saying how many)."""
    with transaction.atomic():
        subscription = _locked(name)
        audit.record(caller(request), subscription, audit.DELETION, "Deleted")
        try:
            warning = subscriptions.delete_subscription(subscription, force=force)
        except DeadLettersRemain as exc:
            raise Conflict(
                f"{exc}: DELETE /api/subscriptions/{name}?force=true deletes them too"
            ) from None
    return {"name": name, "deleted": True, "warning": warning}


def _control_out(result: ControlResult, subscription: Subscription) -> dict[str, Any]:
    return {
        "subscription": result.subscription,
        "action": result.action,
        "changed": result.changed,
        "message": result.message,
        "paused": subscription.paused,
        "resync_requested_at": subscription.resync_requested_at,
        "resync_mode": subscription.resync_mode,
    }


def _control(
    request: HttpRequest, name: str, result_of: Callable[[Subscription], ControlResult]
) -> dict[str, Any]:
    with transaction.atomic():
        subscription = _locked(name)
        result = result_of(subscription)
        if result.changed:
            message = result.message[:1].upper() + result.message[1:]
            audit.record(caller(request), subscription, audit.CHANGE, message)
    return _control_out(result, subscription)


@router.post("/{name}/pause", response=ControlOut, summary="Pause a subscription")
@requires(CHANGE_SUBSCRIPTION)
def pause(request: HttpRequest, name: str) -> dict[str, Any]:
    """Its worker stops reading and keeps the checkpoint; `changed` is false if it was paused."""
    return _control(request, name, control.pause)


@router.post("/{name}/resume", response=ControlOut, summary="Resume a subscription")
@requires(CHANGE_SUBSCRIPTION)
def resume(request: HttpRequest, name: str) -> dict[str, Any]:
    return _control(request, name, control.resume)


@router.post("/{name}/resync", response=ControlOut, summary="Resync a subscription")
@requires(CHANGE_SUBSCRIPTION)
def resync(request: HttpRequest, name: str, payload: ResyncIn | None = None) -> dict[str, Any]:
    """Copy the source into the index again (in_place, the default) or into a new index."""
    mode = payload.mode if payload is not None else Subscription.ResyncMode.IN_PLACE
    return _control(request, name, lambda s: control.resync(s, mode))
