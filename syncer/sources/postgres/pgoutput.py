"""Decode pgoutput (protocol version 1) messages, the payloads of the replication stream.

Layouts: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
Written here because the only PyPI parser (pypgoutput 0.0.3, 2022) is unmaintained,
and it is on the hot path: the format is a handful of fixed layouts, decoded here
without an object per column.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
_PG_EPOCH_OFFSET_S = 946_684_800

NULL = None


class Unchanged:
    """Marker for a TOASTed value the update did not change, and so did not send."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()

Value = bytes | Unchanged | None


# The messages are NamedTuples rather than frozen dataclasses: as immutable, and built
# 2-5x faster (a frozen dataclass sets each field through object.__setattr__); three are
# built per change (Begin, the row, Commit), which is a tenth of the decoding cost.


class Begin(NamedTuple):
    final_lsn: int
    commit_time: float
    xid: int


class Commit(NamedTuple):
    commit_lsn: int
    end_lsn: int
    commit_time: float


class Column(NamedTuple):
    name: str
    type_oid: int
    is_key: bool


class Relation(NamedTuple):
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


class Insert(NamedTuple):
    relation_oid: int
    new: tuple[Value, ...]


class Update(NamedTuple):
    relation_oid: int
    new: tuple[Value, ...]
    old: tuple[Value, ...] | None
    """The old key ('K': only the identity columns are set) or old row ('O', identity FULL)."""
    old_is_row: bool = False
    """Whether `old` is the whole old row ('O'), not only its key ('K')."""


class Delete(NamedTuple):
    relation_oid: int
    old: tuple[Value, ...]
    old_is_row: bool = False
    """Whether `old` is the whole deleted row ('O', identity FULL), not only its key ('K')."""


class LogicalMessage(NamedTuple):
    """A `pg_logical_emit_message` ('M'; sent only with the `messages` option, PG 14+)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


class Other(NamedTuple):
    """Origin, Type and Truncate: nothing a subscription acts on."""

    tag: str


Message = Begin | Commit | Relation | Insert | Update | Delete | LogicalMessage | Other

# Decoding runs once per message of every change: it reads with precompiled structs at
# offsets rather than through a reader object's method per field.
_BEGIN = struct.Struct("!qqI")  # final LSN, commit time, xid
_COMMIT = struct.Struct("!xqqq")  # flags, commit LSN, end LSN, commit time
_OID = struct.Struct("!I")
_OID_KIND = struct.Struct("!Ic")  # relation OID, then 'N', 'K' or 'O'
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_COLUMN_TAIL = struct.Struct("!Ii")  # type OID, type modifier
_MESSAGE_HEAD = struct.Struct("!Bq")  # flags (1: transactional), LSN
_N, _K, _O = b"N", b"K", b"O"
_NULL, _UNCHANGED_VALUE, _TEXT, _BINARY = ord("n"), ord("u"), ord("t"), ord("b")


def decode(data: bytes) -> Message:
    """Decode one pgoutput message."""
    tag = data[0]
    if tag == 73:  # 'I'
        oid, _ = _OID_KIND.unpack_from(data, 1)  # the kind is always 'N'
        return Insert(oid, _tuple_data(data, 6)[0])
    if tag == 66:  # 'B'
        final_lsn, micros, xid = _BEGIN.unpack_from(data, 1)
        return Begin(final_lsn, micros / 1_000_000 + _PG_EPOCH_OFFSET_S, xid)
    if tag == 67:  # 'C'
        commit_lsn, end_lsn, micros = _COMMIT.unpack_from(data, 1)
        return Commit(commit_lsn, end_lsn, micros / 1_000_000 + _PG_EPOCH_OFFSET_S)
    if tag == 85:  # 'U'
        oid, kind = _OID_KIND.unpack_from(data, 1)
        pos = 6
        old = None
        old_is_row = kind == _O
        if kind == _K or old_is_row:
            old, pos = _tuple_data(data, pos)
            kind = data[pos : pos + 1]
            pos += 1
        if kind != _N:
            raise ValueError(f"pgoutput: update without new tuple ({kind.decode()!r})")
        return Update(oid, _tuple_data(data, pos)[0], old, old_is_row)
    if tag == 68:  # 'D'
        oid, kind = _OID_KIND.unpack_from(data, 1)  # 'K', or 'O' for identity FULL
        return Delete(oid, _tuple_data(data, 6)[0], kind == _O)
    if tag == 82:  # 'R'
        return _relation(data)
    if tag == 77:  # 'M' (without the streamed-transaction xid: streaming is not asked for)
        flags, lsn = _MESSAGE_HEAD.unpack_from(data, 1)
        prefix, pos = _string(data, 10)
        (length,) = _INT32.unpack_from(data, pos)
        return LogicalMessage(bool(flags & 1), lsn, prefix, data[pos + 4 : pos + 4 + length])
    return Other(chr(tag))


def _tuple_data(data: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    """The values of a TupleData at `pos`, and the offset after it."""
    (count,) = _INT16.unpack_from(data, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    unpack_length = _INT32.unpack_from
    for _ in range(count):
        kind = data[pos]
        pos += 1
        if kind == _TEXT or kind == _BINARY:
            (length,) = unpack_length(data, pos)
            pos += 4
            append(data[pos : pos + length])
            pos += length
        elif kind == _NULL:
            append(NULL)
        elif kind == _UNCHANGED_VALUE:
            append(UNCHANGED)
        else:
            raise ValueError(f"pgoutput: unknown tuple value kind {chr(kind)!r}")
    return tuple(values), pos


def _relation(data: bytes) -> Relation:
    (oid,) = _OID.unpack_from(data, 1)
    namespace, pos = _string(data, 5)
    name, pos = _string(data, pos)
    identity = chr(data[pos])
    (count,) = _INT16.unpack_from(data, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        column_name, pos = _string(data, pos + 1)
        type_oid, _modifier = _COLUMN_TAIL.unpack_from(data, pos)
        pos += 8
        columns.append(Column(column_name, type_oid, bool(flags & 1)))
    return Relation(oid, namespace, name, identity, tuple(columns))


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1
