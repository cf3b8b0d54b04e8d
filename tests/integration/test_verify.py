"""`manage.py verify` against real PostgreSQL and a real osmem-server, the worker running:
each kind of drift made behind the product's back is found, changes made during the
verification are not drift, a repair writes exactly what differs and never beats a
newer change, and memory does not grow with the table."""

from __future__ import annotations

import asyncio
import io
import json
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from opensearchpy import OpenSearch

from syncer.errors import VerificationRefused
from syncer.models import Subscription, Verification
from syncer.operations import verify as verifying
from syncer.worker.verifier import Verifications
from tests.support.factories import subscription
from tests.support.harness import (
    WorkerThread,
    Writer,
    index_docs,
    index_drift,
    index_rows,
    table_rows,
    wait_for,
)
from tests.support.process import manage
from tests.support.users import operator, token_client, viewer
from tests.support.verifying import verify, versions

pytestmark = pytest.mark.usefixtures("fast_retries", "opensearch_url")

ROWS = 300


@pytest.fixture
def synced(
    source_conn: psycopg.Connection,
    table_name: str,
    make_subscription: Callable[..., Subscription],
    search: OpenSearch,
) -> Iterator[tuple[Subscription, str]]:
    """A table of ROWS (id, v) rows, copied into its index by a running worker."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int NOT NULL)")
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT g, g FROM generate_series(0, {ROWS - 1}) g"
    )
    sub = make_subscription("verified", table_name)
    with WorkerThread([sub]):
        wait_for(
            lambda: index_rows(search, sub.index_name) == table_rows(source_conn, table_name),
            what="the first copy",
        )
        wait_for(
            lambda: Subscription.objects.get(pk=sub.pk).snapshot_completed_at, what="copy done"
        )
        yield sub, table_name


def tamper(search: OpenSearch, index: str) -> None:
    """Drift of each kind, written behind the product's back (no external version:
    OpenSearch adds one to the document's, which stays below any later position)."""
    search.index(index=index, id="5", body={"id": 5, "v": -1}, refresh=True)
    search.delete(index=index, id="7", refresh=True)
    search.index(index=index, id="100000", body={"id": 100000, "v": 1}, refresh=True)


def test_each_kind_of_drift_is_found_then_repaired_exactly(
    synced: tuple[Subscription, str], search: OpenSearch, source_conn: psycopg.Connection
) -> None:
    sub, table = synced
    status, clean, _ = verify(sub.name)
    assert (status, clean.state, clean.drifted) == (0, "done", 0)
    assert clean.counts["checked"] == ROWS and clean.position

    tamper(search, sub.index_name)
    before = {h: d for h, d in versions(search, sub.index_name).items()}
    status, found, output = verify(sub.name, "--json")
    assert status == 1
    counts = found.counts
    assert (counts["missing"], counts["extra"], counts["differs"]) == (1, 1, 1)
    assert [e["id"] for e in found.examples["differs"]] == ["5"]
    assert found.examples["differs"][0]["fields"] == {"v": {"source": 5, "index": -1}}
    assert [e["id"] for e in found.examples["missing"]] == ["7"]
    assert [e["id"] for e in found.examples["extra"]] == ["100000"]
    assert json.loads(output[: output.rindex("}") + 1])["counts"]["drifted"] == 3
    assert index_rows(search, sub.index_name) != table_rows(source_conn, table)

    status, repaired, output = verify(sub.name, "--repair")
    assert status == 0, output
    assert (repaired.counts["repaired"], repaired.drifted) == (3, 3)
    assert index_rows(search, sub.index_name) == table_rows(source_conn, table)
    # Nothing that was right was written again: only 5 and 7 have new versions.
    after = versions(search, sub.index_name)
    rewritten = sorted(i for i in after if i in before and after[i] != before[i])
    assert rewritten == ["5"]
    assert repaired.position is not None
    assert after["7"] == after["5"] == repaired.position + 1

    status, again, _ = verify(sub.name)
    assert (status, again.drifted) == (0, 0)


