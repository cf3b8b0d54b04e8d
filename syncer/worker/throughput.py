"""Changes per second over the last minute, from samples of a growing counter."""

from __future__ import annotations

from collections import deque


class Throughput:
    """A small ring of (time, count) samples of one pipeline's counter."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, count: int) -> None:
        if self._samples and count < self._samples[-1][1]:
            self._samples.clear()  # a new pipeline: its counters start again at 0
        self._samples.append((at, count))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Per second between the oldest and newest sample in the window; None before two."""
        if len(self._samples) < 2:
            return None
        (first_at, first), (last_at, last) = self._samples[0], self._samples[-1]
        if last_at <= first_at:
            return None
        return (last - first) / (last_at - first_at)
