"""NATS delivery from a child process, so that publishing never holds the worker's GIL.

    worker: offer(event) ─ encode once ─▶ unsettled (bounded) ─ one frame per loop turn ─▶
            never waits    (to_json, id)   full: dropped, counted      stdin pipe
                                                                           │
    publisher process (nats_publisher): NatsDelivery ─ publish, acks ─▶ JetStream
                                                                           │
            settled counts, stats ◀──────────────── stdout pipe ───────────┘

The worker keeps every event it offered until the publisher reports it settled
(acknowledged by JetStream, or dropped there as too large): the publisher settles in
offer order, so a cumulative count says exactly which, and `unsettled_since` is as exact
as in process. Counters and histograms arrive as periodic stats and are added up here,
across the publisher's restarts, for the worker's /metrics.

If the publisher dies, the worker logs it, starts another after a backoff and sends it
every unsettled event again, with the same `Nats-Msg-Id`: JetStream drops the copies of
what it had stored (counted as duplicates). The publisher ends by itself when the worker
is gone (its stdin closes), so a `kill -9` of the worker leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from syncer import conf
from syncer.conf import LogSettings, NatsConfig
from syncer.engine.backoff import Backoff
from syncer.live import nats_wire as wire
from syncer.live.delivery import Breaker, Delivery, DropReason, event_fields
from syncer.live.events import MatchedEvent

log = structlog.get_logger(__name__)

PUBLISHER_MODULE = "syncer.live.nats_publisher"
HEALTHY_AFTER = 30.0
"""Seconds a publisher must have run for its exit to restart the backoff from its base."""
_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the `syncer` package: the publisher imports this very code."""


def nats_delivery(config: NatsConfig) -> Delivery:
    """The worker's NATS delivery: from a child process unless LIVE_NATS_PROCESS is off."""
    if config.process:
        return NatsProcessDelivery(config, logs=conf.logs())
    from syncer.live.nats import NatsDelivery  # nats-py, only for a delivery in this process

    return NatsDelivery(config)


