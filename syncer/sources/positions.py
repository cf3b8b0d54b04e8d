"""How source positions are shown to people."""

from __future__ import annotations

import datetime as dt

_U64 = (1 << 64) - 1


def format_lsn(position: int | None) -> str:
    """Show a PostgreSQL position (an LSN held as an integer) as PostgreSQL does: `16/B374D848`.

    None (no checkpoint yet) is shown as "-". A negative value is read as the two's
    complement of an LSN above 2**63, which a signed bigint column cannot otherwise hold.
    """
    if position is None:
        return "-"
    position &= _U64
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Read PostgreSQL's `16/B374D848` form of an LSN as an integer."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_mz_timestamp(position: int | None) -> str:
    """Show a Materialize position (`mz_timestamp`, ms since the epoch) with its UTC time."""
    if position is None:
        return "-"
    try:
        when = dt.datetime.fromtimestamp(position / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(position)  # not a wall-clock time: show the number alone
    return f"{position} ({when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d} UTC)"
