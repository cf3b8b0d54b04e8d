"""The worker process loads what it runs and no more (issue 15, "Peak worker RSS").

A real `manage.py runsyncer` (through tests/support/modules_at_exit.py, which writes the
modules it imported when it exits): no web app (daphne's Twisted reactor, the admin,
django-ninja, axes), and CEL only once a live subscription needs matching. It still
runs the system checks of its own settings and refuses to start on a bad one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from syncer.operations import live_subscriptions as ops
from syncer.worker import heap
from tests.support.harness import status_of, wait_for
from tests.support.process import WorkerProcess, free_port, manage, worker_metric
from tests.support.users import operator

WEB_ONLY = (
    "daphne",
    "twisted",
    "autobahn",
    "ninja",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "console.api",
    "console.urls",
)
CEL = ("cel", "celpy", "lark", "syncer.engine.matching")
DECLINED = ("structlog.twisted", "cryptography.fernet")
"""Optional imports of libraries, never used here (syncer.logconfig, console.settings)."""
UNUSED = ("nats", "rich", "pygments", "greenlet")
"""Installed, never used by a worker without live subscriptions: nats-py publishes from its
own process (syncer.live.delivery), rich and greenlet only structlog would import, and
nothing logs through them (syncer.logconfig); pygments comes with rich."""


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The `packages` (or modules) of which `modules` holds one or a submodule."""
    return [p for p in packages if p in modules or any(m.startswith(p + ".") for m in modules)]


def run_worker(
    opensearch_url: str, tmp_path: Path, metrics_port: int, until: Any
) -> tuple[set[str], str]:
    """Run a worker until `until()` holds, stop it with SIGTERM; its modules and log."""
    log, modules = tmp_path / "worker.log", tmp_path / "modules.txt"
    worker = WorkerProcess(opensearch_url, log, metrics_port=metrics_port, modules_to=modules)
    try:
        until()
    finally:
        code = worker.terminate()
    assert code == 0, worker.output()
    return set(modules.read_text().split()), worker.output()


@pytest.fixture
def orders(source_conn: Any, table_name: str, make_subscription: Any, search: Any) -> str:
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, region text)")
    make_subscription("orders", table_name, snapshot_mode="discard")
    return table_name


def test_a_worker_loads_no_web_app_and_no_cel_without_live_subscriptions(
    orders: str, source_conn: Any, opensearch_url: str, tmp_path: Path
) -> None:
    port = free_port()

    def synced() -> None:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        source_conn.execute(f"INSERT INTO {orders} VALUES (1, 'eu')")
        wait_for(
            lambda: (
                worker_metric(port, "searchsync_changes_total", subscription="orders", op="upsert")
                >= 1
            ),
            what="the insert synced",
        )

    modules, _ = run_worker(opensearch_url, tmp_path, port, synced)
    assert {"syncer.worker.runner", "syncer.sinks.opensearch.sink", "channels_redis.core"} <= (
        modules
    ), "it ran the sync and the live monitor's publisher"
    assert loaded(modules, WEB_ONLY) == []
    assert loaded(modules, CEL) == []
    assert loaded(modules, DECLINED) == []
    assert loaded(modules, UNUSED) == []
    collector = json.loads((tmp_path / "modules.txt.gc.json").read_text())
    assert collector["frozen"] > 10_000, "what start-up built is out of the collector's way"
    assert collector["threshold"][0] == heap.YOUNG_THRESHOLD


def test_a_live_subscription_loads_cel_and_its_changes_are_matched(
    orders: str, source_conn: Any, opensearch_url: str, tmp_path: Path
) -> None:
    ops.register(
        operator(), [ops.Registration("gw-a", "orders", 'doc.region == "eu"', "websocket")]
    )
    port = free_port()

    def matched() -> None:
        wait_for(lambda: status_of("orders").status == "caught_up", what="caught up")
        wait_for(
            lambda: (
                worker_metric(port, "searchsync_live_subscriptions_active", subscription="orders")
                == 1
            ),
            what="the live subscription picked up",
        )
        source_conn.execute(f"INSERT INTO {orders} VALUES (1, 'eu')")
        wait_for(
            lambda: worker_metric(port, "searchsync_live_matched_changes_total") >= 1,
            what="the insert matched",
        )

    modules, _ = run_worker(opensearch_url, tmp_path, port, matched)
    assert loaded(modules, CEL) == list(CEL)
    assert loaded(modules, WEB_ONLY) == []
    assert loaded(modules, ("nats",)) == [], "a live subscription needs no nats-py in the worker"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LOG_FORMAT": "xml"}, "syncer.E004"),
        ({"SYNCER_BULK_CONCURRENCY": "0"}, "syncer.E016"),
        ({"SYNCER_COPY_RANGE_ROWS": "0"}, "syncer.E017"),
        ({"OPENSEARCH_URL": "127.0.0.1:9200"}, "syncer.E001"),
        ({"LIVE_NATS_STREAM": "no spaces"}, "syncer.E014"),
    ],
)
def test_the_worker_still_refuses_a_bad_setting_before_it_starts(
    env: dict[str, str], says: str
) -> None:
    result = manage("runsyncer", env={**os.environ, **env})
    assert result.returncode == 1
    assert says in result.stderr and "SystemCheckError" in result.stderr
    assert "Traceback" not in result.stderr


def test_only_the_worker_process_leaves_out_the_web_apps_and_their_checks() -> None:
    web = manage("check", "--list-tags", env=dict(os.environ))
    assert {"urls", "admin", "staticfiles", "syncer"} <= set(web.stdout.split())
    worker = manage("check", "--list-tags", env={**os.environ, "SEARCHSYNC_WORKER_PROCESS": "1"})
    tags = set(worker.stdout.split())
    assert "syncer" in tags and "models" in tags
    assert not {"admin", "staticfiles"} & tags
