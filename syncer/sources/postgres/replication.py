"""Slot and publication lifecycle that runs outside the worker (subscription deletion),
and the names of the temporary slots a subscription's helpers create."""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql

from syncer.sources.postgres.queries import QUERIES
from syncer.sources.sqlerrors import translated

SLOT_NAME_MAX = 63
"""PostgreSQL's longest identifier (NAMEDATALEN - 1): a longer slot name is refused."""


def temporary_slot_name(slot_name: str, purpose: str) -> str:
    """A new temporary slot's name for one of the subscription's helpers (`copy`,
    `verify`): its slot's name, cut so that `_<purpose>_<6 hex>` fits, then that."""
    suffix = f"_{purpose}_{secrets.token_hex(3)}"
    return slot_name[: SLOT_NAME_MAX - len(suffix)] + suffix


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
