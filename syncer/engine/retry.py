"""What to do with each document after a bulk round: done, retry, or dead-letter.

Pure rules, tested as tables. A document that OpenSearch rejects for good goes to the
dead-letter queue at once. One that fails transiently is retried with backoff, and
dead-lettered once it has failed `max_attempts` times, so one poisoned document
cannot hold a subscription's checkpoint forever. A round in which *every* document
of several failed transiently is an outage rather than a verdict on those documents:
nothing is counted, the circuit breaker opens, and nothing is dead-lettered for it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from syncer.engine.outcomes import Outcome


class Decision(enum.StrEnum):
    DONE = "done"
    """Applied, or already applied (stale): nothing more to do."""
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    """Transient failures of one document before it goes to the dead-letter queue."""

    def is_outage(self, outcomes: Sequence[Outcome]) -> bool:
        """True when a round of several documents failed transiently as a whole."""
        return len(outcomes) > 1 and all(o is Outcome.TRANSIENT for o in outcomes)

    def decide(self, outcome: Outcome, attempts: int) -> Decision:
        """The fate of one document whose `attempts`-th write had `outcome`."""
        if outcome in (Outcome.OK, Outcome.STALE):
            return Decision.DONE
        if outcome is Outcome.PERMANENT or attempts >= self.max_attempts:
            return Decision.DEAD_LETTER
        return Decision.RETRY
