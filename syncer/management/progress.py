"""A progress bar on a command's stderr, for the long reads (`manage.py export`).

On a terminal it redraws one line (`\\r`) at most every `REDRAW` seconds; elsewhere
(a log file, a pipe) it writes a line every `EVERY` seconds, so a cron log stays short.
Its figures are the engine's (`syncer.engine.progress.duration`): done of total,
percent, rate and time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.core.management.base import OutputWrapper

from syncer.engine.progress import duration

REDRAW = 0.2
EVERY = 10.0
WIDTH = 30


class ProgressBar:
    def __init__(
        self,
        stream: OutputWrapper,
        label: str,
        total: int | None,
        *,
        unit: str = "documents",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.unit = unit
        self.clock = clock
        self.terminal = stream.isatty()
        self.started = clock()
        self._shown_at: float | None = None

    def update(self, done: int) -> None:
        now = self.clock()
        wait = REDRAW if self.terminal else EVERY
        if self._shown_at is not None and now - self._shown_at < wait:
            return
        self._shown_at = now
        self._show(self.line(done, now), final=False)

    def finish(self, done: int, outcome: str = "done") -> None:
        self._show(f"{self.line(done, self.clock())}, {outcome}", final=True)

    def line(self, done: int, now: float) -> str:
        """`orders: [#########.....] 3,000/10,000 documents (30%), 2,900/s, about 2 s left`."""
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else None
        if self.total:
            share = min(1.0, done / self.total)
            filled = round(WIDTH * share)
            bar = "[" + "#" * filled + "." * (WIDTH - filled) + "] "
            text = f"{self.label}: {bar}{done:,}/{self.total:,} {self.unit} ({share:.0%})"
        else:
            text = f"{self.label}: {done:,} {self.unit}"
        if rate:
            text += f", {rate:,.0f}/s"
            if self.total and done < self.total:
                text += f", about {duration((self.total - done) / rate)} left"
        return text

    def _show(self, text: str, *, final: bool) -> None:
        if self.terminal:
            self.stream.write("\r\x1b[2K" + text, ending="\n" if final else "")
            self.stream.flush()
        else:
            self.stream.write(text)