def test_changes_during_the_verification_are_not_drift(
    synced: tuple[Subscription, str],
    search: OpenSearch,
    source_dsn: str,
    settings: Any,
) -> None:
    sub, table = synced
    settings.SYNCER_VERIFY_CHUNK_ROWS = 20  # many chunks: the writer runs between them
    writer = Writer(source_dsn, table, updated=ROWS, deleted=ROWS, pause=0.005)
    writer.start()
    try:
        status, found, output = verify(sub.name, "--repair")
    finally:
        writer.stop()
    assert writer.count > 20, "the writer should have changed rows during the verification"
    assert (status, found.drifted, found.counts["repaired"]) == (0, 0, 0), output
    assert found.counts["skipped"] > 0  # rows the writer changed after the snapshot


def test_a_repair_during_changes_never_overwrites_a_newer_value(
    synced: tuple[Subscription, str],
    search: OpenSearch,
    source_conn: psycopg.Connection,
    source_dsn: str,
    settings: Any,
) -> None:
    sub, table = synced
    settings.SYNCER_VERIFY_CHUNK_ROWS = 20
    for doc in range(0, ROWS, 10):  # drift in every chunk, on rows the writer updates too
        search.index(index=sub.index_name, id=str(doc), body={"id": doc, "v": -1})
    search.indices.refresh(index=sub.index_name)
    writer = Writer(source_dsn, table, updated=ROWS, deleted=ROWS * 3, pause=0.005)
    writer.start()
    try:
        _, found, output = verify(sub.name, "--repair")
    finally:
        writer.stop()
    assert found.state == "done", output
    assert found.counts["differs"] + found.counts["skipped"] >= ROWS // 10
    assert found.counts["repaired"] > 0
    # Once the worker has written what the writer did last, the index is the table:
    # no repair (at the snapshot's position + 1) won over a later change.
    wait_for(
        lambda: index_rows(search, sub.index_name) == table_rows(source_conn, table),
        what="the index to match the table",
    )
    assert "(0)" in index_drift(search, sub.index_name, source_conn, table)


def test_only_the_given_keys_and_a_sample(
    synced: tuple[Subscription, str], search: OpenSearch, tmp_path: Any
) -> None:
    sub, _ = synced
    tamper(search, sub.index_name)
    keys = tmp_path / "keys.txt"
    keys.write_text("5\n7\n8\n100000\n09\n")  # "09": no such id (row 9 is "9")
    status, found, _ = verify(sub.name, "--keys", str(keys))
    assert status == 1
    assert (found.counts["rows"], found.counts["checked"], found.drifted) == (3, 4, 3)
    status, sampled, _ = verify(sub.name, "--sample", "30")
    assert sampled.state == "done"
    assert sampled.counts["documents"] == 30
    assert 0 < sampled.counts["rows"] < ROWS


def test_bad_requests_say_what_to_fix(synced: tuple[Subscription, str], tmp_path: Any) -> None:
    sub, _ = synced
    with pytest.raises(CommandError, match="holds no document id"):
        empty = tmp_path / "empty.txt"
        empty.write_text("\n")
        call_command("verify", sub.name, "--keys", str(empty), stdout=io.StringIO())
    with pytest.raises(CommandError, match="no-such"):
        call_command("verify", "no-such", stdout=io.StringIO())
    Subscription.objects.filter(pk=sub.pk).update(paused=True)
    with pytest.raises(CommandError, match="is paused: resume it"):
        call_command("verify", sub.name, stdout=io.StringIO())
    Subscription.objects.filter(pk=sub.pk).update(paused=False)
    running = verifying.request(Subscription.objects.get(pk=sub.pk), requested_by="test")
    with pytest.raises(CommandError, match=f"verification {running.pk} requested or running"):
        call_command("verify", sub.name, stdout=io.StringIO())


