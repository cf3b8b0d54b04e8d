"""Counts behind /api/events/stats, kept in Redis so every daphne process and the API agree.

- delivered: events (changes and dead letters) sent to browsers and event streams;
- connected clients: open monitor sockets, events sockets and event streams. Each is a
  member of a sorted set scored by its expiry and refreshed while it is open, so one
  whose process was killed stops counting after CLIENT_TTL;
- published / dropped: the sum over running workers of their last heartbeat's counts.
  Monitor sockets record each heartbeat they relay; when no monitor socket is open, the
  stats reader listens to the monitor group for about one heartbeat interval itself
  (LISTEN_FOR, 1.2 s). So `shared_stats` serves every caller in a process from one
  reading: concurrent callers wait for the same one, and it answers for SHARE_FOR.

The keys live under the channel layer's prefix on its first Redis host (no separate
configuration). Counting is best effort: a Redis error is logged, never raised into a
socket.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from channels.layers import get_channel_layer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from syncer.live.messages import MONITOR_GROUP

log = structlog.get_logger(__name__)

CLIENT_TTL = 30.0
"""Seconds a connected client counts without a refresh (its process may have died)."""
REFRESH_EVERY = 10.0
WORKER_FRESH = 10.0
"""Seconds a worker's last heartbeat counts towards published/dropped."""
LISTEN_IF_OLDER = 2.5
"""No heartbeat recorded for this long: nobody relays them now, so listen for one."""
LISTEN_FOR = 1.2
"""Seconds to listen: a little over the workers' one-second heartbeat."""

SHARE_FOR = 1.0
"""Seconds one reading of the counts answers every caller of this process."""

_KEY_TTL = 86400
T = TypeVar("T")


class StatsUnavailable(Exception):
    """The counts cannot be read: no Redis channel layer, or Redis does not answer."""


@dataclass(frozen=True)
class LiveStats:
    published: int
    delivered: int
    dropped: int
    connected_clients: int
    workers: int


def _redis() -> tuple[Redis, str]:
    layer = get_channel_layer()
    connection = getattr(layer, "connection", None)
    if connection is None:
        raise StatsUnavailable(
            "the live monitor's counts need the Redis channel layer "
            "(CHANNEL_LAYERS backend channels_redis.core.RedisChannelLayer)"
        )
    redis: Redis = connection(0)
    return redis, f"{layer.prefix}:searchsync:live:"


async def _quietly(action: str, operation: Callable[[Redis, str], Awaitable[Any]]) -> None:
    """Run a counting write; a Redis problem only costs a count."""
    try:
        redis, prefix = _redis()
        await operation(redis, prefix)
    except (RedisError, OSError, StatsUnavailable) as exc:
        log.warning("live_stats_not_counted", action=action, error=str(exc))


async def count_delivered(events: int) -> None:
    """Add `events` to the delivered count."""
    if events > 0:
        await _quietly("delivered", lambda r, p: r.incrby(f"{p}delivered", events))


async def record_heartbeat(message: Mapping[str, Any]) -> None:
    """Remember a worker's published/dropped counts from its heartbeat."""
    worker = message.get("worker")
    if not isinstance(worker, str) or not worker:
        return
    report = json.dumps(
        {
            "published": _count(message.get("published")),
            "dropped": _count(message.get("dropped")),
            "seen": time.time(),
        }
    )

    async def write(redis: Redis, prefix: str) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(f"{prefix}workers", worker, report)
            pipe.expire(f"{prefix}workers", _KEY_TTL)
            await pipe.execute()

    await _quietly("heartbeat", write)


