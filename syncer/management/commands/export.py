"""`export SUBSCRIPTION > file.ndjson`: every document of the subscription's index, as NDJSON.

The lines are those of `GET /api/subscriptions/{name}/documents/export`
(`syncer.operations.exports`): one document each, the summary line last. A progress bar
goes to stderr (its total is the index's `_count` when the export begins). An index
that cannot be read at all exits 1 with nothing written; a read that fails midway ends
the output with a `"complete": false` summary line and exits 1.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncer import text
from syncer.errors import SyncError, UnknownSubscription
from syncer.management.arguments import positive_int
from syncer.management.progress import ProgressBar
from syncer.models import Subscription
from syncer.operations import exports, subscriptions
from syncer.sinks.opensearch.export import PAGE_SIZE


class Command(BaseCommand):
    help = "Write every document of a subscription's index to stdout, one JSON line each."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subscription", metavar="SUBSCRIPTION")
        parser.add_argument(
            "--page-size",
            type=positive_int,
            default=PAGE_SIZE,
            metavar="N",
            help=f"documents read per request (default: {PAGE_SIZE})",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            subscription = subscriptions.named(options["subscription"], known=True)
        except UnknownSubscription as exc:
            raise CommandError(text.short(str(exc), 300), returncode=2) from None
        export = asyncio.run(
            self.export(subscription, options["page_size"], not options["no_progress"])
        )
        if not export.complete:
            raise CommandError(f"export of {subscription.name} incomplete: {export.error}")

    async def export(
        self, subscription: Subscription, page_size: int, progress: bool
    ) -> exports.IndexExport:
        try:
            total = await exports.count_index(subscription) if progress else None
            export = await exports.open_index_export(subscription, page_size=page_size)
        except SyncError as exc:
            raise CommandError(exports.refusal(subscription, exc)) from None
        bar = ProgressBar(self.stderr, subscription.name, total) if progress else None
        async for chunk in export.lines():
            self.stdout.write(chunk.decode(), ending="")
            if bar is not None:
                bar.update(export.documents)
        if bar is not None:
            bar.finish(export.documents, "done" if export.complete else "stopped")
        return export
