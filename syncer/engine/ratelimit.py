"""The live monitor's budget: individual events per second per subscription, and drop counts.

Pure logic (no I/O): the worker's publisher asks `admit` how many of a batch's events
may be sent one by one, and `summaries` which subscriptions are owed a drop summary.
Each subscription has its own one-second window, started by its first event; what
does not fit in a window is counted, and reported once that window has ended, so a
subscription gets at most one summary per second.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 1.0


@dataclass
class _Window:
    started: float
    sent: int = 0
    dropped: int = 0


class EventBudget:
    """At most `per_second` individual events per subscription in each one-second window."""

    def __init__(self, per_second: int) -> None:
        if per_second < 0:
            raise ValueError(f"events per second must be 0 or more, not {per_second}")
        self.per_second = per_second
        self._windows: dict[str, _Window] = {}
        self._owed: dict[str, int] = {}
        """Drops of ended windows not yet summarised, by subscription."""

    def admit(self, subscription: str, count: int, now: float) -> int:
        """How many of `count` events may be sent individually now; the rest are dropped."""
        window = self._window(subscription, now)
        admitted = max(0, min(count, self.per_second - window.sent))
        window.sent += admitted
        window.dropped += count - admitted
        return admitted

    def drop(self, subscription: str, count: int, now: float) -> None:
        """Count events lost before the budget saw them (e.g. the queue was full)."""
        if count > 0:
            self._window(subscription, now).dropped += count

    def summaries(self, now: float) -> dict[str, int]:
        """Drop counts owed, by subscription: those of windows that have ended.

        A window still open keeps counting: its summary comes when it ends.
        """
        for subscription, window in list(self._windows.items()):
            if now - window.started >= WINDOW:
                self._close(subscription, window)
                del self._windows[subscription]
        owed, self._owed = self._owed, {}
        return owed

    def pending(self, subscription: str) -> int:
        """Drops counted and not yet summarised (ended and open windows)."""
        window = self._windows.get(subscription)
        return self._owed.get(subscription, 0) + (window.dropped if window else 0)

    def forget(self, subscription: str) -> None:
        """The subscription no longer runs here."""
        self._windows.pop(subscription, None)
        self._owed.pop(subscription, None)

    def _window(self, subscription: str, now: float) -> _Window:
        window = self._windows.get(subscription)
        if window is None or now - window.started >= WINDOW:
            if window is not None:
                self._close(subscription, window)
            window = self._windows[subscription] = _Window(now)
        return window

    def _close(self, subscription: str, window: _Window) -> None:
        if window.dropped:
            self._owed[subscription] = self._owed.get(subscription, 0) + window.dropped
