from __future__ import annotations

import pytest

from syncer.engine.backoff import Backoff
from syncer.engine.changes import Op
from syncer.engine.outcomes import Outcome, classify


@pytest.mark.parametrize(
    ("op", "status", "error_type", "expected"),
    [
        (Op.UPSERT, 201, "", Outcome.OK),
        (Op.UPSERT, 200, "", Outcome.OK),
        (Op.DELETE, 404, "", Outcome.OK),
        (Op.UPSERT, 404, "index_not_found_exception", Outcome.PERMANENT),
        (Op.UPSERT, 409, "version_conflict_engine_exception", Outcome.STALE),
        (Op.DELETE, 409, "version_conflict_engine_exception", Outcome.STALE),
        (Op.UPSERT, 429, "es_rejected_execution_exception", Outcome.TRANSIENT),
        (Op.UPSERT, 503, "unavailable_shards_exception", Outcome.TRANSIENT),
        (Op.UPSERT, 500, "", Outcome.TRANSIENT),
        (Op.UPSERT, 400, "mapper_parsing_exception", Outcome.PERMANENT),
        (Op.UPSERT, 400, "illegal_argument_exception", Outcome.PERMANENT),
        (Op.UPSERT, 413, "", Outcome.PERMANENT),
    ],
)
def test_bulk_item_classification(op, status, error_type, expected):
    assert classify(op, status, error_type) is expected


def test_backoff_doubles_to_the_cap_with_bounded_jitter():
    nominal = [1, 2, 4, 8, 16, 30, 30, 30]
    low = Backoff(rand=lambda: 0.0)
    high = Backoff(rand=lambda: 1.0)
    mid = Backoff(rand=lambda: 0.5)
    for expected in nominal:
        assert mid.next_delay() == pytest.approx(expected)
        assert low.next_delay() == pytest.approx(expected * 0.8)
        assert high.next_delay() == pytest.approx(min(30, expected * 1.2))


def test_backoff_reset_starts_again_from_base():
    backoff = Backoff(rand=lambda: 0.5)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(1.0)


def test_the_subscription_statuses_are_the_engines_and_only_those() -> None:
    from syncer.engine.pipeline import Status
    from syncer.models import Subscription

    engine = {value for name, value in vars(Status).items() if name.isupper()}
    assert set(Subscription.Status.values) == engine
