"""What an operator asks of a running subscription: pause, resume, resync, reset.

Shared by the admin, the API and the commands. Each writes the request on the
Subscription row and bumps `control_version`; the worker that owns the subscription
sees the new version within `SYNCER_CONTROL_INTERVAL` seconds and applies it, so
nothing here talks to a worker, a source or OpenSearch directly.

- pause / resume: the worker stops reading (keeping the checkpoint) or starts again.
- resync: copy the source again into the index, then remove the documents the copy
  did not contain (`in_place`), or build a new index and swap the alias to it
  (`new_index`). The request stays until the copy completes, so a crash mid-way
  starts it again. A push subscription has nothing to copy: refused, unchanged.
- reset: forget the checkpoint (and the source's resume state); the next start is a
  first start in the subscription's snapshot mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from syncer.models import Subscription

log = structlog.get_logger(__name__)

Actor = AbstractBaseUser | AnonymousUser | None


@dataclass(frozen=True)
class ControlResult:
    subscription: str
    action: str
    changed: bool
    message: str


def bump(subscription: Subscription, **fields: object) -> None:
    """Save `fields` on the row and tell its worker to look (control_version + 1)."""
    Subscription.objects.filter(pk=subscription.pk).update(
        control_version=F("control_version") + 1, **fields
    )
    subscription.refresh_from_db()


def pause(subscription: Subscription) -> ControlResult:
    if subscription.paused:
        return ControlResult(subscription.name, "pause", False, "already paused")
    bump(subscription, paused=True)
    log.info("subscription_paused", subscription=subscription.name)
    return ControlResult(subscription.name, "pause", True, "paused")


def resume(subscription: Subscription) -> ControlResult:
    if not subscription.paused:
        return ControlResult(subscription.name, "resume", False, "not paused")
    bump(subscription, paused=False)
    log.info("subscription_resumed", subscription=subscription.name)
    return ControlResult(subscription.name, "resume", True, "resumed")


def resync(
    subscription: Subscription, mode: str = Subscription.ResyncMode.IN_PLACE
) -> ControlResult:
    mode = Subscription.ResyncMode(mode)
    if not subscription.kind.reads_database:
        # Nothing holds a push subscription's documents but the index: a copy would be
        # empty, and a new index swapped in would lose them all.
        return ControlResult(
            subscription.name,
            "resync",
            False,
            "a push subscription has no source to copy again: send its documents again "
            "instead (upserts of the same ids replace them)",
        )
    bump(subscription, resync_requested_at=timezone.now(), resync_mode=mode)
    log.info("subscription_resync_requested", subscription=subscription.name, mode=str(mode))
    return ControlResult(subscription.name, "resync", True, f"resync requested ({mode.label})")


def reset_checkpoint(subscription: Subscription) -> ControlResult:
    with transaction.atomic():
        bump(subscription, reset_requested_at=timezone.now())
    log.info("subscription_reset_requested", subscription=subscription.name)
    return ControlResult(subscription.name, "reset", True, "checkpoint reset requested")
