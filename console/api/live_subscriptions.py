"""`/api/live-subscriptions`: register, renew, delete and list the caller's live
subscriptions, through `syncer.operations.live_subscriptions`.

The owner is the caller's user; each caller sees and touches only its own (another
owner's id is a 404). Every endpoint also needs `syncer.view_subscription`, since a live
subscription shows a subscription's changes; registering is adding, a heartbeat is
changing, so a read-only token may list but not register, renew or delete.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import HttpRequest
from ninja import Body, Field, Query, Router, Schema, Status
from pydantic import ConfigDict, Discriminator, Tag

from console.api import cursors
from console.api.auth import caller
from console.api.errors import FieldErrors
from console.api.permissions import (
    ADD_LIVE_SUBSCRIPTION,
    CHANGE_LIVE_SUBSCRIPTION,
    DELETE_LIVE_SUBSCRIPTION,
    VIEW_LIVE_SUBSCRIPTION,
    VIEW_SUBSCRIPTION,
    requires,
)
from syncer.errors import InvalidLiveSubscriptions
from syncer.models import LiveSubscription
from syncer.operations import live_subscriptions
from syncer.operations.live_subscriptions import Registration

router = Router(tags=["live subscriptions"])

MAX_BATCH = 1000
"""Registrations one request may carry: a larger set is sent in several requests."""
DEFAULT_PAGE = 100
MAX_PAGE = 1000

Delivery = Literal["websocket", "nats"]
_GATEWAY = (
    "The caller's own stable name (letters, digits, _ and -, at most 128): the same after "
    "a restart, so that it finds its live subscriptions again."
)


class LiveSubscriptionIn(Schema):
    """One live subscription to register."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "gateway_id": "gateway-eu-1",
                    "subscription": "orders",
                    "filter": 'doc.tenant == "acme" && doc.total > 100',
                    "delivery": "nats",
                }
            ]
        },
    )

    gateway_id: str = Field(description=_GATEWAY)
    subscription: str = Field(description="The name of the sync subscription to watch.")
    filter: str = Field(description="A CEL expression over doc, old, op, key and position.")
    delivery: Delivery = Field(
        description="websocket: /ws/live/; nats: subject events.{gateway_id}.{id}."
    )


class LiveSubscriptionBatchIn(Schema):
    """Several live subscriptions, registered all or none."""

    model_config = ConfigDict(extra="forbid")

    subscriptions: list[LiveSubscriptionIn] = Field(min_length=1, max_length=MAX_BATCH)


def _form(value: Any) -> str:
    return "<batch>" if isinstance(value, dict) and "subscriptions" in value else "<one>"


# The tags are left out of the field names of a 422 (console.api.errors): `filter`, or
# `subscriptions[2].filter`, whichever form was sent.
_One = Annotated[LiveSubscriptionIn, Tag("<one>")]
_Batch = Annotated[LiveSubscriptionBatchIn, Tag("<batch>")]
RegisterIn = Annotated[_One | _Batch, Discriminator(_form)]


class LiveSubscriptionOut(Schema):
    id: uuid.UUID
    gateway_id: str
    subscription: str = Field(description="The sync subscription's name.")
    filter: str
    delivery: Delivery
    pinned: bool = Field(
        description="Whether the filter pins a value at its top level (doc.f == literal, "
        "doc.f in [...]). Unpinned filters are compared with every change and have a "
        "smaller quota per subscription (LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION)."
    )
    created_at: datetime
    expires_at: datetime = Field(description="Renew it with a heartbeat before this.")


class LiveSubscriptionBatchOut(Schema):
    items: list[LiveSubscriptionOut] = Field(description="In the order they were sent.")


class LiveSubscriptionPage(Schema):
    items: list[LiveSubscriptionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")


class RenewedOut(Schema):
    gateway_id: str
    renewed: int = Field(description="How many were renewed; 0: none left, register again.")
    expires_at: datetime


class ListFilters(Schema):
    gateway_id: str | None = Field(None, description="Only this gateway's.")
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE)


def _out(live: LiveSubscription) -> dict[str, Any]:
    return {
        "id": live.id,
        "gateway_id": live.gateway_id,
        "subscription": live.subscription.name,
        "filter": live.filter,
        "delivery": live.delivery,
        "pinned": live.pinned,
        "created_at": live.created_at,
        "expires_at": live.expires_at,
    }