class NatsProcessDelivery(Delivery):
    """`NatsDelivery`'s interface, delivering through a publisher process.

    Call `offer` from the event loop `start` ran on. The counters are plain attributes,
    read by the worker's metrics at scrape time.
    """

    def __init__(
        self,
        config: NatsConfig,
        *,
        logs: LogSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        python: str = sys.executable,
    ) -> None:
        super().__init__(config)
        self.logs = logs or LogSettings(format="json", level="INFO")
        self.clock = clock
        self.python = python
        self._unsettled: collections.deque[tuple[str, int, bytes]] = collections.deque()
        """(sync subscription, position, record) of each event offered and not settled."""
        self._positions: dict[str, collections.deque[int]] = {}
        self._outbox: list[bytes] = []
        """Records for the running publisher, written at the end of this loop turn."""
        self._flushing: asyncio.Handle | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backoff = Backoff(config.retry_base, config.retry_cap)
        self._waiting = False
        """Whether the supervisor sleeps between a publisher's exit and the next one."""
        self._stop_timeout = 0.0
        self._stop_sent = False
        self._final = False
        self._child_settled = 0
        self._child_stats: dict[str, Any] = {}
        """The running publisher's last stats: what is already added to the counters."""

    # -- the worker's side -------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Events offered and not yet settled (here, in the pipe or in the publisher)."""
        return len(self._unsettled)

    @property
    def pid(self) -> int | None:
        """The running publisher process's id."""
        return None if self._process is None else self._process.pid

    def unsettled_since(self, subscription: str) -> int | None:
        """The lowest position of sync subscription `subscription` whose events are neither
        acknowledged by JetStream nor dropped (as the publisher last reported); None when
        there is none. See `NatsDelivery.unsettled_since`."""
        positions = self._positions.get(subscription)
        return min(positions) if positions else None

    def offer(self, event: MatchedEvent) -> bool:
        """Queue `event` for the publisher; False (and counted) when it is dropped. Never
        waits: encodes the event and appends it; the frame goes at the end of the turn."""
        if self._refuses():
            return False
        try:
            payload = event.to_json()
        except orjson.JSONEncodeError as exc:
            self._dropped(DropReason.UNENCODABLE, str(exc), **event_fields(event))
            return False
        record = wire.record(
            event.subscription,
            event.position,
            self.config.subject(event.gateway_id, str(event.live_subscription_id)),
            event.msg_id,
            payload,
            self.clock(),
        )
        self._unsettled.append((event.subscription, event.position, record))
        self._positions.setdefault(event.subscription, collections.deque()).append(event.position)
        if len(self._unsettled) > self.buffer_peak:
            self.buffer_peak = len(self._unsettled)
        if self._stdin is not None:
            self._outbox.append(record)
            if self._flushing is None and self._loop is not None:
                self._flushing = self._loop.call_soon(self._flush)
        return True

    async def start(self) -> None:
        """Start the publisher process; returns at once, whether NATS is reachable or not."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._supervise(), name="nats-publisher")

    async def stop(self, timeout: float) -> None:
        """Have the publisher deliver what it can within `timeout` seconds and exit; count
        the rest as dropped."""
        self._stopping = True
        self._stop_timeout = timeout
        task = self._task
        if task is not None and not task.done():
            if self._waiting:
                task.cancel()  # no publisher to flush through
            elif self._stdin is not None:
                self._send_stop()
            # Else it is starting one: `_supervise` sends STOP once it has.
            # Beyond `timeout`, the publisher's own close may take a connect timeout.
            grace = self.config.connect_timeout + 2.0
            _, pending = await asyncio.wait({task}, timeout=timeout + grace)
            if pending:
                log.warning("nats_publisher_stop_timeout", pid=self.pid, next="killing it")
                self._kill()
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stopped_with(
            0 if self._final else len(self._unsettled), "the NATS publisher process was gone"
        )
        self._unsettled.clear()
        self._positions.clear()
        self.connected = False

    # -- the publisher process -------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run a publisher; start another after a backoff each time one exits unasked."""
        try:
            while True:
                started = self.clock()
                try:
                    process = await asyncio.create_subprocess_exec(
                        *(self.python, "-m", PUBLISHER_MODULE),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=None,  # the worker's: its log lines go where the worker's go
                        env=_environment(),
                    )
                except OSError as exc:
                    log.error("nats_publisher_start_failed", error=str(exc), next="retrying")
                    if self._stopping:
                        return
                else:
                    code = await self._run(process)
                    if self._stopping:
                        return
                    if code == wire.GAVE_UP:
                        self._give_up()
                        return
                    self.restarts += 1
                    log.warning(
                        "nats_publisher_exited",
                        pid=process.pid,
                        returncode=code,
                        unsettled=len(self._unsettled),
                        next="starting another; the unsettled events are sent again with "
                        "the same Nats-Msg-Id (JetStream stores each once)",
                    )
                    if self.clock() - started >= HEALTHY_AFTER:
                        self._backoff.reset()
                self._waiting = True
                try:
                    await asyncio.sleep(self._backoff.next_delay())
                finally:
                    self._waiting = False
        finally:
            self._waiting = False

    async def _run(self, process: asyncio.subprocess.Process) -> int:
        """Attach `process`, read its reports until it exits; its exit code."""
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._child_settled, self._child_stats, self._final = 0, {}, False
        setup = {
            "config": dataclasses.asdict(self.config),
            "log_format": self.logs.format,
            "log_level": self.logs.level,
        }
        process.stdin.write(wire.frame(wire.HELLO, orjson.dumps(setup)))
        if self._unsettled:  # a new publisher: everything not settled yet, in order
            process.stdin.write(
                wire.frame(wire.EVENTS, b"".join(record for _, _, record in self._unsettled))
            )
        self._outbox.clear()
        self._stdin = process.stdin
        log.info("nats_publisher_started", pid=process.pid, resent=len(self._unsettled))
        if self._stopping:
            self._send_stop()
        try:
            while line := await process.stdout.readline():
                self._report(line)
            return await process.wait()
        except asyncio.CancelledError:
            self._kill()
            raise
        finally:
            self._detach()

    def _give_up(self) -> None:
        """As `NatsDelivery` does after a bad setting: drop what is held and what comes."""
        self._stopping = True
        self.dropped[DropReason.STOPPED] += len(self._unsettled)
        self._unsettled.clear()
        self._positions.clear()
        log.error(
            "nats_publisher_gave_up",
            next="fix LIVE_NATS_URL and restart the worker; matched events are dropped",
        )

    def _detach(self) -> None:
        stdin, self._stdin, self._process = self._stdin, None, None
        self._outbox.clear()
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        self.connected = False
        if stdin is not None:
            stdin.close()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def _flush(self) -> None:
        """One frame for the records offered during this loop turn."""
        self._flushing = None
        if self._stdin is None or not self._outbox or self._stdin.is_closing():
            return  # a dying publisher: its successor gets them from `_unsettled`
        body = b"".join(self._outbox)
        self._outbox.clear()
        self._stdin.write(wire.frame(wire.EVENTS, body))

    def _send_stop(self) -> None:
        if self._stop_sent or self._stdin is None:
            return
        self._stop_sent = True
        self._flush()
        if not self._stdin.is_closing():
            self._stdin.write(wire.frame(wire.STOP, orjson.dumps({"timeout": self._stop_timeout})))
            self._stdin.close()

    # -- its reports ---------------------------------------------------------------------

    def _report(self, line: bytes) -> None:
        try:
            report = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.error("nats_publisher_report_unreadable", line=line[:200].decode(errors="replace"))
            return
        if "settled" in report:
            self._settle_to(int(report["settled"]))
        elif "stats" in report:
            self._add_stats(report["stats"])
        elif report.get("final"):
            self._final = True

    def _settle_to(self, settled: int) -> None:
        """The publisher settled its first `settled` events: forget them here."""
        for _ in range(settled - self._child_settled):
            if not self._unsettled:  # a bug: never settle what was not offered
                log.error("nats_publisher_settled_too_many", settled=settled)
                break
            subscription, _, _ = self._unsettled.popleft()
            positions = self._positions[subscription]
            positions.popleft()
            if not positions:
                del self._positions[subscription]
        self._child_settled = settled

    def _add_stats(self, stats: dict[str, Any]) -> None:
        """Add what changed since the publisher's previous stats to the counters."""
        last = self._child_stats
        self.published += stats["published"] - last.get("published", 0)
        self.duplicates += stats["duplicates"] - last.get("duplicates", 0)
        self.retried += stats["retried"] - last.get("retried", 0)
        self.outages += stats["outages"] - last.get("outages", 0)
        dropped_before = last.get("dropped", {})
        for reason, count in stats["dropped"].items():
            self.dropped[reason] += count - dropped_before.get(reason, 0)
        for name, histogram in (
            ("publish_seconds", self.publish_seconds),
            ("delivery_seconds", self.delivery_seconds),
        ):
            counts, total = stats[name]
            before, before_total = last.get(name, ([0] * len(counts), 0.0))
            added = [now - then for now, then in zip(counts, before, strict=True)]
            histogram.add(added, total - before_total)
        self.breaker = Breaker(stats["breaker"])
        self.connected = bool(stats["connected"])
        self._child_stats = stats


def _environment() -> dict[str, str]:
    """The worker's environment, with this code first on the publisher's import path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), *([path] if path else [])])}
