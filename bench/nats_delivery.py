"""What NATS JetStream delivery of matched events costs and how fast it goes.

    .venv/bin/python bench/nats_delivery.py [--events 50000] [--rate 3000] [--doc-bytes 300]

Against the NATS server on 127.0.0.1:4222 (JetStream on), with a stream of its own
(deleted at the end). Two phases, one `NatsDelivery` each, built as the worker builds it
(default settings but the stream name and subject prefix):

- **burst**: `--events` events offered at once (the buffer holds them all); throughput
  is events / (last acknowledgement - first offer), and the cost of `offer` itself
  (the only part the sync pays) is timed per call.
- **paced**: `--events` events offered at `--rate` per second, in 10 ms steps, the way
  matches leave a worker; latency is offer to receipt by a plain NATS subscriber on the
  stream's subjects (what a client sees), p50 / p99 / max.

Each event carries a document of about `--doc-bytes` bytes of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import nats
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from syncer.conf import NatsConfig  # noqa: E402
from syncer.live.events import MatchedEvent  # noqa: E402
from syncer.live.nats import NatsDelivery  # noqa: E402

NATS_URL = "nats://127.0.0.1:4222"


def make_events(count: int, doc_bytes: int) -> list[MatchedEvent]:
    live_ids = [uuid.uuid4() for _ in range(100)]
    filler = "x" * max(0, doc_bytes - 60)
    return [
        MatchedEvent(
            live_ids[i % len(live_ids)],
            f"gw-{i % 10}",
            "orders",
            "upsert",
            str(i),
            10_000 + i,
            time.time(),
            {"id": i, "tenant": i % 1000, "note": filler},
        )
        for i in range(count)
    ]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def burst(config: NatsConfig, events: list[MatchedEvent]) -> dict[str, float]:
    delivery = NatsDelivery(config)
    await delivery.start()
    offer_costs = []
    started = time.perf_counter()
    for event in events:
        t0 = time.perf_counter()
        delivery.offer(event)
        offer_costs.append(time.perf_counter() - t0)
    while delivery.published < len(events):
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    await delivery.stop(timeout=10)
    return {
        "events_per_s": len(events) / elapsed,
        "offer_us_median": statistics.median(offer_costs) * 1e6,
        "offer_us_p99": quantile(offer_costs, 0.99) * 1e6,
    }


async def paced(config: NatsConfig, events: list[MatchedEvent], rate: int) -> dict[str, float]:
    nc = await nats.connect(NATS_URL)
    offered: dict[str, float] = {}
    latencies: list[float] = []

    async def received(msg: Msg) -> None:
        key = MatchedEvent.from_json(msg.data).key
        latencies.append(time.perf_counter() - offered[key])

    await nc.subscribe(f"{config.subject_prefix}.>", cb=received)
    delivery = NatsDelivery(config)
    await delivery.start()
    step = max(1, rate // 100)
    for start in range(0, len(events), step):
        now = time.perf_counter()
        for event in events[start : start + step]:
            offered[event.key] = now
            delivery.offer(event)
        await asyncio.sleep(max(0.0, 0.01 - (time.perf_counter() - now)))
    deadline = time.perf_counter() + 30
    while len(latencies) < len(events) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    await delivery.stop(timeout=10)
    await nc.close()
    return {
        "received": len(latencies),
        "p50_ms": quantile(latencies, 0.5) * 1e3,
        "p99_ms": quantile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--doc-bytes", type=int, default=300)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    config = NatsConfig(
        url=NATS_URL,
        stream=f"searchsync-bench-{run}",
        subject_prefix=f"bench{run}.events",
        buffer=args.events,
    )
    try:
        result = await burst(config, make_events(args.events, args.doc_bytes))
        print(
            f"burst  {args.events:,} events: {result['events_per_s']:,.0f} events/s acknowledged; "
            f"offer {result['offer_us_median']:.1f} us median, {result['offer_us_p99']:.1f} us p99"
        )
        timing = await paced(config, make_events(args.events, args.doc_bytes), args.rate)
        print(
            f"paced  {args.events:,} events at {args.rate:,}/s: offer -> subscriber "
            f"p50 {timing['p50_ms']:.1f} ms, p99 {timing['p99_ms']:.1f} ms, "
            f"max {timing['max_ms']:.1f} ms ({timing['received']:,} received)"
        )
    finally:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream(config.stream)
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
