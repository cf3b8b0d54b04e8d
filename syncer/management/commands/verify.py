"""`verify SUBSCRIPTION [--repair] [--sample N | --keys FILE] [--json]`: compare the index
with its source, and repair what differs.

Runs the verification in this process (`syncer.operations.verify.run`), with a progress
bar on stderr; the subscription's worker must be running, since nothing is compared
before it has written up to the snapshot. The result is kept like the admin's and the
API's (a `Verification` row). Exits 0 when nothing drifted (or all of it was repaired),
1 when drift remains, 2 on bad arguments or when the verification could not run.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncer.errors import OperatorError, UnknownSubscription
from syncer.management.arguments import positive_int
from syncer.management.progress import ProgressBar
from syncer.models import Verification
from syncer.operations import subscriptions
from syncer.operations import verify as verifying
from syncer.worker.state import close_connections


class Command(BaseCommand):
    help = "Compare a subscription's index with its source; --repair writes what differs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subscription", metavar="SUBSCRIPTION")
        parser.add_argument(
            "--repair",
            action="store_true",
            help="write the rows that are missing or differ and delete the documents that "
            "should not exist (a newer change always wins)",
        )
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument(
            "--sample",
            type=positive_int,
            metavar="N",
            help="about N rows (sampled) and the first N documents, rather than all",
        )
        scope.add_argument(
            "--keys",
            type=Path,
            metavar="FILE",
            help="only these documents: one document id a line (as the monitor shows it)",
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            sub = subscriptions.named(options["subscription"], known=True)
        except UnknownSubscription as exc:
            raise CommandError(str(exc), returncode=2) from exc
        ids = _read_keys(options["keys"]) if options["keys"] else None
        worker = f"command {socket.gethostname()}:{os.getpid()}"
        try:
            verification = verifying.request(
                sub,
                requested_by="command",
                repair=options["repair"],
                sample=options["sample"],
                doc_ids=ids,
                run_by=worker,  # run here: no worker takes it meanwhile
            )
        except OperatorError as exc:
            raise CommandError(str(exc), returncode=2) from exc
        bar = ProgressBar(self.stderr, f"verify {sub.name}", None, unit="rows and documents")

        def shown(running: verifying.Running) -> None:
            progress = running.progress
            if progress is None or progress.figures is None:
                return
            bar.total = progress.figures.estimated_rows
            bar.update(progress.figures.rows)

        verification = asyncio.run(_run(verification, worker, shown))
        counts = verification.counts or {}
        bar.finish(counts.get("rows", 0) + counts.get("documents", 0), verification.state)
        if options["json"]:
            self.stdout.write(json.dumps(verifying.summary(verification), indent=2))
        else:
            self.stdout.write(_described(verification))
        if verification.state == Verification.State.FAILED:
            raise CommandError(f"verification failed: {verification.error}", returncode=2)
        left = verification.drifted - counts.get("repaired", 0) - counts.get("superseded", 0)
        if left > 0:
            raise CommandError(f"{left:,} documents drifted", returncode=1)


async def _run(
    verification: Verification, worker: str, shown: Callable[[verifying.Running], None]
) -> Verification:
    try:
        return await verifying.run(verification, worker=worker, on_progress=shown)
    finally:
        # The async ORM's thread keeps its connection open after the loop ends.
        await close_connections()


def _read_keys(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read --keys {path}: {exc}", returncode=2) from exc
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise CommandError(f"--keys {path} holds no document id", returncode=2)
    return ids


def _described(verification: Verification) -> str:
    s = verifying.summary(verification)
    c = s["counts"]
    if not c:
        return f"verification {s['id']} of {s['subscription']}: {s['state']}"
    lines = [
        f"verification {s['id']} of {s['subscription']} at position {s['position_shown']}: "
        f"{s['state']}",
        f"  read {c['rows']:,} rows and {c['documents']:,} documents; compared "
        f"{c['checked']:,}, skipped {c['skipped']:,} changed since the snapshot"
        + (f", {c['dead_lettered']:,} explained by dead letters" if c["dead_lettered"] else ""),
        f"  missing {c['missing']:,}, extra {c['extra']:,}, differing {c['differs']:,}",
    ]
    if s["repair"]:
        lines.append(
            f"  repaired {c['repaired']:,}, superseded by newer changes {c['superseded']:,}, "
            f"failed {c['repair_failed']:,}"
        )
    for kind, examples in s["examples"].items():
        if kind == "repair_errors":
            lines += [f"  repair failed: {e}" for e in examples]
            continue
        for example in examples[:5]:
            detail = example.get("fields") or example.get("row") or example.get("document")
            lines.append(f"  {kind} {example['id']}: {json.dumps(detail, default=str)[:200]}")
    return "\n".join(lines)
