"""A process that publishes a known sequence of matched events through `NatsDelivery`.

    python -m tests.support.nats_publisher URL STREAM SUBJECT_PREFIX COUNT

The sequence depends only on its arguments: one live subscription (a UUID derived from
STREAM), keys "0" .. "COUNT-1" at positions 1000 + i, offered in steps so that a test
can kill the process with SIGKILL midway, start it again, and check that the stream
holds each event once. Prints one JSON line at the end: the delivery's counters after
`stop` has flushed.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import orjson

from syncer.conf import NatsConfig
from syncer.live.events import MatchedEvent
from syncer.live.nats import NatsDelivery

GATEWAY = "kill-test"
STEP = 50
"""Events offered per step; a step every `PAUSE` seconds spreads the run over a second or so."""
PAUSE = 0.02


def live_subscription_id(stream: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"searchsync-test:{stream}")


def sequence(stream: str, count: int) -> list[MatchedEvent]:
    live_id = live_subscription_id(stream)
    return [
        MatchedEvent(live_id, GATEWAY, "orders", "upsert", str(i), 1000 + i, 1.0e9 + i, {"id": i})
        for i in range(count)
    ]


async def main(url: str, stream: str, prefix: str, count: int) -> None:
    delivery = NatsDelivery(
        NatsConfig(
            url=url,
            stream=stream,
            subject_prefix=prefix,
            max_age=120,
            duplicate_window=60,
            buffer=count,
            window=20,
        )
    )
    await delivery.start()
    events = sequence(stream, count)
    for start in range(0, count, STEP):
        for event in events[start : start + STEP]:
            if not delivery.offer(event):
                raise SystemExit(f"event {event.key} was dropped: {dict(delivery.dropped)}")
        await asyncio.sleep(PAUSE)
    await delivery.stop(timeout=30)
    counters = {
        "published": delivery.published,
        "duplicates": delivery.duplicates,
        "dropped": dict(delivery.dropped),
    }
    sys.stdout.write(orjson.dumps(counters).decode() + "\n")


if __name__ == "__main__":
    url, stream, prefix, count = sys.argv[1:5]
    asyncio.run(main(url, stream, prefix, int(count)))
