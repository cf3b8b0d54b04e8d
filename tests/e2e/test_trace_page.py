"""The admin's trace page in a real browser: reached from the monitor's event tail, it
shows a document the index holds differently from its row, and that document's live events."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from opensearchpy import OpenSearch
from playwright.sync_api import expect

from tests.e2e.conftest import ConsoleServer, screenshot

NAME = "e2e-traced"
LIVE = re.compile(r"^(streaming|caught_up)$")


@pytest.fixture
def traced(source_conn: psycopg.Connection, table_name: str, make_subscription: Any) -> str:
    """A source table and its subscription, made before the browser starts (whose event
    loop would make Django refuse ORM calls here)."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, label text, n int)")
    source_conn.execute(f"INSERT INTO {table_name} VALUES (1, 'seed', 1)")
    make_subscription(NAME, table_name)
    return table_name


def log_in(page: Any, server: ConsoleServer, user: tuple[str, str]) -> None:
    page.goto(f"{server.url}/console/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/console/"))
    page.fill("#id_username", user[0])
    page.fill("#id_password", user[1])
    page.click("input[type=submit]")
    expect(page).to_have_url(re.compile(r"/console/(#.*)?$"))


def monitor_row(page: Any, server: ConsoleServer, user: tuple[str, str], name: str) -> Any:
    """Log in to the monitor and wait until subscription `name` streams; its row."""
    log_in(page, server, user)
    row = page.locator(f'#subscriptions tr[data-subscription="{name}"]')
    expect(row.locator('[data-field="status"]')).to_have_attribute(
        "data-status", LIVE, timeout=30_000
    )
    return row


def test_a_drifted_document_traced_from_the_tail_differs_then_agrees_after_its_next_change(
    source_conn: psycopg.Connection,
    traced: str,
    staff_user: tuple[str, str],
    console_server: ConsoleServer,
    start_worker: Any,
    search: OpenSearch,
    browser_page: Any,
) -> None:
    start_worker("--subscription", NAME)
    page = browser_page
    monitor_row(page, console_server, staff_user, NAME)
    expect(page.get_by_test_id("tail-connection")).to_have_attribute("data-state", "open")

    source_conn.execute(f"INSERT INTO {traced} VALUES (201, 'fresh', 2)")
    event = page.get_by_test_id("events").locator('tbody tr[data-doc="201"]')
    expect(event).to_have_count(1)
    position = int(event.get_attribute("data-position") or 0)

    # Someone writes to the index behind the product's back, one position ahead.
    search.index(
        index=NAME,
        id="201",
        body={"id": 201, "label": "edited by hand", "n": 2},
        version=position + 1,
        version_type="external",
        refresh=True,
    )

    # The document id in the tail leads to its trace, in a new tab.
    link = event.locator("td.doc a")
    expect(link).to_have_attribute(
        "href", f"/admin/syncer/subscription/trace/?subscription={NAME}&key=201"
    )
    with page.expect_popup() as opened:
        link.click()
    trace = opened.value
    expect(trace.get_by_test_id("agreement")).to_have_attribute("data-agreement", "differ")
    expect(trace.get_by_test_id("differing")).to_have_text("Fields that differ: label")
    label = trace.get_by_test_id("fields").locator('tr[data-field="label"]')
    expect(label).to_have_attribute("data-differs", "true")
    expect(label).to_contain_text('"fresh"')
    expect(label).to_contain_text('"edited by hand"')
    expect(trace.get_by_test_id("fields").locator('tr[data-field="n"]')).not_to_have_attribute(
        "data-differs", "true"
    )
    expect(trace.get_by_test_id("dead-letter")).to_have_text("none")
    expect(trace.get_by_test_id("events-connection")).to_have_attribute("data-state", "open")
    expect(trace.get_by_test_id("events").locator("tbody tr")).to_have_count(0)
    screenshot(trace, "trace-01-differ")

    # The row changes: its event appears on the trace page as the worker writes it (a
    # newer position than the hand-made version), and another document's does not.
    source_conn.execute(f"UPDATE {traced} SET label = 'fixed by the sync' WHERE id = 201")
    source_conn.execute(f"INSERT INTO {traced} VALUES (2010, 'other document', 3)")
    live = trace.get_by_test_id("events").locator('tbody tr[data-op="upsert"]')
    expect(live).to_have_count(1, timeout=20_000)
    expect(live).to_contain_text("ok")
    expect(page.get_by_test_id("events").locator('tbody tr[data-doc="2010"]')).to_have_count(1)
    expect(trace.get_by_test_id("events").locator("tbody tr")).to_have_count(1)
    screenshot(trace, "trace-02-live-event")

    trace.reload()
    expect(trace.get_by_test_id("agreement")).to_have_attribute("data-agreement", "agree")
    expect(trace.get_by_test_id("fields").locator('tr[data-field="label"]')).to_contain_text(
        '"fixed by the sync"'
    )
    screenshot(trace, "trace-03-agree")