def test_memory_stays_flat_as_the_table_grows(
    source_conn: psycopg.Connection,
    table_name: str,
    make_subscription: Callable[..., Subscription],
    search: OpenSearch,
    settings: Any,
) -> None:
    """Peak memory (Python's allocations) of a verification of N rows of 4 kB and of 4N:
    about the same, where holding the rows or documents would take four times as much."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text NOT NULL)")
    sub = make_subscription("flat", table_name, snapshot_mode="discard")
    settings.SYNCER_VERIFY_CHUNK_ROWS = 100
    peaks = []
    with WorkerThread([sub]):
        wait_for(
            lambda: Subscription.objects.get(pk=sub.pk).status == "caught_up",
            what="the subscription to stream",
        )
        for rows in (1_000, 4_000):
            source_conn.execute(f"TRUNCATE {table_name}")
            source_conn.execute(
                f"INSERT INTO {table_name} SELECT g, repeat(md5(g::text), 128) "
                "FROM generate_series(1, %s) g",
                (rows,),
            )

            def indexed(n: int = rows) -> bool:
                return len(index_docs(search, sub.index_name)) == n

            wait_for(indexed, timeout=60, what=f"{rows} documents")
            tracemalloc.start()
            try:
                status, found, output = verify(sub.name)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
            assert (status, found.counts["checked"]) == (0, rows), output
    small, large = peaks
    assert large < small * 1.5, f"peak {small:,} B for 1,000 rows, {large:,} B for 4,000"


def test_the_api_asks_the_worker_and_the_job_shows_progress_then_the_result(
    synced: tuple[Subscription, str], search: OpenSearch
) -> None:
    """POST /verify returns the job at once (202); the subscription's worker runs it."""
    sub, _ = synced
    tamper(search, sub.index_name)
    viewer_client = token_client(viewer())
    refused = viewer_client.post(
        f"/api/subscriptions/{sub.name}/verify", {}, content_type="application/json"
    )
    assert refused.status_code == 403
    client = token_client(operator())
    asked = client.post(
        f"/api/subscriptions/{sub.name}/verify",
        {"repair": True},
        content_type="application/json",
    )
    assert asked.status_code == 202, asked.content
    job = asked.json()
    assert (job["state"], job["repair"]) == ("requested", True)
    assert job["requested_by"].startswith("ops, API token 'ci'")
    again = client.post(
        f"/api/subscriptions/{sub.name}/verify", {}, content_type="application/json"
    )
    assert again.status_code == 409 and f"verification {job['id']}" in again.json()["detail"]
    url = f"/api/subscriptions/{sub.name}/verifications/{job['id']}"
    done = wait_for(
        lambda: (r := viewer_client.get(url).json())["state"] in ("done", "failed") and r,
        what="the worker to run the verification",
    )
    assert done["state"] == "done", done["error"]
    assert (done["counts"]["drifted"], done["counts"]["repaired"]) == (3, 3)
    assert done["progress"]["percent"] == 100.0
    shown = viewer_client.get(f"/api/subscriptions/{sub.name}").json()
    assert shown["last_verification"]["id"] == job["id"] and not shown["verifying"]
    assert (shown["last_verification"]["drifted"], shown["last_verification"]["repaired"]) == (3, 3)
    listed = viewer_client.get(f"/api/subscriptions/{sub.name}/verifications").json()
    assert listed[0]["id"] == job["id"]
    assert (
        viewer_client.get(f"/api/subscriptions/{sub.name}/verifications/999999").status_code == 404
    )
    bad = client.post(
        f"/api/subscriptions/{sub.name}/verify",
        {"sample": 10, "ids": ["1"]},
        content_type="application/json",
    )
    assert bad.status_code == 409 and "not both" in bad.json()["detail"]


def test_the_schedule_verifies_each_owned_subscription(
    synced: tuple[Subscription, str], search: OpenSearch
) -> None:
    sub, _ = synced
    verifications = Verifications("scheduler", lambda: [sub.pk], every=3600, sample=50)
    ran = asyncio.run(verifications.once())
    assert ran is not None and ran.requested_by == "schedule" and ran.sample == 50
    assert ran.state == "done" and ran.counts["documents"] == 50
    assert asyncio.run(verifications.once()) is None  # not again within the hour
    assert verifying.latest_done(sub) == ran
    figures = verifying.latest_by_subscription([sub.name])[sub.name]
    assert (figures["checked"], figures["drifted"], figures["failed"]) == (
        ran.counts["checked"],
        0,
        False,
    )


