"""`/api/events/stats`' reading, shared: N concurrent callers make one computation.

Real Redis through the configured channel layer (under a prefix of this module's own);
no worker beats, so each reading listens to the monitor group for LISTEN_FOR (1.2 s).
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from typing import Any

import pytest
from django.conf import settings as django_settings

from console.live import stats

LAYERS: dict[str, Any] = copy.deepcopy(django_settings.CHANNEL_LAYERS)
LAYERS["default"]["CONFIG"]["prefix"] = f"searchsync_stats_{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def layer(settings: Any) -> None:
    settings.CHANNEL_LAYERS = LAYERS


async def test_twenty_concurrent_callers_make_one_reading() -> None:
    shared = stats.shared_stats
    before = shared.computations

    started = time.monotonic()
    readings = await asyncio.gather(*(shared() for _ in range(20)))
    took = time.monotonic() - started

    assert shared.computations == before + 1
    assert len(set(readings)) == 1
    assert took >= stats.LISTEN_FOR  # it did listen: a real reading, not a cached one

    # Within SHARE_FOR the reading answers at once; after it, a new one is made.
    again = time.monotonic()
    assert await shared() == readings[0]
    assert time.monotonic() - again < 0.1
    assert shared.computations == before + 1
    await asyncio.sleep(stats.SHARE_FOR)
    await shared()
    assert shared.computations == before + 2


async def test_a_caller_that_goes_away_does_not_cancel_the_others_reading() -> None:
    shared = stats.SingleFlight(stats.read_stats, stats.SHARE_FOR)
    leaving = asyncio.create_task(shared())
    staying = asyncio.create_task(shared())
    await asyncio.sleep(0.2)
    leaving.cancel()

    reading = await staying

    assert isinstance(reading, stats.LiveStats)
    assert shared.computations == 1


async def test_a_failure_is_shared_but_not_kept(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    shared = stats.SingleFlight(stats.read_stats, stats.SHARE_FOR)

    results = await asyncio.gather(shared(), shared(), return_exceptions=True)

    assert all(isinstance(r, stats.StatsUnavailable) for r in results)
    assert shared.computations == 1
    with pytest.raises(stats.StatsUnavailable):
        await shared()
    assert shared.computations == 2  # tried again at once
