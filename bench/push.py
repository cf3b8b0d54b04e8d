"""Push ingestion: accepted NDJSON lines per second, and push -> searchable latency.

    .venv/bin/python bench/push.py [--lines 20000] [--request-lines 1000]
                                   [--rate 50] [--latency-seconds 20] [--budget 900]

A real daphne serves the console on a database of its own (`searchsync_bench_push`).

1. Accepted lines/s. `--lines` upserts of realistic documents (~230 bytes a line) are
   posted in requests of `--request-lines` over one keep-alive connection, then over
   four at once to the same push subscription (their appends wait for each other on the
   subscription's sequence row: the ordering lock), then over four to four
   subscriptions (no lock shared: what the lock costs). Each with commits of one line
   (SYNCER_PUSH_COMMIT_LINES=1, a tenth of the lines: it is fsync-bound) and of up to
   100 (the default). No worker runs, so
   only accepting is measured; each phase starts on empty queues.
2. Latency. A `runsyncer` indexes into osmem-server while one line at a time is posted
   (one request per line, paced at `--rate` a second, for `--latency-seconds`); a
   watcher thread asks OpenSearch `_search` for the ids not yet seen every 5 ms. Push ->
   searchable is from just before the POST to the first search that finds the document:
   p50, p99, max.

Raw figures in artifacts/bench/push-*.json; docs/benchmarks.md has the last run's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    ARTIFACTS,
    PREFIX,
    Budget,
    console_env,
    percentile,
    recreate,
    run_bench,
    say,
    setup_django,
    stop_process,
    wait_until,
)
from tests.support.process import WorkerProcess, free_port, start_daphne  # noqa: E402

CONSOLE_DB = f"searchsync_bench_push{os.environ.get('BENCH_DB_SUFFIX', '')}"
PATH = "/api/subscriptions/{}/documents/stream"
_WORDS = ("compact", "rugged", "classic", "wireless", "premium", "desk lamp", "kettle", "jacket")


def document(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "title": f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)} {rng.randrange(100, 9999)}",
        "price": rng.randrange(99, 99_999) / 100,
        "updated_at": "2026-12-01T10:00:00Z",
        "attrs": {"color": rng.choice(("navy", "teal", "amber")), "stock": rng.randrange(500)},
        "tags": [rng.randrange(1, 200) for _ in range(rng.randrange(1, 6))],
        "seq": n,
    }


def body(prefix: str, first: int, count: int) -> bytes:
    rng = random.Random(first)
    return b"".join(
        json.dumps({"op": "upsert", "id": f"{prefix}{n}", "doc": document(rng, n)}).encode() + b"\n"
        for n in range(first, first + count)
    )


class Client:
    """One keep-alive connection to daphne, posting NDJSON with a token."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}

    def push(self, name: str, data: bytes) -> list[dict[str, Any]]:
        self.conn.request("POST", PATH.format(name), body=data, headers=self.headers)
        response = self.conn.getresponse()
        text = response.read()
        if response.status != 200:
            raise RuntimeError(f"push refused: {response.status} {text[:300]!r}")
        return [json.loads(line) for line in text.splitlines()]

    def close(self) -> None:
        self.conn.close()


@contextmanager
def daphne(env: dict[str, str], label: str, **settings: str) -> Iterator[int]:
    port = free_port()
    logs = ARTIFACTS / "push"
    logs.mkdir(parents=True, exist_ok=True)
    process = start_daphne(port, {**env, **settings}, logs / f"daphne-{label}.log")
    try:
        wait_until(lambda: _answers(port), 30, "daphne", interval=0.2)
        yield port
    finally:
        stop_process(process, 15)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/api/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def accept_rate(
    port: int, token: str, names: Sequence[str], lines: int, per_request: int
) -> dict[str, Any]:
    """`lines` over len(names) connections, connection i posting to names[i]."""
    share = lines // len(names)

    def send(i: int) -> tuple[int, list[float]]:
        client = Client(port, token)
        bodies = [
            body(f"c{i}-", first, min(per_request, share - first))
            for first in range(0, share, per_request)
        ]
        took: list[float] = []
        accepted = 0
        try:
            for data in bodies:
                t0 = time.perf_counter()
                answer = client.push(names[i], data)
                took.append(time.perf_counter() - t0)
                summary = answer[-1]
                if summary.get("stopped_at") is not None:
                    raise RuntimeError(f"push stopped: {answer[-2]}")
                accepted += int(summary["accepted"])
        finally:
            client.close()
        return accepted, took

    started = time.perf_counter()
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(send, range(len(names))))
    seconds = time.perf_counter() - started
    accepted = sum(a for a, _ in results)
    requests = sorted(t for _, took in results for t in took)
    return {
        "connections": len(names),
        "subscriptions": len(set(names)),
        "accepted": accepted,
        "seconds": round(seconds, 2),
        "lines_per_s": round(accepted / seconds),
        "request_p50_ms": round(percentile(requests, 50) * 1000, 1),
        "request_p99_ms": round(percentile(requests, 99) * 1000, 1),
    }


