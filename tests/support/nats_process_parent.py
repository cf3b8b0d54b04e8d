"""A stand-in worker that delivers through a NATS publisher process, then waits forever.

    python -m tests.support.nats_process_parent URL STREAM SUBJECT_PREFIX COUNT

Starts a `NatsProcessDelivery`, offers COUNT events (`nats_publisher.sequence`), prints
one JSON line `{"publisher": <pid>}` once the publisher runs, and sleeps: a test kills it
with SIGKILL and checks that the publisher does not outlive it.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import structlog

from syncer.conf import NatsConfig
from syncer.live.nats_process import NatsProcessDelivery
from tests.support.nats_publisher import sequence


async def main(url: str, stream: str, prefix: str, count: int) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: ours
    config = NatsConfig(
        url=url, stream=stream, subject_prefix=prefix, max_age=120, duplicate_window=60
    )
    delivery = NatsProcessDelivery(config)
    await delivery.start()
    for event in sequence(stream, count):
        delivery.offer(event)
    while delivery.pid is None:
        await asyncio.sleep(0.01)
    sys.stdout.write(orjson.dumps({"publisher": delivery.pid}).decode() + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, stream, prefix, count = sys.argv[1:5]
    asyncio.run(main(url, stream, prefix, int(count)))
