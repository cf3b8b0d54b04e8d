"""`runsyncer --subscription NAME`: the names are checked before anything starts, and
the worker then runs those subscriptions only.

Real worker (the Runner `runsyncer` runs), real PostgreSQL, real osmem-server.
"""

from __future__ import annotations

import pytest

from syncer.errors import UnknownSubscription
from syncer.worker.runner import Runner, check_names
from tests.support.harness import WorkerThread, index_docs, status_of, wait_for


def test_unknown_names_are_refused_naming_them_and_the_known_ones(
    make_subscription, table_name
) -> None:
    make_subscription("orders", table_name)
    make_subscription("customers", table_name, enabled=False)
    with pytest.raises(UnknownSubscription) as refused:
        check_names(["orders", "nope", "gone", "nope"])
    assert str(refused.value) == "no subscription named gone, nope (known: customers, orders)"


def test_known_names_pass_enabled_or_not_and_no_names_pass_too(
    make_subscription, table_name
) -> None:
    make_subscription("orders", table_name)
    make_subscription("customers", table_name, enabled=False)
    check_names(["orders", "customers"])
    check_names([])


def test_an_empty_table_knows_none(transactional_db) -> None:
    with pytest.raises(UnknownSubscription, match=r"^no subscription named nope \(known: none\)$"):
        check_names(["nope"])


def test_a_runner_follows_the_named_subscriptions_only_or_every_one() -> None:
    assert Runner(["orders"]).names == ["orders"]
    assert Runner().names is None


@pytest.mark.usefixtures("fast_retries")
def test_a_worker_given_names_runs_those_and_leaves_the_others(
    source_conn, table_name, make_subscription, search
) -> None:
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1)")
    named = make_subscription("orders", table_name)
    make_subscription("others", table_name)
    with WorkerThread([named]) as worker:
        wait_for(lambda: "1" in index_docs(search, "orders"), what="the named one synced")
        assert list(worker.runner.pipelines) == ["orders"]
        assert status_of("others").owner == ""
