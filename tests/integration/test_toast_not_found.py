"""An unchanged TOAST value that cannot be found becomes a dead letter, never a partial
document: real PostgreSQL (pgoutput sends 'u' for it), the real worker, osmem-server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from syncer.engine.outcomes import INCOMPLETE_DOCUMENT
from syncer.models import DeadLetter, Subscription
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for

pytestmark = pytest.mark.usefixtures("fast_retries")


def test_an_unchanged_toast_value_found_nowhere_is_dead_lettered(
    source_conn: psycopg.Connection,
    table_name: str,
    make_subscription: Callable[..., Subscription],
    search: Any,
) -> None:
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v int, body text)")
    # Random text does not compress, so it is stored out of line (TOASTed).
    big = "".join(f"{i:x}" for i in range(40_000))
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 0, %s), (2, 0, 'small')", (big,))
    # discard: the index holds neither row, so the value can only come from the table.
    sub = make_subscription("toast-gone", table_name, snapshot_mode="discard")
    with WorkerThread([sub]):
        wait_for(lambda: status_of("toast-gone").status == "caught_up", what="caught up")
        with source_conn.transaction():
            # PostgreSQL sends body as "unchanged" for row 1; by the time the worker reads
            # the change the row is gone (TRUNCATE is not replicated: no delete follows).
            source_conn.execute(f"UPDATE {table_name} SET v = 1")
            source_conn.execute(f"TRUNCATE {table_name}")
        wait_for(
            lambda: DeadLetter.objects.filter(subscription=sub, doc_id="1").exists(),
            what="the dead letter",
        )
        wait_for(lambda: "2" in index_docs(search, "toast-gone"), what="the small row")

    entry = DeadLetter.objects.get(subscription=sub, doc_id="1")
    assert entry.error_type == INCOMPLETE_DOCUMENT
    assert entry.error_reason.startswith(
        "column body was unchanged and TOASTed; PostgreSQL did not send it and its current "
        "value could not be read"
    )
    assert entry.payload == {"id": 1, "v": 1}  # what was known, kept for the operator
    docs = index_docs(search, "toast-gone")
    assert "1" not in docs  # never a partial document
    assert docs["2"] == {"id": 2, "v": 1, "body": "small"}
    assert "column body was unchanged and TOASTed" in status_of("toast-gone").last_error
