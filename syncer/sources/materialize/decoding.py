"""A FETCH's rows decoded from Materialize's text, one decoder per column type.

Values are decoded by `syncer.sources.values.make_decoder`, as the PostgreSQL source
decodes them: a value psycopg cannot hold (a timestamp past year 9999) keeps
Materialize's text instead of failing every FETCH. The decoders are made again only
when the result's column types change.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.adapt import Transformer
from psycopg.pq.abc import PGresult

from syncer.sources.values import Decoder, make_decoder


class RowDecoder:
    """Decodes the results of one connection's FETCHes."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn
        self._oids: tuple[int, ...] = ()
        self._decoders: tuple[Decoder, ...] = ()

    def rows(self, result: PGresult | None) -> list[tuple[Any, ...]]:
        if result is None or not result.ntuples:
            return []
        width = result.nfields
        oids = tuple(result.ftype(i) for i in range(width))
        if self._oids != oids:
            transformer = Transformer(self._conn)
            self._oids, self._decoders = oids, tuple(make_decoder(transformer, o) for o in oids)
        decoders = self._decoders
        rows = []
        for r in range(result.ntuples):
            values = (result.get_value(r, c) for c in range(width))
            rows.append(
                tuple(None if v is None else d(v) for d, v in zip(decoders, values, strict=True))
            )
        return rows
