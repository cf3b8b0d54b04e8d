"""The Django model permissions that the API, the live monitor and the admin check.

The admin's own (view / add / change / delete of syncer.Subscription and
syncer.DeadLetter), so that a user may do the same everywhere: retrying dead letters is
changing them, purging is deleting them; pausing, resuming, resyncing and resetting a
subscription is changing it; reading its documents or its live events is viewing it.
Live subscriptions (syncer.LiveSubscription) follow the same scheme: registering one is
adding, a heartbeat is changing, and each of their endpoints also needs the view
permission on subscriptions, since a live subscription shows a subscription's changes.
"""

from __future__ import annotations

VIEW_SUBSCRIPTION = "syncer.view_subscription"
ADD_SUBSCRIPTION = "syncer.add_subscription"
CHANGE_SUBSCRIPTION = "syncer.change_subscription"
DELETE_SUBSCRIPTION = "syncer.delete_subscription"
VIEW_DEAD_LETTER = "syncer.view_deadletter"
CHANGE_DEAD_LETTER = "syncer.change_deadletter"
DELETE_DEAD_LETTER = "syncer.delete_deadletter"
VIEW_LIVE_SUBSCRIPTION = "syncer.view_livesubscription"
ADD_LIVE_SUBSCRIPTION = "syncer.add_livesubscription"
CHANGE_LIVE_SUBSCRIPTION = "syncer.change_livesubscription"
DELETE_LIVE_SUBSCRIPTION = "syncer.delete_livesubscription"
