"""The event a client receives for a change that matched one of its live subscriptions.

One contract for every delivery channel (NATS JetStream, the `/ws/live/` socket): the
same fields, the same JSON. Django-free, so a client library or a test can import it.

`msg_id` is what makes delivery at least once *and* free of duplicates: it depends only
on (live subscription, position, key), so a retry, or the replay after a worker restart,
publishes the very same id and JetStream drops the copy inside its duplicate window.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson

Op = Literal["upsert", "delete"]
OPS: tuple[Op, ...] = ("upsert", "delete")

GATEWAY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a `gateway_id` may be: one NATS subject token (no `.`, `*`, `>` or spaces), short.
The model's validator (syncer.validators.gateway_id_problem) says the same, with the words
that tell a caller what to fix; a unit test keeps the two equal."""

_KEY_DIGEST_BYTES = 16
"""Keys are hashed into the msg id: any length and any character, a bounded header."""


def valid_gateway_id(gateway_id: str) -> bool:
    return GATEWAY_ID_PATTERN.fullmatch(gateway_id) is not None


@dataclass(frozen=True, slots=True)
class MatchedEvent:
    """A change of sync subscription `subscription`, as OpenSearch acknowledged it, that
    matched live subscription `live_subscription_id` of gateway `gateway_id`."""

    live_subscription_id: uuid.UUID
    gateway_id: str
    subscription: str
    """The sync subscription's name."""
    op: Op
    key: str
    """The document's id in the index."""
    position: int
    """The source position of the change (the document's version)."""
    commit_time: float
    """When the source committed the change, in seconds since the epoch."""
    document: dict[str, Any] | None
    """The document as indexed; None for a delete."""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}, not {self.op!r}")
        if not valid_gateway_id(self.gateway_id):
            raise ValueError(
                f"gateway_id {self.gateway_id!r} is not one NATS subject token: use 1 to 128 "
                "ASCII letters, digits, '-' or '_'"
            )

    @property
    def msg_id(self) -> str:
        """The stable `Nats-Msg-Id`: `<live subscription id>:<position>:<key digest>`."""
        digest = hashlib.blake2b(self.key.encode(), digest_size=_KEY_DIGEST_BYTES).hexdigest()
        return f"{self.live_subscription_id.hex}:{self.position}:{digest}"

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "live_subscription_id": str(self.live_subscription_id),
                "gateway_id": self.gateway_id,
                "subscription": self.subscription,
                "op": self.op,
                "key": self.key,
                "position": self.position,
                "commit_time": self.commit_time,
                "document": self.document,
            },
            # Documents are as indexed; the sink writes them with the same option.
            option=orjson.OPT_NON_STR_KEYS,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> MatchedEvent:
        """The event `to_json` wrote (what a client or a test reads back)."""
        fields = orjson.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("a matched event is a JSON object")
        try:
            return cls(
                live_subscription_id=uuid.UUID(fields["live_subscription_id"]),
                gateway_id=fields["gateway_id"],
                subscription=fields["subscription"],
                op=cast(Op, fields["op"]),
                key=fields["key"],
                position=int(fields["position"]),
                commit_time=float(fields["commit_time"]),
                document=fields["document"],
            )
        except KeyError as missing:
            raise ValueError(f"a matched event needs the field {missing}") from None


LIVE_MESSAGE_TYPE = "live.matched"
"""The Channels message type of a matched event on its way to a `/ws/live/` socket; its
shape is `live_message`'s."""


def live_message(event_json: str, live_hex: str, epoch: str, sequence: int) -> dict[str, Any]:
    """The Channels message that carries one matched event to its live subscription's group.

    `event` is `MatchedEvent.to_json()` as text (forwarded to the client unparsed);
    `live` the live subscription's id in hex; `epoch` names the worker run that sent it
    and `seq` counts that run's messages to this live subscription (1, 2, ...), so that a
    socket that finds a number missing knows events were lost before they reached it (a
    full worker queue, a failed send, the Channels layer's `capacity`) and says so. A new
    epoch, or a number lower than the last, is a counter started again, not a gap.
    """
    return {
        "type": LIVE_MESSAGE_TYPE,
        "event": event_json,
        "live": live_hex,
        "epoch": epoch,
        "seq": sequence,
    }


def live_group(live_subscription_id: uuid.UUID) -> str:
    """The Channels group a websocket-delivered live subscription's events are sent to;
    the socket that registered it (or resumed it) is the group's member."""
    return f"live.{live_subscription_id.hex}"
