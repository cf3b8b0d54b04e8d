"""The Materialize double itself, through plain psycopg 3 (sync and async).

Each test pins one behaviour the adapter relies on: the wire protocol as psycopg
sees it, SUBSCRIBE's output (progress rows, snapshot, AS OF, envelopes), the
transaction rules, and the faults a test can inject.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Literal

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from tests.support.materialize_double import MaterializeDouble

T0 = 1_700_000_000_000
VIEW = "orders_search_source_mv"
SUBSCRIBE = f"DECLARE c CURSOR FOR SUBSCRIBE {VIEW}"
ANN, BOB, CY = (1, "ann", "10.50"), (2, "bob", "7.00"), (3, "cy", "1.25")


@pytest.fixture
def mz() -> Iterator[MaterializeDouble]:
    with MaterializeDouble(start_at=T0) as double:
        yield double


def progress(ts: int, width: int = 3) -> tuple[Any, ...]:
    return (Decimal(ts), True, None, *([None] * width))


def data(ts: int, diff: int, row: tuple[Any, ...]) -> tuple[Any, ...]:
    order_id, customer, total = row
    return (Decimal(ts), False, diff, order_id, customer, Decimal(total))


def subscribe(conn: psycopg.Connection, tail: str = "WITH (PROGRESS)") -> None:
    conn.execute("BEGIN")
    conn.execute(f"{SUBSCRIBE} {tail}")


def fetch(conn: psycopg.Connection, what: str = "ALL", timeout: str = "0s") -> list[Any]:
    return conn.execute(f"FETCH {what} c WITH (timeout = '{timeout}')").fetchall()


# -- the connection ------------------------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
async def test_psycopg_connects_sync_and_async(mz: MaterializeDouble, sslmode: str) -> None:
    with psycopg.connect(mz.dsn, sslmode=sslmode, password="any", user="someone") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.server_version == 90500
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.info.parameter_status("standard_conforming_strings") == "on"
        assert conn.info.parameter_status("DateStyle") == "ISO, MDY"
        assert conn.info.parameter_status("TimeZone") == "UTC"
        assert conn.info.parameter_status("mz_version") == mz.mz_version
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    async with await psycopg.AsyncConnection.connect(mz.dsn, sslmode=sslmode) as aconn:
        cur = await aconn.execute("SELECT mz_version()")
        assert await cur.fetchone() == (mz.mz_version,)
        assert aconn.info.transaction_status == TransactionStatus.INTRANS
    mz.wait_for_connections(0)


def test_set_cluster_is_accepted_and_an_unknown_cluster_fails_at_the_first_fetch(
    mz: MaterializeDouble,
) -> None:
    with psycopg.connect(mz.dsn, autocommit=True) as conn:
        for statement in ("SET CLUSTER = serving", "SET cluster TO quickstart;"):
            conn.execute(statement)
        conn.execute("SET CLUSTER = 'serving'")
        assert conn.execute("SHOW CLUSTER").fetchone() == ("serving",)
        conn.execute("SET application_name = 'tests'")  # other settings: accepted
        conn.execute('SET CLUSTER = "nope"')  # accepted, as Materialize does
        conn.execute("BEGIN")
        conn.execute(SUBSCRIBE)  # DECLARE plans; the cluster is resolved when it runs
        with pytest.raises(errors.InternalError_) as raised:
            fetch(conn)
        assert raised.value.sqlstate == "XX000"  # a catalog error, as Materialize sends it
        assert raised.value.diag.message_primary == "unknown cluster 'nope'"
        assert raised.value.diag.severity == "ERROR"
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.execute("ROLLBACK")
        conn.execute("SET CLUSTER = serving")
        subscribe(conn)
        assert fetch(conn)[0] == progress(T0 - 1)


def test_an_unknown_session_variable_is_refused_and_the_idle_timeout_is_accepted(
    mz: MaterializeDouble,
) -> None:
    with psycopg.connect(mz.dsn, autocommit=True) as conn:
        with pytest.raises(errors.UndefinedObject) as raised:
            conn.execute("SET idle_in_transaction_timeout = 0")
        assert raised.value.diag.message_primary == (
            'unrecognized configuration parameter "idle_in_transaction_timeout"'
        )
        with pytest.raises(errors.InvalidParameterValue):
            conn.execute("SET idle_in_transaction_session_timeout = 'soon'")
        for value in ("0", "'30s'", "120000"):
            conn.execute(f"SET idle_in_transaction_session_timeout = {value}")
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("120000",)


def test_a_session_idle_in_a_transaction_past_its_timeout_is_closed() -> None:
    with MaterializeDouble(idle_in_transaction_timeout=0.2) as mz:
        with psycopg.connect(mz.dsn, autocommit=True) as conn:
            conn.execute("SELECT 1")
            time.sleep(0.4)  # idle outside a transaction: no limit
            subscribe(conn)
            fetch(conn)
            time.sleep(0.4)
            with pytest.raises(errors.IdleInTransactionSessionTimeout) as raised:
                fetch(conn)
            assert raised.value.diag.severity == "FATAL"
            assert "terminating connection due to idle-in-transaction timeout" in str(raised.value)
        with psycopg.connect(mz.dsn, autocommit=True) as conn:
            conn.execute("SET idle_in_transaction_session_timeout = 0")
            subscribe(conn)
            fetch(conn)
            time.sleep(0.4)
            assert fetch(conn) == []  # 0: the session may wait as long as it likes
            with conn.pipeline():  # several messages in one write are not "idle"
                conn.execute("FETCH ALL c WITH (timeout = '0s')")
                conn.execute("FETCH ALL c WITH (timeout = '0s')")


def test_a_wrong_password_is_fatal_28p01_and_the_right_one_connects() -> None:
    with MaterializeDouble(password="s3cret") as mz:
        with pytest.raises(psycopg.OperationalError, match="invalid password"):
            psycopg.connect(mz.dsn, password="wrong")
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(mz.dsn)
        with psycopg.connect(mz.dsn, password="s3cret") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sslmode_require_cannot_connect_the_double_has_no_tls(mz: MaterializeDouble) -> None:
    # buenavista answers an SSLRequest with "N"; TLS to Materialize stays untested here.
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(mz.dsn, sslmode="require")


def test_declare_outside_a_transaction_block_is_refused(mz: MaterializeDouble) -> None:
    with psycopg.connect(mz.dsn, autocommit=True) as conn:
        with pytest.raises(errors.NoActiveSqlTransaction) as raised:
            conn.execute(SUBSCRIBE)
        assert raised.value.sqlstate == "25P01"
        assert "DECLARE CURSOR can only be used in transaction blocks" in str(raised.value)


def test_unsupported_statement_is_a_syntax_error_that_names_it(mz: MaterializeDouble) -> None:
    with psycopg.connect(mz.dsn, autocommit=True) as conn:
        with pytest.raises(errors.SyntaxError) as raised:
            conn.execute("INSERT INTO t VALUES (1)")
        assert raised.value.sqlstate == "42601"
        assert "INSERT INTO t VALUES (1)" in str(raised.value)


# -- SUBSCRIBE output -------------------------------------------------------------------------


def test_snapshot_opens_with_progress_at_as_of_and_keeps_multiplicity(
    mz: MaterializeDouble,
) -> None:
    mz.write([(ANN, 2), (BOB, 1)])
    mz.insert(CY)
    mz.delete(CY)  # count 0 at the AS OF: left out
    as_of = mz.frontier - 1
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn)
        cur = conn.execute("FETCH ALL c WITH (timeout = '0s')")
        assert [(d.name, d.type_code) for d in cur.description or ()] == [
            ("mz_timestamp", 1700),
            ("mz_progressed", 16),
            ("mz_diff", 20),
            ("order_id", 20),
            ("customer", 25),
            ("total", 1700),
        ]
        assert cur.fetchall() == [
            progress(as_of),
            data(as_of, 2, ANN),
            data(as_of, 1, BOB),
            progress(as_of + 1),
        ]
    assert mz.rows_at() == {ANN: 2, BOB: 1}


async def test_live_insert_update_delete_wake_a_waiting_fetch(mz: MaterializeDouble) -> None:
    mz.insert(ANN)
    async with await psycopg.AsyncConnection.connect(mz.dsn, autocommit=True) as conn:
        await conn.execute("BEGIN")
        await conn.execute(f"{SUBSCRIBE} WITH (PROGRESS)")
        await (await conn.execute("FETCH ALL c WITH (timeout = '0s')")).fetchall()

        async def changes(write: Any) -> list[Any]:
            waiting = asyncio.create_task(conn.execute("FETCH ALL c"))
            await asyncio.to_thread(mz.wait_for_statement, r"^FETCH ALL c$")
            await asyncio.sleep(0.05)
            assert not waiting.done()
            started = time.monotonic()
            write()
            rows = await (await waiting).fetchall()
            assert time.monotonic() - started < 1.0
            return rows

        ann2 = (1, "ann", "12.00")
        t1 = mz.frontier
        assert await changes(lambda: mz.update(ANN, ann2)) == [
            data(t1, -1, ANN),
            data(t1, 1, ann2),
            progress(t1 + 1),
        ]
        assert await changes(lambda: mz.insert(BOB)) == [data(t1 + 1, 1, BOB), progress(t1 + 2)]
        assert await changes(lambda: mz.delete(ann2)) == [data(t1 + 2, -1, ann2), progress(t1 + 3)]
        assert await changes(lambda: mz.advance(t1 + 1000)) == [progress(t1 + 1000)]


def test_progress_only_advance(mz: MaterializeDouble) -> None:
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn)
        assert fetch(conn) == [progress(T0 - 1), progress(T0)]
        assert mz.advance(T0 + 5000) == T0 + 5000 == mz.frontier
        assert fetch(conn) == [progress(T0 + 5000)]
        assert mz.advance() >= time.time_ns() // 1_000_000 - 1000  # default: now
        assert fetch(conn) == [progress(mz.frontier)]
        assert fetch(conn) == []


def test_mz_now_is_at_or_after_every_write_and_the_frontier_can_follow_the_clock(
    mz: MaterializeDouble,
) -> None:
    def now(conn: psycopg.Connection) -> tuple[Any, int]:
        cursor = conn.execute("SELECT mz_now()")
        assert cursor.description is not None
        value = cursor.fetchone()
        assert value is not None
        return cursor.description[0].type_code, int(value[0])

    with psycopg.connect(mz.dsn, autocommit=True) as conn:
        assert now(conn) == (16552, T0 - 1)  # mz_timestamp: the last closed timestamp
        t = mz.insert(ANN, at=T0 + 10, close=False)  # written, not yet closed
        assert now(conn) == (16552, t)
        with mz.ticking(every=0.01):
            wait = time.monotonic() + 5
            while mz.frontier <= t and time.monotonic() < wait:
                time.sleep(0.01)
        assert mz.frontier > t and now(conn)[1] == mz.frontier - 1


def test_select_by_key_reads_the_relation_as_of_the_last_closed_timestamp(
    mz: MaterializeDouble,
) -> None:
    def read(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return (row[0], row[1], Decimal(row[2]))

    t = mz.insert(ANN, BOB)
    mz.write([(ANN, 1)])  # two copies of ann now
    mz.insert(CY, close=False)  # at a timestamp not closed yet: not read
    with psycopg.connect(mz.dsn, autocommit=True) as conn:
        by_key = f'SELECT * FROM "{VIEW}" WHERE "order_id" = %s'
        assert conn.execute(by_key, ["1"]).fetchall() == [read(ANN), read(ANN)]
        assert conn.execute(by_key, [" 2"]).fetchall() == [read(BOB)]  # compared as bigint
        assert conn.execute(by_key, ["3"]).fetchall() == []
        as_of = f"SELECT * FROM {VIEW} AS OF {t} WHERE order_id = 1"
        assert conn.execute(as_of).fetchall() == [read(ANN)]
        query = f"SELECT * FROM (SELECT * FROM {VIEW}) AS v WHERE customer = 'bob' AND total = 7"
        assert conn.execute(query).fetchall() == [read(BOB)]
        cursor = conn.execute(f"SELECT * FROM {VIEW}")
        assert [d.name for d in cursor.description or ()] == ["order_id", "customer", "total"]
        with pytest.raises(errors.InvalidTextRepresentation, match="type bigint: invalid digit"):
            conn.execute(by_key, ["x"])
        with pytest.raises(errors.InternalError, match='column "nope" does not exist'):
            conn.execute(f"SELECT * FROM {VIEW} WHERE nope = 1")
        with pytest.raises(errors.InternalError, match="unknown catalog item 'other'"):
            conn.execute("SELECT * FROM other")


def test_rows_of_an_open_timestamp_come_before_its_progress(mz: MaterializeDouble) -> None:
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn)
        fetch(conn)
        t = mz.insert(ANN, close=False)
        assert (t, mz.frontier) == (T0, T0)
        assert fetch(conn) == [data(t, 1, ANN)]
        mz.insert(BOB, at=t)
        assert fetch(conn) == [data(t, 1, BOB), progress(t + 1)]


def test_snapshot_false_as_of_is_exclusive(mz: MaterializeDouble) -> None:
    t = mz.insert(ANN)
    t1 = mz.insert(BOB)
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn, f"WITH (PROGRESS, SNAPSHOT = false) AS OF {t}")
        assert fetch(conn) == [progress(t), data(t1, 1, BOB), progress(t1 + 1)]
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn, f"WITH (PROGRESS) AS OF {t}")  # a snapshot at t, then after t
        assert fetch(conn) == [progress(t), data(t, 1, ANN), data(t1, 1, BOB), progress(t1 + 1)]


@pytest.mark.parametrize("wording", ["old", "new"])
def test_an_as_of_below_since_is_refused_at_the_first_fetch(
    mz: MaterializeDouble, wording: Literal["old", "new"]
) -> None:
    mz.insert(ANN)
    mz.insert(BOB)
    since = mz.frontier - 1
    mz.compact(since, wording=wording)
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn, f"WITH (PROGRESS, SNAPSHOT = false) AS OF {since - 1}")  # accepted
        with pytest.raises(psycopg.DatabaseError) as raised:
            fetch(conn)
        if wording == "old":
            assert raised.value.sqlstate == "XX000"
            assert raised.value.diag.message_primary == (
                f"Timestamp ({since - 1}) is not valid for all inputs: "
                f"[Antichain {{ elements: [{since}] }}]"
            )
        else:
            assert raised.value.sqlstate == "22000"
            assert raised.value.diag.message_primary == (
                "could not find a valid timestamp for the query"
            )
            assert (raised.value.diag.message_detail or "").startswith("Constraints:")
        conn.rollback()
        subscribe(conn)  # no AS OF: never refused
        assert fetch(conn)[:3] == [progress(since), data(since, 1, ANN), data(since, 1, BOB)]
        conn.rollback()
        subscribe(conn, f"WITH (PROGRESS) AS OF AT LEAST {since - 5}")
        assert fetch(conn)[0] == progress(since)


def test_a_dataflow_error_poisons_the_subscribe_until_the_end(mz: MaterializeDouble) -> None:
    mz.insert(ANN)
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn)
        assert fetch(conn) == [progress(T0), data(T0, 1, ANN), progress(T0 + 1)]
        t = mz.write_error("Evaluation error: division by zero")
        mz.insert(BOB)  # later rows do not come either: the SUBSCRIBE only repeats the error
        with pytest.raises(errors.InternalError_) as raised:
            fetch(conn)
        assert raised.value.sqlstate == "XX000"
        assert raised.value.diag.message_primary == "Evaluation error: division by zero"
        conn.rollback()
        subscribe(conn, f"WITH (PROGRESS, SNAPSHOT = false) AS OF {t - 1}")  # a resume
        assert fetch(conn) == [progress(t - 1)]  # sent when the SUBSCRIBE starts
        with pytest.raises(errors.InternalError_):
            fetch(conn)  # then the error, replayed
        conn.rollback()
        mz.retract_error("Evaluation error: division by zero")
        subscribe(conn)  # a new snapshot, after the fix: clean
        assert [row[3] for row in fetch(conn) if not row[1]] == [1, 2]


@pytest.mark.parametrize("what", ["relation", "cluster"])
def test_dropping_an_input_ends_running_subscribes(mz: MaterializeDouble, what: str) -> None:
    with psycopg.connect(mz.dsn) as conn:
        conn.execute("SET CLUSTER = serving")
        subscribe(conn)
        fetch(conn)
        if what == "relation":
            mz.drop_relation()
            dependency = f'relation "materialize.public.{VIEW}"'
        else:
            mz.drop_cluster("serving")
            dependency = 'cluster "serving"'
        with pytest.raises(errors.InternalError_) as raised:
            fetch(conn)
        assert raised.value.diag.message_primary == (
            f"subscribe has been terminated because underlying {dependency} was dropped"
        )
        conn.rollback()
        conn.execute("BEGIN")
        if what == "relation":
            with pytest.raises(errors.InternalError_, match="unknown catalog item"):
                conn.execute(SUBSCRIBE)
        else:
            conn.execute(SUBSCRIBE)
            with pytest.raises(errors.InternalError_, match="unknown cluster 'serving'"):
                fetch(conn)


def test_envelope_upsert(mz: MaterializeDouble) -> None:
    mz.insert(ANN, BOB)
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn, "ENVELOPE UPSERT (KEY (order_id)) WITH (PROGRESS)")
        cur = conn.execute("FETCH ALL c WITH (timeout = '0s')")
        columns = [d.name for d in cur.description or ()]
        assert columns == [
            "mz_timestamp",
            "mz_progressed",
            "mz_state",
            "order_id",
            "customer",
            "total",
        ]
        assert cur.fetchall() == [
            progress(T0),
            (Decimal(T0), False, "upsert", 1, "ann", Decimal("10.50")),
            (Decimal(T0), False, "upsert", 2, "bob", Decimal("7.00")),
            progress(T0 + 1),
        ]
        t1 = mz.update(ANN, (1, "ann", "9.00"))
        t2 = mz.delete(BOB)
        t3 = mz.insert((4, "dee", "4.00"), CY, (3, "cy", "3.00"))  # two live rows for key 3
        assert fetch(conn) == [
            (Decimal(t1), False, "upsert", 1, "ann", Decimal("9.00")),
            progress(t1 + 1),
            (Decimal(t2), False, "delete", 2, None, None),
            progress(t2 + 1),
            (Decimal(t3), False, "key_violation", 3, None, None),
            (Decimal(t3), False, "upsert", 4, "dee", Decimal("4.00")),
            progress(t3 + 1),
        ]
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn, 'ENVELOPE UPSERT (KEY ("customer", order_id))')  # no PROGRESS
        cur = conn.execute("FETCH ALL c WITH (timeout = '0s')")
        assert [d.name for d in cur.description or ()][1:4] == ["mz_state", "customer", "order_id"]
        assert cur.fetchall()[0] == (Decimal(t3), "upsert", "ann", 1, Decimal("9.00"))


@pytest.mark.parametrize(
    "target",
    [
        VIEW,
        f"TO {VIEW}",
        f"public.{VIEW}",
        f"materialize.public.{VIEW}",
        f'"{VIEW}"',
        f"(SELECT order_id, total FROM {VIEW} WHERE total > 0)",
    ],
)
def test_relation_forms(mz: MaterializeDouble, target: str) -> None:
    mz.insert(ANN)
    with psycopg.connect(mz.dsn) as conn:
        conn.execute("BEGIN")
        conn.execute(f"DECLARE c CURSOR FOR SUBSCRIBE {target} WITH (PROGRESS)")
        assert fetch(conn)[1] == data(T0, 1, ANN)


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("nope", "unknown catalog item 'nope'"),
        (f"public.{VIEW}_x", f"unknown catalog item 'public.{VIEW}_x'"),
        (f"other.{VIEW}", "unknown schema 'other'"),
        (f"db.public.{VIEW}", "unknown database 'db'"),
        ("(SELECT * FROM nope)", "unknown catalog item 'nope'"),
    ],
)
def test_unknown_relation_fails_at_declare(mz: MaterializeDouble, target: str, name: str) -> None:
    with psycopg.connect(mz.dsn) as conn:
        conn.execute("BEGIN")
        with pytest.raises(errors.InternalError_) as raised:
            conn.execute(f"DECLARE c CURSOR FOR SUBSCRIBE {target}")
        assert raised.value.sqlstate == "XX000"  # a PlanError, as Materialize sends it
        assert raised.value.diag.message_primary == name


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_show_columns_lists_name_nullable_type_comment_in_column_order(protocol: str) -> None:
    columns = (("order_id", "int8"), ("paid", "bool"), ("total", "numeric"), ("at", "timestamptz"))
    with MaterializeDouble(VIEW, columns) as mz, psycopg.connect(mz.dsn) as conn:
        statement = f"SHOW COLUMNS FROM materialize.public.{VIEW}"
        cursor: psycopg.Cursor[Any] = (
            psycopg.ClientCursor(conn) if protocol == "simple" else conn.cursor()
        )
        cursor.execute(statement)
        assert [d.name for d in cursor.description or ()] == ["name", "nullable", "type", "comment"]
        assert cursor.fetchall() == [
            ("order_id", True, "bigint", ""),
            ("paid", True, "boolean", ""),
            ("total", True, "numeric", ""),
            ("at", True, "timestamp with time zone", ""),
        ]


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("nope", "unknown catalog item 'nope'"),
        (f"other.{VIEW}", "unknown schema 'other'"),
        (f"db.public.{VIEW}", "unknown database 'db'"),
    ],
)
def test_show_columns_of_an_unknown_relation_is_a_catalog_error(
    mz: MaterializeDouble, target: str, name: str
) -> None:
    with psycopg.connect(mz.dsn, autocommit=True) as conn:
        with pytest.raises(errors.InternalError_) as raised:
            conn.execute(f"SHOW COLUMNS FROM {target}")
        assert raised.value.sqlstate == "XX000"
        assert raised.value.diag.message_primary == name


def test_subscribe_options(mz: MaterializeDouble) -> None:
    mz.insert(ANN)
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn, "WITH (progress = FALSE)")
        cur = conn.execute("FETCH ALL c WITH (timeout = '0s')")
        assert [d.name for d in cur.description or ()][:2] == ["mz_timestamp", "mz_diff"]
        assert cur.fetchall() == [(Decimal(T0), 1, *ANN[:2], Decimal(ANN[2]))]
        conn.rollback()
        subscribe(conn, "WITH (PROGRESS true, snapshot false)")
        # No snapshot at the AS OF (T0), and T0 + 1 was already closed when it began.
        assert fetch(conn) == [progress(T0), progress(T0 + 1)]
        conn.rollback()
        with pytest.raises(errors.SyntaxError, match="PROGRESS or SNAPSHOT"):
            subscribe(conn, "WITH (FANCY)")


# -- transactions ------------------------------------------------------------------------------


def test_a_failed_transaction_refuses_statements_until_rollback(mz: MaterializeDouble) -> None:
    with psycopg.connect(mz.dsn) as conn:  # psycopg opens the transaction with BEGIN
        conn.execute("SELECT 1")
        with pytest.raises(errors.SyntaxError):
            conn.execute("SELEKT 1")
        for statement in ("SELECT 1", "SET CLUSTER = serving", SUBSCRIBE):
            with pytest.raises(errors.InFailedSqlTransaction) as raised:
                conn.execute(statement)
            assert raised.value.sqlstate == "25P02"
            assert "current transaction is aborted, commands ignored until end of" in str(
                raised.value
            )
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        status: TransactionStatus = conn.info.transaction_status
        assert status == TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.rollback()
        subscribe(conn)
        with pytest.raises(errors.InvalidTransactionState):  # one SUBSCRIBE per transaction
            conn.execute(SUBSCRIBE.replace(" c ", " d "))
        conn.rollback()
        with pytest.raises(errors.InvalidCursorName):  # the cursor ended with the transaction
            fetch(conn)


# -- extended protocol -------------------------------------------------------------------------


def test_extended_protocol_runs_each_fetch_once(mz: MaterializeDouble) -> None:
    mz.insert(ANN, BOB, CY)
    expected = [progress(T0), data(T0, 1, ANN), data(T0, 1, BOB), data(T0, 1, CY), progress(T0 + 1)]
    with psycopg.connect(mz.dsn, prepare_threshold=0) as conn:  # prepare every statement
        conn.execute("BEGIN")
        conn.execute(f"{SUBSCRIBE} WITH (PROGRESS) AS OF %s", [T0])  # a bound parameter
        rows = [row for _ in range(7) for row in fetch(conn, "1")]
        assert rows == expected
        assert conn.execute("FETCH 2 c WITH (timeout = %s)", ["50ms"]).fetchall() == []
    fetches = [r for r in mz.received if r.sql.startswith("FETCH")]
    assert len(fetches) == 8 and {r.protocol for r in fetches} == {"extended"}


def test_extended_protocol_errors_skip_to_sync(mz: MaterializeDouble) -> None:
    with psycopg.connect(mz.dsn) as conn:
        with pytest.raises(errors.SyntaxError):  # at Parse: Bind, Describe, Execute skipped
            conn.execute("SELEKT %s", [1])
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        conn.execute("BEGIN")
        with pytest.raises(errors.InvalidTextRepresentation):  # at Describe: Execute skipped
            conn.execute(f"{SUBSCRIBE} AS OF %s", ["soon"])
        assert not any(s.startswith("DECLARE") for s in mz.statements)
        conn.rollback()
        assert conn.execute("SELECT 1", prepare=True).fetchone() == (1,)


def test_psycopg_prepared_fetches_and_deallocate_after_rollback(mz: MaterializeDouble) -> None:
    with psycopg.connect(mz.dsn, autocommit=True) as conn:  # as the adapter connects
        conn.execute("BEGIN")
        conn.execute(f"{SUBSCRIBE} WITH (PROGRESS)")
        for _ in range(8):  # psycopg prepares a query from its 6th execution
            conn.execute("FETCH 10 c WITH (timeout = '0s')").fetchall()
        conn.execute("ROLLBACK")
        conn.execute("SELECT 1")
    assert "DEALLOCATE ALL" in mz.statements
    protocols = [r.protocol for r in mz.received if r.sql.startswith("FETCH")]
    assert protocols[:5] == ["simple"] * 5 and protocols[-1] == "extended"


def test_server_side_cursor(mz: MaterializeDouble) -> None:
    mz.insert(ANN, BOB)
    with psycopg.connect(mz.dsn) as conn, conn.cursor("c") as cur:
        cur.execute(f"SUBSCRIBE {VIEW} WITH (PROGRESS)")
        assert cur.fetchmany(2) == [progress(T0), data(T0, 1, ANN)]
        assert next(d.name for d in cur.description or ()) == "mz_timestamp"


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["FETCH", "DECLARE"])
def test_fail_next(mz: MaterializeDouble, keyword: str) -> None:
    mz.fail_next(keyword, "57014", "canceling statement due to statement timeout")
    with psycopg.connect(mz.dsn) as conn:
        with pytest.raises(errors.QueryCanceled) as raised:
            subscribe(conn)
            fetch(conn)
        assert raised.value.sqlstate == "57014"
        assert str(raised.value) == "canceling statement due to statement timeout"
        conn.rollback()
        subscribe(conn)  # only the next one fails
        assert fetch(conn) == [progress(T0 - 1), progress(T0)]


async def test_drop_connections_cuts_a_waiting_fetch(mz: MaterializeDouble) -> None:
    waiting = await psycopg.AsyncConnection.connect(mz.dsn, autocommit=True)
    idle = await psycopg.AsyncConnection.connect(mz.dsn, autocommit=True)
    try:
        await waiting.execute("BEGIN")
        await waiting.execute(f"{SUBSCRIBE} WITH (PROGRESS)")
        await waiting.execute("FETCH ALL c")  # the first progress rows
        fetching = asyncio.create_task(waiting.execute("FETCH ALL c"))
        await asyncio.to_thread(mz.wait_for_statement, r"^FETCH ALL c$")
        assert mz.connections == 2
        assert mz.drop_connections() == 2
        with pytest.raises(psycopg.OperationalError, match="closed the connection unexpectedly"):
            await fetching
        with pytest.raises(psycopg.OperationalError):
            await idle.execute("SELECT 1")
    finally:
        await waiting.close()
        await idle.close()
    mz.wait_for_connections(0)
    async with await psycopg.AsyncConnection.connect(mz.dsn) as conn:  # still serving
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


def test_drop_after_rows_cuts_a_fetch_mid_timestamp(mz: MaterializeDouble) -> None:
    mz.insert(ANN, BOB, CY)
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn)
        assert fetch(conn, "2") == [progress(T0), data(T0, 1, ANN)]
        sent = mz.rows_sent
        mz.drop_after_rows(2)
        with pytest.raises(psycopg.OperationalError):
            fetch(conn)
        assert mz.rows_sent == sent + 2
        assert conn.closed
    mz.wait_for_connections(0)


def test_fetch_timeout_returns_what_there_is_promptly(mz: MaterializeDouble) -> None:
    mz.insert(ANN, BOB)
    with psycopg.connect(mz.dsn) as conn:
        subscribe(conn)
        assert fetch(conn, "1") == [progress(T0)]  # at most n
        assert len(fetch(conn, "10", "1s")) == 3  # what is there, without waiting
        for timeout, low, high in [("0s", 0.0, 0.2), ("250ms", 0.2, 1.5), ("0.25s", 0.2, 1.5)]:
            started = time.monotonic()
            assert fetch(conn, "ALL", timeout) == []
            assert low <= time.monotonic() - started < high


async def test_two_subscribers_get_the_same_updates(mz: MaterializeDouble) -> None:
    mz.insert(ANN)
    conns = [await psycopg.AsyncConnection.connect(mz.dsn, autocommit=True) for _ in range(2)]
    try:
        for conn in conns:
            await conn.execute("BEGIN")
            await conn.execute(f"{SUBSCRIBE} WITH (PROGRESS)")
            await conn.execute("FETCH ALL c WITH (timeout = '0s')")

        async def next_rows(conn: psycopg.AsyncConnection) -> list[Any]:
            return await (await conn.execute("FETCH ALL c WITH (timeout = '5s')")).fetchall()

        fetching = asyncio.gather(*(next_rows(conn) for conn in conns))
        await asyncio.sleep(0.1)
        t = mz.update(ANN, (1, "ann", "0.50"))
        first, second = await fetching
        assert (
            first
            == second
            == [
                data(t, -1, ANN),
                data(t, 1, (1, "ann", "0.50")),
                progress(t + 1),
            ]
        )
    finally:
        for conn in conns:
            await conn.close()


async def test_cancelling_a_task_cancels_its_fetch(mz: MaterializeDouble) -> None:
    async with await psycopg.AsyncConnection.connect(mz.dsn, autocommit=True) as conn:
        await conn.execute("BEGIN")
        await conn.execute(f"{SUBSCRIBE} WITH (PROGRESS)")
        await conn.execute("FETCH ALL c")  # the first progress rows
        fetching = asyncio.create_task(conn.execute("FETCH ALL c"))
        await asyncio.to_thread(mz.wait_for_statement, r"^FETCH ALL c$")
        started = time.monotonic()
        fetching.cancel()  # psycopg sends a CancelRequest and waits for the FETCH to end
        with pytest.raises(asyncio.CancelledError):
            await fetching
        assert time.monotonic() - started < 2.0
        assert conn.info.transaction_status == TransactionStatus.INERROR
        await conn.execute("ROLLBACK")
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


def test_stop_ends_a_waiting_fetch(mz: MaterializeDouble) -> None:
    outcome: list[BaseException] = []
    conn = psycopg.connect(mz.dsn)
    subscribe(conn)
    fetch(conn)

    def wait() -> None:
        try:
            conn.execute("FETCH ALL c")
        except psycopg.Error as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    mz.wait_for_statement(r"^FETCH ALL c$")
    started = time.monotonic()
    mz.stop()
    assert time.monotonic() - started < 2.0
    thread.join(5)
    conn.close()
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError)
