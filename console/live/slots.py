"""How many live streams each user holds open, in Redis: one count over every web process.

Each user's streams are a sorted set of stream ids scored by expiry, refreshed while the
stream lives, so the streams of a killed process stop counting after their TTL. Taking a
slot is one Lua script: the check and the add cannot interleave with another process's.
The keys live under the channel layer's prefix on its first Redis host.
"""

from __future__ import annotations

import time

from channels.layers import get_channel_layer
from django.conf import settings
from redis.asyncio import Redis

DEFAULT_PER_USER = 10

# KEYS[1] the user's set; ARGV: now, expiry, limit, stream id, key ttl
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def per_user() -> int:
    """Live streams one user may hold at once (`LIVE_STREAMS_PER_USER`, default 10)."""
    return int(getattr(settings, "LIVE_STREAMS_PER_USER", DEFAULT_PER_USER))


def _key(user_id: int) -> tuple[Redis, str]:
    layer = get_channel_layer()
    redis: Redis = layer.connection(0)
    return redis, f"{layer.prefix}:searchsync:live:streams:{user_id}"


async def take(user_id: int, stream_id: str, ttl: float) -> bool:
    """Count `stream_id` among the user's streams; False when the user holds the limit."""
    redis, key = _key(user_id)
    now = time.time()
    taken = await redis.eval(_TAKE, 1, key, now, now + ttl, per_user(), stream_id, int(ttl) + 1)
    return bool(taken)


async def refresh(user_id: int, stream_id: str, ttl: float) -> None:
    """Keep counting the stream for another `ttl` seconds."""
    redis, key = _key(user_id)
    await redis.zadd(key, {stream_id: time.time() + ttl}, xx=True)
    await redis.expire(key, int(ttl) + 1)


async def give_back(user_id: int, stream_id: str) -> None:
    redis, key = _key(user_id)
    await redis.zrem(key, stream_id)


async def held(user_id: int) -> int:
    """The user's streams counted now."""
    redis, key = _key(user_id)
    await redis.zremrangebyscore(key, "-inf", time.time())
    return int(await redis.zcard(key))
