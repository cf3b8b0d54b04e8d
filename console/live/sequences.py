"""Events lost before they reached a socket, found from the worker's sequence numbers.

The worker numbers the websocket messages of each live subscription 1, 2, ... under an
`epoch` of its run (syncer.live.events.live_message). A socket that receives number n
after m < n - 1 of the same epoch knows that n - m - 1 events were lost upstream: in the
worker's queue, in a failed send, or in the Channels layer, which drops what a channel
holds beyond its `capacity` without telling anyone. A new epoch (the worker restarted,
or another took the subscription over), or a number not above the last one (the worker
let the subscription go and took it back), is a count started again at 1: n - 1 were
lost since.

Where a socket's count starts: a live subscription it registered itself has had no
event before (`expect`), so its first event is number 1 of some epoch; one it resumed may
have had any number of events while no socket held it, so the socket counts only from
the first event it receives.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

UPSTREAM = "upstream"
"""The `where` of a `dropped` summary for events lost before the socket got them."""


@dataclass(frozen=True, slots=True)
class Gap:
    """`count` events of live subscription `live` (hex) lost upstream after `since`."""

    live: str
    count: int
    since: float
    """When the socket received the last event before the gap (epoch seconds)."""

    def summary(self) -> str:
        """The `dropped` message that takes the lost events' place in the stream."""
        return json.dumps(
            {
                "type": "dropped",
                "count": self.count,
                "since": self.since,
                "where": UPSTREAM,
                "live_subscription_id": str(uuid.UUID(self.live)),
            },
            separators=(",", ":"),
        )


class Sequences:
    """The last number seen of each live subscription a socket receives."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._last: dict[str, tuple[object, int, float]] = {}
        """Per live subscription (hex): the epoch, the number and when it came."""
        self._clock = clock

    def expect(self, live: str) -> None:
        """`live` is new (the socket registered it): count from its first event on."""
        self._last[live] = (_NO_EPOCH, 0, self._clock())

    def gap(self, message: dict[str, Any]) -> Gap | None:
        """What was lost before `message` (a `live.matched` message), or None.

        A message without a number (a worker of an older version) tells nothing."""
        live, epoch, number = message.get("live"), message.get("epoch"), message.get("seq")
        if not isinstance(live, str) or not isinstance(number, int):
            return None
        now = self._clock()
        last = self._last.get(live)
        self._last[live] = (epoch, number, now)
        if last is None:
            return None  # resumed: what came before this socket held it is not a loss
        if last[0] == epoch and number > last[1]:
            missed = number - last[1] - 1
        else:
            missed = number - 1  # counted again from 1 since
        return Gap(live, missed, last[2]) if missed > 0 else None

    def forget(self, live: str) -> None:
        """Stop tracking `live` (the socket let it go)."""
        self._last.pop(live, None)

    def __len__(self) -> int:
        return len(self._last)


_NO_EPOCH = object()
"""The epoch of a live subscription no worker has numbered yet."""
