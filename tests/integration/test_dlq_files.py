"""Dead letters to and from NDJSON: `GET /api/dlq/export`, `manage.py dlq export` and
`manage.py dlq import`, against the real database."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import AsyncClient, Client

from console.models import ApiToken
from syncer.errors import DeadLetterFileRefused
from syncer.models import DeadLetter
from syncer.operations import dead_letter_files
from tests.support.factories import entry, subscription
from tests.support.users import operator, staff_with, token_client, viewer

pytestmark = pytest.mark.django_db(transaction=True)

COMPARED = (
    "subscription__name",
    "doc_id",
    "action",
    "payload",
    "version",
    "attempts",
    "error_status",
    "error_type",
    "error_reason",
    "first_failed_at",
    "last_attempt_at",
)


@pytest.fixture(autouse=True)
async def close_connections() -> AsyncIterator[None]:
    yield
    # The ASGI handler reached the database from sync_to_async's thread: close those
    # connections, or the test database cannot be dropped at the end.
    await sync_to_async(connections.close_all)()


@pytest.fixture
def queue() -> list[DeadLetter]:
    """orders: three entries of every shape; customers: one."""
    orders, customers = subscription(), subscription("customers")
    entries = [
        entry(orders, "o-1", payload={"total": "x", "lines": [{"sku": "é", "n": 2}]}),
        entry(
            orders,
            "eu/west|7 ünïcode",
            action="delete",
            version=2**62,
            age=dt.timedelta(days=8),
            error_type="version_conflict_engine_exception",
            attempts=4,
        ),
        entry(orders, "o-3", payload={"big": 123456789012345678901234567890}, attempts=2),
        entry(customers, "c-1", age=dt.timedelta(hours=3), error_type="strict_dynamic_mapping"),
    ]
    DeadLetter.objects.filter(pk=entries[2].pk).update(error_status=None)
    return entries


def rows() -> list[tuple[Any, ...]]:
    """Every dead letter's fields that an export carries, in a stable order."""
    return sorted(DeadLetter.objects.values_list(*COMPARED), key=lambda r: (r[0], r[1]))


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("dlq", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def refused(*args: str) -> CommandError:
    with pytest.raises(CommandError) as caught:
        run(*args)
    return caught.value


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def write(path: Path, lines: list[Any]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def exported(tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    """`dlq export` of every entry, to a file: (its path, its lines)."""
    out, _ = run("export")
    path = tmp_path / "dlq.ndjson"
    path.write_text(out)
    return str(path), lines_of(out)


# -- export, then import ---------------------------------------------------------------


def test_export_then_import_into_an_empty_queue_gives_the_same_entries(
    queue: list[DeadLetter], tmp_path: Path
) -> None:
    before = rows()
    out, err = run("export")
    lines = lines_of(out)
    path = tmp_path / "dlq.ndjson"
    path.write_text(out)
    DeadLetter.objects.all().delete()  # the other environment's queue: empty

    report, _ = run("import", str(path))

    assert rows() == before
    assert lines[-1] == {"summary": {"dead_letters": 4, "complete": True}}
    assert "id" not in lines[0]  # this database's own
    assert lines[0]["subscription"] == "orders"
    assert err.strip() == "exported 4 dead letters"
    assert report.strip() == (
        "imported 4 dead letters (4 new, 0 replacing older ones), skipped 0 already there: "
        "customers 1, orders 3"
    )


def test_importing_the_same_file_twice_skips_every_entry(
    queue: list[DeadLetter], tmp_path: Path
) -> None:
    path, _ = exported(tmp_path)
    before = rows()

    report, _ = run("import", path)

    assert rows() == before
    assert "imported 0 dead letters (0 new, 0 replacing older ones), skipped 4" in report


def test_an_import_keeps_the_newer_version_of_each_document(
    queue: list[DeadLetter], tmp_path: Path
) -> None:
    path, _ = exported(tmp_path)
    # Here, o-1 failed again at a newer version; o-3's entry is older than the file's.
    DeadLetter.objects.filter(doc_id="o-1").update(version=500, payload={"total": "newer"})
    DeadLetter.objects.filter(doc_id="o-3").update(version=5, payload={"total": "older"})

    report, _ = run("import", path)

    kept = dict(DeadLetter.objects.values_list("doc_id", "payload"))
    assert kept["o-1"] == {"total": "newer"}
    assert kept["o-3"] == {"big": 123456789012345678901234567890}
    assert "imported 1 dead letter (0 new, 1 replacing older ones), skipped 3" in report


def test_a_dry_run_counts_and_imports_nothing(queue: list[DeadLetter], tmp_path: Path) -> None:
    path, _ = exported(tmp_path)
    DeadLetter.objects.all().delete()

    report, _ = run("import", path, "--dry-run")

    assert not DeadLetter.objects.exists()
    assert "nothing was imported: would have imported 4 dead letters (4 new" in report


def test_export_takes_the_subscription_and_age_of_the_other_subcommands(
    queue: list[DeadLetter],
) -> None:
    out, _ = run("export", "--subscription", "orders", "--older-than", "1d")

    assert [line.get("doc_id") for line in lines_of(out)] == ["eu/west|7 ünïcode", None]
    assert "no subscription named 'nope'" in str(refused("export", "--subscription", "nope"))


def test_import_of_many_entries_goes_in_batches(tmp_path: Path) -> None:
    orders = subscription()
    now = dt.datetime.now(dt.UTC).isoformat()
    fields = {"action": "index", "version": 7, "first_failed_at": now, "last_attempt_at": now}
    lines: list[Any] = [
        {"subscription": "orders", "doc_id": f"d{i}", "payload": {"i": i}, **fields}
        for i in range(1200)
    ]
    lines.append({"summary": {"dead_letters": 1200, "complete": True}})

    report = dead_letter_files.import_lines((json.dumps(line) for line in lines), batch_size=500)

    assert (report.added, report.skipped) == (1200, 0)
    assert DeadLetter.objects.filter(subscription=orders).count() == 1200
    assert DeadLetter.objects.get(doc_id="d1199").payload == {"i": 1199}


# -- refusals ----------------------------------------------------------------------------


def test_entries_of_unknown_subscriptions_refuse_the_whole_file(
    queue: list[DeadLetter], tmp_path: Path
) -> None:
    _, lines = exported(tmp_path)
    entries = lines[:-1]
    ghost = entries[0] | {"subscription": "ghost", "doc_id": "g1"}
    phantom = entries[0] | {"subscription": "phantom", "doc_id": "p1"}
    file = [*entries, ghost, ghost | {"doc_id": "g2"}, phantom, summary(7)]
    DeadLetter.objects.all().delete()

    # Batches of 2: the first entries, of known subscriptions, are written before it ends.
    with pytest.raises(DeadLetterFileRefused) as caught:
        dead_letter_files.import_lines([json.dumps(line) for line in file], batch_size=2)
    command = refused("import", write(tmp_path / "ghosts.ndjson", file))

    assert str(caught.value) == (
        "no subscription named 'ghost' (first on line 5), 'phantom' (first on line 7) in this "
        "console: create them first (manage.py subscriptions apply), or remove their entries "
        "from the file; nothing was imported"
    )
    assert "ghosts.ndjson: no subscription named 'ghost'" in str(command)
    assert not DeadLetter.objects.exists()


NOW = "2026-01-31T12:00:00+00:00"
GOOD = {
    "subscription": "orders",
    "doc_id": "d1",
    "action": "index",
    "version": 10,
    "payload": {"n": 1},
    "first_failed_at": NOW,
    "last_attempt_at": NOW,
}


def summary(n: int, complete: bool = True) -> dict[str, Any]:
    return {"summary": {"dead_letters": n, "complete": complete}}


@pytest.mark.parametrize(
    ("third", "message"),
    [
        ("{not json", "line 3: not JSON"),
        ([1, 2], "line 3: not a dead letter (a JSON object with the fields subscription"),
        ({k: v for k, v in GOOD.items() if k != "version"}, "line 3, field 'version': missing"),
        (GOOD | {"version": "10"}, "line 3, field 'version': '10' is not a whole number"),
        (GOOD | {"version": -1}, "line 3, field 'version': -1 is not a whole number from 0"),
        (GOOD | {"action": "upsert"}, "line 3, field 'action': 'upsert' is neither"),
        (GOOD | {"payload": None}, "line 3, field 'payload': an index entry's payload must be"),
        (GOOD | {"colour": "red"}, "line 3, field 'colour': not a dead letter's field"),
        (GOOD | {"doc_id": ""}, "line 3, field 'doc_id': is empty"),
        (GOOD | {"error_status": 99}, "line 3, field 'error_status': 99 is not an HTTP status"),
        (GOOD | {"first_failed_at": "2026-01-31"}, "line 3, field 'first_failed_at': '2026-01-31'"),
        (GOOD | {"payload": {"a": "\x00"}}, "line 3, field 'payload': holds a NUL character"),
        (summary(2), "line 4: comes after the summary line (line 3)"),
    ],
)
def test_a_bad_line_refuses_the_file_naming_the_line(
    tmp_path: Path, third: Any, message: str
) -> None:
    subscription()
    first, second = GOOD | {"doc_id": "a"}, GOOD | {"doc_id": "b"}
    path = tmp_path / "bad.ndjson"
    text = "".join(json.dumps(line) + "\n" for line in (first, second))
    text += (third if isinstance(third, str) else json.dumps(third)) + "\n"
    text += json.dumps(summary(3)) + "\n"
    path.write_text(text)

    error = refused("import", str(path))

    assert str(error).startswith(f"{path}: {message}"), str(error)
    assert not DeadLetter.objects.exists()


@pytest.mark.parametrize(
    ("last", "message"),
    [
        (None, "the file has no summary line"),
        (summary(1), "line 3: the summary counts 1 dead letters but the file holds 2"),
        (summary(2, complete=False), "line 3: the export was incomplete"),
        ({"summary": {"complete": True}}, "line 3, field 'summary.dead_letters'"),
    ],
)
def test_a_file_not_ending_in_its_complete_summary_is_refused(
    tmp_path: Path, last: Any, message: str
) -> None:
    subscription()
    lines = [GOOD | {"doc_id": "a"}, GOOD | {"doc_id": "b"}] + ([last] if last else [])

    error = refused("import", write(tmp_path / "cut.ndjson", lines))

    assert message in str(error)
    assert str(error).endswith("nothing was imported") or "summary.dead_letters" in message
    assert not DeadLetter.objects.exists()


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    error = refused("import", str(tmp_path / "missing.ndjson"))

    assert error.returncode == 2
    assert "cannot read" in str(error)


# -- the API -----------------------------------------------------------------------------


def streamed(response: Any) -> str:
    """The body of a streaming response of the (WSGI) test client."""
    return b"".join(response.streaming_content).decode()


async def body_of(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


@pytest.fixture
def token() -> str:
    return ApiToken.issue(operator(), "ci")[1]


async def test_api_export_under_asgi_is_the_command_export(
    queue: list[DeadLetter], token: str
) -> None:
    command, _ = await sync_to_async(run)("export")

    headers = {"Authorization": f"Bearer {token}"}
    response = await AsyncClient().get("/api/dlq/export", headers=headers)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert (await body_of(response)).decode() == command


def test_api_export_takes_the_list_filters(queue: list[DeadLetter]) -> None:
    client = token_client(operator())
    filters = {"subscription": "orders", "action": "index", "newer_than": "1d"}

    listed = client.get("/api/dlq", filters).json()["items"]
    response = client.get("/api/dlq/export", filters)
    lines = lines_of(streamed(response))

    assert response.status_code == 200
    assert sorted(line["doc_id"] for line in lines[:-1]) == sorted(i["doc_id"] for i in listed)
    assert sorted(i["doc_id"] for i in listed) == ["o-1", "o-3"]
    assert lines[-1] == {"summary": {"dead_letters": 2, "complete": True}}
    bad = client.get("/api/dlq/export", {"older_than": "soon"})
    assert bad.status_code == 422
    unknown = client.get("/api/dlq/export", {"subscription": "nope"})
    assert unknown.status_code == 404


def test_api_export_needs_the_dead_letter_view_permission(queue: list[DeadLetter]) -> None:
    revoked_token, revoked_text = ApiToken.issue(viewer("gone"), "ci")
    revoked_token.revoke()
    statuses = {
        "viewer": token_client(viewer()).get("/api/dlq/export"),
        "no_view": token_client(staff_with("clerk", ("add",))).get("/api/dlq/export"),
        "revoked": Client(headers={"Authorization": f"Bearer {revoked_text}"}).get(
            "/api/dlq/export"
        ),
        "anonymous": Client().get("/api/dlq/export"),
    }

    codes = {who: response.status_code for who, response in statuses.items()}
    assert codes == {"viewer": 200, "no_view": 403, "revoked": 401, "anonymous": 401}
    viewed = lines_of(streamed(statuses["viewer"]))
    assert len(viewed) == 5
    assert b"o-1" not in statuses["no_view"].content