class Presence:
    """One open socket or event stream, counted among the connected clients while it lives."""

    def __init__(self, kind: str, rejoin: Callable[[], Awaitable[None]] | None = None) -> None:
        """`rejoin` is called at each refresh too: layer groups forget members after a day."""
        self.client_id = f"{kind}.{uuid.uuid4().hex}"
        self._rejoin = rejoin
        self._task: asyncio.Task[None] | None = None

    async def enter(self) -> None:
        await self._mark()
        self._task = asyncio.create_task(self._keep(), name=f"presence {self.client_id}")

    async def leave(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await _quietly("disconnected", lambda r, p: r.zrem(f"{p}clients", self.client_id))

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            await self._mark()
            if self._rejoin is not None:
                try:
                    await self._rejoin()
                except (RedisError, OSError) as exc:
                    log.warning("live_group_not_renewed", client=self.client_id, error=str(exc))

    async def _mark(self) -> None:
        async def write(redis: Redis, prefix: str) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zadd(f"{prefix}clients", {self.client_id: time.time() + CLIENT_TTL})
                pipe.expire(f"{prefix}clients", _KEY_TTL)
                await pipe.execute()

        await _quietly("connected", write)


async def read_stats() -> LiveStats:
    """The counts now; raises StatsUnavailable when Redis cannot be read."""
    try:
        redis, prefix = _redis()
        reports = await _worker_reports(redis, prefix)
        newest = max((r["seen"] for r in reports.values()), default=0.0)
        if newest < time.time() - LISTEN_IF_OLDER:
            await listen_for_heartbeats(LISTEN_FOR)
            reports = await _worker_reports(redis, prefix)
        now = time.time()
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(f"{prefix}delivered")
            pipe.zremrangebyscore(f"{prefix}clients", "-inf", now)
            pipe.zcard(f"{prefix}clients")
            delivered, _, clients = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise StatsUnavailable(f"cannot read the live monitor's counts from Redis: {exc}") from exc
    return LiveStats(
        published=sum(r["published"] for r in reports.values()),
        delivered=_count(delivered),
        dropped=sum(r["dropped"] for r in reports.values()),
        connected_clients=int(clients),
        workers=len(reports),
    )


async def listen_for_heartbeats(seconds: float) -> int:
    """Record the heartbeats heard on the monitor group for `seconds`; how many were heard."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(MONITOR_GROUP, channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    heard = 0
    try:
        while (left := deadline - loop.time()) > 0:
            try:
                # Not asyncio.wait_for: on 3.11 it can swallow the request's cancellation.
                async with asyncio.timeout(left):
                    message = await layer.receive(channel)
            except TimeoutError:
                break
            if message.get("type") == "worker.heartbeat":
                await record_heartbeat(message)
                heard += 1
    finally:
        await layer.group_discard(MONITOR_GROUP, channel)
    return heard


async def _worker_reports(redis: Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """The workers whose last heartbeat is recent; older ones are forgotten."""
    raw: dict[Any, Any] = await redis.hgetall(f"{prefix}workers")
    fresh: dict[str, dict[str, Any]] = {}
    stale: list[Any] = []
    since = time.time() - WORKER_FRESH
    for worker, text in raw.items():
        try:
            report = json.loads(text)
            seen = float(report["seen"])
        except (ValueError, KeyError, TypeError):
            seen = 0.0
        if seen < since:
            stale.append(worker)
            continue
        name = worker.decode(errors="replace") if isinstance(worker, bytes) else str(worker)
        fresh[name] = {
            "published": _count(report.get("published")),
            "dropped": _count(report.get("dropped")),
            "seen": seen,
        }
    if stale:
        await redis.hdel(f"{prefix}workers", *stale)
    return fresh


def _count(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


class SingleFlight(Generic[T]):
    """One computation of `compute` at a time, shared by every caller; its result answers
    for `keep` seconds after it completes. A failure is shared, never kept."""

    def __init__(self, compute: Callable[[], Awaitable[T]], keep: float) -> None:
        self._compute = compute
        self._keep = keep
        self._task: asyncio.Task[T] | None = None
        self._done_at = 0.0
        self.computations = 0
        """How many times `compute` ran (for tests and curiosity)."""

    async def __call__(self) -> T:
        loop = asyncio.get_running_loop()
        if self._task is None or self._stale(loop):
            self._task = loop.create_task(self._run(), name="single flight")
        # Shielded: one caller going away must not cancel the others' reading.
        return await asyncio.shield(self._task)

    def _stale(self, loop: asyncio.AbstractEventLoop) -> bool:
        task = self._task
        assert task is not None
        if task.get_loop() is not loop:
            return True  # made on another loop (a test's): unusable here
        if not task.done():
            return False
        if task.cancelled() or task.exception() is not None:
            return True
        return loop.time() - self._done_at >= self._keep

    async def _run(self) -> T:
        self.computations += 1
        try:
            return await self._compute()
        finally:
            self._done_at = asyncio.get_running_loop().time()


shared_stats = SingleFlight(read_stats, SHARE_FOR)
"""`read_stats()` for the API: one reading per process at a time, kept for SHARE_FOR."""
