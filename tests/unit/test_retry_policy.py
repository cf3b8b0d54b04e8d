"""The retry policy as a table: outcome and attempts in, decision out."""

from __future__ import annotations

import pytest

from syncer.engine.outcomes import Outcome
from syncer.engine.retry import Decision, RetryPolicy

OK, STALE, TRANSIENT, PERMANENT = Outcome.OK, Outcome.STALE, Outcome.TRANSIENT, Outcome.PERMANENT


@pytest.mark.parametrize(
    ("outcome", "attempts", "max_attempts", "decision"),
    [
        (OK, 1, 3, Decision.DONE),
        (OK, 5, 3, Decision.DONE),  # a late success is a success
        (STALE, 1, 3, Decision.DONE),  # already applied
        (PERMANENT, 1, 3, Decision.DEAD_LETTER),  # straight to the queue
        (TRANSIENT, 1, 3, Decision.RETRY),
        (TRANSIENT, 2, 3, Decision.RETRY),
        (TRANSIENT, 3, 3, Decision.DEAD_LETTER),  # the budget is spent
        (TRANSIENT, 1, 1, Decision.DEAD_LETTER),
        (TRANSIENT, 9, 10, Decision.RETRY),
    ],
)
def test_decision(outcome, attempts, max_attempts, decision):
    assert RetryPolicy(max_attempts).decide(outcome, attempts) is decision


@pytest.mark.parametrize(
    ("outcomes", "outage"),
    [
        ([TRANSIENT, TRANSIENT, TRANSIENT], True),  # the whole round refused: an outage
        ([TRANSIENT, OK, TRANSIENT], False),  # the sink works: these documents are the problem
        ([TRANSIENT, PERMANENT], False),
        ([TRANSIENT], False),  # one document alone cannot tell an outage from poison
        ([], False),
        ([OK, OK], False),
    ],
)
def test_outage(outcomes, outage):
    assert RetryPolicy().is_outage(outcomes) is outage
