"""One client connection's state (cluster, transaction, cursors) and its statements."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .collection import SHOWN_TYPES, Column, Subscription, TextRow, comparable
from .sql import (
    Begin,
    Close,
    Commit,
    Deallocate,
    Declare,
    Fetch,
    Rollback,
    Select,
    SelectRows,
    SetVar,
    Show,
    ShowColumns,
    SqlError,
    Statement,
    Token,
    first_keyword,
    interval_seconds,
    parse,
)

if TYPE_CHECKING:
    from .double import MaterializeDouble

DEFAULT_CLUSTER = "quickstart"
IDLE_TIMEOUT = "idle_in_transaction_session_timeout"
# Session variables the double accepts in SET (a subset of Materialize's, from
# src/sql/src/session/vars.rs); any other is refused as Materialize refuses it.
SESSION_VARS = frozenset(
    {
        "application_name",
        "client_encoding",
        "client_min_messages",
        "cluster",
        "cluster_replica",
        "database",
        "datestyle",
        "extra_float_digits",
        IDLE_TIMEOUT,
        "intervalstyle",
        "search_path",
        "statement_timeout",
        "timezone",
        "transaction",
        "transaction_isolation",
    }
)
_SHOW_COLUMNS = (
    Column("name", "text"),
    Column("nullable", "bool"),
    Column("type", "text"),
    Column("comment", "text"),
)
_POLL = 0.2  # how often a waiting FETCH looks whether its client went away
_ENDS_TRANSACTION = ("COMMIT", "END", "ROLLBACK", "ABORT")


class Dropped(Exception):
    """The connection is being cut: leave without sending anything."""


@dataclass
class Result:
    tag: str
    columns: list[Column] | None = None  # None: no rows (NoData)
    rows: list[TextRow] = field(default_factory=list)
    subscribe_rows: bool = False  # rows of a SUBSCRIBE: counted, and may be cut short


class Session:
    """Duck-types buenavista's `core.Session` (id, close, in_transaction)."""

    def __init__(self, double: MaterializeDouble) -> None:
        self.id = uuid.uuid4()
        self.double = double
        self.pid = 0
        self.user = "materialize"
        self.cluster = DEFAULT_CLUSTER
        self.settings: dict[str, str] = {}
        self.tx: Literal["idle", "open", "failed"] = "idle"
        self.cursors: dict[str, Subscription] = {}
        self.subscribed = False  # this transaction has declared its SUBSCRIBE
        self.prepared: dict[str, Any] = {}  # the connection's prepared statements
        self.peer_closed: Callable[[], bool] = lambda: False
        # Guarded by the double's lock:
        self.running = False
        self.cancel_pending = False
        self.dropped = False

    def in_transaction(self) -> bool:
        return self.tx != "idle"

    def close(self) -> None:
        self._end()

    # -- statements ----------------------------------------------------------------------

    def describe(self, statement: Statement) -> list[Column] | None:
        """The row description of a statement, without running it."""
        match statement:
            case Fetch(cursor=name):
                subscription = self.cursors.get(name)
                return subscription.columns if subscription is not None else None
            case Show(name=name):
                return [Column(name, "text")]
            case ShowColumns():
                return list(_SHOW_COLUMNS)
            case Select():
                return self._select(statement).columns
            case SelectRows():
                return self._select_rows(statement, run=False).columns
        return None

    def run(
        self,
        text: str,
        tokens: Sequence[Token],
        params: Sequence[str | None] | None,
        protocol: str,
    ) -> Result:
        double = self.double
        with double._cond:
            self.running, self.cancel_pending = True, False
        # Recorded once running: a caller that waits for the statement (wait_for_statement)
        # and then cancels it must not find it not yet cancellable, the cancel lost.
        double._record(text, protocol, self.pid)
        try:
            keyword = first_keyword(tokens)
            if self.tx == "failed" and keyword not in _ENDS_TRANSACTION:
                raise SqlError(
                    "25P02",
                    "current transaction is aborted, commands ignored until end of "
                    "transaction block",
                )
            failure = double._take_failure(keyword)
            if failure is not None:
                raise failure
            return self._execute(parse(text, tokens, params))
        except SqlError:
            if self.tx == "open":
                self.tx = "failed"
            raise
        finally:
            with double._cond:
                self.running, self.cancel_pending = False, False

    def _execute(self, statement: Statement) -> Result:
        match statement:
            case Begin():
                if self.tx == "idle":
                    self.tx = "open"
                return Result("BEGIN")
            case Commit():
                tag = "ROLLBACK" if self.tx == "failed" else "COMMIT"
                self._end()
                return Result(tag)
            case Rollback():
                self._end()
                return Result("ROLLBACK")
            case SetVar(name=name, value=value):
                if name not in SESSION_VARS:
                    # AdapterError::UnrecognizedConfigurationParam (src/adapter/src/error.rs)
                    raise SqlError("42704", f'unrecognized configuration parameter "{name}"')
                if name == IDLE_TIMEOUT and value is not None:
                    duration_seconds(name, value)  # refused now if it is not a duration
                if name == "cluster":
                    self.cluster = DEFAULT_CLUSTER if value is None else value
                elif value is None:
                    self.settings.pop(name, None)
                else:
                    self.settings[name] = value
                return Result("SET")
            case Show(name=name):
                return Result("SHOW", [Column(name, "text")], [(self._show(name),)])
            case ShowColumns(name=name):
                return self._show_columns(name)
            case Select():
                return self._select(statement)
            case SelectRows():
                return self._select_rows(statement)
            case Declare():
                return self._declare(statement)
            case Fetch():
                return self._fetch(statement)
            case Close(cursor=cursor):
                if cursor is None:
                    self.cursors.clear()
                elif self.cursors.pop(cursor, None) is None:
                    raise SqlError("34000", f'cursor "{cursor}" does not exist')
                return Result("CLOSE CURSOR")
            case Deallocate(name=name):
                if name is None:
                    for key in [k for k in self.prepared if k]:
                        del self.prepared[key]
                    return Result("DEALLOCATE ALL")
                if self.prepared.pop(name, None) is None:
                    raise SqlError("26000", f'prepared statement "{name}" does not exist')
                return Result("DEALLOCATE")
        raise AssertionError(statement)  # pragma: no cover

    def idle_timeout(self) -> float | None:
        """Seconds this session may sit idle in a transaction; None: no limit."""
        value = self.settings.get(IDLE_TIMEOUT)
        seconds = (
            self.double.idle_in_transaction_timeout
            if value is None
            else duration_seconds(IDLE_TIMEOUT, value)
        )
        return seconds or None

    def _end(self) -> None:
        self.tx = "idle"
        self.cursors.clear()
        self.subscribed = False

    def _show(self, name: str) -> str:
        if name == "cluster":
            return self.cluster
        known = {k.lower(): v for k, v in self.double.parameters().items()}
        known |= {
            "transaction_isolation": "strict serializable",
            "database": "materialize",
            "search_path": "public",
        }
        return self.settings.get(name, known.get(name, ""))

    def _show_columns(self, name: tuple[str, ...]) -> Result:
        """As Materialize: (name, nullable, type, comment) in column order
        (src/sql/src/plan/statement/show.rs, `show_columns`); an unknown name is the
        same XX000 "unknown catalog item" as a SUBSCRIBE's."""
        double = self.double
        double._resolve_name(name)
        rows: list[TextRow] = [
            (column.name, "t", SHOWN_TYPES[column.type], "") for column in double.columns
        ]
        return Result(f"SELECT {len(rows)}", list(_SHOW_COLUMNS), rows)

    def _select(self, statement: Select) -> Result:
        if statement.function == "mz_now":
            # The query's timestamp: strict serializable, so at or after every write.
            column = Column(statement.alias or "mz_now", "mz_timestamp")
            return Result("SELECT 1", [column], [(str(self.double.now()),)])
        if statement.function is not None:
            name = statement.alias or statement.function
            value = self.double.mz_version
            if statement.function == "version":
                value = f"PostgreSQL 9.5.0 on x86_64-pc-linux-gnu (Materialize {value})"
            return Result("SELECT 1", [Column(name, "text")], [(value,)])
        literal = statement.literal or "0"
        if literal.isdigit():
            kind = "int4" if int(literal) < 2**31 else "int8"
        else:
            kind = "numeric"
        return Result("SELECT 1", [Column(statement.alias or "?column?", kind)], [(literal,)])

    def _select_rows(self, statement: SelectRows, *, run: bool = True) -> Result:
        """A one-off SELECT: the relation as of the last closed timestamp (or AS OF),
        filtered by equality, each row as many times as its count."""
        double = self.double
        double._resolve(statement)
        names = [c.name for c in double.columns]
        for column, _ in statement.equals:
            if column not in names:  # a PlanError: XX000 (src/adapter/src/error.rs)
                raise SqlError("XX000", f'column "{column}" does not exist')
        columns = list(double.columns)
        if not run:
            return Result("SELECT 0", columns, [])
        if self.cluster not in double.clusters:
            raise SqlError("XX000", f"unknown cluster '{self.cluster}'")
        double._check_privileges(self.user, self.cluster)
        wanted = [
            (names.index(column), comparable(value, columns[names.index(column)].type))
            for column, value in statement.equals
            if value is not None
        ]
        with double._cond:
            collection = double._collection
            at = collection.frontier - 1 if statement.as_of is None else statement.as_of
            if at < collection.since:
                raise double._compaction_error(at, collection.since)
            rows = collection.consolidated(at)

        def matches(text: TextRow) -> bool:
            return all(
                (given := text[i]) is not None and comparable(given, columns[i].type) == value
                for i, value in wanted
            )

        found = [text for _row, text, count in rows if matches(text) for _ in range(count)]
        if any(value is None for _, value in statement.equals):
            found = []  # `= NULL` is never true
        return Result(f"SELECT {len(found)}", columns, found)

    def _declare(self, statement: Declare) -> Result:
        double, subscribe = self.double, statement.subscribe
        if self.tx == "idle":
            raise SqlError("25P01", "DECLARE CURSOR can only be used in transaction blocks")
        if statement.cursor in self.cursors:
            raise SqlError("42P03", f'cursor "{statement.cursor}" already exists')
        if self.subscribed:
            raise SqlError("25000", "SUBSCRIBE in transactions must be the only read statement")
        double._resolve(subscribe)
        names = [c.name for c in double.columns]
        for key in subscribe.keys or ():
            if key not in names:  # a PlanError: XX000 (src/adapter/src/error.rs)
                raise SqlError("XX000", f'column "{key}" does not exist')
        with double._cond:
            collection = double._collection
            since, refused = collection.since, None
            if subscribe.as_of is None:
                as_of = max(collection.frontier - 1, since)
            elif subscribe.as_of_at_least:
                as_of = max(subscribe.as_of, since)
            else:
                as_of = subscribe.as_of
                if as_of < since:
                    refused = double._compaction_error(as_of, since)
            self.cursors[statement.cursor] = Subscription(
                collection,
                as_of=as_of,
                snapshot=subscribe.snapshot,
                progress=subscribe.progress,
                keys=subscribe.keys,
                refused=refused,
                cluster=self.cluster,
            )
        self.subscribed = True
        return Result("DECLARE CURSOR")

    def _fetch(self, statement: Fetch) -> Result:
        subscription = self.cursors.get(statement.cursor)
        if subscription is None:
            raise SqlError("34000", f'cursor "{statement.cursor}" does not exist')
        rows = self._wait_rows(subscription, statement.count, statement.timeout)
        return Result(f"FETCH {len(rows)}", subscription.columns, rows, subscribe_rows=True)

    def _start(self, subscription: Subscription) -> None:
        """At its first FETCH Materialize runs the SUBSCRIBE, on the session's cluster."""
        if subscription.fetched:
            return
        subscription.fetched = True
        if subscription.cluster not in self.double.clusters:
            # A catalog error is XX000 (AdapterError::Catalog, src/adapter/src/error.rs).
            raise SqlError("XX000", f"unknown cluster '{subscription.cluster}'")
        self.double._check_privileges(self.user, subscription.cluster)

    def _wait_rows(
        self, subscription: Subscription, count: int | None, timeout: float | None
    ) -> list[TextRow]:
        """Rows available now; if none, wait up to `timeout` (None: forever) for some."""
        cond = self.double._cond
        deadline = None if timeout is None else time.monotonic() + timeout
        with cond:
            while True:
                if self.dropped or self.double._stopping:
                    raise Dropped
                if self.cancel_pending:
                    raise SqlError("57014", "canceling statement due to user request")
                self._start(subscription)
                if subscription.refused is not None:
                    raise subscription.refused
                subscription.pump()
                if count == 0 or subscription.buffer:
                    return subscription.take(count)
                if subscription.poisoned is not None:
                    raise subscription.poisoned
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                cond.wait(_POLL if remaining is None else min(remaining, _POLL))
                if self.peer_closed():
                    raise Dropped


def duration_seconds(name: str, value: str) -> float:
    """A duration setting in seconds; a bare number is milliseconds, as in Materialize."""
    if value.strip().isdigit():
        return int(value) / 1000
    try:
        return interval_seconds(value)
    except SqlError:
        raise SqlError("22023", f'invalid value for parameter "{name}": "{value}"') from None
