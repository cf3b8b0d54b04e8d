"""Cursors of the API's paged lists: the last row's time and id, opaque to the caller.

A page ends after (time, id) of its last row; the next page starts after it, so rows
written meanwhile neither repeat nor go missing. A cursor the API did not give is a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from console.api.errors import FieldErrors

T = TypeVar("T")


def encode(when: datetime, last: object) -> str:
    raw = json.dumps([when.isoformat(), str(last) if not isinstance(last, int) else last])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str, last: Callable[[Any], T]) -> tuple[datetime, T]:
    """(time, id) of `cursor`; `last` turns the stored id back into its type (int, UUID)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, after = json.loads(raw)
        position = (datetime.fromisoformat(when), last(after))
    except (binascii.Error, ValueError, TypeError, AttributeError, OverflowError):
        raise FieldErrors(
            [("cursor", "not a cursor this API gave; pass next_cursor of the previous page")]
        ) from None
    if position[0].tzinfo is None:
        raise FieldErrors([("cursor", "not a cursor this API gave")])
    return position
