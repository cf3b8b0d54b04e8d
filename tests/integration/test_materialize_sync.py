"""Materialize → OpenSearch through the real worker, against the pgwire double and osmem.

The double (`tests/support/materialize_double.py`) speaks the PostgreSQL wire
protocol and replays a scripted collection the way SUBSCRIBE documents it; the
adapter under test cannot tell it from Materialize. Each test scripts the view's
history, runs the worker, and reads the real index.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Literal

import pytest

from syncer.engine.interfaces import ResumeState
from syncer.models import DeadLetter, Subscription
from syncer.operations import control
from syncer.sources.materialize.source import MaterializeSource, MaterializeSourceConfig
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for
from tests.support.materialize_double import MaterializeDouble

pytestmark = pytest.mark.usefixtures("fast_retries")

VIEW = "orders_search_source_mv"
COLUMNS = (("order_id", "int8"), ("customer", "text"), ("total", "numeric"))


@pytest.fixture
def mz() -> Iterator[MaterializeDouble]:
    with MaterializeDouble(VIEW, COLUMNS) as double:
        yield double


@pytest.fixture
def subscribe(make_subscription, mz, opensearch_url):
    def make(name: str = "orders", **fields) -> Subscription:
        fields.setdefault("source_kind", "materialize")
        fields.setdefault("source_dsn", mz.dsn)
        fields.setdefault("key_columns", ["order_id"])
        fields.setdefault("batch_max_age_ms", 200)
        sub: Subscription = make_subscription(name, fields.pop("relation", VIEW), **fields)
        return sub

    return make


def versions(search, index: str) -> dict[str, int]:
    search.indices.refresh(index=index)
    hits = search.search(index=index, body={"size": 1000, "version": True})["hits"]["hits"]
    return {hit["_id"]: hit["_version"] for hit in hits}


def docs_are(search, index: str, expected: dict[str, dict[str, object]]) -> bool:
    return index_docs(search, index) == expected


def doc(order_id: int, customer: str, total: str) -> dict[str, object]:
    return {"order_id": order_id, "customer": customer, "total": total}


def test_inserts_updates_deletes_stream_into_the_index_versioned_by_mz_timestamp(
    mz, subscribe, search
):
    mz.insert((1, "ann", "10.50"), (2, "bob", "7.00"))
    sub = subscribe(source_cluster="serving")
    with WorkerThread([sub]):
        wait_for(lambda: len(index_docs(search, "orders")) == 2, what="the snapshot")
        t_update = mz.update((1, "ann", "10.50"), (1, "ann", "12.00"))
        t_insert = mz.insert((3, "cy", "1.25"))
        t_delete = mz.delete((2, "bob", "7.00"))
        expected = {"1": doc(1, "ann", "12.00"), "3": doc(3, "cy", "1.25")}
        wait_for(lambda: docs_are(search, "orders", expected), what="the changes")
        assert versions(search, "orders") == {"1": t_update, "3": t_insert}
        wait_for(lambda: (status_of("orders").checkpoint or 0) > t_delete, what="checkpoint")
        assert status_of("orders").status == Subscription.Status.CAUGHT_UP
    assert any(re.fullmatch(r"SET CLUSTER = \"serving\"", s) for s in mz.statements)
    declare = next(s for s in mz.statements if s.startswith("DECLARE"))
    assert "WITH (PROGRESS)" in declare and "AS OF" not in declare


def test_multiplicity_above_one_keeps_the_document_until_every_copy_is_gone(mz, subscribe, search):
    sub = subscribe()
    with WorkerThread([sub]):
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
        mz.write([((5, "dee", "3.00"), 2)])
        wait_for(lambda: "5" in index_docs(search, "orders"), what="the doubled row")
        t_one = mz.write([((5, "dee", "3.00"), -1)])
        wait_for(lambda: (status_of("orders").checkpoint or 0) > t_one, what="checkpoint")
        assert "5" in index_docs(search, "orders"), "one copy is still in the view"
        mz.write([((5, "dee", "3.00"), -1)])
        wait_for(lambda: "5" not in index_docs(search, "orders"), what="the last copy's delete")


def test_a_row_counted_twice_survives_a_restart_between_its_retractions(mz, subscribe, search):
    sub = subscribe()
    with WorkerThread([sub]):
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
        t = mz.write([((5, "dee", "3.00"), 2)])
        wait_for(lambda: (status_of("orders").checkpoint or 0) > t, what="checkpoint")
    assert status_of("orders").source_state == {"multiset": [[[5], [[doc(5, "dee", "3.00"), 2]]]]}
    t_one = mz.write([((5, "dee", "3.00"), -1)])  # while the worker is down
    with WorkerThread([sub]):
        wait_for(lambda: (status_of("orders").checkpoint or 0) > t_one, what="checkpoint")
        assert "5" in index_docs(search, "orders"), "one copy is still in the view"
        mz.write([((5, "dee", "3.00"), -1)])
        wait_for(lambda: "5" not in index_docs(search, "orders"), what="the last copy's delete")


def test_writes_during_a_large_snapshot_are_neither_lost_nor_overwritten(mz, subscribe, search):
    rows = [(i, f"customer {i}", f"{i}.00") for i in range(3000)]
    mz.insert(*rows)
    sub = subscribe(batch_max_size=250)
    with WorkerThread([sub]):
        mz.wait_for_rows_sent(500)  # the snapshot is being read, a FETCH at a time
        mz.update(rows[10], (10, "changed", "10.10"))
        mz.delete(rows[20])
        mz.insert((5000, "new", "1.00"))
        expected = {str(r[0]): doc(*r) for r in rows}
        expected["10"] = doc(10, "changed", "10.10")
        del expected["20"]
        expected["5000"] = doc(5000, "new", "1.00")
        wait_for(lambda: docs_are(search, "orders", expected), what="the view", timeout=60)
    live = {row for row, count in mz.rows_at().items() if count > 0}
    assert {str(r[0]) for r in live} == set(expected)


def test_progress_only_timestamps_move_the_checkpoint_and_staleness(mz, subscribe, search):
    sub = subscribe()
    with WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("orders").checkpoint is not None, what="a first checkpoint")
        before = status_of("orders").checkpoint
        frontier = mz.advance(mz.frontier + 5_000)
        wait_for(lambda: status_of("orders").checkpoint == frontier, what="progress checkpoint")
        assert frontier > before
        pipeline = worker.runner.pipelines["orders"]
        staleness = pipeline.staleness(frontier / 1000 + 2.0)
        assert staleness == pytest.approx(2.0, abs=0.01)
        assert pipeline.stats.transactions == 0  # progress is not a change
    assert index_docs(search, "orders") == {}


def test_a_key_with_two_live_rows_is_a_data_error_and_the_sync_goes_on(mz, subscribe, search):
    sub = subscribe()
    with WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
        mz.insert((7, "eve", "1.00"), (7, "eve", "2.00"), (8, "fay", "3.00"))
        wait_for(lambda: "8" in index_docs(search, "orders"), what="the good row")
        current = wait_for(
            lambda: "not unique" in status_of("orders").last_error and status_of("orders"),
            what="the data error in the status",
        )
        assert "key 7 of orders_search_source_mv has 2 distinct rows" in current.last_error
        wait_for(lambda: "not unique" in status_of("orders").status_message, what="warning")
        assert worker.runner.pipelines["orders"].stats.data_errors == 1
        mz.insert((9, "gus", "4.00"))
        wait_for(lambda: "9" in index_docs(search, "orders"), what="later rows still flow")
        # Once one of the two rows goes, the key is clean and the warning with it.
        mz.delete((7, "eve", "2.00"))
        wait_for(
            lambda: index_docs(search, "orders").get("7") == doc(7, "eve", "1.00"),
            what="the remaining row",
        )


def test_snapshot_index_writes_existing_rows_and_discard_starts_from_now(mz, subscribe, search):
    t0 = mz.insert((1, "ann", "1.00"), (2, "bob", "2.00"))
    indexed = subscribe("indexed")
    discarded = subscribe("discarded", snapshot_mode="discard")
    with WorkerThread([indexed, discarded]):
        wait_for(lambda: len(index_docs(search, "indexed")) == 2, what="the snapshot")
        wait_for(lambda: status_of("discarded").checkpoint is not None, what="discard started")
        mz.insert((3, "cy", "3.00"))
        wait_for(lambda: set(index_docs(search, "discarded")) == {"3"}, what="only new rows")
        wait_for(lambda: len(index_docs(search, "indexed")) == 3, what="the new row")
    assert versions(search, "indexed")["1"] == t0  # the snapshot's time is the AS OF
    assert status_of("indexed").snapshot_completed_at is not None
    declares = [s for s in mz.statements if s.startswith("DECLARE")]
    assert sum("SNAPSHOT = false" in s for s in declares) == 1


def test_restart_resumes_as_of_the_checkpoint_without_loss_or_resnapshot(mz, subscribe, search):
    mz.insert((1, "ann", "1.00"), (2, "bob", "2.00"))
    sub = subscribe()
    with WorkerThread([sub]):
        wait_for(lambda: len(index_docs(search, "orders")) == 2, what="the snapshot")
        mz.insert((3, "cy", "3.00"))
        wait_for(lambda: len(index_docs(search, "orders")) == 3)
        wait_for(lambda: status_of("orders").checkpoint == mz.frontier, what="the checkpoint")
    checkpoint = mz.frontier
    # While the worker is down: an update stamped exactly at the checkpoint (which a
    # resume AS OF the checkpoint itself would miss), then more.
    t_at = mz.update((1, "ann", "1.00"), (1, "ann", "1.50"), at=checkpoint)
    t_after = mz.delete((2, "bob", "2.00"))
    mz.insert((4, "dan", "4.00"))
    sent_before = mz.rows_sent
    with WorkerThread([sub]) as worker:
        expected = {
            "1": doc(1, "ann", "1.50"),
            "3": doc(3, "cy", "3.00"),
            "4": doc(4, "dan", "4.00"),
        }
        wait_for(lambda: docs_are(search, "orders", expected), what="the missed changes")
        assert worker.runner.pipelines["orders"].stats.snapshot_rows == 0
    resume = [s for s in mz.statements if s.startswith("DECLARE")][-1]
    assert "SNAPSHOT = false" in resume and resume.endswith(f"AS OF {checkpoint - 1}")
    assert versions(search, "orders")["1"] == t_at
    assert t_after > t_at
    # Only the changes since the checkpoint (and progress) came back: no snapshot.
    assert mz.rows_sent - sent_before < 20


@pytest.mark.parametrize("wording", ["old", "new"])
def test_refused_resume_falls_back_to_a_snapshot_and_sweeps_rows_deleted_meanwhile(
    mz, subscribe, search, wording: Literal["old", "new"]
):
    mz.insert((1, "ann", "1.00"), (2, "bob", "2.00"), (3, "cy", "3.00"))
    sub = subscribe()
    with WorkerThread([sub]):
        wait_for(lambda: len(index_docs(search, "orders")) == 3, what="the snapshot")
    checkpoint = status_of("orders").checkpoint
    assert checkpoint is not None
    mz.delete((2, "bob", "2.00"))
    mz.update((3, "cy", "3.00"), (3, "cy", "3.30"))
    # History before now is gone: AS OF the checkpoint is refused, in either wording.
    mz.compact(mz.frontier, wording=wording)
    mz.advance()  # time goes on, as it does in Materialize
    with WorkerThread([sub]) as worker:
        expected = {"1": doc(1, "ann", "1.00"), "3": doc(3, "cy", "3.30")}
        wait_for(lambda: docs_are(search, "orders", expected), what="snapshot and sweep")
        stats = worker.runner.pipelines["orders"].stats
        wait_for(lambda: stats.swept == 1, what="the sweep")
        assert stats.resnapshots == 1
        error = status_of("orders").last_error
        assert f"could not resume {VIEW} at {checkpoint - 1}" in error
        refusal = {"old": "is not valid for all inputs", "new": "could not find a valid timestamp"}
        assert refusal[wording] in error and "RETAIN HISTORY" in error


def test_connection_dropped_mid_timestamp_does_not_flush_the_partial_timestamp(
    mz, subscribe, search
):
    sub = subscribe()
    with WorkerThread([sub]) as worker:
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
        sent = mz.rows_sent
        # Half of one timestamp: its progress has not come, so it is not complete.
        t = mz.insert((1, "ann", "1.00"), close=False)
        mz.wait_for_rows_sent(sent + 1)
        time.sleep(1.0)  # a worker that flushed partial timestamps would have by now
        assert index_docs(search, "orders") == {}
        assert mz.drop_connections() >= 1
        mz.insert((2, "bob", "2.00"), at=t)  # the rest of the timestamp, then progress
        wait_for(lambda: len(index_docs(search, "orders")) == 2, what="the whole timestamp")
        assert versions(search, "orders") == {"1": t, "2": t}
        stats = worker.runner.pipelines["orders"].stats
        # Counted once acknowledged, a moment after the bulk write the index shows.
        wait_for(lambda: stats.transactions >= 1, what="the timestamp acknowledged")
    assert sum(s.startswith("DECLARE") for s in mz.statements) == 2


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("57014", "canceling statement due to statement timeout"),
        ("57P01", "terminating connection due to administrator command"),
        ("XX000", "internal error: replica went away"),  # AdapterError::Internal
    ],
    ids=["statement-timeout", "admin-shutdown", "internal"],
)
def test_unavailability_reconnects_and_resumes(mz, subscribe, search, sqlstate, message):
    sub = subscribe()
    with WorkerThread([sub]):
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
        mz.fail_next("FETCH", sqlstate, message)
        # The FETCH waiting now returns empty within its 1 s timeout; the next one fails.
        seen: set[str] = set()

        def failure_reported() -> bool:
            row = status_of("orders")
            if message in row.last_error:
                seen.add(row.status)
            return Subscription.Status.RECONNECTING in seen

        wait_for(failure_reported, interval=0.01, what="the failure in the status")
        assert Subscription.Status.ERROR not in seen
        mz.insert((1, "ann", "1.00"))
        wait_for(lambda: "1" in index_docs(search, "orders"), what="the row after reconnecting")
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
    assert sum(s.startswith("DECLARE") for s in mz.statements) == 2


def test_envelope_upsert(mz, subscribe, search):
    mz.insert((1, "ann", "1.00"))
    sub = subscribe(source_envelope="upsert")
    with WorkerThread([sub]):
        wait_for(lambda: len(index_docs(search, "orders")) == 1, what="the snapshot")
        mz.update((1, "ann", "1.00"), (1, "ann", "9.00"))
        mz.insert((2, "bob", "2.00"))
        mz.delete((1, "ann", "9.00"))
        wait_for(lambda: docs_are(search, "orders", {"2": doc(2, "bob", "2.00")}))
    declare = next(s for s in mz.statements if s.startswith("DECLARE"))
    assert 'ENVELOPE UPSERT (KEY ("order_id"))' in declare


def test_a_rejected_document_is_dead_lettered_with_its_mz_timestamp(mz, subscribe, search):
    # Its own mappings, not an index made beforehand: the first snapshot of a Materialize
    # source sweeps, which an index searchsync did not create refuses.
    sub = subscribe(index_mappings={"properties": {"customer": {"type": "integer"}}})
    with WorkerThread([sub]):
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
        t = mz.insert((1, "ann", "1.00"), (2, "22", "2.00"))
        wait_for(lambda: DeadLetter.objects.filter(subscription=sub).exists(), what="a DLQ row")
        wait_for(lambda: "2" in index_docs(search, "orders"))
    entry = DeadLetter.objects.get(subscription=sub)
    assert (entry.doc_id, entry.version, entry.action) == ("1", t, "index")


def error_status(name: str = "orders") -> Subscription:
    """Wait for the `error` status (never `reconnecting` on the way) and return the row."""

    def current() -> Subscription | None:
        row = status_of(name)
        assert row.status != Subscription.Status.RECONNECTING, row.last_error
        return row if row.status == Subscription.Status.ERROR else None

    found: Subscription = wait_for(current, what="the error status")
    return found


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"source_cluster": "nope"}, "no cluster 'nope' (unknown cluster 'nope'); create the"),
        (
            {"relation": "no_such_view"},
            "no relation 'no_such_view' (unknown catalog item 'no_such_view'); create it",
        ),
        ({"relation": f"other.{VIEW}"}, "(unknown schema 'other'); fix the schema"),
        ({"relation": "SELECT * FROM nope"}, "(unknown catalog item 'nope')"),
        ({"key_columns": ["id"]}, "key column(s) id are not columns of"),
        ({"source_envelope": "upsert", "key_columns": ["id"]}, 'plan the SUBSCRIBE (column "id"'),
    ],
    ids=["cluster", "relation", "schema", "query", "key", "upsert-key"],
)
def test_misconfiguration_is_an_error_status_that_says_what_to_fix(
    mz, subscribe, search, fields, expected
):
    sub = subscribe(**fields)
    with WorkerThread([sub]):
        current = error_status()
    assert expected in current.last_error


@pytest.mark.parametrize(
    ("privilege", "expected"),
    [
        ("SELECT", f'permission denied for MATERIALIZED VIEW "materialize.public.{VIEW}"'),
        ("USAGE", 'permission denied for CLUSTER "quickstart"'),
    ],
)
def test_a_missing_privilege_is_an_error_that_says_what_to_grant(
    mz, subscribe, privilege, expected
):
    mz.revoke(privilege)
    with WorkerThread([subscribe()]):
        current = error_status()
    assert expected in current.last_error
    assert f"needs {privilege} privileges" in current.last_error
    assert "grant that privilege to the role of the source DSN" in current.last_error


def test_a_statement_that_does_not_plan_is_an_error_not_a_reconnect(mz, subscribe):
    # A PlanError (here an unknown column of a SELECT relation) comes as XX000, and again
    # on every retry until someone fixes the relation: queued for each retry the test may
    # see (fast backoff), so the error status cannot pass between two looks at it.
    for _ in range(30):
        mz.fail_next("DECLARE", "XX000", 'column "nope" does not exist')
    with WorkerThread([subscribe(relation=f"SELECT nope FROM {VIEW}")]):
        current = error_status()
    assert 'cannot plan the SUBSCRIBE (column "nope" does not exist)' in current.last_error


def test_a_wrong_password_is_an_error_status_not_endless_reconnects(subscribe):
    with MaterializeDouble(VIEW, COLUMNS, password="s3cret") as locked:
        dsn = locked.dsn.replace("materialize@", "materialize:wrong@")
        with WorkerThread([subscribe(source_dsn=dsn)]):
            current = error_status()
    assert "invalid password" in current.last_error and "check the source DSN" in current.last_error
    assert "wrong" not in current.last_error


def test_a_dataflow_error_is_an_error_status_and_a_resync_after_the_fix_recovers(
    mz, subscribe, search
):
    mz.insert((1, "ann", "1.00"))
    sub = subscribe()
    with WorkerThread([sub]):
        wait_for(lambda: "1" in index_docs(search, "orders"), what="the snapshot")
        mz.write_error("Evaluation error: division by zero")
        mz.insert((2, "bob", "2.00"))
        current = error_status()
        assert "Evaluation error: division by zero" in current.last_error
        assert "resync the subscription" in current.last_error
        # The operator fixes the row, then resyncs: nothing is lost.
        mz.retract_error("Evaluation error: division by zero")
        mz.insert((3, "cy", "3.00"))
        control.resync(sub)
        rows = [(1, "ann", "1.00"), (2, "bob", "2.00"), (3, "cy", "3.00")]
        expected = {str(row[0]): doc(*row) for row in rows}
        wait_for(lambda: docs_are(search, "orders", expected), what="the resync")
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)


@pytest.mark.parametrize("what", ["relation", "cluster"])
def test_an_input_dropped_while_subscribed_is_an_error_that_names_it(mz, subscribe, what):
    sub = subscribe(source_cluster="serving")
    with WorkerThread([sub]):
        wait_for(lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP)
        if what == "relation":
            mz.drop_relation()
            dependency, fix = f'relation "materialize.public.{VIEW}"', "source.relation"
        else:
            mz.drop_cluster("serving")
            dependency, fix = 'cluster "serving"', "source.cluster"
        # The retries that follow say "unknown ...": catch the first error on its way.
        seen: set[str] = set()

        def dropped_reported() -> bool:
            row = status_of("orders")
            assert row.status != Subscription.Status.RECONNECTING, row.last_error
            seen.add(row.last_error)
            return any("was dropped" in error for error in seen)

        wait_for(dropped_reported, interval=0.01, what="the dropped input in the status")
    error = next(error for error in seen if "was dropped" in error)
    assert f"underlying {dependency} was dropped" in error and f"fix {fix}" in error


def test_a_value_psycopg_cannot_load_is_indexed_as_materializes_text(subscribe, search):
    columns = (*COLUMNS, ("placed_at", "timestamptz"))
    # OpenSearch's date type cannot hold year 10000 either: such a field maps as keyword.
    mappings = {"properties": {"placed_at": {"type": "keyword"}}}
    with MaterializeDouble(VIEW, columns) as wide:
        wide.insert(
            (1, "ann", "1.00", "2024-05-01 12:30:00+00"),
            (2, "bob", "2.00", "10000-01-01 00:00:00+00"),  # past what datetime holds
        )
        with WorkerThread([subscribe(source_dsn=wide.dsn, index_mappings=mappings)]):
            wait_for(lambda: len(index_docs(search, "orders")) == 2, what="both rows")
            # The status follows the snapshot's checkpoint, a moment after the documents.
            wait_for(
                lambda: status_of("orders").status == Subscription.Status.CAUGHT_UP,
                what="caught up, not an error",
            )
    docs = index_docs(search, "orders")
    assert docs["1"]["placed_at"] == "2024-05-01T12:30:00+00:00"
    assert docs["2"]["placed_at"] == "10000-01-01 00:00:00+00"


def test_the_subscribe_session_outlives_materializes_idle_in_transaction_timeout():
    # Backpressure holds the reader between FETCHes; the double closes sessions idle in
    # a transaction after 0.2 s, as Materialize does after two minutes.
    with MaterializeDouble(VIEW, COLUMNS, idle_in_transaction_timeout=0.2) as mz:
        config = MaterializeSourceConfig("orders", mz.dsn, VIEW, ("order_id",))

        async def read_across_a_pause() -> list[int]:
            source = MaterializeSource(config)
            await source.open(ResumeState(None, snapshot_done=False, snapshot_mode="index"))
            try:
                await source.read(100)
                await asyncio.sleep(0.5)  # held back longer than the timeout
                mz.insert((1, "ann", "1.00"))
                transactions = await source.read(100)
                return [change.key[0] for tx in transactions for change in tx.changes]
            finally:
                await source.close()

        assert asyncio.run(read_across_a_pause()) == [1]
    received = [r for r in mz.received if r.protocol == "simple"]
    setting = next(i for i, r in enumerate(received) if "idle_in_transaction" in r.sql)
    begin = next(i for i, r in enumerate(received) if r.sql == "BEGIN")
    assert received[setting].sql == "SET idle_in_transaction_session_timeout = 0"
    assert setting < begin and received[setting].connection == received[begin].connection


def test_unreachable_materialize_is_reconnecting_not_error(subscribe):
    sub = subscribe(source_dsn="postgresql://materialize@127.0.0.1:1/materialize")
    with WorkerThread([sub]):
        current = wait_for(
            lambda: (
                status_of("orders").status == Subscription.Status.RECONNECTING
                and status_of("orders")
            ),
            what="the reconnecting status",
        )
    assert "connecting to Materialize" in current.last_error
