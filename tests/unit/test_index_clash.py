"""Which index names two subscriptions may not share (a pure rule: no database)."""

from __future__ import annotations

import datetime as dt

import pytest

from syncer.sinks.opensearch.aliases import new_index_name
from syncer.validators import index_clash

REQUESTED = dt.datetime(2026, 12, 1, 21, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("index", "other", "clash"),
    [
        ("orders", "orders", "is already the index of subscription a"),
        ("orders-20261201210000123456", "orders", "a new-index resync of subscription a"),
        ("orders", "orders-20261201210000123456", "a new-index resync of index orders"),
        ("orders-v2", "orders", None),
        ("orders-2026", "orders", None),  # too short for a resync's name
        ("orders-20261201210000123456x", "orders", None),
        ("orders", "customers", None),
    ],
)
def test_equal_names_and_a_resyncs_new_index_names_clash(
    index: str, other: str, clash: str | None
) -> None:
    problem = index_clash(index, "a", other)
    if clash is None:
        assert problem is None
    else:
        assert problem is not None and clash in problem


def test_the_rule_knows_the_names_a_new_index_resync_builds() -> None:
    built = new_index_name("orders", REQUESTED)

    assert built == "orders-20261201210000123456"
    assert index_clash(built, "a", "orders") is not None
