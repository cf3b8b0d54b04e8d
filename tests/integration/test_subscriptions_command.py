"""`manage.py subscriptions apply|list|show` against the real database."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from syncer.models import Subscription
from tests.support.process import database_url, manage

pytestmark = pytest.mark.django_db

SECRET_DSN = "postgresql://u:s3cret@h/db"
NO_SUCH_DB = "postgresql://postgres@127.0.0.1:5432/searchsync_no_such_database"

ORDERS_YAML = """\
subscriptions:
  - name: orders
    source:
      kind: postgres
      dsn: postgresql://u:s3cret@h/db
      relation: public.orders
      key: [order_id]
    index: {name: orders}
  - name: customers
    source: {kind: postgres, dsn: env:SOURCE_DATABASE_URL, relation: customers}
    index: {name: customers}
    batch: {max_size: 100, max_age_ms: 250}
"""


def run(*args: str, stdin: io.StringIO | None = None) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    extra: dict[str, Any] = {"stdin": stdin} if stdin is not None else {}
    call_command("subscriptions", *args, stdout=out, stderr=err, **extra)
    return out.getvalue(), err.getvalue()


def run_failing(*args: str, stdin: io.StringIO | None = None) -> tuple[str, str]:
    err = io.StringIO()
    extra: dict[str, Any] = {"stdin": stdin} if stdin is not None else {}
    with pytest.raises(CommandError) as caught:
        call_command("subscriptions", *args, stdout=io.StringIO(), stderr=err, **extra)
    return str(caught.value), err.getvalue()


@pytest.fixture
def orders_file(tmp_path: Path) -> Path:
    path = tmp_path / "subscriptions.yaml"
    path.write_text(ORDERS_YAML)
    return path


@pytest.fixture
def with_state() -> Subscription:
    """`orders` as a worker leaves it: streaming, a checkpoint, an error quoting a DSN."""
    call_command(
        "subscriptions", "apply", "-", stdin=io.StringIO(ORDERS_YAML), stdout=io.StringIO()
    )
    now = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    Subscription.objects.filter(name="orders").update(
        checkpoint=0x16_B374D848,
        checkpoint_at=now,
        snapshot_completed_at=now,
        status=Subscription.Status.STREAMING,
        status_message="streaming, 12 changes/s",
        status_changed_at=now,
        last_error="could not connect to postgresql://u:s3cret@h/db: timeout\nretrying",
        last_error_at=now,
    )
    return Subscription.objects.get(name="orders")


def test_apply_prints_one_line_per_subscription_and_a_summary(orders_file: Path) -> None:
    out, err = run("apply", str(orders_file))

    assert out.splitlines() == [
        "created      orders",
        "created      customers",
        "2 subscriptions: 2 created, 0 updated, 0 unchanged, 0 deleted",
    ]
    assert err == ""
    assert Subscription.objects.get(name="customers").batch_max_age_ms == 250

    out, _ = run("apply", str(orders_file))
    assert out.splitlines()[-1] == "2 subscriptions: 0 created, 0 updated, 2 unchanged, 0 deleted"


def test_apply_reads_yaml_or_json_from_stdin() -> None:
    out, _ = run("apply", "-", stdin=io.StringIO(ORDERS_YAML))
    assert "created      orders" in out

    as_json = json.dumps(
        {
            "subscriptions": [
                {
                    "name": "orders",
                    "source": {"kind": "postgres", "dsn": SECRET_DSN, "relation": "orders"},
                    "index": {"name": "orders"},
                }
            ]
        }
    )
    out, _ = run("apply", "-", stdin=io.StringIO(as_json))
    assert out.splitlines()[0] == (
        "updated      orders: source.relation: public.orders -> orders; "
        'source.key: ["order_id"] -> []'
    )


def test_apply_shows_changes_with_file_paths_and_a_redacted_dsn(orders_file: Path) -> None:
    run("apply", str(orders_file))
    orders_file.write_text(
        ORDERS_YAML.replace("u:s3cret@h/db", "u:n3w-s3cret@h2/db").replace("100", "200")
    )

    out, _ = run("apply", str(orders_file))

    assert out.splitlines() == [
        "updated      orders: source.dsn: postgresql://u:***@h/db -> postgresql://u:***@h2/db",
        "updated      customers: batch.max_size: 100 -> 200",
        "2 subscriptions: 0 created, 2 updated, 0 unchanged, 0 deleted",
    ]
    assert "s3cret" not in out


def test_apply_dry_run_says_what_would_change_and_writes_nothing(orders_file: Path) -> None:
    out, _ = run("apply", str(orders_file), "--dry-run")

    assert out.splitlines() == [
        "would create orders",
        "would create customers",
        "2 subscriptions: 2 created, 0 updated, 0 unchanged, 0 deleted "
        "(dry run: nothing was written)",
    ]
    assert not Subscription.objects.exists()


def test_apply_prune_prints_deletions_and_their_warnings(orders_file: Path) -> None:
    run("apply", str(orders_file))
    Subscription.objects.filter(name="customers").update(source_dsn=NO_SUCH_DB)
    orders_file.write_text(ORDERS_YAML.split("  - name: customers")[0])

    out, err = run("apply", str(orders_file), "--prune")

    assert out.splitlines() == [
        "unchanged    orders",
        "deleted      customers",
        "2 subscriptions: 0 created, 0 updated, 1 unchanged, 1 deleted",
    ]
    assert err.startswith("warning: subscription customers: could not drop replication slot")
    assert "searchsync_no_such_database" in err
    assert list(Subscription.objects.values_list("name", flat=True)) == ["orders"]


def test_apply_of_an_invalid_file_prints_every_error_and_changes_nothing(
    orders_file: Path,
) -> None:
    run("apply", str(orders_file))
    before = list(Subscription.objects.order_by("name").values())
    orders_file.write_text(
        ORDERS_YAML.replace("public.orders", "public..x")
        .replace("{name: customers}", "{name: Customers}")
        .replace("max_size: 100", "max_size: 100, pause_at: 3")
        + "  - name: fresh\n    source: {kind: materialize, dsn: env:MZ_SOURCE_URL, relation: t}\n"
        "    index: {name: fresh}\n"
    )

    message, err = run_failing("apply", str(orders_file), "--prune")

    assert message == f"4 errors in {orders_file}; nothing was applied"
    assert err.splitlines() == [
        "subscription 'orders': source.relation: 'public..x' is not a table name; write table or "
        'schema.table (double-quote names with capitals or dots: "My Schema"."Orders")',
        "subscription 'customers': batch.pause_at: unknown key; batch takes max_size, max_age_ms",
        "subscription 'customers': index.name: index name 'Customers' must be lowercase",
        "subscription 'fresh': source.key: materialize sources need key columns: the columns "
        "that identify a document, e.g. [order_id] (a view has no primary key to default to)",
    ]
    assert list(Subscription.objects.order_by("name").values()) == before


def test_apply_of_malformed_yaml_from_stdin_names_the_line() -> None:
    message, err = run_failing("apply", "-", stdin=io.StringIO("subscriptions:\n - a\n  b: c\n"))

    assert message == "1 error in <stdin>; nothing was applied"
    assert err.startswith("<stdin>, line 3, column 4: ")


def test_apply_of_a_missing_file_says_so(tmp_path: Path) -> None:
    message, err = run_failing("apply", str(tmp_path / "nope.yaml"))

    assert message == f"1 error in {tmp_path / 'nope.yaml'}; nothing was applied"
    assert "cannot read the file" in err


def test_list_prints_a_table_without_the_password(with_state: Subscription) -> None:
    out, _ = run("list")

    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "ENABLED",
        "KIND",
        "RELATION",
        "INDEX",
        "STATUS",
        "CHECKPOINT",
        "LAST",
        "ERROR",
    ]
    assert lines[1].split()[:7] == [
        "customers",
        "yes",
        "postgres",
        "customers",
        "customers",
        "stopped",
        "-",
    ]
    assert lines[2].split()[:7] == [
        "orders",
        "yes",
        "postgres",
        "public.orders",
        "orders",
        "streaming",
        "16/B374D848",
    ]
    assert lines[2].endswith("could not connect to postgresql://u:***@h/db: timeout retry…")
    assert "s3cret" not in out


def test_list_json_is_machine_readable_and_password_free(with_state: Subscription) -> None:
    out, _ = run("list", "--json")

    rows = json.loads(out)
    assert [row["name"] for row in rows] == ["customers", "orders"]
    assert rows[1] == {
        "name": "orders",
        "enabled": True,
        "kind": "postgres",
        "relation": "public.orders",
        "index": "orders",
        "status": "streaming",
        "checkpoint": "16/B374D848",
        "last_error": "could not connect to postgresql://u:***@h/db: timeout retrying",
    }
    assert "s3cret" not in out


def test_show_prints_every_field_with_the_dsn_redacted(with_state: Subscription) -> None:
    out, _ = run("show", "orders")

    fields = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    fields = {key: value.strip() for key, value in fields.items()}
    assert fields["source.dsn"] == "postgresql://u:***@h/db"
    assert fields["source.key"] == '["order_id"]'
    assert fields["index.name"] == "orders"
    assert fields["slot_name"] == with_state.slot_name
    assert fields["status"] == "streaming"
    assert fields["status_message"] == "streaming, 12 changes/s"
    assert fields["checkpoint"] == "16/B374D848"
    assert fields["snapshot_completed_at"] == "2026-03-04T05:06:07+00:00"
    assert fields["last_error"] == "could not connect to postgresql://u:***@h/db: timeout"
    assert "retrying" in out
    assert "s3cret" not in out


def test_show_json_has_the_same_fields(with_state: Subscription) -> None:
    out, _ = run("show", "orders", "--json")

    shown = json.loads(out)
    assert shown["source"] == {
        "kind": "postgres",
        "dsn": "postgresql://u:***@h/db",
        "relation": "public.orders",
        "key": ["order_id"],
    }
    assert shown["checkpoint"] == "16/B374D848"
    assert shown["checkpoint_position"] == 0x16_B374D848
    assert shown["batch"] == {"max_size": 1000, "max_age_ms": 5000}
    assert "s3cret" not in out


def test_show_of_a_subscription_without_state_uses_dashes(with_state: Subscription) -> None:
    out, _ = run("show", "customers")

    assert "checkpoint:" in out
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert fields["checkpoint"] == "-"
    assert fields["source.key"] == "(primary key)"
    assert fields["source.dsn"] == "env:SOURCE_DATABASE_URL"


def test_show_of_an_unknown_name_lists_the_known_ones(with_state: Subscription) -> None:
    message, _ = run_failing("show", "x")

    assert message == "no subscription named 'x' (known: customers, orders)"


def test_show_of_a_name_with_a_nul_character_finds_nothing() -> None:
    message, _ = run_failing("show", "or\x00ders")

    assert message == "no subscription named 'or\\x00ders' (known: none)"


def test_the_command_line_exits_non_zero_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"subscriptions": [{"name": "orders"}]}')
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
    }

    result = manage("subscriptions", "apply", str(bad), env=env)

    assert result.returncode == 1
    assert "subscription 'orders': source: required; add it" in result.stderr
    assert "CommandError: 2 errors in" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_the_command_line_exits_zero_on_success(tmp_path: Path) -> None:
    good = tmp_path / "subs.yaml"
    good.write_text(ORDERS_YAML)
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
    }

    result = manage("subscriptions", "apply", str(good), env=env)

    assert result.returncode == 0, result.stderr
    assert "2 subscriptions: 2 created" in result.stdout
    assert Subscription.objects.count() == 2


MATERIALIZE_YAML = """\
subscriptions:
  - name: search
    source:
      kind: materialize
      dsn: postgresql://mz:s3cret@mz:6875/materialize
      relation: |
        SELECT order_id, status
        FROM orders_search_source_mv WHERE status <> 'deleted'
      key: [order_id]
      cluster: serving
      envelope: upsert
    index: {name: search}
  - name: views
    source: {kind: materialize, dsn: env:MZ_SOURCE_URL, relation: shop.public.orders_mv, key: [id]}
    index: {name: views}
"""


def test_list_shows_a_materialize_sources_cluster_and_envelope() -> None:
    run("apply", "-", stdin=io.StringIO(MATERIALIZE_YAML))

    out, _ = run("list")
    rows = json.loads(run("list", "--json")[0])

    lines = out.splitlines()
    assert lines[1].startswith(
        "search  yes      materialize (cluster serving, upsert)  SELECT order_id, status FROM "
        "orders_search_source_mv WHERE …  search  stopped"
    )
    assert lines[2].split()[:4] == ["views", "yes", "materialize", "shop.public.orders_mv"]
    assert rows[0]["relation"] == (
        "SELECT order_id, status\nFROM orders_search_source_mv WHERE status <> 'deleted'\n"
    )
    assert (rows[0]["cluster"], rows[0]["envelope"]) == ("serving", "upsert")
    assert (rows[1]["cluster"], rows[1]["envelope"]) == ("", "diff")
    assert "s3cret" not in out + json.dumps(rows)
