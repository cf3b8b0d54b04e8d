"""Verification of a Materialize subscription, against the pgwire double and a real
osmem-server: first the snapshot adapter alone (what it asks Materialize, what it reads
back, how long it waits for the changes), then whole verifications through `manage.py
verify` with the worker running, drift made behind the product's back."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from opensearchpy import OpenSearch

from syncer.engine.verify import Indexed
from syncer.errors import SyncError
from syncer.models import Subscription
from syncer.sources.materialize.source import MaterializeSourceConfig
from syncer.sources.materialize.verify import MaterializeSnapshot
from tests.support.harness import WorkerThread, index_docs, wait_for
from tests.support.materialize_double import MaterializeDouble
from tests.support.verifying import verify, versions

pytestmark = pytest.mark.usefixtures("fast_retries")

VIEW = "orders_search_source_mv"
COLUMNS = (("order_id", "int8"), ("customer", "text"), ("total", "numeric"))
ROWS = 300
T = TypeVar("T")


def row(i: int, customer: str | None = None) -> tuple[Any, ...]:
    return (i, customer or f"customer {i}", f"{i}.50")


def document(i: int) -> dict[str, Any]:
    return {"order_id": i, "customer": f"customer {i}", "total": f"{i}.50"}


@pytest.fixture
def mz() -> Iterator[MaterializeDouble]:
    with MaterializeDouble(VIEW, COLUMNS) as double:
        yield double


def snapshot_of(
    mz: MaterializeDouble, sample: int | None = None, **config: Any
) -> MaterializeSnapshot:
    config.setdefault("key_columns", ("order_id",))
    return MaterializeSnapshot(
        MaterializeSourceConfig(name="orders", dsn=mz.dsn, relation=VIEW, **config),
        sample,
        patience=10.0,
    )


def run(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(body())


async def all_rows(snapshot: MaterializeSnapshot, chunk: int) -> list[Any]:
    rows = []
    while found := await snapshot.rows(chunk):
        assert len(found) <= chunk
        rows += found
    return rows


def indexed(*ids: str) -> dict[str, Indexed]:
    return {i: Indexed(1, {}) for i in ids}


# -- the snapshot adapter ----------------------------------------------------------------


def test_the_snapshot_is_a_subscribe_at_one_timestamp_and_the_changes_a_second(
    mz: MaterializeDouble,
) -> None:
    mz.insert(*[row(i) for i in range(10)])
    mz.write([(row(10), 2)])  # counted twice: still one row, one document
    last_closed = mz.frontier - 1

    async def body() -> tuple[Any, ...]:
        snapshot = snapshot_of(mz, cluster="serving")
        await snapshot.open()
        try:
            at = snapshot.position
            rows = await all_rows(snapshot, 4)
            before = await snapshot.lookup([("3",), ("99",)])
            mz.update(row(3), row(3, "changed"))
            mz.delete(row(4))
            await snapshot.present(indexed("3"))  # reads what has come of the changes
            drained = mz.statements[-1]
            with mz.ticking():
                changed = set(await snapshot.changed())
            after = await snapshot.lookup([("3",)])
            present = await snapshot.present(indexed("1", "10", "77"))
            return at, snapshot.caught_up_at, rows, before, after, changed, present, drained
        finally:
            await snapshot.close()

    at, caught_up_at, rows, before, after, changed, present, drained = run(body)
    assert at == last_closed  # the double's choice, as Materialize's: the last closed
    assert caught_up_at == at + 1
    assert [key for key, _ in rows] == [(i,) for i in range(11)]
    assert rows[0][1] == {"order_id": 0, "customer": "customer 0", "total": row(0)[2]}
    assert [key for key, _ in before] == [(3,)]
    assert after[0][1]["customer"] == "customer 3", "a lookup reads the snapshot, not now"
    assert changed == {"3", "4"}
    assert present == {"1", "10"}
    assert drained == "FETCH 1000 \"searchsync_verify_changes\" WITH (timeout = '0s')"
    declares = [s for s in mz.statements if s.startswith("DECLARE")]
    assert declares[0] == (
        f'DECLARE "searchsync_verify" CURSOR FOR SUBSCRIBE "{VIEW}" WITH (PROGRESS)'
    )
    assert declares[1] == (
        f'DECLARE "searchsync_verify_changes" CURSOR FOR SUBSCRIBE "{VIEW}" '
        f"WITH (PROGRESS, SNAPSHOT = false) AS OF {at}"
    )
    assert f"WITH (PROGRESS) AS OF {at}" in declares[2]  # the lookup's pass
    assert 'SET CLUSTER = "serving"' in mz.statements
    assert "SELECT mz_now()" in mz.statements


def test_the_changes_are_read_past_the_present_and_the_timestamp_a_repair_writes_at(
    mz: MaterializeDouble,
) -> None:
    """A repair writes at t + 1: `changed` returns only once no change at t + 1 can
    still arrive, so that one there is skipped rather than overwritten; and only once
    it has every change written before it was called (`mz_now()`), closed or not."""
    mz.insert(*[row(i) for i in range(3)])

    def later(action: Callable[[], object]) -> threading.Thread:
        def act() -> None:
            time.sleep(0.3)
            action()

        thread = threading.Thread(target=act)
        thread.start()
        return thread

    async def body() -> tuple[set[str], set[str]]:
        snapshot = snapshot_of(mz)
        await snapshot.open()
        try:
            at = snapshot.position
            # Nothing after t yet: the change at t + 1 comes while `changed` waits.
            writer = later(lambda: mz.update(row(1), row(1, "at t+1"), at=at + 1))
            first = set(await snapshot.changed())
            writer.join()
            # Written at an open timestamp before the call, closed while it waits.
            mz.update(row(2), row(2, "open"), at=at + 5, close=False)
            closer = later(lambda: mz.advance(at + 6))
            second = set(await snapshot.changed())
            closer.join()
            return first, second
        finally:
            await snapshot.close()

    first, second = run(body)
    assert first == {"1"}, "changed() must wait for the progress past t + 1"
    assert second == {"1", "2"}, "changed() must wait for what mz_now() covers"


def test_keys_are_looked_up_in_the_snapshot_s_own_cursor(mz: MaterializeDouble) -> None:
    """`verify --keys` reads no rows before its lookup: the cursor that chose t is read,
    where a new one AS OF t would fail once Materialize has compacted past t."""
    mz.insert(*[row(i) for i in range(5)])

    async def body() -> list[Any]:
        snapshot = snapshot_of(mz)
        await snapshot.open()
        try:
            mz.compact(mz.frontier - 1)  # nothing before now is kept
            mz.advance()
            mz.compact(mz.frontier - 1)
            return await snapshot.lookup([("0",), ("4",), ("9",)])
        finally:
            await snapshot.close()

    found = run(body)
    assert [key for key, _ in found] == [(0,), (4,)]
    assert sum(s.startswith("DECLARE") for s in mz.statements) == 2  # rows and changes


def test_a_sample_compares_the_first_rows_and_still_knows_every_row_s_id(
    mz: MaterializeDouble,
) -> None:
    mz.insert(*[row(i) for i in range(50)])

    async def body() -> tuple[list[Any], Any]:
        snapshot = snapshot_of(mz, sample=12)
        await snapshot.open()
        try:
            rows = await all_rows(snapshot, 5)
            return rows, await snapshot.present(indexed("0", "49", "50"))
        finally:
            await snapshot.close()

    rows, present = run(body)
    assert len(rows) == 12
    assert present == {"0", "49"}


def test_a_snapshot_that_cannot_be_taken_says_why(mz: MaterializeDouble) -> None:
    async def take(**config: Any) -> None:
        snapshot = snapshot_of(mz, **config)
        try:
            await snapshot.open()
        finally:
            await snapshot.close()

    with pytest.raises(SyncError, match="unknown cluster 'nowhere'"):
        run(lambda: take(cluster="nowhere"))
    with pytest.raises(SyncError, match=r"key column.*no_such.*fix source\.key"):
        run(lambda: take(key_columns=("no_such",)))


def test_memory_stays_flat_as_the_view_grows(mz: MaterializeDouble) -> None:
    """What the adapter holds (Python's allocations outside the double, which runs in
    this process, and outside the rows this test gave it) while it reads N rows and 4N:
    about the same. The ids it keeps for the documents pass are in SQLite, whose page
    cache is bounded (32 MiB).

    "About the same" is measured per extra row, not as a ratio: what the process holds
    anyway (sockets, threads, psycopg's caches) moves by tens of KB from run to run,
    while keeping the rows would cost ~2 KB a row and keeping the ids in Python ~75 B."""

    async def held_while_reading() -> int:
        snapshot = snapshot_of(mz)
        await snapshot.open()
        largest, chunks = 0, 0
        try:
            while await snapshot.rows(200):
                chunks += 1
                if chunks % 5 == 0:
                    gc.collect()  # what is held, not garbage in cycles not yet collected
                    traced = tracemalloc.take_snapshot().filter_traces(
                        [
                            tracemalloc.Filter(False, "*/materialize_double/*"),
                            tracemalloc.Filter(False, __file__),  # the view's rows
                            tracemalloc.Filter(False, tracemalloc.__file__),
                        ]
                    )
                    largest = max(largest, sum(s.size for s in traced.statistics("filename")))
            await snapshot.present(indexed(*[str(i) for i in range(small_rows)]))
        finally:
            await snapshot.close()
        return largest

    small_rows, large_rows = 2_000, 8_000
    tracemalloc.start()
    try:
        mz.insert(*[(i, "x" * 2000, f"{i}.00") for i in range(small_rows)])
        small = run(held_while_reading)
        mz.insert(*[(i, "x" * 2000, f"{i}.00") for i in range(small_rows, large_rows)])
        large = run(held_while_reading)
    finally:
        tracemalloc.stop()
    per_extra_row = (large - small) / (large_rows - small_rows)
    assert per_extra_row < 40, (
        f"{small:,} B held for {small_rows:,} rows, {large:,} B for {large_rows:,}: "
        f"{per_extra_row:.0f} B per extra row"
    )


def test_a_subscription_that_does_not_catch_up_fails_the_verification_with_why(
    mz: MaterializeDouble,
    make_subscription: Callable[..., Subscription],
    opensearch_url: str,
    settings: Any,
) -> None:
    """No worker runs it: its checkpoint never passes the snapshot's timestamp, and
    nothing is compared."""
    settings.SYNCER_VERIFY_CATCH_UP_SECONDS = 1
    mz.insert(*[row(i) for i in range(3)])
    make_subscription(
        "stalled",
        VIEW,
        source_kind="materialize",
        source_dsn=mz.dsn,
        key_columns=["order_id"],
        snapshot_mode="discard",
    )
    status, found, output = verify("stalled")
    assert (status, found.state, found.counts.get("checked", 0)) == (2, "failed", 0), output
    assert found.error.startswith("subscription 'stalled' has not written everything up to ")
    assert f"the snapshot (at {found.position} (" in found.error
    assert "its checkpoint is -" in found.error and "SYNCER_VERIFY_CATCH_UP_SECONDS" in found.error


# -- whole verifications -----------------------------------------------------------------


@pytest.fixture
def synced(
    request: pytest.FixtureRequest,
    mz: MaterializeDouble,
    make_subscription: Callable[..., Subscription],
    search: OpenSearch,
    opensearch_url: str,
) -> Iterator[Subscription]:
    """A view of ROWS rows copied into its index by a running worker, the double's
    frontier following the clock meanwhile (as Materialize's does). The envelope is the
    test's parameter, if it has one (else diff)."""
    mz.insert(*[row(i) for i in range(ROWS)])
    sub = make_subscription(
        "mz-orders",
        VIEW,
        source_kind="materialize",
        source_dsn=mz.dsn,
        key_columns=["order_id"],
        source_envelope=getattr(request, "param", "diff"),
        batch_max_age_ms=100,
    )
    with mz.ticking(), WorkerThread([sub]):
        wait_for(lambda: len(index_docs(search, sub.index_name)) == ROWS, what="the snapshot")
        wait_for(lambda: Subscription.objects.get(pk=sub.pk).snapshot_completed_at, what="done")
        yield sub


def tamper(search: OpenSearch, index: str) -> None:
    """Drift of each kind, behind the product's back (OpenSearch adds one to the version)."""
    search.index(index=index, id="5", body={**document(5), "customer": "tampered"}, refresh=True)
    search.delete(index=index, id="7", refresh=True)
    search.index(index=index, id="100000", body=document(100000), refresh=True)


def test_each_kind_of_drift_is_found_then_repaired_exactly(
    synced: Subscription, search: OpenSearch
) -> None:
    status, clean, output = verify(synced.name)
    assert (status, clean.state, clean.drifted) == (0, "done", 0), output
    assert clean.counts["checked"] == ROWS and clean.counts["rows"] == ROWS

    tamper(search, synced.index_name)
    before = versions(search, synced.index_name)
    status, found, output = verify(synced.name)
    assert status == 1, output
    counts = found.counts
    assert (counts["missing"], counts["extra"], counts["differs"]) == (1, 1, 1)
    assert found.examples["differs"][0]["fields"] == {
        "customer": {"source": "customer 5", "index": "tampered"}
    }
    assert [e["id"] for e in found.examples["missing"]] == ["7"]
    assert [e["id"] for e in found.examples["extra"]] == ["100000"]

    status, repaired, output = verify(synced.name, "--repair")
    assert status == 0, output
    assert (repaired.counts["repaired"], repaired.drifted) == (3, 3)
    assert index_docs(search, synced.index_name) == {str(i): document(i) for i in range(ROWS)}
    after = versions(search, synced.index_name)
    rewritten = sorted(i for i in after if after[i] != before.get(i))
    assert rewritten == ["5", "7"]  # nothing that was right was written again
    assert after["5"] == after["7"] == (repaired.position or 0) + 1
    status, again, _ = verify(synced.name)
    assert (status, again.drifted) == (0, 0)


@pytest.mark.parametrize("synced", ["upsert"], indirect=True)
def test_a_subscription_of_the_upsert_envelope_is_verified_as_its_documents_are(
    synced: Subscription, search: OpenSearch
) -> None:
    """Its SUBSCRIBE sends the key first and a state, not a diff: the verification reads
    the view's plain rows, which make the same documents."""
    status, clean, output = verify(synced.name)
    assert (status, clean.drifted, clean.counts["checked"]) == (0, 0, ROWS), output
    tamper(search, synced.index_name)
    status, found, output = verify(synced.name, "--repair")
    assert (status, found.drifted, found.counts["repaired"]) == (0, 3, 3), output


class ViewWriter(threading.Thread):
    """Updates rows and deletes others in the double until stopped."""

    def __init__(self, mz: MaterializeDouble) -> None:
        super().__init__(daemon=True)
        self.mz, self.count = mz, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        for i in range(ROWS // 2):
            if self._stop_event.wait(0.005):
                return
            self.mz.update(row(i), row(i, "updated meanwhile"))
            self.mz.delete(row(ROWS - 1 - i))
            self.count += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def test_changes_during_the_verification_are_not_drift(
    synced: Subscription, mz: MaterializeDouble, settings: Any
) -> None:
    settings.SYNCER_VERIFY_CHUNK_ROWS = 10  # many chunks: the writer runs between them
    writer = ViewWriter(mz)
    writer.start()
    try:
        status, found, output = verify(synced.name, "--repair")
    finally:
        writer.stop()
    assert writer.count > 10, "the writer should have changed rows during the verification"
    assert (status, found.drifted, found.counts["repaired"]) == (0, 0, 0), output
    assert found.counts["skipped"] > 0  # rows the writer changed after the snapshot


def test_a_repair_during_changes_never_overwrites_a_newer_value(
    synced: Subscription, mz: MaterializeDouble, search: OpenSearch, settings: Any
) -> None:
    settings.SYNCER_VERIFY_CHUNK_ROWS = 10
    for i in range(0, ROWS // 2, 10):  # drift in every chunk, on rows the writer updates too
        search.index(index=synced.index_name, id=str(i), body={**document(i), "total": "-1"})
    search.indices.refresh(index=synced.index_name)
    writer = ViewWriter(mz)
    writer.start()
    try:
        _, found, output = verify(synced.name, "--repair")
    finally:
        writer.stop()
    assert found.state == "done", output
    counts = found.counts
    assert counts["differs"] + counts["skipped"] >= ROWS // 20
    assert counts["repaired"] + counts["superseded"] == found.drifted  # each drift dealt with
    # Once the worker has written what the writer did last, the index is the view: no
    # repair (at the snapshot's timestamp + 1) won over a later change.
    names = ("order_id", "customer", "total")

    def as_in_the_view() -> bool:
        view = {str(r[0]): dict(zip(names, r, strict=True)) for r in mz.rows_at()}
        return index_docs(search, synced.index_name) == view

    wait_for(as_in_the_view, what="the index to match the view")


def test_only_the_given_keys_and_a_sample(
    synced: Subscription, search: OpenSearch, tmp_path: Any
) -> None:
    tamper(search, synced.index_name)
    keys = tmp_path / "keys.txt"
    keys.write_text("5\n7\n8\n100000\nnot-a-number\n")
    status, found, output = verify(synced.name, "--keys", str(keys))
    assert status == 1, output
    assert (found.counts["rows"], found.counts["checked"], found.drifted) == (3, 4, 3)
    status, sampled, output = verify(synced.name, "--sample", "40")
    assert sampled.state == "done", output
    assert (sampled.counts["rows"], sampled.counts["documents"]) == (40, 40)
    # Extras among the first 40 documents are told from every row's id, not the sample's.
    assert sampled.counts["extra"] <= 1 and sampled.counts["missing"] <= 1
