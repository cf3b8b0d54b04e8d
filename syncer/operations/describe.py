"""How a subscription is shown to people: passwords hidden, positions formatted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from syncer.models import Subscription
from syncer.sources.kinds import format_position
from syncer.text import redact


def config(subscription: Subscription) -> dict[str, Any]:
    """What a subscriptions file declares, shaped like one; the DSN without its password.

    A Materialize source's cluster and envelope are left out for other kinds.
    """
    s = subscription
    source: dict[str, Any] = {
        "kind": s.source_kind,
        "dsn": s.display_dsn,
        "relation": s.relation,
        "key": list(s.key_columns),
    }
    source.update(source_options(s))
    return {
        "name": s.name,
        "enabled": s.enabled,
        "source": source,
        "index": {
            "name": s.index_name,
            "settings": s.index_settings,
            "mappings": s.index_mappings,
            "adopt": s.adopt_index,
        },
        "snapshot": s.snapshot_mode,
        "batch": {"max_size": s.batch_max_size, "max_age_ms": s.batch_max_age_ms},
        "backpressure": {
            "pause_at": s.backpressure_pause_at,
            "resume_at": s.backpressure_resume_at,
        },
    }


def source_options(subscription: Subscription) -> dict[str, Any]:
    """The optional source settings its kind has (a Materialize cluster and envelope)."""
    return {
        option: getattr(subscription, f"source_{option}") for option in subscription.kind.options
    }


def describe(subscription: Subscription) -> dict[str, Any]:
    """Every field of `subscription` as JSON-ready data, shaped like a subscriptions file.

    The DSN is redacted, and so is any DSN a worker's message or error may quote.
    """
    s = subscription
    return {
        **config(s),
        "slot_name": s.slot_name,
        "status": s.status,
        "status_message": redact(s.status_message),
        "status_changed_at": iso_time(s.status_changed_at),
        "checkpoint": None
        if s.checkpoint is None
        else format_position(s.source_kind, s.checkpoint),
        "checkpoint_position": s.checkpoint,
        "checkpoint_at": iso_time(s.checkpoint_at),
        "snapshot_completed_at": iso_time(s.snapshot_completed_at),
        "last_error": redact(s.last_error),
        "last_error_at": iso_time(s.last_error_at),
        "created_at": iso_time(s.created_at),
        "updated_at": iso_time(s.updated_at),
    }


def iso_time(value: datetime | None) -> str | None:
    """A time as the API and `--json` write it (None stays None)."""
    return value.isoformat() if value else None
