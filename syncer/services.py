"""Operations on subscriptions shared by the admin, the commands and (later) the API."""

from __future__ import annotations

import structlog

from syncer import dsn
from syncer.errors import SyncError
from syncer.models import Subscription
from syncer.sources.postgres.replication import drop_replication

log = structlog.get_logger(__name__)


def delete_subscription(subscription: Subscription) -> str | None:
    """Delete a subscription and drop its slot and publication on the source.

    The subscription is deleted even when the source cannot be reached; the returned
    warning then says what to drop by hand, so WAL does not pile up unseen.
    """
    warning = None
    try:
        drop_replication(dsn.resolve(subscription.source_dsn), subscription.slot_name)
    except SyncError as exc:
        warning = (
            f"subscription {subscription.name}: could not drop replication slot and "
            f"publication '{subscription.slot_name}' on the source ({exc}). Drop them by "
            f"hand, or the source keeps WAL for them: SELECT pg_drop_replication_slot("
            f"'{subscription.slot_name}'); DROP PUBLICATION \"{subscription.slot_name}\";"
        )
        log.warning("replication_drop_failed", subscription=subscription.name, error=str(exc))
    else:
        log.info("replication_dropped", subscription=subscription.name,
                 slot=subscription.slot_name)
    subscription.delete()
    return warning
