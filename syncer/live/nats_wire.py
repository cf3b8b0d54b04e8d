"""The pipes between the worker and its NATS publisher process (`nats_publisher`).

    worker ─ stdin: frames ──────────────▶ publisher process
             HELLO  {"config": NatsConfig fields, "log_format", "log_level"}   first, once
             EVENTS records, one frame per turn of the worker's event loop
             STOP   {"timeout": seconds}                                        last
           ◀─ stdout: one JSON object a line ─
             {"settled": N}   the first N events it received are acknowledged or dropped
             {"stats": {...}} its counters and histograms, every STATS_EVERY seconds
             {"final": true}  it stopped; what it still held is counted in its stats

A frame is a kind byte, the body's length (4 bytes, little endian) and the body. A record
is one event as the worker encoded it once: when it was offered (`time.monotonic`, one
clock for every process of the machine), its sync subscription and position (so the
publisher settles them as the in-process delivery does), its subject, `Nats-Msg-Id` and
JSON body. Counts in reports are cumulative since that process started.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

from syncer.live.delivery import Delivery

HELLO, EVENTS, STOP = b"H", b"E", b"S"
STATS_EVERY = 0.5
"""Seconds between two stats reports: how stale the worker's /metrics may be."""
GAVE_UP = 2
"""The publisher's exit code when its delivery gave up for good (a bad LIVE_NATS_URL):
starting another would give up the same way."""

_FRAME = struct.Struct("<cI")
_RECORD = struct.Struct("<dQHHHI")
"""offered_at, position, then the lengths of subscription, subject, msg_id and payload."""
COUNTERS = ("published", "duplicates", "retried", "outages")
HISTOGRAMS = ("publish_seconds", "delivery_seconds")


class Record(NamedTuple):
    """One event as `NatsDelivery.offer_encoded` takes it."""

    subscription: str
    position: int
    subject: str
    msg_id: str
    payload: bytes
    offered_at: float


def frame(kind: bytes, body: bytes) -> bytes:
    return _FRAME.pack(kind, len(body)) + body


def record(
    subscription: str, position: int, subject: str, msg_id: str, payload: bytes, offered_at: float
) -> bytes:
    """One event's bytes in an EVENTS frame (a position is a source clock: never negative)."""
    name, subject_bytes, id_bytes = subscription.encode(), subject.encode(), msg_id.encode()
    header = _RECORD.pack(
        offered_at, position, len(name), len(subject_bytes), len(id_bytes), len(payload)
    )
    return b"".join((header, name, subject_bytes, id_bytes, payload))


def records(body: bytes) -> Iterator[Record]:
    """The events of an EVENTS frame's body, in order."""
    offset, end = 0, len(body)
    while offset < end:
        offered_at, position, *lengths = _RECORD.unpack_from(body, offset)
        offset += _RECORD.size
        fields: list[bytes] = []
        for length in lengths:
            fields.append(body[offset : offset + length])
            offset += length
        name, subject, msg_id, payload = fields
        yield Record(
            name.decode(), position, subject.decode(), msg_id.decode(), payload, offered_at
        )


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next frame (kind, body); None when the pipe closed between two frames."""
    try:
        head = await reader.readexactly(_FRAME.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ValueError("the pipe closed inside a frame") from None
        return None
    kind, length = _FRAME.unpack(head)
    return kind, await reader.readexactly(length)


def stats(delivery: Delivery) -> dict[str, Any]:
    """A publisher's `{"stats": ...}` report: what `NatsDeliveryCollector` reads."""
    report: dict[str, Any] = {name: getattr(delivery, name) for name in COUNTERS}
    report["dropped"] = {str(reason): count for reason, count in delivery.dropped.items()}
    report["breaker"] = str(delivery.breaker)
    report["connected"] = delivery.connected
    for name in HISTOGRAMS:
        report[name] = getattr(delivery, name).counts()
    return report
