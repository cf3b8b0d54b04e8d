"""`dlq list|stats|retry|purge|export|import`: look at the dead-letter queue, retry or
purge entries, move them between environments.

Every subcommand but import takes `--subscription NAME` and `--older-than AGE` (30m, 12h,
7d, 2w: since the last failure); retry and purge go through
`syncer.operations.dead_letters`, in bounded batches. `export` writes the entries to
stdout as NDJSON and `import FILE` puts such a file back, all or nothing
(`syncer.operations.dead_letter_files`). Bad arguments exit 2 before anything is touched.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncer import text
from syncer.errors import DeadLetterFileRefused, RetryAborted, UnknownSubscription
from syncer.management.arguments import positive_int
from syncer.models import DeadLetter
from syncer.operations import dead_letter_files, dead_letters

LIST_LIMIT = 50


class Command(BaseCommand):
    help = "List the dead-letter queue, count it, retry or purge entries."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(
            dest="command", required=True, metavar="{list,stats,retry,purge,export,import}"
        )
        listing = commands.add_parser("list", help="the newest entries, one line each")
        stats = commands.add_parser("stats", help="counts per subscription and error type")
        retry = commands.add_parser("retry", help="resubmit entries to OpenSearch")
        purge = commands.add_parser("purge", help="delete entries from the queue")
        export = commands.add_parser("export", help="write entries to stdout as NDJSON")
        load = commands.add_parser(
            "import", help="put an exported file back: all of it, or nothing"
        )
        load.add_argument("file", metavar="FILE", help="a file of `dlq export`; - reads stdin")
        load.add_argument(
            "--dry-run", action="store_true", help="check the file and count, import nothing"
        )
        for sub in (listing, stats, retry, purge, export):
            sub.add_argument("--subscription", metavar="NAME", help="only this subscription")
            sub.add_argument(
                "--older-than",
                type=dead_letters.age_argument,
                metavar="AGE",
                help="only entries that last failed at least this long ago (30m, 12h, 7d, 2w)",
            )
        for sub, default in ((listing, LIST_LIMIT), (retry, None), (purge, None)):
            sub.add_argument(
                "--limit",
                type=positive_int,
                default=default,
                metavar="N",
                help=f"at most N entries (default: {default or 'all'})",
            )
        for sub in (listing, stats):
            sub.add_argument("--json", action="store_true", help="print JSON")
        for sub in (retry, purge):
            sub.add_argument(
                "--dry-run", action="store_true", help="say what would be done, do nothing"
            )
        purge.add_argument(
            "--all",
            action="store_true",
            help="needed to purge without --subscription or --older-than: every entry",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        command = options["command"]
        if command == "import":
            self.import_file(options["file"], options["dry_run"])
            return
        if command == "purge" and not (
            options["subscription"] or options["older_than"] or options["all"]
        ):
            raise CommandError(
                "purge needs --subscription, --older-than or both (--all purges every dead letter)",
                returncode=2,
            )
        selection = _selection(options)
        what = selection.describe()
        if command == "list":
            self.list_entries(selection, what, options["limit"], options["json"])
        elif command == "stats":
            self.print_stats(selection, what, options["json"])
        elif command == "retry":
            self.retry(selection, what, options["limit"], options["dry_run"])
        elif command == "export":
            self.export(selection)
        else:
            self.purge(selection, what, options["limit"], options["dry_run"])

    def list_entries(
        self, selection: dead_letters.Selection, what: str, limit: int, as_json: bool
    ) -> None:
        entries = (
            selection.queryset()
            .select_related("subscription")
            .defer("payload")
            .order_by("-first_failed_at", "-pk")[:limit]
        )
        rows = [_list_row(entry) for entry in entries]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False))
            return
        if not rows:
            self.stdout.write(f"no dead letters ({what})")
            return
        self._table(
            ("ID", "SUBSCRIPTION", "DOC ID", "ACTION", "ERROR TYPE", "ATTEMPTS", "AGE", "REASON"),
            [
                (
                    str(row["id"]),
                    row["subscription"],
                    text.short(row["doc_id"], 40),
                    row["action"],
                    row["error_type"] or "-",
                    str(row["attempts"]),
                    row["age"],
                    text.short(row["error_reason"], 60) or "-",
                )
                for row in rows
            ],
        )
        if len(rows) == limit:
            total = dead_letters.count(selection)
            if total > limit:
                self.stdout.write(f"{limit} of {total} shown, newest first (--limit for more)")

    def print_stats(self, selection: dead_letters.Selection, what: str, as_json: bool) -> None:
        stats = dead_letters.stats(selection)
        oldest = stats.oldest
        if as_json:
            data = {
                "total": stats.total,
                "by_subscription": stats.by_subscription(),
                "by_error_type": stats.by_error_type(),
                "oldest": None if oldest is None else _list_row(oldest),
            }
            self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=_iso))
            return
        if not stats.total:
            self.stdout.write(f"no dead letters ({what})")
            return
        self._table(
            ("SUBSCRIPTION", "ERROR TYPE", "COUNT", "OLDEST", "NEWEST"),
            [
                (
                    row.subscription,
                    row.error_type or "-",
                    str(row.count),
                    text.age_text(row.oldest),
                    text.age_text(row.newest),
                )
                for row in stats.rows
            ],
        )
        self.stdout.write("")
        per_subscription = stats.by_subscription()
        for name, n in per_subscription.items():
            self.stdout.write(f"{name}: {n}")
        self.stdout.write(
            f"total: {stats.total} in {len(per_subscription)} "
            f"subscription{'s' if len(per_subscription) != 1 else ''}"
        )
        if oldest is not None:
            self.stdout.write(
                f"oldest: #{oldest.pk} {oldest.subscription.name} document "
                f"{text.short(oldest.doc_id, 80)}, failed "
                f"{text.age_text(oldest.last_attempt_at)} ago "
                f"({oldest.last_attempt_at.isoformat()})"
            )

    def retry(
        self, selection: dead_letters.Selection, what: str, limit: int | None, dry_run: bool
    ) -> None:
        total = dead_letters.count(selection, limit)
        if dry_run:
            self.stdout.write(
                f"would retry {total} dead letter{'s' if total != 1 else ''} "
                f"({what}); dry run: nothing was sent or changed"
            )
            return

        def progress(report: dead_letters.RetryReport) -> None:
            self.stderr.write(f"retrying: {report.retried}/{total} ({report})")

        try:
            report = dead_letters.retry(selection, limit, progress=progress)
        except RetryAborted as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(report))
        for error_type, n in report.errors.items():
            self.stdout.write(f"  failing again: {error_type or 'unknown'}: {n}")

    def purge(
        self, selection: dead_letters.Selection, what: str, limit: int | None, dry_run: bool
    ) -> None:
        if dry_run:
            total = dead_letters.count(selection, limit)
            self.stdout.write(
                f"would purge {total} dead letter{'s' if total != 1 else ''} "
                f"({what}); dry run: nothing was deleted"
            )
            return
        removed = dead_letters.purge(
            selection, limit, progress=lambda n: self.stderr.write(f"purging: {n} so far")
        )
        self.stdout.write(f"purged {removed} dead letter{'s' if removed != 1 else ''}")

    def export(self, selection: dead_letters.Selection) -> None:
        last = b""
        for chunk in dead_letter_files.export_chunks(selection.queryset()):
            self.stdout.write(chunk.decode(), ending="")
            last = chunk  # the summary line comes alone, last
        summary = json.loads(last)["summary"]
        if not summary["complete"]:
            raise CommandError(f"export incomplete: {summary['error']}")
        n = summary["dead_letters"]
        self.stderr.write(f"exported {n} dead letter{'s' if n != 1 else ''}")

    def import_file(self, path: str, dry_run: bool) -> None:
        try:
            if path == "-":
                report = dead_letter_files.import_lines(sys.stdin.buffer, dry_run=dry_run)
            else:
                with open(path, "rb") as lines:
                    report = dead_letter_files.import_lines(lines, dry_run=dry_run)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}", returncode=2) from None
        except DeadLetterFileRefused as exc:
            raise CommandError(f"{path}: {exc}") from None
        if dry_run:
            self.stdout.write(f"dry run, nothing was imported: would have {report}")
        else:
            self.stdout.write(str(report))

    def _table(self, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        table = [header, *rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for line in table:
            cells = (value.ljust(width) for value, width in zip(line, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())


def _selection(options: dict[str, Any]) -> dead_letters.Selection:
    """The selection the options name; an unknown subscription is an argument error."""
    name, older_than = options["subscription"], options["older_than"]
    selection = dead_letters.Selection(subscription=name, older_than=older_than)
    try:
        selection.queryset()  # checks that the subscription exists
    except UnknownSubscription as exc:
        raise CommandError(text.short(str(exc), 300), returncode=2) from None
    return selection


def _iso(value: datetime) -> str:
    return value.isoformat()


def _list_row(entry: DeadLetter) -> dict[str, Any]:
    row = dead_letters.entry_fields(entry)
    return {
        **row,
        "error_reason": text.short(entry.error_reason, 10_000),
        "first_failed_at": entry.first_failed_at.isoformat(),
        "last_attempt_at": entry.last_attempt_at.isoformat(),
        "age": text.age_text(entry.last_attempt_at),
    }
