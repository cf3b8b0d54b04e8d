"""What `/ws/live/` costs: registering over the socket, resuming after a reconnect, and
delivering matched events through the channel layer to many sockets.

    .venv/bin/python bench/live_socket.py [--sockets 20] [--per-socket 100] [--events 10000]
                                          [--rate 500] [--resume 10000]

A real daphne serves the console against its own database (`searchsync_bench_wslive`)
and a source database with a real table, so each registration checks its filters as in
production. Each of `--sockets` gateways (aiohttp websocket clients, one API token)
registers `--per-socket` live subscriptions over its socket in one `register` message.
The bench then plays the worker: `--events` `live.matched` messages sent with
`group_send` to the groups of random live subscriptions, by 8 concurrent senders paced
to `--rate` events/s in all (each live subscription's events from one sender, numbered
as the worker numbers them), each event's `commit_time` the moment it was sent; each
socket times what it receives. Then one slow `end` event per live subscription reveals
the losses at the tail of each one's stream.
Figures: delivered per second (wall time from the first send to the last receipt),
send-to-receipt latency p50/p99, losses told (`dropped` summaries, by `where`), and
whether received + told = sent. Last, one gateway
registers `--resume` live subscriptions in batches of 1000, reconnects and resumes them
(`resume` answer time: renewing them all and joining their groups). Raw figures in
artifacts/bench/live-socket-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.live_registration import timed  # noqa: E402
from bench.run import (  # noqa: E402
    ARTIFACTS,
    console_env,
    dsn_for,
    machine_note,
    recreate,
    say,
    setup_django,
)
from tests.support.process import free_port, start_daphne  # noqa: E402

CONSOLE_DB = "searchsync_bench_wslive"
SOURCE_DB = "searchsync_bench_wslive_source"
NAME = "bench-ws"
REDIS_DB = 9
SENDERS = 8
END_RATE = 200
"""End events per second: slow enough to be lost nowhere."""


def entry(i: int, gateway: str) -> dict[str, Any]:
    return {
        "gateway_id": gateway,
        "subscription": NAME,
        "filter": f'doc.tenant_id == "t{i % 10_000}" && doc.total > {i % 500}.5',
    }


async def ask(socket: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> Any:
    await socket.send_json(message)
    while True:
        answer = await socket.receive_json(timeout=300)
        if answer["type"] not in ("event", "dropped"):
            return answer


async def deliver(args: argparse.Namespace, url: str, token: str) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    from syncer.live.events import MatchedEvent, live_group, live_message

    layer = get_channel_layer()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(url, headers=headers) for _ in range(args.sockets)]
        ids: list[tuple[int, str]] = []
        registering: list[float] = []
        for n, socket in enumerate(sockets):
            assert (await socket.receive_json(timeout=30))["type"] == "ready"
            body = [entry(n * args.per_socket + i, f"gw-{n}") for i in range(args.per_socket)]
            t0 = time.monotonic()
            answer = await ask(socket, {"type": "register", "subscriptions": body})
            registering.append(time.monotonic() - t0)
            assert answer["type"] == "registered", str(answer)[:300]
            ids += [(n, item["id"]) for item in answer["items"]]

        latencies: list[float] = []
        dropped: Counter[str] = Counter()
        ends = [0]
        last = [0.0]
        everything = asyncio.Event()
        pick = random.Random(7)  # one generator: a new one per event chose the same id
        chosen = [pick.choice(ids)[1] for _ in range(args.events)]
        distinct = sorted(set(chosen))

        async def read(socket: aiohttp.ClientWebSocketResponse) -> None:
            while True:
                message = await socket.receive_json()
                if message["type"] == "event" and message["key"] == "end":
                    ends[0] += 1
                elif message["type"] == "event":
                    latencies.append(time.time() - message["commit_time"])
                    last[0] = time.monotonic()
                elif message["type"] == "dropped":
                    dropped[message.get("where", "socket")] += message["count"]
                if ends[0] >= len(distinct):
                    everything.set()

        readers = [asyncio.create_task(read(s)) for s in sockets]
        epoch = uuid.uuid4().hex[:16]
        numbers: Counter[str] = Counter()

        async def send_one(live_id: str, key: str, position: int) -> None:
            event = MatchedEvent(
                live_subscription_id=uuid.UUID(live_id),
                gateway_id="gw",
                subscription=NAME,
                op="upsert",
                key=key,
                position=position,
                commit_time=time.time(),
                document={"id": position, "tenant_id": "t1", "total": "100.5"},
            )
            numbers[live_id] += 1
            await layer.group_send(
                live_group(event.live_subscription_id),
                live_message(
                    event.to_json().decode(), uuid.UUID(live_id).hex, epoch, numbers[live_id]
                ),
            )

        async def send(share: list[str]) -> None:
            loop = asyncio.get_running_loop()
            begun = loop.time()
            for position, live_id in enumerate(share):
                ahead = begun + position * SENDERS / args.rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                await send_one(live_id, str(position), position)

        # One sender per live subscription, as the worker: its numbers arrive in order.
        shares: list[list[str]] = [[] for _ in range(SENDERS)]
        for live_id in chosen:
            shares[int(live_id[:8], 16) % SENDERS].append(live_id)
        say(f"delivering {args.events:,} events to {args.sockets} sockets")
        started = time.monotonic()
        await asyncio.gather(*(send(share) for share in shares))
        sent = time.monotonic() - started
        await asyncio.sleep(2)  # the sockets catch up before the end events
        for live_id in distinct:
            await send_one(live_id, "end", args.events)
            await asyncio.sleep(1 / END_RATE)
        try:
            await asyncio.wait_for(everything.wait(), timeout=120)
        except TimeoutError:
            say(f"{len(distinct) - ends[0]} end events of {len(distinct)} missing after 120 s")
        wall = last[0] - started
        for reader in readers:
            reader.cancel()
        for socket in sockets:
            await socket.close()
    return {
        "sockets": args.sockets,
        "per_socket": args.per_socket,
        "register_over_socket": timed(registering),
        "events": args.events,
        "rate": args.rate,
        "received": len(latencies),
        "dropped": dict(dropped),
        "received_and_told": len(latencies) + sum(dropped.values()),
        "end_events": f"{ends[0]} of {len(distinct)}",
        "sent_per_second": round(args.events / sent),
        "delivered_per_second": round(len(latencies) / wall),
        "latency": timed(latencies) if latencies else {},
    }


async def resume(args: argparse.Namespace, url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        socket = await http.ws_connect(url, headers=headers)
        assert (await socket.receive_json(timeout=30))["type"] == "ready"
        say(f"registering {args.resume:,} over one socket, then resuming them")
        for first in range(0, args.resume, 1000):
            body = [entry(i, "gw-big") for i in range(first, min(first + 1000, args.resume))]
            answer = await ask(socket, {"type": "register", "subscriptions": body})
            assert answer["type"] == "registered", str(answer)[:300]
        await socket.close()
        again = await http.ws_connect(url, headers=headers)
        assert (await again.receive_json(timeout=30))["type"] == "ready"
        say("resuming")
        t0 = time.monotonic()
        answer = await ask(again, {"type": "resume", "gateway_id": "gw-big"})
        took = time.monotonic() - t0
        assert answer["count"] == args.resume, str(answer)[:300]
        await again.close()
    return {"resumed": args.resume, "resume_seconds": round(took, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    recreate(CONSOLE_DB)
    recreate(SOURCE_DB)
    with psycopg.connect(dsn_for(SOURCE_DB), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id text, total numeric, meta jsonb)"
        )
    total = args.sockets * args.per_socket + args.resume
    env = console_env(
        CONSOLE_DB,
        f"redis://127.0.0.1:6379/{REDIS_DB}",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECRET_KEY="bench-live-socket-" + "k" * 40,
        LIVE_SUBSCRIPTIONS_PER_OWNER=str(total),
        LIVE_SUBSCRIPTIONS_MAX=str(total),
        LIVE_STREAMS_PER_USER=str(args.sockets + 2),
    )
    setup_django(env)
    from django.contrib.auth.models import User

    from console.models import ApiToken
    from syncer.models import Subscription

    Subscription.objects.create(
        name=NAME, source_dsn=dsn_for(SOURCE_DB), relation="public.orders", index_name=NAME
    )
    _, token = ApiToken.issue(User.objects.create_superuser("bench-ws"), "bench")
    port = free_port()
    logs = ARTIFACTS / "live-socket"
    logs.mkdir(parents=True, exist_ok=True)
    daphne = start_daphne(port, env, logs / "daphne.log")
    url = f"ws://127.0.0.1:{port}/ws/live/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # answering (unhealthy without a worker, which this bench needs not)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        delivered = asyncio.run(deliver(args, url, token))
        resumed = asyncio.run(resume(args, url, token))
    finally:
        daphne.terminate()
        daphne.wait(10)
    return {
        **delivered,
        **resumed,
        "machine": machine_note(),
        "date": dt.date.today().isoformat(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=20)
    parser.add_argument("--per-socket", type=int, default=100)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500, help="events sent per second")
    parser.add_argument("--resume", type=int, default=10_000)
    results = run(parser.parse_args(argv))
    out = ARTIFACTS / f"live-socket-{int(time.time())}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
