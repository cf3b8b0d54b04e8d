"""Dead letters: age counts from the last failure everywhere a purge or filter says
"older than", and a document id is kept whole, so no two documents share an entry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import io
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from opensearchpy import OpenSearch

from syncer.engine.changes import Change, Op
from syncer.engine.interfaces import Rejected
from syncer.engine.outcomes import (
    ID_TOO_LONG,
    INCOMPLETE_DOCUMENT,
    MAX_ID_BYTES,
    ItemResult,
    Outcome,
)
from syncer.models import DeadLetter, Subscription, doc_id_digest
from syncer.operations import dead_letters
from syncer.stores import DjangoDeadLetters
from tests.support.factories import entry, subscription
from tests.support.users import operator, token_client

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

JSON = "application/json"
CHANGELIST = reverse("admin:syncer_deadletter_changelist")
PURGE_URL = reverse("admin:syncer_deadletter_purge")


@pytest.fixture
def api() -> Client:
    return token_client(operator("ops", is_superuser=True))


# -- age: from the last failure ---------------------------------------------------------


def failing_for_a_month(sub: Subscription) -> tuple[DeadLetter, DeadLetter]:
    """`still`: first failed 30 days ago, failed again 2 minutes ago; `quiet`: 10 days ago."""
    still = entry(sub, "still-failing", age=dt.timedelta(days=30))
    quiet = entry(sub, "quiet", age=dt.timedelta(days=30))
    now = timezone.now()
    DeadLetter.objects.filter(pk=still.pk).update(last_attempt_at=now - dt.timedelta(minutes=2))
    DeadLetter.objects.filter(pk=quiet.pk).update(last_attempt_at=now - dt.timedelta(days=10))
    return still, quiet


def remaining() -> list[str]:
    return sorted(DeadLetter.objects.values_list("doc_id", flat=True))


def test_dlq_purge_older_than_keeps_an_entry_that_failed_again_minutes_ago() -> None:
    failing_for_a_month(subscription())
    out = io.StringIO()

    call_command("dlq", "purge", "--older-than", "7d", stdout=out, stderr=io.StringIO())

    assert remaining() == ["still-failing"]


def test_the_api_purge_and_filters_count_age_from_the_last_failure(api: Client) -> None:
    failing_for_a_month(subscription())

    old = api.get("/api/dlq", {"older_than": "7d"}).json()["items"]
    recent = api.get("/api/dlq", {"newer_than": "1h"}).json()["items"]
    stats = api.get("/api/dlq/stats", {"older_than": "7d"}).json()
    purged = api.post("/api/dlq/purge", {"older_than": "7d"}, content_type=JSON).json()

    assert [e["doc_id"] for e in old] == ["quiet"]
    assert [e["doc_id"] for e in recent] == ["still-failing"]
    assert stats["total"] == 1 and stats["oldest"]["doc_id"] == "quiet"
    assert purged["purged"] == 1
    assert remaining() == ["still-failing"]


def test_the_admin_age_filter_and_purge_count_age_from_the_last_failure(
    admin_client: Client,
) -> None:
    failing_for_a_month(subscription())

    filtered = admin_client.get(CHANGELIST, {"age": "gt7d"})
    last_hour = admin_client.get(CHANGELIST, {"age": "1h"})
    preview = admin_client.get(PURGE_URL, {"older_than_days": "7"})
    admin_client.post(PURGE_URL, {"subscription": "", "older_than_days": "7"})

    assert [e.doc_id for e in filtered.context["cl"].result_list] == ["quiet"]
    assert [e.doc_id for e in last_hour.context["cl"].result_list] == ["still-failing"]
    assert "1 dead letter (every subscription, last failed 7 days ago or more)" in (
        preview.content.decode()
    )
    assert remaining() == ["still-failing"]


def test_stats_name_the_entry_whose_last_failure_is_oldest() -> None:
    still, quiet = failing_for_a_month(subscription())

    stats = dead_letters.stats()

    assert stats.oldest is not None and stats.oldest.pk == quiet.pk
    (row,) = stats.rows
    assert row.oldest == DeadLetter.objects.get(pk=quiet.pk).last_attempt_at
    assert row.newest == DeadLetter.objects.get(pk=still.pk).last_attempt_at


def test_purging_by_age_can_use_an_index_on_the_last_failure() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'deadletter_last_attempt'"
        )
        (definition,) = cursor.fetchone() or ("",)
    assert "(last_attempt_at)" in definition


# -- identity: the whole document id ------------------------------------------------------


def rejected(doc_id: str, version: int, reason: str = "bad") -> Rejected:
    change = Change(Op.UPSERT, doc_id, (doc_id,), version, time.time(), {"k": doc_id})
    return Rejected(change, ItemResult(Outcome.PERMANENT, 0, ID_TOO_LONG, reason), 1)


@pytest.mark.django_db(transaction=True)  # the store writes from its own thread
def test_two_long_ids_that_share_their_first_512_characters_are_two_entries() -> None:
    sub = subscription()
    prefix = "x" * MAX_ID_BYTES
    first, second = prefix + "-first", prefix + "-second"
    letters = DjangoDeadLetters(sub.pk, sub.name)

    async def put_twice_and_supersede() -> int:
        try:
            await letters.put([rejected(first, 10), rejected(second, 11)])
            await letters.put([rejected(first, 12, reason="again")])
            stored = await sync_to_async(entries_of)(sub)
            assert set(stored) == {first, second}
            assert (stored[first].version, stored[first].error_reason) == (12, "again")
            assert stored[second].version == 11
            written = Change(Op.UPSERT, second, (second,), 20, time.time(), {"k": 1})
            return await letters.supersede([written])
        finally:
            # The store wrote from its own thread: close that connection too.
            await sync_to_async(connections.close_all)()

    assert asyncio.run(put_twice_and_supersede()) == 1
    assert remaining() == [first]


def entries_of(sub: Subscription) -> dict[str, DeadLetter]:
    return {e.doc_id: e for e in DeadLetter.objects.filter(subscription=sub)}


def test_the_migration_fills_the_same_digest_the_code_computes() -> None:
    migration = importlib.import_module("syncer.migrations.0005_deadletter_last_attempt")
    sub = subscription()
    doc_id = "ключ-" + "é" * 300 + "-日本"
    stored = entry(sub, doc_id)
    DeadLetter.objects.filter(pk=stored.pk).update(doc_id_digest="")

    with connection.cursor() as cursor:
        cursor.execute(migration.BACKFILL)

    assert DeadLetter.objects.get(pk=stored.pk).doc_id_digest == doc_id_digest(doc_id)


def test_retrying_an_entry_opensearch_cannot_take_sends_nothing_and_says_why(
    search: OpenSearch,
) -> None:
    sub = subscription()
    too_long = entry(sub, "é" * (MAX_ID_BYTES // 2 + 1), error_type=ID_TOO_LONG)
    incomplete = entry(
        sub, "7", error_type=INCOMPLETE_DOCUMENT, error_reason="column body was unchanged"
    )

    report = dead_letters.retry(dead_letters.Selection(subscription=sub.name))

    assert (report.succeeded, report.failed) == (0, 2)
    assert (
        not search.indices.exists(index=sub.index_name)
        or search.count(index=sub.index_name)["count"] == 0
    )
    again = {e.pk: e for e in DeadLetter.objects.all()}
    assert "514 bytes of UTF-8" in again[too_long.pk].error_reason
    assert again[incomplete.pk].error_reason.startswith("column body was unchanged")
    assert again[incomplete.pk].attempts == 2
