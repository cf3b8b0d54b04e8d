"""`subscriptions apply|list|show`: declarative configuration and a look at each feed."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncer import text
from syncer.errors import DeadLettersRemain, DeclarationError, IndexNameTaken, UnknownSubscription
from syncer.models import Subscription
from syncer.operations import declarations, describe, subscriptions
from syncer.operations.subscriptions import Action, ApplyReport
from syncer.sources.kinds import format_position

_VERBS = {
    Action.CREATED: ("created", "would create"),
    Action.UPDATED: ("updated", "would update"),
    Action.UNCHANGED: ("unchanged", "unchanged"),
    Action.DELETED: ("deleted", "would delete"),
}


class Command(BaseCommand):
    help = "Apply a subscriptions file, list subscriptions, or show one."
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        apply = actions.add_parser("apply", help="create or update subscriptions from a file")
        apply.add_argument("file", help="a JSON or YAML subscriptions file; - reads stdin")
        apply.add_argument(
            "--prune", action="store_true", help="delete subscriptions the file does not declare"
        )
        apply.add_argument(
            "--force",
            action="store_true",
            help="with --prune: also delete subscriptions that still have dead letters "
            "(the dead letters go with them)",
        )
        apply.add_argument("--dry-run", action="store_true", help="report, but change nothing")
        listing = actions.add_parser("list", help="one line per subscription")
        listing.add_argument("--json", action="store_true", help="print JSON")
        show = actions.add_parser("show", help="every field of one subscription")
        show.add_argument("name")
        show.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "apply":
            self.apply_file(options["file"], options["prune"], options["dry_run"], options)
        elif action == "list":
            self.list_subscriptions(options["json"])
        else:
            self.show_subscription(options["name"], options["json"])

    def apply_file(self, path: str, prune: bool, dry_run: bool, options: dict[str, Any]) -> None:
        try:
            if path == "-":
                stream = options.get("stdin") or sys.stdin
                text = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
                specs = declarations.parse(text, filename="<stdin>")
            else:
                specs = declarations.load(path)
        except DeclarationError as exc:
            for error in exc.errors:
                self.stderr.write(error)
            count = len(exc.errors)
            raise CommandError(
                f"{count} error{'s' if count > 1 else ''} in {'<stdin>' if path == '-' else path}; "
                "nothing was applied"
            ) from None
        where = "<stdin>" if path == "-" else path
        try:
            report = subscriptions.apply_subscriptions(
                specs, prune=prune, dry_run=dry_run, force=options.get("force", False)
            )
        except IndexNameTaken as exc:
            field = declarations.FIELD_LABELS["index_name"]
            for name, message in exc.errors:
                self.stderr.write(f"subscription '{name}': {field}: {message}")
            count = len(exc.errors)
            raise CommandError(
                f"{count} error{'s' if count > 1 else ''} in {where}; nothing was applied"
            ) from None
        except DeadLettersRemain as exc:
            raise CommandError(
                f"{exc}: add --force to delete them with the subscriptions; nothing was applied"
            ) from None
        self._print_report(report)

    def list_subscriptions(self, as_json: bool) -> None:
        rows = [_list_row(s) for s in Subscription.objects.order_by("name")]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False))
            return
        table = [[key.replace("_", " ").upper() for key in _LIST_COLUMNS]]
        for row in rows:
            line = [_cell(key, row[key]) for key in _LIST_COLUMNS]
            line[_LIST_COLUMNS.index("kind")] = _kind_cell(row)
            table.append(line)
        widths = [max(len(line[i]) for line in table) for i in range(len(_LIST_COLUMNS))]
        for line in table:
            cells = (v.ljust(w) for v, w in zip(line, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())

    def show_subscription(self, name: str, as_json: bool) -> None:
        try:
            subscription = subscriptions.named(name, known=True)
        except UnknownSubscription as exc:
            # Said with the name cut short: it is echoed from the command line.
            raise CommandError(str(UnknownSubscription(text.short(name, 80), exc.known))) from None
        described = describe.describe(subscription)
        if as_json:
            self.stdout.write(json.dumps(described, indent=2, ensure_ascii=False))
            return
        lines = list(_flatten(described))
        width = max(len(key) for key, _ in lines)
        for key, value in lines:
            value = value.replace("\n", "\n" + " " * (width + 2))
            self.stdout.write(f"{key + ':':<{width + 1}} {value}")

    def _print_report(self, report: ApplyReport) -> None:
        for outcome in report.outcomes:
            verb = _VERBS[outcome.action][report.dry_run]
            changes = "; ".join(
                f"{declarations.FIELD_LABELS.get(c.field, c.field)}: {c.old} -> {c.new}"
                for c in outcome.changes
            )
            self.stdout.write(f"{verb:<12} {outcome.name}" + (f": {changes}" if changes else ""))
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        summary = ", ".join(f"{count} {action}" for action, count in report.counts.items())
        suffix = " (dry run: nothing was written)" if report.dry_run else ""
        self.stdout.write(f"{len(report.outcomes)} subscriptions: {summary}{suffix}")


_LIST_COLUMNS = (
    "name",
    "enabled",
    "kind",
    "relation",
    "index",
    "status",
    "checkpoint",
    "last_error",
)


def _list_row(s: Subscription) -> dict[str, Any]:
    row = {
        "name": s.name,
        "enabled": s.enabled,
        "kind": s.source_kind,
        "relation": s.relation,
        "index": s.index_name,
        "status": s.status,
        "checkpoint": None
        if s.checkpoint is None
        else format_position(s.source_kind, s.checkpoint),
        "last_error": text.short(s.last_error, 10_000),
    }
    row.update(describe.source_options(s))
    return row


def _kind_cell(row: dict[str, Any]) -> str:
    """The kind, with a Materialize source's cluster and envelope when not the defaults."""
    options = [f"cluster {row['cluster']}"] if row.get("cluster") else []
    if row.get("envelope", Subscription.SourceEnvelope.DIFF) != Subscription.SourceEnvelope.DIFF:
        options.append(str(row["envelope"]))
    return f"{row['kind']} ({', '.join(options)})" if options else str(row["kind"])


def _cell(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "last_error":
        return text.short(value, 60) or "-"
    if key == "relation":
        return text.short(value, 60)  # a query, on one line
    return "-" if value is None else str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for key, value in data.items():
        if isinstance(value, dict) and key not in {"settings", "mappings"}:
            lines += _flatten(value, f"{prefix}{key}.")
        elif key == "key" and not value:
            lines.append((f"{prefix}{key}", "(primary key)"))
        elif key == "cluster" and not value:
            lines.append((f"{prefix}{key}", "(the connection's default)"))
        elif isinstance(value, (dict, list)):
            lines.append((f"{prefix}{key}", json.dumps(value, ensure_ascii=False)))
        elif isinstance(value, bool):
            lines.append((f"{prefix}{key}", "yes" if value else "no"))
        else:
            lines.append((f"{prefix}{key}", "-" if value in (None, "") else str(value)))
    return lines
