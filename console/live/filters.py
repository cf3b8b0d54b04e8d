"""Which of a subscription's live events one browser tab or event stream wants.

A filter narrows changes and dead letters by op and document-id prefix. Drop summaries
always pass: they say that events were not sent at all, which a filter cannot judge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from syncer.live.messages import Event

Op = Literal["upsert", "delete"]
OPS: tuple[Op, ...] = ("upsert", "delete")
MAX_PREFIX = 512
_FIELDS = ("op", "doc_id_prefix")


class FilterError(ValueError):
    """A filter or client message that cannot be used; the text says what to send instead."""


@dataclass(frozen=True)
class EventFilter:
    op: Op | None = None
    doc_id_prefix: str | None = None

    def admits(self, event: Event) -> bool:
        if event["kind"] == "dropped":
            return True
        if self.op is not None and event["op"] != self.op:
            return False
        return self.doc_id_prefix is None or event["doc_id"].startswith(self.doc_id_prefix)

    def select(self, events: Iterable[Event]) -> list[Event]:
        return [event for event in events if self.admits(event)]

    def as_dict(self) -> dict[str, str | None]:
        return {"op": self.op, "doc_id_prefix": self.doc_id_prefix}


def parse_filter(value: Any) -> EventFilter:
    """Read `{"op": ..., "doc_id_prefix": ...}`; a missing or empty field means any."""
    if not isinstance(value, Mapping):
        raise FilterError('"filter" must be an object: {"op": ..., "doc_id_prefix": ...}')
    unknown = sorted(str(key) for key in value if key not in _FIELDS)
    if unknown:
        raise FilterError(f"unknown filter field(s) {', '.join(unknown)}: use op, doc_id_prefix")
    return EventFilter(
        op=parse_op(value.get("op")), doc_id_prefix=parse_prefix(value.get("doc_id_prefix"))
    )


def parse_op(value: Any) -> Op | None:
    if value is None or value == "":
        return None
    if value not in OPS:
        raise FilterError(f"op must be upsert, delete or null, not {_shown(value)}")
    return cast(Op, value)


def parse_prefix(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FilterError(f"doc_id_prefix must be text or null, not {_shown(value)}")
    if len(value) > MAX_PREFIX:
        raise FilterError(f"doc_id_prefix is too long (over {MAX_PREFIX} characters)")
    return value


def parse_client_message(content: Any) -> EventFilter:
    """Read a browser's message on an events socket; only `{"filter": {...}}` exists."""
    if not isinstance(content, Mapping) or set(content) != {"filter"}:
        raise FilterError(
            'expected {"filter": {"op": "upsert" | "delete" | null, "doc_id_prefix": "..." | null}}'
        )
    return parse_filter(content["filter"])


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