def test_the_admin_confirms_then_shows_the_result(
    synced: tuple[Subscription, str], search: OpenSearch, client: Any
) -> None:
    sub, _ = synced
    tamper(search, sub.index_name)
    client.force_login(viewer("looker"))
    assert client.get(f"/admin/syncer/subscription/{sub.pk}/verify/").status_code == 403
    client.force_login(operator())
    page = client.get(f"/admin/syncer/subscription/{sub.pk}/change/")
    assert f"/admin/syncer/subscription/{sub.pk}/verify/" in page.content.decode()
    assert "never verified" in page.content.decode()
    confirm = client.get(f"/admin/syncer/subscription/{sub.pk}/verify/")
    assert confirm.status_code == 200 and b"Yes, verify verified" in confirm.content
    assert not Verification.objects.exists()  # a GET asks for nothing
    asked = client.post(
        f"/admin/syncer/subscription/{sub.pk}/verify/", {"confirm": "yes", "repair": "on"}
    )
    assert asked.status_code == 302
    job = Verification.objects.get()
    assert (job.repair, job.requested_by, job.state) == (True, "ops", "requested")
    assert asked["Location"].endswith(f"verifications/?ids={job.pk}")
    running = client.get(asked["Location"])
    assert b'http-equiv="refresh"' in running.content  # it reloads while the job is pending

    def finished() -> bytes | None:
        shown = client.get(asked["Location"]).content
        return shown if b'data-state="done"' in shown else None

    shown = wait_for(finished, what="the result page to show the verification done").decode()
    assert 'class="count-missing">1<' in shown and 'class="count-repaired">3<' in shown
    assert 'http-equiv="refresh"' not in shown
    assert (
        "3 differed, 3 repaired"
        in client.get(f"/admin/syncer/subscription/{sub.pk}/change/").content.decode()
    )
    # The changelist action leads to the same confirmation page.
    action = client.post(
        "/admin/syncer/subscription/",
        {"action": "verify_selected", "_selected_action": [str(sub.pk)]},
    )
    assert action.status_code == 200 and b"Yes, verify verified" in action.content


def test_runsyncer_refuses_a_bad_verification_schedule_before_anything_runs() -> None:
    alone = manage("runsyncer", "--verify-sample", "100")
    assert alone.returncode == 2 and "--verify-sample needs --verify-every" in alone.stderr
    malformed = manage("runsyncer", "--verify-every", "daily")
    assert malformed.returncode == 2 and "'daily' is not an age" in malformed.stderr


def test_a_verification_runs_once_though_a_worker_and_the_command_both_look(
    synced: tuple[Subscription, str],
) -> None:
    sub = Subscription.objects.get(pk=synced[0].pk)  # its copy is done now
    asked = verifying.request(sub, requested_by="test")
    copy = Verification.objects.get(pk=asked.pk)  # what a second runner read meanwhile
    assert asyncio.run(verifying.claim(asked, "worker-a"))
    left = asyncio.run(verifying.run(copy, worker="worker-b"))
    assert (left.state, left.worker) == ("running", "worker-a")  # not run a second time
    Verification.objects.filter(pk=asked.pk).update(state="done")
    # The command's own is running from the start: no worker's round takes it.
    mine = verifying.request(sub, requested_by="command", run_by="command host:1")
    assert (mine.state, mine.worker) == ("running", "command host:1")
    assert Verifications._next([sub.pk]) is None


@pytest.mark.django_db
def test_a_push_subscription_cannot_be_verified_and_says_why() -> None:
    pushed = Subscription(name="books", source_kind="push", index_name="books")
    pushed.full_clean()
    pushed.save()
    with pytest.raises(VerificationRefused, match="no source to verify it against"):
        verifying.request(pushed, requested_by="test")
    assert not Verification.objects.exists()
    materialized = subscription(
        "views", source_kind="materialize", key_columns=["id"], snapshot_mode="discard"
    )
    assert verifying.refusal(materialized) is None  # verified: test_verify_materialize.py


def test_a_bytea_key_s_documents_are_found_by_their_base64_id(
    source_conn: psycopg.Connection,
    table_name: str,
    make_subscription: Callable[..., Subscription],
    search: OpenSearch,
) -> None:
    """The sync writes a bytea key as base64: the pass for extra documents reads it back."""
    source_conn.execute(f"CREATE TABLE {table_name} (k bytea PRIMARY KEY, v int)")
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT sha256(g::text::bytea), g FROM generate_series(1, 50) g"
    )
    sub = make_subscription("binary", table_name)
    with WorkerThread([sub]):
        wait_for(lambda: Subscription.objects.get(pk=sub.pk).snapshot_completed_at, what="copy")
        status, found, output = verify(sub.name)
        assert (status, found.counts["checked"], found.drifted) == (0, 50, 0), output
        assert found.counts["documents"] == 50
        some = next(iter(index_docs(search, sub.index_name)))
        search.delete(index=sub.index_name, id=some, refresh=True)
        status, found, output = verify(sub.name, "--repair")
        assert (found.counts["missing"], found.counts["extra"], found.counts["repaired"]) == (
            1,
            0,
            1,
        ), output
