"""How far a resumable copy has come: percent done, rows per second and time left.

A copy's chunks carry `CopyProgress` (rows copied in every session so far, the table's
estimated size). The rate is measured over the last `window` seconds of this session
only: rows copied before a restart say nothing of how fast this worker copies.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from syncer.engine.changes import CopyProgress

_WINDOW = 30.0
_NEARLY_DONE = 99.9  # shown while the estimate says done but rows still come


@dataclass(frozen=True, slots=True)
class CopyFigures:
    rows: int
    estimated_rows: int | None
    percent: float | None
    """None when the table has no size estimate."""
    rows_per_second: float | None
    """None until two chunks of this session were acknowledged."""
    eta_seconds: float | None
    resumes: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready, rounded: what the API, the monitor and the admin show."""
        return {
            "rows": self.rows,
            "estimated_rows": self.estimated_rows,
            "percent": None if self.percent is None else round(self.percent, 1),
            "rows_per_second": None
            if self.rows_per_second is None
            else round(self.rows_per_second, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
            "resumes": self.resumes,
        }

    def describe(self) -> str:
        """'42.0% (420,000 of about 1,000,000 rows), 8,300 rows/s, about 1 min 10 s left'."""
        if self.percent is not None and self.estimated_rows is not None:
            done = f"{self.percent:.1f}% ({self.rows:,} of about {self.estimated_rows:,} rows)"
        else:
            done = f"{self.rows:,} rows (the table has no size estimate: ANALYZE it)"
        parts = [done]
        if self.rows_per_second is not None:
            parts.append(f"{self.rows_per_second:,.0f} rows/s")
        if self.eta_seconds is not None:
            parts.append(f"about {duration(self.eta_seconds)} left")
        if self.resumes:
            parts.append(f"resumed {self.resumes} time{'s' if self.resumes > 1 else ''}")
        return ", ".join(parts)


class CopyMeter:
    def __init__(self, window: float = _WINDOW) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._last: CopyProgress | None = None

    def update(self, progress: CopyProgress, now: float) -> None:
        self._last = progress
        samples = self._samples
        samples.append((now, progress.rows))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()

    def reset(self) -> None:
        self._samples.clear()
        self._last = None

    def figures(self) -> CopyFigures | None:
        """None before the first chunk of this session."""
        last = self._last
        if last is None:
            return None
        rate = None
        if len(self._samples) >= 2:
            (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
            if t1 > t0:
                rate = (r1 - r0) / (t1 - t0)
        percent = eta = None
        estimated = last.estimated_rows
        if estimated:
            percent = min(_NEARLY_DONE, 100.0 * last.rows / estimated)
            if rate:
                eta = max(0.0, estimated - last.rows) / rate
        return CopyFigures(last.rows, estimated, percent, rate, eta, last.resumes)


def saved_text(progress: dict[str, Any]) -> str:
    """`CopyFigures.describe` of figures saved with `as_dict`; their raw text when a
    worker of another version wrote them."""
    try:
        return CopyFigures(**progress).describe()
    except TypeError:
        return str(progress)


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
