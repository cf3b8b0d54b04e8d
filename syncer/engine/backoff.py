"""Exponential backoff with jitter: 1, 2, 4, 8, 16, 30, 30 ... seconds."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays that double from `base` up to `cap`, each scaled by a random ±`jitter`.

    Jitter keeps many subscriptions that failed together from retrying together.
    """

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 30.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.cap, self.jitter = base, cap, jitter
        self._rand = rand
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        nominal = min(self.cap, self.base * float(2**self.attempts))
        self.attempts += 1
        spread = 1.0 + self.jitter * (2.0 * self._rand() - 1.0)
        return min(self.cap, nominal * spread)

    def reset(self) -> None:
        """Forget failures after a success."""
        self.attempts = 0
