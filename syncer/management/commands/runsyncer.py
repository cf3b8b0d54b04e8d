"""`python manage.py runsyncer`: the streaming worker."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from django.core.checks import Tags
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, ProgrammingError

from syncer import conf
from syncer.checks import WORKER_TAG, require_secret_key
from syncer.errors import MetricsPortUnavailable, UnknownSubscription
from syncer.management.arguments import positive_int
from syncer.operations.dead_letters import age_argument
from syncer.text import redact
from syncer.worker import heap, http
from syncer.worker.runner import Runner, check_names

log = structlog.get_logger("syncer.runsyncer")


class Command(BaseCommand):
    help = (
        "Run every enabled subscription no other worker owns (or only the named ones) "
        "until SIGTERM or Ctrl-C; subscriptions created, changed, paused or deleted "
        "meanwhile are picked up within SYNCER_CONTROL_INTERVAL (1 s)."
    )
    # The worker's settings and the models, not the web's checks: the URL checks alone
    # would import the admin, the API and django-ninja (docs/benchmarks.md, "worker memory").
    requires_system_checks = [WORKER_TAG, Tags.models, Tags.compatibility, Tags.translation]

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
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            metavar="PORT",
            help="serve /health, /ready and Prometheus /metrics on this port (e.g. 9108)",
        )
        parser.add_argument(
            "--metrics-host",
            default=http.DEFAULT_HOST,
            metavar="ADDRESS",
            help="the address --metrics-port listens on (default 127.0.0.1, this machine "
            "only; 0.0.0.0 for a Prometheus or probe on another host)",
        )
        parser.add_argument(
            "--dlq-retry-every",
            type=age_argument,
            default=None,
            metavar="AGE",
            help="retry dead letters this often, e.g. 5m (default: off); each round "
            "retries at most SYNCER_DLQ_RETRY_LIMIT (1000) entries per subscription",
        )
        parser.add_argument(
            "--verify-every",
            type=age_argument,
            default=None,
            metavar="AGE",
            help="verify each owned subscription's index against its source this often, "
            "e.g. 24h (default: off); requested verifications run either way",
        )
        parser.add_argument(
            "--verify-sample",
            type=positive_int,
            default=None,
            metavar="N",
            help="with --verify-every: about N rows and documents each time, not all",
        )
        parser.add_argument(
            "--no-live",
            action="store_true",
            help="do not publish to the live monitor (the channel layer on REDIS_URL)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            require_secret_key("the worker (runsyncer)")
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        verify_every = options["verify_every"]
        if options["verify_sample"] and not verify_every:
            raise CommandError("--verify-sample needs --verify-every", returncode=2)
        names = options["subscription"] or None
        try:
            # Checks the database and the names; the worker then follows the table.
            check_names(names or ())
        except UnknownSubscription as exc:
            raise CommandError(str(exc)) from None
        except OperationalError as exc:
            raise CommandError(
                f"cannot reach the console database: {_first_line(exc)} "
                "(check DATABASE_URL; create the database, then run `manage.py migrate`)"
            ) from None
        except ProgrammingError as exc:
            raise CommandError(
                f"the console database is not set up ({_first_line(exc)}); "
                "run `python manage.py migrate`"
            ) from None
        timeout = options["shutdown_timeout"] or conf.worker().shutdown_timeout
        retry_every = options["dlq_retry_every"]
        runner = Runner(
            names=names,
            shutdown_timeout=timeout,
            dlq_retry_every=retry_every.total_seconds() if retry_every else None,
            metrics_port=options["metrics_port"],
            metrics_host=options["metrics_host"],
            live=not options["no_live"],
            verify_every=verify_every.total_seconds() if verify_every else None,
            verify_sample=options["verify_sample"],
        )
        heap.settle()  # start-up is done: what it built stays out of the collector's way
        try:
            flushed = asyncio.run(_main(runner))
        except MetricsPortUnavailable as exc:
            raise CommandError(str(exc)) from None
        if not flushed:
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


def _first_line(exc: Exception) -> str:
    """The driver's message without its SQL excerpt, password-free."""
    lines = redact(str(exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
