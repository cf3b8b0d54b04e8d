"""Turn PostgreSQL values into JSON-ready values for documents.

Text from pgoutput and from COPY goes through psycopg's own loaders for the column's
type OID, so both paths produce the same document, then becomes JSON-ready by the
rules of `syncer.sources.values.jsonable`. Values psycopg cannot hold (infinity,
years past 9999) keep the server's text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.abc import Transformer
from psycopg.pq import Format

from syncer.sources.values import jsonable

Decoder = Callable[[bytes], Any]


def make_decoder(transformer: Transformer, type_oid: int) -> Decoder:
    """A function from the server's text for `type_oid` to a JSON-ready value."""
    loader = transformer.get_loader(type_oid, Format.TEXT)

    def decode(data: bytes) -> Any:
        try:
            return jsonable(loader.load(data))
        except (psycopg.DataError, ValueError, OverflowError):
            return bytes(data).decode()

    return decode
