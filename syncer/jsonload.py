"""JSON parsed by orjson (2-5x the standard library's speed), never less exactly.

orjson rounds an integer beyond 64 bits to a float, where the standard library keeps it
exact; so a text with more digits in a row than a double holds exactly, or one orjson
refuses (a lone surrogate, 1e400), is parsed by the standard library, as it was before.
Used where the worker parses JSON per change: json/jsonb column values and bulk answers.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Every digit made a 0, so that 16 digits in a row are one bytes.find: 15x faster than a
# regular expression (which tries again from each digit of a run).
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 16


def loads(data: bytes | str) -> Any:
    """`json.loads(data)`, by orjson whenever that gives the very same value."""
    # Plain try/except, not contextlib.suppress: this runs per json value, where the
    # context manager's calls were as costly as orjson's parse.
    if isinstance(data, str):
        try:
            raw = data.encode()
        except UnicodeEncodeError:  # a lone surrogate in the text itself
            return json.loads(data)
    else:
        raw = data
    if raw.translate(_DIGITS_AS_ZEROS).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # the standard library decides
            return json.loads(data)
    return json.loads(data)
