"""The live monitor page in a real browser, against a real worker, daphne and OpenSearch."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from playwright.sync_api import expect

from syncer.operations import live_subscriptions as live_ops
from tests.e2e.conftest import ConsoleServer, screenshot, wait_until
from tests.support.tcpproxy import TcpProxy
from tests.support.users import operator

NAME = "e2e-orders"
LIVE = re.compile(r"^(streaming|caught_up)$")


def log_in(page: Any, server: ConsoleServer, user: tuple[str, str]) -> None:
    page.goto(f"{server.url}/console/")
    # Not logged in: the admin's login page, which sends us back to the console.
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/console/"))
    page.fill("#id_username", user[0])
    page.fill("#id_password", user[1])
    page.click("input[type=submit]")
    expect(page).to_have_url(re.compile(r"/console/(#.*)?$"))


def checkpoint_of(row: Any) -> int | None:
    value = row.locator('[data-field="checkpoint"]').get_attribute("data-checkpoint")
    return int(value) if value else None


@pytest.fixture
def orders(
    source_conn: psycopg.Connection, table_name: str, make_subscription: Any
) -> tuple[str, int]:
    """A source table and its subscription (the table and the subscription's id); made
    before the browser starts, whose event loop would make Django refuse ORM calls here.
    `qty` is text in the source and an integer in the index: "many" is dead-lettered."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, label text, qty text)")
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT i, 'seed', '1' FROM generate_series(1, 3) i"
    )
    sub = make_subscription(
        NAME, table_name, index_mappings={"properties": {"qty": {"type": "integer"}}}
    )
    # A live subscription the worker matches: the table counts it.
    live_ops.register(operator(), [live_ops.Registration("e2e-gw", NAME, "true", "websocket")])
    return table_name, sub.pk