@contextmanager
def _field_names(batch: bool) -> Iterator[None]:
    """Say the operation's problems with the fields named as in the request."""
    try:
        yield
    except InvalidLiveSubscriptions as exc:
        fields = []
        for problem in exc.problems:
            field = problem.field
            if batch and problem.entry is not None:
                field = f"subscriptions[{problem.entry}].{field}"
            fields.append((field, problem.message))
        positions = [problem.position for problem in exc.problems]
        raise FieldErrors(fields, positions) from None


@router.post(
    "",
    response={201: LiveSubscriptionOut | LiveSubscriptionBatchOut},
    summary="Register live subscriptions",
)
@requires(ADD_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION)
def register(request: HttpRequest, payload: Body[RegisterIn]) -> Status[Any]:
    """One (`{gateway_id, subscription, filter, delivery}`) or a batch (`{"subscriptions":
    [...]}`, at most 1000): all are registered, or none. 422 lists every problem, a
    filter's with its character `position`; 429 when a quota would be passed (`limit`,
    `scope`: owner, global, or unpinned for the filters of one subscription that pin no
    value). Each expires LIVE_SUBSCRIPTION_TTL_SECONDS (300) after its last heartbeat."""
    batch = isinstance(payload, LiveSubscriptionBatchIn)
    entries = payload.subscriptions if isinstance(payload, LiveSubscriptionBatchIn) else [payload]
    registrations = [
        Registration(e.gateway_id, e.subscription, e.filter, e.delivery) for e in entries
    ]
    with _field_names(batch):
        created = live_subscriptions.register(caller(request).user, registrations)
    if batch:
        return Status(201, {"items": [_out(live) for live in created]})
    return Status(201, _out(created[0]))


@router.put(
    "/heartbeat",
    response=RenewedOut,
    summary="Renew a gateway's live subscriptions",
)
@requires(CHANGE_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION)
def heartbeat_gateway(request: HttpRequest, gateway_id: Query[str]) -> dict[str, Any]:
    """Every live subscription of the caller's gateway `gateway_id` now expires a TTL from
    now. `renewed: 0` means none was left: register them again."""
    with _field_names(batch=False):
        renewed = live_subscriptions.heartbeat_gateway(caller(request).user, gateway_id)
    return {"gateway_id": gateway_id, "renewed": renewed.count, "expires_at": renewed.expires_at}


@router.put(
    "/{live_subscription_id}/heartbeat",
    response=LiveSubscriptionOut,
    summary="Renew a live subscription",
)
@requires(CHANGE_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION)
def heartbeat(request: HttpRequest, live_subscription_id: uuid.UUID) -> dict[str, Any]:
    """It now expires a TTL from now; 404 if the caller has no such live subscription
    (expired, deleted, or another owner's)."""
    return _out(live_subscriptions.heartbeat(caller(request).user, live_subscription_id))


@router.delete(
    "/{live_subscription_id}", response={204: None}, summary="Delete a live subscription"
)
@requires(DELETE_LIVE_SUBSCRIPTION)
def delete(request: HttpRequest, live_subscription_id: uuid.UUID) -> Status[None]:
    """Deliveries stop within the worker's next look; 404 if the caller has none such."""
    live_subscriptions.delete(caller(request).user, live_subscription_id)
    return Status(204, None)


@router.get(
    "/{live_subscription_id}", response=LiveSubscriptionOut, summary="Read a live subscription"
)
@requires(VIEW_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION)
def get(request: HttpRequest, live_subscription_id: uuid.UUID) -> dict[str, Any]:
    return _out(live_subscriptions.get(caller(request).user, live_subscription_id))


@router.get("", response=LiveSubscriptionPage, summary="List live subscriptions")
@requires(VIEW_LIVE_SUBSCRIPTION, VIEW_SUBSCRIPTION)
def list_live_subscriptions(request: HttpRequest, filters: Query[ListFilters]) -> dict[str, Any]:
    """The caller's unexpired live subscriptions, oldest first, `limit` at a time: a
    gateway that restarts with the same `gateway_id` finds its own here."""
    after = None if filters.cursor is None else _decode_cursor(filters.cursor)
    with _field_names(batch=False):
        found = live_subscriptions.page(
            caller(request).user, gateway_id=filters.gateway_id, after=after, limit=filters.limit
        )
    return {
        "items": [_out(live) for live in found.items],
        "next_cursor": _encode_cursor(found.items[-1]) if found.more else None,
    }


def _encode_cursor(live: LiveSubscription) -> str:
    return cursors.encode(live.created_at, live.id)


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    return cursors.decode(cursor, uuid.UUID)
