"""A sync subscription's document fields and their source types, for checking filters.

A live subscription's filter may only read fields the documents have (`doc.totl` is a
typo, refused at registration). The fields are the source relation's columns, which
only the source knows: the kind's `column_types` asks it within a few seconds
(PostgreSQL: the catalog; Materialize: SHOW COLUMNS; a Materialize query, which only
planning could describe, answers None). The answer is
kept for `CACHE_SECONDS` per subscription, so registering 100,000 live subscriptions
asks once, and a source that cannot be asked now is not asked again for as long: its
filters are then accepted without the field check (None), since the worker, not
registration, needs the source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import structlog

from syncer import dsn
from syncer.errors import SyncError
from syncer.models import Subscription
from syncer.sources import kinds

log = structlog.get_logger(__name__)

CACHE_SECONDS = 60.0
_MAX_CACHED = 10_000

_Key = tuple[int, str, str, str]
_cache: dict[_Key, tuple[float, dict[str, str] | None]] = {}
_lock = threading.Lock()


def fields_of(subscription: Subscription) -> Mapping[str, str] | None:
    """The fields of `subscription`'s documents by source type name, or None if unknown."""
    kind = kinds.named(subscription.source_kind)
    if kind is None or kind.column_types is None:
        return None
    # A changed DSN or relation is another relation: asked anew.
    key = (
        subscription.pk,
        subscription.source_kind,
        subscription.source_dsn,
        subscription.relation,
    )
    now = time.monotonic()
    with _lock:
        cached = _cache.get(key)
    if cached is not None and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    try:
        found = kind.column_types(dsn.resolve(subscription.source_dsn), subscription.relation)
    except SyncError as exc:
        log.info("source_fields_unknown", subscription=subscription.name, reason=str(exc))
        found = None
    with _lock:
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()  # only ever a cache: the next registrations ask again
        _cache[key] = (now, found)
    return found


def forget() -> None:
    """Drop every cached answer (tests, and after a source's table changed)."""
    with _lock:
        _cache.clear()