def test_console_follows_events_lag_an_opensearch_outage_a_restart_and_the_worker(
    source_conn: psycopg.Connection,
    orders: tuple[str, int],
    staff_user: tuple[str, str],
    console_server: ConsoleServer,
    start_worker: Any,
    opensearch_proxy: TcpProxy,
    browser_page: Any,
) -> None:
    table_name, subscription_id = orders
    worker = start_worker("--subscription", NAME)
    page = browser_page
    log_in(page, console_server, staff_user)

    row = page.locator(f'#subscriptions tr[data-subscription="{NAME}"]')
    badge = row.locator('[data-field="status"]')
    events = page.get_by_test_id("events").locator("tbody tr")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "open")
    expect(page.get_by_test_id("worker")).to_have_attribute("data-state", "online", timeout=30_000)
    expect(badge).to_have_attribute("data-status", LIVE, timeout=30_000)
    expect(row.locator('[data-field="live_subscriptions"]')).to_have_text("1")
    # The only subscription is tailed from the start; the server's answer to the page's
    # first filter message says the socket has joined the subscription's events.
    tail_state = page.get_by_test_id("tail-connection")
    expect(tail_state).to_have_attribute("data-state", "open")
    expect(tail_state).to_have_attribute("data-filter-op", "")
    before = checkpoint_of(row)

    # Rows written in the source appear in the tail, newest first; the table follows.
    for i in range(101, 106):
        source_conn.execute(f"INSERT INTO {table_name} VALUES (%s, 'live', '2')", (i,))
    for i in range(101, 106):
        expect(events.and_(page.locator(f'[data-doc="{i}"][data-op="upsert"]'))).to_have_count(1)
    positions = [int(p) for p in events.evaluate_all("rows => rows.map(r => r.dataset.position)")]
    assert positions == sorted(positions, reverse=True), positions
    after = wait_until(
        lambda: (c := checkpoint_of(row)) is not None and (before is None or c > before) and c,
        what="the checkpoint in the table to move past the new rows",
    )
    assert after >= max(positions)
    expect(row.locator('[data-field="lag"]')).to_have_text(re.compile(r"\d"))
    link = events.first.locator("td.doc a")
    expect(link).to_have_attribute(
        "href", f"/admin/syncer/subscription/trace/?subscription={NAME}&key=105"
    )
    screenshot(page, "01-live-events")

    # A filter on deletes: sent to the server for new events, applied to the rows shown.
    page.get_by_test_id("filter-op").select_option("delete")
    expect(tail_state).to_have_attribute("data-filter-op", "delete")  # the server's answer
    expect(events.and_(page.locator('[data-doc="102"]'))).to_be_hidden()
    source_conn.execute(f"INSERT INTO {table_name} VALUES (106, 'filtered out', '3')")
    source_conn.execute(f"DELETE FROM {table_name} WHERE id = 101")
    expect(events.and_(page.locator('[data-doc="101"][data-op="delete"]'))).to_be_visible()
    expect(events.and_(page.locator('[data-doc="106"]'))).to_have_count(0)
    screenshot(page, "02-filter-deletes")
    page.get_by_test_id("filter-op").select_option("")
    expect(tail_state).to_have_attribute("data-filter-op", "")

    # A change OpenSearch refuses: highlighted with its error, linked to its dead letter.
    source_conn.execute(f"INSERT INTO {table_name} VALUES (109, 'refused', 'many')")
    refused = events.and_(page.locator('tr.dead_letter[data-doc="109"]'))
    expect(refused).to_have_count(1)
    expect(refused.locator("td.outcome")).to_contain_text("dead letter: 400")
    dead_letter_url = refused.locator("td.doc a").get_attribute("href")
    assert dead_letter_url == (
        f"/admin/syncer/deadletter/?subscription__id__exact={subscription_id}&q=109"
    )
    expect(row.locator('[data-field="dead_letters"]')).to_have_text("1")
    screenshot(page, "03-dead-letter")

    # OpenSearch goes away: the status badge says so, and recovers with it.
    with opensearch_proxy.down():
        source_conn.execute(f"INSERT INTO {table_name} VALUES (107, 'while down', '4')")
        expect(badge).to_have_attribute("data-status", "sink_unavailable", timeout=30_000)
        screenshot(page, "04-opensearch-down")
    expect(badge).to_have_attribute("data-status", LIVE, timeout=30_000)
    expect(events.and_(page.locator('[data-doc="107"]'))).to_have_count(1, timeout=30_000)

    # The web server restarts: the page reconnects by itself.
    console_server.restart()
    expect(page.get_by_test_id("connection")).to_have_attribute(
        "data-state", "open", timeout=20_000
    )
    expect(tail_state).to_have_attribute("data-filter-op", "", timeout=20_000)
    source_conn.execute(f"INSERT INTO {table_name} VALUES (108, 'after restart', '5')")
    expect(events.and_(page.locator('[data-doc="108"]'))).to_have_count(1)

    # Paused, the tail holds new events back; resumed, it shows them.
    page.get_by_test_id("pause").click()
    source_conn.execute(f"INSERT INTO {table_name} VALUES (110, 'while paused', '6')")
    expect(page.locator("#tail-held")).to_have_text("1")
    expect(events.and_(page.locator('[data-doc="110"]'))).to_have_count(0)
    page.get_by_test_id("pause").click()
    expect(events.first).to_have_attribute("data-doc", "110")

    # The worker stops: no heartbeat for 3 s is "Worker offline".
    worker.terminate()
    expect(page.get_by_test_id("worker")).to_have_attribute("data-state", "offline", timeout=15_000)
    expect(page.get_by_test_id("worker")).to_have_text("Worker offline")
    expect(page).to_have_title(re.compile(r"^Worker offline · "))
    screenshot(page, "05-worker-offline")

    # A document id leads to its trace (a new tab): the row against the document as the
    # index holds it, and that document's version.
    indexed = events.and_(page.locator('[data-doc="105"]'))
    with page.expect_popup() as opened:
        indexed.locator("td.doc a").click()
    traced = opened.value
    expect(traced.get_by_test_id("agreement")).to_have_attribute("data-agreement", "agree")
    expect(traced.get_by_test_id("fields").locator('tr[data-field="label"]')).to_contain_text(
        '"live"'
    )
    version = traced.get_by_test_id("indexed")
    expect(version).to_contain_text(f"({int(indexed.get_attribute('data-position') or 0)})")

    # The dead letter's link leads to that entry in the admin.
    admin = page.context.new_page()
    admin.goto(f"{console_server.url}{dead_letter_url}")
    expect(admin.locator("#result_list tbody tr")).to_have_count(1)
    expect(admin.locator("#result_list tbody tr")).to_contain_text("109")
    screenshot(admin, "06-dead-letter-in-admin")
    # The admin's header links back to the monitor.
    expect(admin.locator("#live-monitor-link")).to_have_attribute("href", "/console/")
