"""The messages of `/ws/live/`: what a client may send, read with pydantic, and the
server's answers built from the live-subscription operations' results and errors.

Client → server (JSON text frames; `ref`, optional, is echoed in the answer):
`auth` {token}, `register` {subscriptions: [{gateway_id, subscription, filter}]},
`resume` {gateway_id}, `heartbeat` {gateway_id}, `delete` {id}, `flow` {window},
`ack` {received} (no answer).
Server → client: `ready`, `registered`, `resumed`, `heartbeat`, `deleted`, `flow`,
`event`, `dropped`, `gone`, `error`, `closing`.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from syncer.errors import (
    InvalidLiveSubscriptions,
    NotPermitted,
    QuotaExceeded,
    UnknownLiveSubscription,
)
from syncer.models import LiveSubscription

MAX_BATCH = 1000
"""Registrations one message may carry, as one API request."""

Ref = str | int | None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: Ref = Field(None, description="Any text or number, echoed in the answer.")


class Auth(_Message):
    type: Literal["auth"]
    token: str = Field(max_length=200)


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gateway_id: str
    subscription: str
    filter: str


class Register(_Message):
    type: Literal["register"]
    subscriptions: list[Entry] = Field(min_length=1, max_length=MAX_BATCH)


class Resume(_Message):
    type: Literal["resume"]
    gateway_id: str


class Heartbeat(_Message):
    type: Literal["heartbeat"]
    gateway_id: str


class Delete(_Message):
    type: Literal["delete"]
    id: uuid.UUID


MAX_WINDOW = 100_000


class Flow(_Message):
    """Turn on flow control: at most `window` events unacknowledged."""

    type: Literal["flow"]
    window: int = Field(ge=1, le=MAX_WINDOW)


class Ack(_Message):
    """With flow control: how many events the client has received since it connected."""

    type: Literal["ack"]
    received: int = Field(ge=0)


Any_ = Auth | Register | Resume | Heartbeat | Delete | Flow | Ack
Request = Annotated[Any_, Field(discriminator="type")]
_REQUEST: TypeAdapter[Any_] = TypeAdapter(Request)
TYPES = ("auth", "register", "resume", "heartbeat", "delete", "flow", "ack")


class BadMessage(ValueError):
    """A frame that is not one of the client messages; `errors` as the API's 422."""

    def __init__(self, errors: list[dict[str, Any]], ref: Ref = None) -> None:
        self.errors = errors
        self.ref = ref
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


def parse(text: str | None) -> Any_:
    """The client's message in `text`; BadMessage saying what to send instead."""
    if text is None:
        raise BadMessage([_error("(message)", "send text frames holding JSON, not binary")])
    try:
        content = json.loads(text)
    except ValueError:
        raise BadMessage([_error("(message)", "not JSON")]) from None
    ref = content.get("ref") if isinstance(content, dict) else None
    if not isinstance(ref, str | int) or isinstance(ref, bool):
        ref = None
    if not isinstance(content, dict) or content.get("type") not in TYPES:
        raise BadMessage(
            [_error("type", f"expected an object whose type is one of {', '.join(TYPES)}")], ref
        )
    try:
        return _REQUEST.validate_python(content)
    except ValidationError as exc:
        errors = [
            _error(_path(error["loc"][1:]) or "(message)", error["msg"]) for error in exc.errors()
        ]
        raise BadMessage(errors, ref) from None


def _path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error(field: str, message: str, position: int | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"field": field, "message": message}
    if position is not None:
        found["position"] = position
    return found


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, default=str, separators=(",", ":"))


def item(live: LiveSubscription) -> dict[str, Any]:
    """A live subscription as `registered` and `resumed` list it (the API's fields)."""
    return {
        "id": str(live.id),
        "gateway_id": live.gateway_id,
        "subscription": live.subscription.name,
        "filter": live.filter,
        "delivery": live.delivery,
        "pinned": live.pinned,
        "created_at": live.created_at.isoformat(),
        "expires_at": live.expires_at.isoformat(),
    }


def error(request: str | None, ref: Ref, status: int, detail: str, **more: Any) -> dict[str, Any]:
    """An `error` answer: `status` is the API's HTTP status for the same failure."""
    return {
        "type": "error",
        "request": request,
        "ref": ref,
        "status": status,
        "detail": detail,
        **more,
    }


def bad_message(exc: BadMessage, request: str | None) -> dict[str, Any]:
    return error(request, exc.ref, 422, str(exc), errors=exc.errors)


def operation_error(exc: Exception, request: str, ref: Ref) -> dict[str, Any] | None:
    """The answer to a live-subscription operation's error; None when it is not one."""
    if isinstance(exc, InvalidLiveSubscriptions):
        errors = []
        for problem in exc.problems:
            field = problem.field
            if request == "register" and problem.entry is not None:
                field = f"subscriptions[{problem.entry}].{field}"
            found = _error(field, problem.message)
            found["position"] = problem.position
            errors.append(found)
        return error(request, ref, 422, str(exc), errors=errors)
    if isinstance(exc, QuotaExceeded):
        return error(
            request,
            ref,
            429,
            str(exc),
            limit=exc.limit,
            scope=exc.scope,
            active=exc.active,
            requested=exc.requested,
        )
    if isinstance(exc, UnknownLiveSubscription):
        return error(request, ref, 404, str(exc))
    if isinstance(exc, NotPermitted):
        return error(request, ref, 403, str(exc))
    return None
