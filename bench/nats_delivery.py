"""What NATS JetStream delivery of matched events costs and how fast it goes.

    .venv/bin/python bench/nats_delivery.py [--events 50000] [--rate 3000] [--doc-bytes 300]
                                            [--process]

Against the NATS server on 127.0.0.1:4222 (JetStream on), with a stream of its own
(deleted at the end). Two phases, one `NatsDelivery` each, built as the worker builds it
(default settings but the stream name and subject prefix):

- **burst**: `--events` events offered at once (the buffer holds them all); throughput
  is events / (last acknowledgement - first offer), and the cost of `offer` itself
  (the only part the sync pays) is timed per call.
- **paced**: `--events` events offered at `--rate` per second, in 10 ms steps, the way
  matches leave a worker; latency is offer to receipt by a plain NATS subscriber on the
  stream's subjects (what a client sees), p50 / p99 / max.

Each event carries a document of about `--doc-bytes` bytes of JSON. Both phases also
report the CPU this process spent per event until the last acknowledgement: with the
in-process delivery that is all of publishing; with `--process` (the worker's default,
`NatsProcessDelivery`, publishing from a child process) only what the worker itself pays
(encoding, the pipe, reading the publisher's reports), the publisher's own CPU beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from bench.procfs import pid_cpu  # noqa: E402
from syncer.conf import NatsConfig  # noqa: E402
from syncer.live.delivery import Delivery  # noqa: E402
from syncer.live.events import MatchedEvent  # noqa: E402
from syncer.live.nats import NatsDelivery  # noqa: E402
from syncer.live.nats_process import NatsProcessDelivery  # noqa: E402

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


def build(config: NatsConfig) -> Delivery:
    return NatsProcessDelivery(config) if config.process else NatsDelivery(config)


def publisher_cpu(delivery: Delivery) -> float:
    """CPU seconds of the delivery's publisher process so far (0 in process)."""
    pid = delivery.pid if isinstance(delivery, NatsProcessDelivery) else None
    if pid is None:
        return 0.0
    return pid_cpu(pid)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def burst(config: NatsConfig, events: list[MatchedEvent]) -> dict[str, float]:
    delivery = build(config)
    await delivery.start()
    await asyncio.sleep(1.0)  # a publisher process is up and connected
    offer_costs = []
    cpu, child_cpu = time.process_time(), publisher_cpu(delivery)
    started = time.perf_counter()
    for event in events:
        t0 = time.perf_counter()
        delivery.offer(event)
        offer_costs.append(time.perf_counter() - t0)
    while delivery.buffered:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    child_cpu = publisher_cpu(delivery) - child_cpu
    await delivery.stop(timeout=10)
    return {
        "events_per_s": len(events) / elapsed,
        "cpu_us": cpu / len(events) * 1e6,
        "publisher_cpu_us": child_cpu / len(events) * 1e6,
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
    delivery = build(config)
    await delivery.start()
    await asyncio.sleep(1.0)
    cpu, child_cpu = time.process_time(), publisher_cpu(delivery)
    step = max(1, rate // 100)
    for start in range(0, len(events), step):
        now = time.perf_counter()
        for event in events[start : start + step]:
            offered[event.key] = now
            delivery.offer(event)
        await asyncio.sleep(max(0.0, 0.01 - (time.perf_counter() - now)))
    deadline = time.perf_counter() + 30
    while delivery.buffered and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    cpu = time.process_time() - cpu
    child_cpu = publisher_cpu(delivery) - child_cpu
    while len(latencies) < len(events) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    await delivery.stop(timeout=10)
    await nc.close()
    return {
        "received": len(latencies),
        # This process also receives every message (the subscriber): the same in both
        # modes, so the difference between them is what publishing costs the caller.
        "cpu_us": cpu / len(events) * 1e6,
        "publisher_cpu_us": child_cpu / len(events) * 1e6,
        "p50_ms": quantile(latencies, 0.5) * 1e3,
        "p99_ms": quantile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=3000)
    parser.add_argument("--doc-bytes", type=int, default=300)
    parser.add_argument(
        "--process", action="store_true", help="deliver from a publisher process, as the worker"
    )
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    config = NatsConfig(
        url=NATS_URL,
        stream=f"searchsync-bench-{run}",
        subject_prefix=f"bench{run}.events",
        buffer=args.events,
        process=args.process,
    )
    print(f"{'publisher process' if args.process else 'in process'}; load {os.getloadavg()}")
    try:
        result = await burst(config, make_events(args.events, args.doc_bytes))
        print(
            f"burst  {args.events:,} events: {result['events_per_s']:,.0f} events/s acknowledged; "
            f"offer {result['offer_us_median']:.1f} us median, "
            f"{result['offer_us_p99']:.1f} us p99; "
            f"CPU per event: this process {result['cpu_us']:.1f} us, publisher "
            f"{result['publisher_cpu_us']:.1f} us"
        )
        timing = await paced(config, make_events(args.events, args.doc_bytes), args.rate)
        print(
            f"paced  {args.events:,} events at {args.rate:,}/s: offer -> subscriber "
            f"p50 {timing['p50_ms']:.1f} ms, p99 {timing['p99_ms']:.1f} ms, "
            f"max {timing['max_ms']:.1f} ms ({timing['received']:,} received); CPU per "
            f"event: this process {timing['cpu_us']:.1f} us (subscriber included), publisher "
            f"{timing['publisher_cpu_us']:.1f} us"
        )
    finally:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream(config.stream)
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
