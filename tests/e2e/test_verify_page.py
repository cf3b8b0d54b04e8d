"""Verification in a real browser: asked from the subscription's admin page, run by a real
worker process, its result page reloading itself until the repair is done, and the
monitor's Verified column showing it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from opensearchpy import OpenSearch
from playwright.sync_api import expect

from tests.e2e.conftest import ConsoleServer, screenshot
from tests.e2e.test_trace_page import monitor_row

NAME = "e2e-verified"


@pytest.fixture
def verified(source_conn: psycopg.Connection, table_name: str, make_subscription: Any) -> int:
    """A table of 20 rows and its subscription (made before the browser starts)."""
    source_conn.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, label text)")
    source_conn.execute(
        f"INSERT INTO {table_name} SELECT g, 'row ' || g FROM generate_series(1, 20) g"
    )
    return int(make_subscription(NAME, table_name).pk)


def test_a_verification_asked_in_the_admin_repairs_and_the_monitor_shows_it(
    verified: int,
    staff_user: tuple[str, str],
    console_server: ConsoleServer,
    start_worker: Any,
    search: OpenSearch,
    browser_page: Any,
) -> None:
    start_worker("--subscription", NAME)
    page = browser_page
    row = monitor_row(page, console_server, staff_user, NAME)
    expect(row.locator('[data-field="verified"]')).to_have_text("never")

    # Behind the product's back: one document changed, one removed.
    search.index(index=NAME, id="3", body={"id": 3, "label": "edited by hand"}, refresh=True)
    search.delete(index=NAME, id="4", refresh=True)

    page.goto(f"{console_server.url}/admin/syncer/subscription/{verified}/change/")
    page.click("a.control-verify")
    expect(page.locator("table.verify-subscriptions")).to_contain_text(NAME)
    page.check("#id_repair")
    screenshot(page, "verify-01-confirm")
    page.click(f"input[type=submit][value='Yes, verify {NAME}']")

    result = page.locator("fieldset.verification")
    expect(result).to_have_attribute("data-state", "done", timeout=30_000)
    expect(result.locator(".count-differs")).to_have_text("1")
    expect(result.locator(".count-missing")).to_have_text("1")
    expect(result.locator(".count-repaired")).to_have_text("2")
    examples = result.locator("table.verification-examples")
    expect(examples).to_contain_text("edited by hand")
    expect(examples.locator("a", has_text="3")).to_have_attribute(
        "href", f"/admin/syncer/subscription/trace/?subscription={NAME}&key=3"
    )
    screenshot(page, "verify-02-result")
    assert search.get(index=NAME, id="3")["_source"]["label"] == "row 3"
    assert search.get(index=NAME, id="4")["_source"]["label"] == "row 4"

    page.goto(f"{console_server.url}/console/")
    cell = page.locator(f'#subscriptions tr[data-subscription="{NAME}"] [data-field="verified"]')
    expect(cell).to_have_text("2 differ, 2 repaired", timeout=20_000)
    screenshot(page, "verify-03-monitor")
