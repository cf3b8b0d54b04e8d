"""Decode pgoutput (protocol version 1) messages, the payloads of the replication stream.

Layouts: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
Written here because the only PyPI parser (pypgoutput 0.0.3, 2022) is unmaintained,
and it is on the hot path: the format is a handful of fixed layouts, decoded here
without an object per column.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: float
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: float


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: tuple[Value, ...]
    old: tuple[Value, ...] | None
    """The old key ('K': only the identity columns are set) or old row ('O', identity FULL)."""
    old_is_row: bool = False
    """Whether `old` is the whole old row ('O'), not only its key ('K')."""


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[Value, ...]
    old_is_row: bool = False
    """Whether `old` is the whole deleted row ('O', identity FULL), not only its key ('K')."""


@dataclass(frozen=True, slots=True)
class Other:
    """Origin, Type, Truncate and Message: nothing a subscription acts on."""

    tag: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Other


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> str:
        value = self.data[self.pos : self.pos + 1].decode("ascii")
        self.pos += 1
        return value

    def int8(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.data, self.pos)
        self.pos += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def uint32(self) -> int:
        (value,) = struct.unpack_from("!I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def int64(self) -> int:
        (value,) = struct.unpack_from("!q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> str:
        end = self.data.index(b"\x00", self.pos)
        value = self.data[self.pos : end].decode()
        self.pos = end + 1
        return value

    def timestamp(self) -> float:
        return self.int64() / 1_000_000 + _PG_EPOCH_OFFSET_S

    def tuple_data(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == "n":
                values.append(NULL)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind in ("t", "b"):
                length = self.int32()
                values.append(self.data[self.pos : self.pos + length])
                self.pos += length
            else:
                raise ValueError(f"pgoutput: unknown tuple value kind {kind!r}")
        return tuple(values)


def decode(data: bytes) -> Message:
    """Decode one pgoutput message."""
    reader = _Reader(data)
    tag = reader.byte()
    if tag == "B":
        return Begin(reader.int64(), reader.timestamp(), reader.uint32())
    if tag == "C":
        reader.int8()  # flags, unused
        return Commit(reader.int64(), reader.int64(), reader.timestamp())
    if tag == "R":
        oid, namespace, name = reader.uint32(), reader.string(), reader.string()
        identity = chr(reader.int8())
        columns = []
        for _ in range(reader.int16()):
            flags = reader.int8()
            column_name = reader.string()
            type_oid = reader.uint32()
            reader.int32()  # type modifier
            columns.append(Column(column_name, type_oid, bool(flags & 1)))
        return Relation(oid, namespace, name, identity, tuple(columns))
    if tag == "I":
        oid = reader.uint32()
        reader.byte()  # 'N'
        return Insert(oid, reader.tuple_data())
    if tag == "U":
        oid = reader.uint32()
        kind = reader.byte()
        old = None
        old_is_row = kind == "O"
        if kind in ("K", "O"):
            old = reader.tuple_data()
            kind = reader.byte()
        if kind != "N":
            raise ValueError(f"pgoutput: update without new tuple ({kind!r})")
        return Update(oid, reader.tuple_data(), old, old_is_row)
    if tag == "D":
        oid = reader.uint32()
        old_is_row = reader.byte() == "O"  # else 'K'
        return Delete(oid, reader.tuple_data(), old_is_row)
    return Other(tag)
