"""One slot's changes over the streaming replication protocol (psycopg2's ReplicationCursor).

psycopg 3 can start `START_REPLICATION` but has no API to read the stream or send
standby status updates (psycopg issue #71), so this module alone uses psycopg2's
`LogicalReplicationConnection` (docs/replication.md has the choice and its measurements).
The server pushes each transaction as it commits; the client confirms positions with
standby status updates, and the slot keeps everything after the last confirmed one.

Connecting and `START_REPLICATION` block, so they run in a thread; reading runs on the
event loop, without blocking: `read` returns what libpq has buffered,
and `wait` sleeps until the socket is readable. psycopg2 answers the server's keepalives
itself and moves the confirmed position to a keepalive's WAL end once every message
received has been confirmed (so WAL of other tables is not held while idle). Status
updates are this module's timer's: a confirmed (or so moved) position goes out within
`status_interval`, read or not (backpressure), and otherwise a ping every
`keepalive_interval` (at most a quarter of the server's `wal_sender_timeout`), so that
the server never times the session out and a quiet one still shows that it is alive.

psycopg2's errors leave this module as psycopg 3's classes of the same SQLSTATE, so
`syncer.sources.sqlerrors.translated` words them as it does every other source error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
import psycopg.sql
import psycopg2
import psycopg2.extensions
import psycopg2.extras

from syncer.engine.changes import Position
from syncer.sources.positions import parse_lsn
from syncer.sources.sqlerrors import translated


class ReplicationStream:
    """A `replication=database` session streaming one slot's pgoutput messages."""

    def __init__(
        self,
        conninfo: str,
        slot_name: str,
        publication: str,
        connect_timeout: int = 10,
        status_interval: int = 1,
        keepalive_interval: float = 10.0,
        messages: bool = False,
        temporary: bool = False,
    ) -> None:
        self.slot_name = slot_name
        self.messages = messages
        """Ask for logical messages too (pgoutput's `messages` option, PostgreSQL 14+):
        the chunked copy's watermarks."""
        self.temporary = temporary
        """Create the slot, TEMPORARY, on this session before streaming it: PostgreSQL
        drops it when the session ends, however the process ends (a shared copy's helper)."""
        self.created_at: Position = 0
        """A temporary slot's consistent point: the stream starts there."""
        self.created_snapshot = ""
        """The transaction ids (pg_snapshot's text) of the snapshot the temporary slot
        exported: every transaction it shows as committed is before `created_at`."""
        self.publication = publication
        self.status_interval = status_interval
        self.keepalive_interval = keepalive_interval
        """Seconds between pings (a status update asking for a reply) on a quiet
        session; lowered to a quarter of the server's wal_sender_timeout at start."""
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._conn: psycopg2.extensions.connection | None = None
        self._cursor: Any = None  # psycopg2.extras.ReplicationCursor (untyped)
        self._fileno = -1
        self._timer: asyncio.TimerHandle | None = None
        self._failure: psycopg2.Error | None = None
        self._pending: list[bytes] = []  # read while waiting, not yet handed out
        self._confirmed_at = 0.0  # when `confirm` last recorded a position
        self._wal_end_sent = 0  # the server's WAL end as of the last status update sent
        self._all_confirmed = True  # psycopg2 may move the confirmed position on keepalives
        self.heard_at: float | None = None
        """Wall-clock time the server last sent anything (data or keepalive)."""

    async def start(self, start_lsn: Position) -> None:
        """Connect and start streaming the transactions that commit after `start_lsn`.

        The server starts at the slot's confirmed position when that is later."""
        started = asyncio.ensure_future(asyncio.to_thread(self._connect, start_lsn))
        try:
            with _translated(f"starting replication from slot {self.slot_name}"):
                self._conn, self._cursor = await asyncio.shield(started)
        except asyncio.CancelledError:
            # The thread cannot be stopped: close what it opens, or the walsender
            # would hold the slot until the process ends.
            started.add_done_callback(_close_when_started)
            raise
        self._fileno = self._cursor.fileno()
        self.heard_at = time.time()
        self._schedule_status()

    def _connect(self, start_lsn: Position) -> tuple[psycopg2.extensions.connection, Any]:
        conn = psycopg2.connect(
            self._conninfo,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            connect_timeout=self._connect_timeout,
            # What an operator sees in pg_stat_replication for this walsender.
            application_name=f"searchsync {self.slot_name}",
        )
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT setting::int FROM pg_settings WHERE name = 'wal_sender_timeout'")
            row = cursor.fetchone()
            timeout_ms = int(row[0]) if row else 0
            if timeout_ms > 0:  # 0: the server never times a session out
                self.keepalive_interval = min(self.keepalive_interval, timeout_ms / 4000)
            if self.temporary:
                start_lsn = self._create_temporary(cursor)
            # Protocol 1 sends every value as text, as `syncer.sources.values` decodes.
            options = {"proto_version": "1", "publication_names": self.publication}
            if self.messages:
                options["messages"] = "true"
            cursor.start_replication(
                slot_name=self.slot_name,
                decode=False,
                start_lsn=start_lsn,
                options=options,
                # psycopg2 would otherwise send one from every `read_message` a second
                # apart; the timer below sends what needs sending (`_send_status`).
                status_interval=max(1, int(self.keepalive_interval)),  # psycopg2: 1 s at least
            )
        except BaseException:
            conn.close()
            raise
        return conn, cursor

    def _create_temporary(self, cursor: Any) -> Position:
        cursor.execute(
            f"CREATE_REPLICATION_SLOT {self.slot_name} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        )
        _, consistent_point, snapshot_name, _ = cursor.fetchone()
        # The exported snapshot lives until this session's next command: read its ids now.
        with psycopg.connect(self._conninfo, connect_timeout=self._connect_timeout) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute(
                psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                    psycopg.sql.Literal(snapshot_name)
                )
            )
            row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
        assert row is not None
        self.created_at = parse_lsn(str(consistent_point))
        self.created_snapshot = str(row[0])
        return self.created_at

    def read(self, limit: int) -> list[bytes]:
        """Up to `limit` pgoutput messages already received (never blocks)."""
        self._raise_failure()
        cursor = self._require_cursor()
        payloads, self._pending = self._pending, []
        with _translated("reading changes"):  # once a call: it costs more than a message
            while len(payloads) < limit:
                message = cursor.read_message()
                if message is None:
                    break
                payloads.append(message.payload)
        if payloads:
            self.heard_at = time.time()
            self._all_confirmed = False
        return payloads

    async def wait(self, timeout: float) -> None:
        """Return once a message has arrived, or after `timeout` seconds.

        Keepalives are answered here without waking the caller: the server sends one
        each time the WAL moves while the slot is behind it (any table's, any
        database's), hundreds a second on a busy server."""
        self._raise_failure()
        if self._pending:
            return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        cursor = self._require_cursor()

        def readable() -> None:
            self.heard_at = time.time()
            try:
                message = cursor.read_message()  # consumes the keepalives before it
            except psycopg2.Error as exc:
                self._failure = exc
                message = None
            if message is not None:  # kept even if this runs again before `wait` resumes
                self._pending.append(message.payload)
            if (message is not None or self._failure is not None) and not ready.done():
                ready.set_result(None)

        loop.add_reader(self._fileno, readable)
        try:
            with contextlib.suppress(TimeoutError):  # a quiet server: the caller looks again
                await asyncio.wait_for(ready, timeout)
        finally:
            loop.remove_reader(self._fileno)
        self._raise_failure()

    @property
    def pending(self) -> bool:
        """Messages were received while waiting and not read yet."""
        return bool(self._pending)

    def confirm(self, position: Position, received: Position) -> None:
        """Everything up to `position` is in the sink: the slot may release its WAL.

        Sent with the next status update (within `status_interval`), with `received`,
        the end of the last transaction read, as the write position (pg_stat_replication
        shows the two lags apart)."""
        self._raise_failure()
        with _translated("confirming a position to the replication slot"):
            self._require_cursor().send_feedback(write_lsn=received, flush_lsn=position)
        self._confirmed_at = time.time()
        self._all_confirmed = position >= received

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is not None:
            conn, self._conn, self._cursor = self._conn, None, None
            conn.close()  # the walsender ends; the slot keeps the confirmed position

    # -- the status update while the worker does not read ----------------------------

    def _schedule_status(self) -> None:
        loop = asyncio.get_running_loop()
        every = min(self.status_interval, self.keepalive_interval)
        self._timer = loop.call_later(every, self._send_status)

    def _send_status(self) -> None:
        """Send within `status_interval` a position confirmed (or moved by a keepalive)
        since the last status update; else, once `keepalive_interval` passed without
        one, ping the server, asking for a keepalive back when it has been quiet, so
        `heard_at` shows it is alive.

        A quiet session costs a timer call a second and a ping every ten: a status
        update every second (psycopg2's own from each read, and this timer's) was half
        the CPU of an idle worker with 100 subscriptions."""
        cursor = self._cursor
        if cursor is None:
            return
        now = time.time()
        last = cursor.feedback_timestamp.timestamp()
        since = now - last
        # A keepalive moved psycopg2's confirmed position of an idle slot to its WAL
        # end: say so, or the slot would hold other tables' WAL until the next ping.
        moved = self._all_confirmed and cursor.wal_end > self._wal_end_sent
        try:
            if (self._confirmed_at > last or moved) and since >= self.status_interval:
                self._wal_end_sent = cursor.wal_end
                cursor.send_feedback(force=True)  # what is recorded and unsent since
            elif since >= self.keepalive_interval:
                quiet = self.heard_at is None or now - self.heard_at >= self.keepalive_interval
                cursor.send_feedback(reply=quiet, force=True)
        except psycopg2.Error as exc:  # raised by the next read, which reconnects
            self._failure = exc
            return
        self._schedule_status()

    def _raise_failure(self) -> None:
        """Raise, translated, what failed where no caller could see it (a callback)."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            with _translated("reading changes"):
                raise failure

    def _require_cursor(self) -> Any:
        if self._cursor is None:
            raise RuntimeError("replication is not started")
        return self._cursor


def _close_when_started(started: asyncio.Future[tuple[Any, Any]]) -> None:
    if not started.cancelled() and started.exception() is None:
        started.result()[0].close()


@contextmanager
def _translated(action: str) -> Iterator[None]:
    with translated(action), _as_psycopg():
        yield


@contextmanager
def _as_psycopg() -> Iterator[None]:
    """Re-raise a psycopg2 error as psycopg 3's class of the same SQLSTATE (or DBAPI
    class when it has none, as for a refused connection)."""
    try:
        yield
    except psycopg2.Error as exc:
        message = str(exc).strip() or type(exc).__name__
        if "no message from the libpq" in message:
            # What libpq says when the server closes a COPY BOTH session without a word.
            message = (
                "the server ended the replication connection (its log says why: e.g. "
                "wal_sender_timeout, or the walsender was terminated)"
            )
        raise _psycopg_class(exc)(message) from exc


def _psycopg_class(exc: psycopg2.Error) -> type[psycopg.Error]:
    """psycopg 3's class for the SQLSTATE, else for the DBAPI class of the same name
    (psycopg2 and psycopg name them alike: OperationalError, ProgrammingError, ...)."""
    if exc.pgcode:
        try:
            return psycopg.errors.lookup(exc.pgcode)
        except KeyError:
            return psycopg.DatabaseError
    for base in type(exc).__mro__:
        cls = getattr(psycopg, base.__name__, None)
        if isinstance(cls, type) and issubclass(cls, psycopg.Error):
            return cls
    return psycopg.OperationalError
