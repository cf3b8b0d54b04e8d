"""What the API changed, in the admin's history (django.contrib.admin LogEntry)."""

from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry

from console.api.auth import Caller
from syncer.models import Subscription

__all__ = ["ADDITION", "CHANGE", "DELETION", "record"]


def record(caller: Caller, subscription: Subscription, flag: int, message: str) -> None:
    """Add `message` to the subscription's history, as done by the caller through the API."""
    LogEntry.objects.log_actions(
        user_id=caller.user.pk,
        queryset=[subscription],
        action_flag=flag,
        change_message=f"{message}, via {caller.describe()}",
        single_object=True,
    )
