"""`livesubs expire`: delete the live subscriptions whose TTL has run out.

Through `syncer.operations.live_subscriptions.expire`, in bounded batches; run it from
cron (or let the worker's expiry loop do it). Prints how many were removed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from syncer.management.arguments import positive_int
from syncer.operations import live_subscriptions


class Command(BaseCommand):
    help = "Expire live subscriptions: delete those not renewed within their TTL."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True, metavar="{expire}")
        expire = commands.add_parser("expire", help="delete the expired live subscriptions")
        expire.add_argument(
            "--batch-size",
            type=positive_int,
            default=live_subscriptions.EXPIRE_BATCH,
            metavar="N",
            help=f"rows per delete statement (default: {live_subscriptions.EXPIRE_BATCH})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        removed = live_subscriptions.expire(batch_size=options["batch_size"])
        plural = "" if removed == 1 else "s"
        self.stdout.write(f"expired {removed} live subscription{plural}")
