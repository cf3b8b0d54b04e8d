"""The real NATS JetStream server of the tests, and one test's stream on it.

The server on 127.0.0.1:4222 is shared with other test runs: each test has its own
stream and subject prefix, named after a random id, and deletes its stream at the end.
"""

from __future__ import annotations

import contextlib

import nats
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from syncer.conf import NatsConfig

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"


def make_config(run: str, url: str = NATS_URL, **overrides: object) -> NatsConfig:
    settings: dict[str, object] = {
        "url": url,
        "stream": f"searchsync-test-{run}",
        "subject_prefix": f"{run}.events",
        "max_age": 120.0,
        "duplicate_window": 60.0,
        "publish_timeout": 1.0,
        "retry_base": 0.05,
        "retry_cap": 0.5,
        "connect_timeout": 1,
        **overrides,
    }
    return NatsConfig(**settings)  # type: ignore[arg-type]


class Stream:
    """The test's stream, read through a JetStream pull consumer of its own."""

    def __init__(self, config: NatsConfig) -> None:
        self.config = config

    async def _js(self) -> tuple[Client, JetStreamContext]:
        nc = await nats.connect(NATS_URL)
        return nc, nc.jetstream(timeout=5)

    async def count(self) -> int:
        nc, js = await self._js()
        try:
            return (await js.stream_info(self.config.stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()

    async def info(self) -> StreamConfig:
        nc, js = await self._js()
        try:
            return (await js.stream_info(self.config.stream)).config
        finally:
            await nc.close()

    async def exists(self) -> bool:
        nc, js = await self._js()
        try:
            await js.stream_info(self.config.stream)
            return True
        except nats.js.errors.NotFoundError:
            return False
        finally:
            await nc.close()

    async def messages(self) -> list[Msg]:
        """Every message the stream holds, in stream order."""
        nc, js = await self._js()
        try:
            total = (await js.stream_info(self.config.stream)).state.messages
            sub = await js.pull_subscribe(
                f"{self.config.subject_prefix}.>",
                stream=self.config.stream,
                # No acks to wait for: the consumer would stop at max_ack_pending otherwise.
                config=ConsumerConfig(ack_policy=AckPolicy.NONE),
            )
            received: list[Msg] = []
            while len(received) < total:
                received += await sub.fetch(min(total - len(received), 500), timeout=5)
            await sub.unsubscribe()
            return received
        finally:
            await nc.close()

    async def delete(self) -> None:
        nc, js = await self._js()
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):  # a test may delete it first
                await js.delete_stream(self.config.stream)
        finally:
            await nc.close()
