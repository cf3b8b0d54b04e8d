"""The NATS publisher process: `python -m syncer.live.nats_publisher`, started by the
worker's `NatsProcessDelivery` (`nats_process`), never by hand.

It runs a `NatsDelivery` in an event loop and an interpreter of its own, so that nats-py's
publishing and the acknowledgements it reads do not hold the worker's GIL. It reads the
worker's frames on stdin and reports on stdout (`nats_wire`); it logs on stderr, which is
the worker's, the way the worker logs (every line with `process=nats_publisher`).

It ends when the worker says STOP (delivering what it holds within the timeout given),
or when its stdin closes or its parent changes: the worker is gone, even by `kill -9`;
it then tries for `ORPHAN_FLUSH` seconds to deliver what it holds (the worker's
checkpoint did not pass those events, so the next worker delivers them anyway) and
exits. SIGINT and SIGTERM are ignored: sent to the whole process group (a terminal's
Ctrl-C, a service manager), they reach the worker, whose shutdown flushes through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging.config
import os
import signal
import sys

import orjson
import structlog

from syncer.conf import NatsConfig
from syncer.live import nats_wire as wire
from syncer.live.nats import NatsDelivery
from syncer.logconfig import configure_structlog, logging_config

log = structlog.get_logger(__name__)

ORPHAN_FLUSH = 2.0
"""Seconds the process keeps delivering once the worker is gone."""


class Reports:
    """The publisher's stdout: settled counts (at most one line per turn of the event
    loop), stats, the final line. Writes never wait; once the worker is gone they stop."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.delivery: NatsDelivery | None = None
        self._scheduled = False

    def settled_changed(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.settled)

    def settled(self) -> None:
        self._scheduled = False
        if self.delivery is not None:
            self._write({"settled": self.delivery.settled})

    def stats(self) -> None:
        if self.delivery is not None:
            self._write({"stats": wire.stats(self.delivery)})

    def final(self) -> None:
        self._write({"final": True})

    def _write(self, report: object) -> None:
        if not self.transport.is_closing():
            self.transport.write(orjson.dumps(report) + b"\n")


async def serve(reader: asyncio.StreamReader, reports: Reports, parent: int) -> None:
    """Deliver the worker's events until it says STOP or is gone."""
    hello = await wire.read_frame(reader)
    if hello is None or hello[0] != wire.HELLO:
        raise SystemExit("nats_publisher: the first frame must be HELLO (started by hand?)")
    setup = orjson.loads(hello[1])
    logging.config.dictConfig(logging_config(setup["log_format"], setup["log_level"]))
    configure_structlog()
    structlog.contextvars.bind_contextvars(process="nats_publisher")
    delivery = NatsDelivery(NatsConfig(**setup["config"]), on_settled=reports.settled_changed)
    reports.delivery = delivery
    await delivery.start()
    ticker = asyncio.create_task(_tick(reports, delivery, parent), name="nats-publisher-stats")
    reading = asyncio.create_task(_read(reader, delivery), name="nats-publisher-read")
    try:
        done, _ = await asyncio.wait({ticker, reading}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # raises CannotDeliver
        timeout = reading.result() if reading in done else None
    finally:
        for task in (ticker, reading):
            task.cancel()
        await asyncio.gather(ticker, reading, return_exceptions=True)
    if timeout is None:
        log.warning(
            "nats_publisher_orphaned",
            buffered=delivery.buffered,
            next=f"delivering for {ORPHAN_FLUSH:g} s at most, then exiting; the next "
            "worker delivers the rest again from its checkpoint",
        )
        timeout = ORPHAN_FLUSH
    await delivery.stop(timeout)
    reports.settled()
    reports.stats()
    reports.final()


async def _read(reader: asyncio.StreamReader, delivery: NatsDelivery) -> float | None:
    """Offer every event received; STOP's timeout, or None when the pipe closed."""
    while (got := await wire.read_frame(reader)) is not None:
        kind, body = got
        if kind == wire.STOP:
            return float(orjson.loads(body)["timeout"])
        if kind != wire.EVENTS:
            raise ValueError(f"unknown frame kind {kind!r}")
        for record in wire.records(body):
            # The worker holds at most `buffer` unsettled events, so this one fits, unless
            # the delivery gave up (`nats_delivery_failed`, a bad LIVE_NATS_URL).
            if not delivery.offer_encoded(*record):
                raise CannotDeliver("the delivery gave up: see nats_delivery_failed")
    return None


class CannotDeliver(Exception):
    """The delivery refuses events: exit, and let the worker start another (after a
    backoff), as it would after any other failure."""


async def _tick(reports: Reports, delivery: NatsDelivery, parent: int) -> None:
    """Stats every STATS_EVERY seconds; returns when the parent is no longer ours."""
    while os.getppid() == parent:
        if delivery.gave_up:
            raise CannotDeliver("the delivery gave up: see nats_delivery_failed")
        reports.stats()
        await asyncio.sleep(wire.STATS_EVERY)


class _Output(asyncio.Protocol):
    """The reports' pipe: `closed` is done once everything written went out (or failed)."""

    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()
    # Reports get their own descriptor; stdout becomes stderr, so that a stray print (a
    # library's) lands in the log instead of corrupting them.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(sys.stdin.fileno(), "rb", 0)
    )
    transport, output = await loop.connect_write_pipe(_Output, out)
    code = 0
    try:
        await serve(reader, Reports(transport), parent)
    except CannotDeliver as exc:
        log.error("nats_publisher_failed", error=str(exc))
        code = wire.GAVE_UP
    except Exception:  # a bug: the worker logs the exit and starts another process
        log.exception("nats_publisher_failed")
        code = 1
    transport.close()  # once what is written went out
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(output.closed), ORPHAN_FLUSH)
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
