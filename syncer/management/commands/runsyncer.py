"""`python manage.py runsyncer`: the streaming worker."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncer import conf
from syncer.runner import Runner, UnknownSubscription, load_subscriptions

log = structlog.get_logger("syncer.runsyncer")


class Command(BaseCommand):
    help = "Run every enabled subscription (or the named ones) until SIGTERM or Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--subscription",
            action="append",
            default=[],
            metavar="NAME",
            help="run only this subscription (repeatable)",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="how long a stop waits for pending changes to flush (default: "
            "SYNCER_SHUTDOWN_TIMEOUT, 30 s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            subscriptions = load_subscriptions(options["subscription"])
        except UnknownSubscription as exc:
            raise CommandError(str(exc)) from None
        timeout = options["shutdown_timeout"] or conf.worker().shutdown_timeout
        runner = Runner(subscriptions, shutdown_timeout=timeout)
        if not asyncio.run(_main(runner)):
            raise CommandError(f"pending changes did not flush within {timeout:g} s")


async def _main(runner: Runner) -> bool:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    return await runner.run(stop)