class Watcher(threading.Thread):
    """Searches for the ids not seen yet every 5 ms; notes when each is first found."""

    def __init__(self, url: str, index: str) -> None:
        super().__init__(daemon=True)
        from opensearchpy import OpenSearch

        self.client = OpenSearch(hosts=[url], timeout=30)
        self.index = index
        self.waiting: set[str] = set()
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def expect(self, doc_id: str) -> None:
        with self.lock:
            self.waiting.add(doc_id)

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                ids = sorted(self.waiting)
            if ids:
                found = self.client.search(
                    index=self.index,
                    body={"query": {"ids": {"values": ids}}, "size": len(ids), "_source": False},
                )
                now = time.perf_counter()
                with self.lock:
                    for hit in found["hits"]["hits"]:
                        if hit["_id"] in self.waiting:
                            self.waiting.discard(hit["_id"])
                            self.seen[hit["_id"]] = now
            time.sleep(0.005)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.client.close()


def latency(
    port: int, token: str, name: str, url: str, rate: float, seconds: float, budget: Budget
) -> dict[str, Any]:
    watcher = Watcher(url, name)
    client = Client(port, token)
    # The index exists once the worker has written a first document.
    client.push(name, body("warm-", 0, 1))
    wait_until(lambda: watcher.client.indices.exists(index=name), budget.cap(60), "the index")
    watcher.start()
    sent: dict[str, float] = {}
    rng = random.Random(7)
    count = int(rate * seconds)
    started = time.perf_counter()
    try:
        for n in range(count):
            due = started + n / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            doc_id = f"lat-{n}"
            line = json.dumps({"op": "upsert", "id": doc_id, "doc": document(rng, n)}).encode()
            watcher.expect(doc_id)
            sent[doc_id] = time.perf_counter()
            answer = client.push(name, line + b"\n")
            if answer[0].get("status") != "accepted":
                raise RuntimeError(f"not accepted: {answer}")
        sending = time.perf_counter() - started
        wait_until(lambda: not watcher.waiting, budget.cap(60), "every document searchable", 0.05)
    finally:
        watcher.stop()
        client.close()
    delays = sorted((watcher.seen[i] - t) * 1000 for i, t in sent.items() if i in watcher.seen)
    return {
        "lines": count,
        "rate_per_s": rate,
        "achieved_rate_per_s": round(count / sending, 1),
        "p50_ms": round(percentile(delays, 50), 1),
        "p99_ms": round(percentile(delays, 99), 1),
        "max_ms": round(delays[-1], 1),
    }


def measure(args: argparse.Namespace) -> Callable[[dict[str, Any], Budget], None]:
    def run(results: dict[str, Any], budget: Budget) -> None:
        recreate(CONSOLE_DB)
        env = console_env(
            CONSOLE_DB,
            os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"),
            ALLOWED_HOSTS="127.0.0.1,localhost",
            SYNCER_PUSH_QUEUE_LIMIT=str(args.lines * 4),
            SYNCER_PUSH_MAX_REQUEST_BYTES=str(64 << 20),
        )
        setup_django(env)
        from django.contrib.auth.models import User

        from console.models import ApiToken
        from syncer.models import PushedChange, Subscription

        names = [f"{PREFIX}push-{i}" for i in range(4)]
        for name in names:
            sub = Subscription(name=name, source_kind="push", index_name=name)
            sub.full_clean()
            sub.save()
        _, token = ApiToken.issue(User.objects.create_superuser("bench-push"), "bench")

        accepting: list[dict[str, Any]] = []
        for commit_lines in (1, 100):
            with daphne(
                env, f"commit{commit_lines}", SYNCER_PUSH_COMMIT_LINES=str(commit_lines)
            ) as port:
                for label, targets in (
                    ("1 connection", names[:1]),
                    ("4 connections, 1 subscription", names[:1] * 4),
                    ("4 connections, 4 subscriptions", names),
                ):
                    budget.cap(1)
                    PushedChange.objects.all().delete()
                    # A commit per line is fsync-bound (~200 a second): a tenth of the lines.
                    lines = args.lines if commit_lines > 1 else args.lines // 10
                    figures = accept_rate(port, token, targets, lines, args.request_lines)
                    figures = {"commit_lines": commit_lines, "case": label, **figures}
                    say(json.dumps(figures))
                    accepting.append(figures)
        results["accept"] = accepting

        from osmem_server import OsmemServer

        PushedChange.objects.all().delete()
        server = OsmemServer.start(japanese=False)
        worker = None
        try:
            url = str(server.url)
            with daphne(env, "latency") as port:
                logs = ARTIFACTS / "push"
                worker = WorkerProcess(
                    url, logs / "worker.log", "--subscription", names[0], base_env=env
                )
                wait_until(
                    lambda: Subscription.objects.get(name=names[0]).status == "caught_up",
                    budget.cap(60),
                    "the worker caught up",
                )
                results["latency"] = latency(
                    port, token, names[0], url, args.rate, args.latency_seconds, budget
                )
                say(json.dumps(results["latency"]))
        finally:
            if worker is not None:
                try:
                    worker.terminate(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            server.close()

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--request-lines", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--budget", type=float, default=900)
    args = parser.parse_args(argv)
    code, results = run_bench("push", args, measure(args))
    print(json.dumps({k: v for k, v in results.items() if k != "args"}, indent=2))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
