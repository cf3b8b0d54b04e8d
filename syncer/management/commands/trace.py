"""`trace SUBSCRIPTION KEY`: one document end to end, from its source row to the index.

KEY is the document id as the monitor and the dead letters show it: the key column's
value, or a composite key's values joined by `|` (`\\` and `|` inside a value written
`\\\\` and `\\|`). Prints the row as it is now, the document as indexed (version,
position), whether they agree, the document's dead letter and what is known of its
recent live events; `--json` prints the same as the API's answer. A key that does not
fit the key columns, or an unknown subscription, exits 1 with what to type instead.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError, CommandParser

from syncer import text
from syncer.errors import InvalidKey, UnknownSubscription
from syncer.operations import subscriptions
from syncer.operations.trace import AGREEMENT_TEXT, NO_RECENT_EVENTS, TIMEOUT, Trace, trace


class Command(BaseCommand):
    help = "Trace one document: its source row now, the indexed document, its dead letter."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subscription", metavar="SUBSCRIPTION")
        parser.add_argument(
            "key",
            metavar="KEY",
            help="the document id, as the monitor shows it (composite keys: a|b)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--timeout",
            type=float,
            default=TIMEOUT,
            metavar="SECONDS",
            help=f"how long the source and OpenSearch each may take (default {TIMEOUT:g})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["subscription"]
        try:
            subscription = subscriptions.named(name, known=True)
        except UnknownSubscription as exc:
            # Said with the name cut short: it is echoed from the command line.
            raise CommandError(str(UnknownSubscription(text.short(name, 80), exc.known))) from None
        try:
            found = async_to_sync(trace)(subscription, options["key"], options["timeout"])
        except InvalidKey as exc:
            raise CommandError(text.redact(str(exc))) from None
        if options["json"]:
            self.stdout.write(json.dumps(found.as_dict(), indent=2, ensure_ascii=False))
            return
        for label, value in lines(found):
            value = value.replace("\n", "\n" + " " * 14)
            self.stdout.write(f"{label:<13} {value}")


def lines(found: Trace) -> list[tuple[str, str]]:
    """The trace as (label, text) lines, for people."""
    out = [
        ("subscription", f"{found.subscription} ({found.source_kind}: {found.relation})"),
        ("document id", found.doc_id),
    ]
    if found.key_columns:
        key = ", ".join(
            f"{column}={value}" for column, value in zip(found.key_columns, found.key, strict=True)
        )
        out.append(("key", key))
    if found.row_error is not None:
        out.append(("source row", f"could not be read: {found.row_error}"))
    elif found.row is None:
        out.append(("source row", "none: the source has no row with this key"))
    else:
        out.append(("source row", _json(found.row)))
    document = found.document
    if found.document_error is not None:
        out.append(("indexed", f"could not be read: {found.document_error}"))
    elif document is None:
        out.append(("indexed", f"none: index {found.index} has no such document"))
    else:
        out.append(
            (
                "indexed",
                f"version {document.position_shown} ({document.version}) in {document.index}\n"
                + _json(document.source),
            )
        )
    agreement = AGREEMENT_TEXT[found.agreement]
    if found.differing:
        agreement += f" (fields: {', '.join(found.differing)})"
    out.append(("agreement", agreement))
    in_flight = "; a change in flight (the document is newer)" if found.in_flight else ""
    out.append(("checkpoint", f"{found.checkpoint_shown}{in_flight}"))
    dead = found.dead_letter
    if dead is None:
        out.append(("dead letter", "none"))
    else:
        out.append(
            (
                "dead letter",
                f"#{dead.id}: {dead.action} at version {dead.position_shown}, "
                f"{dead.attempts} attempt(s), last {text.age_text(dead.last_attempt_at)} ago: "
                f"{dead.error}",
            )
        )
    out.append(("live events", NO_RECENT_EVENTS))
    out.extend(("note", note) for note in found.notes)
    return out


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
