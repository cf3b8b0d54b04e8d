"""Slot and publication lifecycle that runs outside the worker (subscription deletion)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from syncer.sources.postgres.queries import QUERIES
from syncer.sources.sqlerrors import translated


def drop_replication(conninfo: str, slot_name: str) -> None:
    """Drop the subscription's slot and publication (both named `slot_name`), if present.

    Without this a deleted subscription's slot keeps WAL on the source forever.
    """
    with translated(f"dropping replication slot {slot_name}"):
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            # A worker streaming from the slot holds it: end its walsender (the row is
            # deleted first, so the worker does not come back for it), then drop. The
            # walsender takes a moment to let go: a few tries get past it.
            for attempt in range(20):
                try:
                    conn.execute(QUERIES["end_slot_reader"], {"slot": slot_name})
                    conn.execute(QUERIES["drop_slot"], {"slot": slot_name})
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 19:
                        raise
                    conn.execute("SELECT pg_sleep(0.25)")
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(slot_name)))
