"""`MaterializeDouble`: the server, the scripted collection, and the test-facing controls."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .collection import COLUMN_TYPES, Collection, Column
from .sql import SelectRows, SqlError, Subscribe, tokenize

if TYPE_CHECKING:
    from .wire import DoubleHandler, DoubleServer

MZ_VERSION = "v0.130.0"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Received(NamedTuple):
    """A statement as the double received it."""

    sql: str  # the statement's text, without a trailing `;`
    protocol: str  # "simple" (Query) or "extended" (Parse/Bind/Execute)
    connection: int  # the connection's backend process id


def _qualified(relation: str) -> tuple[str, ...]:
    """`name`, `schema.name` or `db.schema.name` as (db, schema, name), defaults filled in."""
    tokens = tokenize(relation)
    parts = [t.value for t in tokens if t.kind in ("ident", "qident")]
    dots = [t for t in tokens if t.kind == "op"]
    if not 1 <= len(parts) <= 3 or len(dots) != len(parts) - 1 or any(d.value != "." for d in dots):
        raise ValueError(f"{relation!r} is not a relation name")
    return (("materialize", "public")[: 3 - len(parts)] + tuple(parts))[-3:]


class MaterializeDouble:
    """A pgwire server that behaves like Materialize's SUBSCRIBE over DECLARE/FETCH.

    One relation, fed by `write` (and `insert`/`delete`/`update`), with timestamps in
    milliseconds since the epoch. `start()` serves on 127.0.0.1 on a free port; every
    connection has its own cluster, transaction and cursor. Use it as a context
    manager. All methods are thread-safe; FETCHes waiting for rows wake up at once
    when the test writes or advances.

    Errors carry Materialize's SQLSTATE and wording (cited where each is raised):
    most are XX000, as Materialize sends them.

    `SHOW COLUMNS FROM <relation>` answers (name, nullable, type, comment) with
    Materialize's type names (`collection.SHOWN_TYPES`); nullable is always true.

    `SELECT * FROM <relation | (query)> [AS OF t] [WHERE column = value AND ...]` reads
    the relation as of the last closed timestamp, each value compared as its column's
    type (22P02 for one that is not of it), as a trace reads a row by its key.

    Simplifications: `SUBSCRIBE (SELECT ...)` and `SELECT * FROM (SELECT ...)` read the
    relation as it is (no projection or filter) when the query names it; only text
    result formats; ENVELOPE DEBEZIUM, WITHIN TIMESTAMP ORDER BY and UP TO are refused
    with SQLSTATE 0A000. No
    TLS: buenavista answers an SSLRequest with "N", so `sslmode=require` cannot connect.
    """

    def __init__(
        self,
        relation: str = "orders_search_source_mv",
        columns: Sequence[tuple[str, str]] = (
            ("order_id", "int8"),
            ("customer", "text"),
            ("total", "numeric"),
        ),
        clusters: Iterable[str] = ("quickstart", "serving"),
        start_at: int | None = None,
        password: str | None = None,
        idle_in_transaction_timeout: float = 120.0,
    ) -> None:
        """`columns` are (name, type) with a type of `COLUMN_TYPES`; `start_at` is the
        initial frontier (default: now, in ms). Values written are rendered in text
        format: a str is sent as it is (so a test can send a value psycopg cannot load),
        jsonb takes any other object through json.dumps, timestamptz a datetime.
        With a `password`, clients must send it (cleartext, as Materialize asks) or
        get FATAL 28P01 "invalid password". `idle_in_transaction_timeout` is the
        default of the session variable (Materialize's: 2 minutes): a session idle in
        a transaction for longer gets FATAL 25P03 and is closed."""
        for name, kind in columns:
            if kind not in COLUMN_TYPES:
                raise ValueError(f"column {name}: unknown type {kind!r}")
        self.relation = relation
        self._relation_parts = _qualified(relation)
        self.columns = tuple(Column(name, kind) for name, kind in columns)
        self.clusters = set(clusters)  # may be changed while serving
        self.password = password
        self.idle_in_transaction_timeout = idle_in_transaction_timeout
        self.mz_version = MZ_VERSION
        self.port = 0
        self._cond = threading.Condition()
        self._collection = Collection(self.columns, now_ms() if start_at is None else start_at)
        self._dropped = False
        self._revoked: set[str] = set()
        self._compaction_wording: Literal["old", "new"] = "old"
        self._received: list[Received] = []
        self._failures: list[tuple[str, SqlError]] = []
        self._drop_after: int | None = None
        self._rows_sent = 0
        self._handlers: dict[int, tuple[DoubleHandler, Any]] = {}  # pid -> (handler, ctx)
        self._threads: set[threading.Thread] = set()
        self._server: DoubleServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> MaterializeDouble:
        from .wire import DoubleServer

        if self._server is not None:
            raise RuntimeError("the double is already serving")
        self._stopping = False
        self._server = DoubleServer(self)
        self.port = self._server.server_address[1]
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"materialize-double:{self.port}",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Close every connection (waiting FETCHes included) and the listener."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()
        self.drop_connections()
        server.server_close()
        deadline = time.monotonic() + 5
        if self._serve_thread is not None:
            self._serve_thread.join(5)
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> MaterializeDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def dsn(self) -> str:
        return f"postgresql://materialize@127.0.0.1:{self.port}/materialize"

    def parameters(self) -> dict[str, str]:
        """The ParameterStatus values sent at startup."""
        return {
            "server_version": "9.5.0",
            "server_encoding": "UTF8",
            "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY",
            "IntervalStyle": "postgres",
            "integer_datetimes": "on",
            "standard_conforming_strings": "on",
            "TimeZone": "UTC",
            "is_superuser": "off",
            "application_name": "",
            "mz_version": self.mz_version,
        }

    # -- the collection ----------------------------------------------------------------

    @property
    def frontier(self) -> int:
        """The upper: every timestamp below it is closed."""
        with self._cond:
            return self._collection.frontier

    def now(self) -> int:
        """What `SELECT mz_now()` answers: a strict serializable read's timestamp, at or
        after every write (one at an open timestamp included) and every closed one."""
        with self._cond:
            collection = self._collection
            written = collection.updates[-1].ts if collection.updates else 0
            return max(collection.frontier - 1, written)

    @property
    def since(self) -> int:
        """AS OF below this is refused (see `compact`)."""
        with self._cond:
            return self._collection.since

    def write(
        self,
        updates: Iterable[tuple[tuple[Any, ...], int]],
        *,
        at: int | None = None,
        close: bool = True,
    ) -> int:
        """Append updates (row, diff) at timestamp `at` (default: the frontier, the first
        open timestamp; it must be >= the frontier, else ValueError). With close=True the
        frontier moves to at+1 (subscribers get a progress row at at+1). Return `at`."""
        items = list(updates)
        with self._cond:
            collection = self._collection
            ts = collection.frontier if at is None else at
            if ts < collection.frontier:
                raise ValueError(f"timestamp {ts} is closed: the frontier is {collection.frontier}")
            rendered = []
            for row, diff in items:
                if isinstance(diff, bool) or not isinstance(diff, int):
                    raise ValueError(f"diff {diff!r} of {row!r} is not an integer")
                rendered.append((tuple(row), collection.render_row(row), diff))
            collection.append(ts, rendered)
            if close:
                collection.advance(ts + 1)
            self._cond.notify_all()
        return ts

    def insert(self, *rows: tuple[Any, ...], at: int | None = None, close: bool = True) -> int:
        """`write` each row with diff +1."""
        return self.write([(row, 1) for row in rows], at=at, close=close)

    def delete(self, *rows: tuple[Any, ...], at: int | None = None, close: bool = True) -> int:
        """`write` each row with diff -1."""
        return self.write([(row, -1) for row in rows], at=at, close=close)

    def update(
        self,
        old_row: tuple[Any, ...],
        new_row: tuple[Any, ...],
        at: int | None = None,
        close: bool = True,
    ) -> int:
        """-1 `old_row`, +1 `new_row`, at one timestamp."""
        return self.write([(old_row, -1), (new_row, 1)], at=at, close=close)

    def advance(self, to: int | None = None) -> int:
        """Close the timestamps below `to` without updates: a progress-only step. `to`
        defaults to frontier+1, or now in ms if that is later. Return the new frontier."""
        with self._cond:
            collection = self._collection
            target = max(collection.frontier + 1, now_ms()) if to is None else to
            if target < collection.frontier:
                raise ValueError(f"cannot move the frontier back to {target}")
            collection.advance(target)
            self._cond.notify_all()
            return collection.frontier

    @contextlib.contextmanager
    def ticking(self, every: float = 0.02) -> Iterator[None]:
        """Advance the frontier every `every` seconds meanwhile (`advance()`: to now in
        ms), as Materialize's timestamps follow the clock; writes go on as usual."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(every):
                self.advance()

        thread = threading.Thread(target=tick, name="materialize-double-tick", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)

    def compact(self, since: int, *, wording: Literal["old", "new"] = "old") -> None:
        """Forget history below `since`: a later AS OF below it is refused at the cursor's
        first FETCH. Subscriptions already running are not affected. `wording`: "old"
        is XX000 "Timestamp (t) is not valid for all inputs: [...]" (v0.130 and before,
        src/adapter/src/coord/timestamp_selection.rs), "new" is 22000 "could not find a
        valid timestamp for the query" (AdapterError::ImpossibleTimestampConstraints)."""
        with self._cond:
            if since > self._collection.frontier:
                raise ValueError(f"since {since} is beyond the frontier {self.frontier}")
            self._collection.since = max(self._collection.since, since)
            self._compaction_wording = wording

    def write_error(
        self, message: str, *, at: int | None = None, close: bool = True, diff: int = 1
    ) -> int:
        """A dataflow error in the view at timestamp `at` (default: the frontier), such as
        "Evaluation error: division by zero": a SUBSCRIBE whose output reaches it is
        poisoned (see `collection`). diff=-1 retracts it (`retract_error`). Return `at`."""
        with self._cond:
            collection = self._collection
            ts = collection.frontier if at is None else at
            if ts < collection.frontier:
                raise ValueError(f"timestamp {ts} is closed: the frontier is {collection.frontier}")
            collection.errors.append((ts, message, diff))
            if close:
                collection.advance(ts + 1)
            self._cond.notify_all()
        return ts

    def retract_error(self, message: str, *, at: int | None = None, close: bool = True) -> int:
        """Retract a dataflow error (the row that caused it is fixed). Return `at`."""
        return self.write_error(message, at=at, close=close, diff=-1)

    def revoke(self, privilege: Literal["SELECT", "USAGE"]) -> None:
        """Revoke SELECT on the relation or USAGE on every cluster: a SUBSCRIBE then fails
        at its first FETCH with 42501 "permission denied for ..." (src/sql/src/rbac.rs)."""
        with self._cond:
            self._revoked.add(privilege)

    def _check_privileges(self, user: str, cluster: str) -> None:
        if "SELECT" in self._revoked:
            target = f'MATERIALIZED VIEW "{".".join(self._relation_parts)}"'
        elif "USAGE" in self._revoked:
            target = f'CLUSTER "{cluster}"'
        else:
            return
        privilege = "SELECT" if "SELECT" in self._revoked else "USAGE"
        raise SqlError(
            "42501",
            f"permission denied for {target}",
            detail=f"The '{user}' role needs {privilege} privileges on {target}",
        )

    def drop_relation(self) -> None:
        """DROP the relation: running SUBSCRIBEs end at their next FETCH with XX000
        "subscribe has been terminated because underlying relation "db.schema.name" was
        dropped" (src/adapter/src/active_compute_sink.rs); a new one gets "unknown
        catalog item"."""
        name = ".".join(self._relation_parts)
        with self._cond:
            self._dropped = True
            self._terminate(lambda _sub: True, f'relation "{name}"')

    def drop_cluster(self, name: str) -> None:
        """DROP CLUSTER: SUBSCRIBEs running on it end at their next FETCH with XX000
        "subscribe has been terminated because underlying cluster "name" was dropped"."""
        with self._cond:
            self.clusters.discard(name)
            self._terminate(lambda sub: sub.cluster == name, f'cluster "{name}"')

    def rows_at(self, t: int | None = None) -> dict[tuple[Any, ...], int]:
        """The multiset at `t` (default: frontier - 1), row -> count, zero counts left out."""
        with self._cond:
            at = self._collection.frontier - 1 if t is None else t
            return {row: count for row, _text, count in self._collection.consolidated(at)}

    # -- faults ------------------------------------------------------------------------

    def drop_connections(self) -> int:
        """Close every client connection now, without a protocol message (clients see
        "server closed the connection unexpectedly"). Return how many."""
        with self._cond:
            handlers = [handler for handler, _ctx in self._handlers.values()]
            for handler in handlers:
                handler.drop()
            self._cond.notify_all()
        return len(handlers)

    def fail_next(self, statement: str, sqlstate: str, message: str) -> None:
        """The next statement whose first keyword is `statement` ("FETCH", "DECLARE", ...)
        fails with this error instead of running. Several may be queued."""
        with self._cond:
            self._failures.append((statement.upper(), SqlError(sqlstate, message)))

    def drop_after_rows(self, n: int) -> None:
        """Cut the connection that sends the n-th SUBSCRIBE row (data or progress) from now
        on, right after that row: the FETCH never completes."""
        if n < 1:
            raise ValueError("n must be at least 1")
        with self._cond:
            self._drop_after = n

    # -- observation -------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """Every statement received, in order, across connections (a copy)."""
        with self._cond:
            return list(self._received)

    @property
    def statements(self) -> list[str]:
        """The text of every statement received, in order, across connections (a copy)."""
        with self._cond:
            return [r.sql for r in self._received]

    @property
    def rows_sent(self) -> int:
        """SUBSCRIBE rows (progress rows included) sent by FETCHes so far."""
        with self._cond:
            return self._rows_sent

    @property
    def connections(self) -> int:
        """Client connections open now."""
        with self._cond:
            return len(self._handlers)

    def wait_for_rows_sent(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._rows_sent >= n, timeout):
                raise TimeoutError(f"{self._rows_sent} SUBSCRIBE rows sent, not {n}")

    def wait_for_statement(self, pattern: str, timeout: float = 10.0) -> str:
        """The first statement received (ever) that `pattern` matches (re.search)."""
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((r.sql for r in self._received if regex.search(r.sql)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(f"no statement matching {pattern!r} in {self.statements}")
            return found() or ""

    def wait_for_connections(self, n: int, timeout: float = 10.0) -> None:
        """Wait until exactly `n` client connections are open."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._handlers) == n, timeout):
                raise TimeoutError(f"{len(self._handlers)} connections open, not {n}")

    # -- for the session and the wire (under the lock where they touch state) ----------

    def _record(self, sql: str, protocol: str, pid: int) -> None:
        with self._cond:
            self._received.append(Received(sql, protocol, pid))
            self._cond.notify_all()

    def _take_failure(self, keyword: str) -> SqlError | None:
        with self._cond:
            for i, (statement, error) in enumerate(self._failures):
                if statement == keyword:
                    del self._failures[i]
                    return error
        return None

    def _resolve(self, subscribe: Subscribe | SelectRows) -> None:
        """Raise "unknown catalog item" unless the statement names this double's relation.
        A catalog error is XX000 (AdapterError::PlanError, src/adapter/src/error.rs)."""
        if subscribe.name is not None:
            self._resolve_name(subscribe.name)
            return
        if self._dropped:
            missing = subscribe.query_from
        elif self._relation_parts[-1] in subscribe.query_identifiers:
            return
        else:
            missing = subscribe.query_from or "?"
        raise SqlError("XX000", f"unknown catalog item '{missing or '?'}'")

    def _resolve_name(self, parts: tuple[str, ...]) -> None:
        """Raise Materialize's catalog error unless `parts` name this double's relation."""
        if not self._dropped:
            if len(parts) <= 3 and parts == self._relation_parts[-len(parts) :]:
                return
            if len(parts) == 3 and parts[0] != self._relation_parts[0]:
                raise SqlError("XX000", f"unknown database '{parts[0]}'")
            if len(parts) >= 2 and parts[-2] != self._relation_parts[1]:
                raise SqlError("XX000", f"unknown schema '{parts[-2]}'")
        raise SqlError("XX000", f"unknown catalog item '{'.'.join(parts) or '?'}'")

    def _compaction_error(self, as_of: int, since: int) -> SqlError:
        """Materialize's answer to an AS OF below the since (see `compact`)."""
        if self._compaction_wording == "new":
            detail = f"Constraints:\nlower: since of the inputs [{since}]\nupper: AS OF [{as_of}]"
            return SqlError(
                "22000", "could not find a valid timestamp for the query", detail=detail
            )
        return SqlError(
            "XX000",
            f"Timestamp ({as_of}) is not valid for all inputs: "
            f"[Antichain {{ elements: [{since}] }}]",
        )

    def _terminate(self, which: Any, dependency: str) -> None:
        """End the matching running SUBSCRIBEs (under the lock)."""
        error = SqlError(
            "XX000", f"subscribe has been terminated because underlying {dependency} was dropped"
        )
        for _handler, ctx in self._handlers.values():
            for subscription in ctx.session.cursors.values():
                if which(subscription):
                    subscription.refused = error
        self._cond.notify_all()

    def _claim_rows(self, count: int) -> tuple[int, bool]:
        """How many of `count` rows to send, and whether to cut the connection after them."""
        with self._cond:
            if self._drop_after is None or count < self._drop_after:
                if self._drop_after is not None:
                    self._drop_after -= count
                return count, False
            sendable, self._drop_after = self._drop_after, None
            return sendable, True

    def _rows_sent_add(self, count: int) -> None:
        with self._cond:
            self._rows_sent += count
            self._cond.notify_all()

    def _cancel(self, pid: int, secret: int) -> None:
        """A CancelRequest: cancel the statement running on that connection, if any."""
        with self._cond:
            entry = self._handlers.get(pid)
            if entry is not None and entry[1].secret_key == secret:
                session = entry[1].session
                if session.running:
                    session.cancel_pending = True
                    self._cond.notify_all()

    def _attach(self, handler: DoubleHandler, ctx: Any) -> None:
        with self._cond:
            self._handlers[ctx.process_id] = (handler, ctx)
            if self._stopping:
                handler.drop()
            self._cond.notify_all()

    def _detach(self, handler: DoubleHandler, ctx: Any) -> None:
        with self._cond:
            if self._handlers.get(ctx.process_id, (None,))[0] is handler:
                del self._handlers[ctx.process_id]
            self._cond.notify_all()

    def _thread_started(self) -> None:
        with self._cond:
            self._threads.add(threading.current_thread())

    def _thread_finished(self) -> None:
        with self._cond:
            self._threads.discard(threading.current_thread())
