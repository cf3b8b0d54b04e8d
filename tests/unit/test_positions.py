"""Showing source positions the way their database does."""

from __future__ import annotations

import pytest

from syncer.sources.kinds import format_position
from syncer.sources.positions import format_lsn


@pytest.mark.parametrize(
    ("position", "shown"),
    [
        (None, "-"),
        (0, "0/0"),
        (0x16_B374D848, "16/B374D848"),
        (0x1_00000000, "1/0"),
        (0xFFFFFFFF, "0/FFFFFFFF"),
        ((1 << 64) - 1, "FFFFFFFF/FFFFFFFF"),
        (-1, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_lsn_is_shown_as_postgresql_shows_it(position: int | None, shown: str) -> None:
    assert format_lsn(position) == shown


def test_parse_lsn_is_the_inverse_of_format_lsn():
    from syncer.sources.positions import parse_lsn

    for position in (0, 1, 0xFFFFFFFF, 0x16B374D848, (1 << 63) - 1):
        assert parse_lsn(format_lsn(position)) == position


@pytest.mark.parametrize(
    ("kind", "position", "shown"),
    [
        ("postgres", 0x16B374D848, "16/B374D848"),
        ("materialize", 1795966748618, "1795966748618 (2026-11-29 15:39:08.618 UTC)"),
        ("materialize", 0, "0 (1970-01-01 00:00:00.000 UTC)"),
        ("materialize", 2**62, str(2**62)),
        ("materialize", None, "-"),
    ],
)
def test_positions_are_shown_in_the_source_kinds_own_terms(kind, position, shown):
    assert format_position(kind, position) == shown
