"""The source kinds: what each is called, reads, needs and leaves behind; one entry per kind.

Everything that differs between a PostgreSQL and a Materialize source outside the
adapters themselves is an attribute of its `Kind` here, so a caller asks the kind
instead of testing its name. Plain values only: the model takes its `SourceKind`
choices from `KINDS`, and `syncer.wiring` builds a Subscription row's source through
`Kind.build`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from syncer.engine.interfaces import Source
from syncer.engine.verify import Snapshot
from syncer.sources.dsn import DsnResolver, as_given
from syncer.sources.lookup import FoundRow, RowLookup
from syncer.sources.materialize import catalog as materialize_catalog
from syncer.sources.materialize import lookup as materialize_lookup
from syncer.sources.materialize.source import MaterializeSource, MaterializeSourceConfig
from syncer.sources.materialize.verify import MaterializeSnapshot
from syncer.sources.positions import format_lsn, format_mz_timestamp
from syncer.sources.postgres import catalog as postgres_catalog
from syncer.sources.postgres import lookup as postgres_lookup
from syncer.sources.postgres.helper import CopyHelperSource, RemoveStale
from syncer.sources.postgres.replication import drop_replication
from syncer.sources.postgres.shared import RANGE_ROWS, CopyBoard, Lease, RangeLeases
from syncer.sources.postgres.source import PostgresSource, PostgresSourceConfig
from syncer.sources.postgres.verify import PostgresSnapshot
from syncer.sources.push import queue as push_queue
from syncer.sources.push.source import PushSource, PushSourceConfig
from syncer.sources.relations import materialize_relation_problem, postgres_relation_problem

OPTIONS = ("cluster", "envelope")
"""Every kind's optional source settings, as a subscriptions file names them under
`source:` (the model's `source_cluster`, `source_envelope`)."""


@dataclass(frozen=True)
class SourceValues:
    """What any kind's adapter is built from; each kind takes the values it uses."""

    name: str
    dsn: str
    relation: str
    key_columns: tuple[str, ...]
    slot_name: str
    cluster: str
    envelope: str
    wal_warn_bytes: int
    copy_chunk_rows: int = 0
    resolve_dsn: DsnResolver = as_given
    """Turns the stored DSN (perhaps `env:VAR`) into a conninfo when the source opens."""
    copy_board: CopyBoard | None = None
    """A shared copy's ranges (SYNCER_COPY_SHARED), for a kind that has `copy_helper`."""
    copy_index: str = ""
    """The index a shared copy's helpers write to."""
    copy_range_rows: int = RANGE_ROWS
    subscription_id: int = 0
    """The subscription's row, for a kind whose changes are queued in the console database."""
    console_conninfo: str = ""
    """The console's own database (a push subscription's queue is there)."""
    push_queue_limit: int = 0
    """Operations a push subscription's queue may hold (SYNCER_PUSH_QUEUE_LIMIT)."""


@dataclass(frozen=True)
class Kind:
    """One kind of source."""

    name: str
    """As stored in `Subscription.source_kind` and written in a subscriptions file."""
    label: str
    """As people read it (the model's choice label)."""
    build: Callable[[SourceValues], Source]
    """Its adapter, from plain values."""
    format_position: Callable[[int | None], str]
    """A position as the kind's own tools show it; None (no checkpoint yet) is "-"."""
    relation_problem: Callable[[str], str | None]
    """Why a relation is not one this kind reads, or None."""
    options: tuple[str, ...]
    """The settings of `OPTIONS` this kind has; another kind's have no place in it."""
    needs_key_columns: bool
    """Whether the key columns must be given (no primary key to default to)."""
    cleanup: Callable[[str, str], None] | None
    """Drops what the source keeps for a subscription, given (conninfo, slot name), when
    it is deleted or its checkpoint reset; None when nothing is left on the source."""
    column_types: Callable[[str, str], dict[str, str] | None] | None = None
    """The relation's columns and their source type names, given (conninfo, relation), so
    a live subscription's filter can be checked against them; None when this kind cannot
    tell cheaply (then the filter's field names are not checked)."""
    copy_helper: (
        Callable[[SourceValues, RangeLeases, RemoveStale, Lease], CopyHelperSource] | None
    ) = None
    """A helper of this kind's shared copies, given its leases, how it removes stale
    documents and the range it took first; None when the kind's copies are not shared."""
    reads_database: bool = True
    """Whether it reads a source database through a DSN and a relation; False for push,
    whose changes are posted to the API: it has no source fields, no live check, no copy."""
    read_row: Callable[[RowLookup], Awaitable[FoundRow]] | None = None
    """One row by its key as the source holds it now, decoded as the sync decodes rows
    (`syncer.sources.lookup`), for a trace; None when the kind cannot read one."""
    verify_snapshot: Callable[[SourceValues, int | None], Snapshot] | None = None
    """A verification's snapshot of the source (`syncer.engine.verify`), sampling about
    that many rows if given; None when this kind cannot be verified yet."""


def _postgres_config(values: SourceValues) -> PostgresSourceConfig:
    return PostgresSourceConfig(
        name=values.name,
        dsn=values.dsn,
        relation=values.relation,
        key_columns=values.key_columns,
        slot_name=values.slot_name,
        wal_warn_bytes=values.wal_warn_bytes,
        copy_chunk_rows=values.copy_chunk_rows,
        copy_board=values.copy_board,
        copy_index=values.copy_index,
        copy_range_rows=values.copy_range_rows,
        resolve_dsn=values.resolve_dsn,
    )


def _build_postgres(values: SourceValues) -> Source:
    return PostgresSource(_postgres_config(values))


def _postgres_snapshot(values: SourceValues, sample: int | None) -> Snapshot:
    return PostgresSnapshot(_postgres_config(values), sample)


def _postgres_helper(
    values: SourceValues, leases: RangeLeases, remove_stale: RemoveStale, first: Lease
) -> CopyHelperSource:
    return CopyHelperSource(_postgres_config(values), leases, remove_stale, first)


def _materialize_config(values: SourceValues) -> MaterializeSourceConfig:
    return MaterializeSourceConfig(
        name=values.name,
        dsn=values.dsn,
        relation=values.relation,
        key_columns=values.key_columns,
        cluster=values.cluster,
        envelope=values.envelope,
        resolve_dsn=values.resolve_dsn,
    )


def _build_materialize(values: SourceValues) -> Source:
    return MaterializeSource(_materialize_config(values))


def _materialize_snapshot(values: SourceValues, sample: int | None) -> Snapshot:
    return MaterializeSnapshot(_materialize_config(values), sample)


POSTGRES = Kind(
    name="postgres",
    label="PostgreSQL",
    build=_build_postgres,
    format_position=format_lsn,
    relation_problem=postgres_relation_problem,
    options=(),
    needs_key_columns=False,  # the table's primary key is the default
    cleanup=drop_replication,  # the slot and publication would keep WAL forever
    column_types=postgres_catalog.column_types,
    copy_helper=_postgres_helper,
    read_row=postgres_lookup.read_row,
    verify_snapshot=_postgres_snapshot,
)

MATERIALIZE = Kind(
    name="materialize",
    label="Materialize",
    build=_build_materialize,
    format_position=format_mz_timestamp,
    relation_problem=materialize_relation_problem,
    options=OPTIONS,
    needs_key_columns=True,  # a view has no primary key
    cleanup=None,  # SUBSCRIBE leaves nothing on the source
    column_types=materialize_catalog.column_types,  # None for a query
    read_row=materialize_lookup.read_row,
    verify_snapshot=_materialize_snapshot,
)


def _build_push(values: SourceValues) -> Source:
    return PushSource(
        PushSourceConfig(
            name=values.name,
            subscription_id=values.subscription_id,
            conninfo=values.console_conninfo,
            queue_limit=values.push_queue_limit,
        )
    )


def _no_relation(relation: str) -> str | None:
    return "push subscriptions read no relation; remove it" if relation else None


PUSH = Kind(
    name="push",
    label="Push (NDJSON posted to the API)",
    build=_build_push,
    format_position=push_queue.format_position,
    relation_problem=_no_relation,
    options=(),
    needs_key_columns=False,  # each line names its document's id
    cleanup=None,  # the queue's rows are deleted with the subscription's
    reads_database=False,
)

KINDS: dict[str, Kind] = {k.name: k for k in (POSTGRES, MATERIALIZE, PUSH)}


def kind(name: str) -> Kind:
    """The kind called `name`; KeyError if there is none."""
    return KINDS[name]


def named(value: object) -> Kind | None:
    """The kind `value` names, or None: not a kind's name (or not a string, as JSON may send)."""
    return KINDS.get(value) if isinstance(value, str) else None


def format_position(kind_name: str, position: int | None) -> str:
    """Show a position the way the source kind's own tools do.

    A name no kind has (the model's choices keep it from being stored) is shown as an LSN.
    """
    return KINDS.get(kind_name, POSTGRES).format_position(position)
