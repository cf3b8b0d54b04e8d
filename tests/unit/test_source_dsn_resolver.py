"""A source resolves its DSN through the resolver its config carries, when it opens.

The sources read no settings: the wiring hands them `syncer.dsn.resolve`, so an
`env:VAR` that may not be read fails when the source opens (the subscription's error),
not when the pipeline is built.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import AsyncConnection

from syncer import dsn, wiring
from syncer.engine.interfaces import ResumeState
from syncer.errors import SourceConfigError, UnsetVariable
from syncer.models import Subscription
from syncer.sources import kinds
from syncer.sources.materialize.source import MaterializeSource, MaterializeSourceConfig
from syncer.sources.postgres.source import PostgresSource, PostgresSourceConfig

STORED = "env:SOURCE_DATABASE_URL"
RESOLVED = "host=source.example dbname=shop user=sync"
FIRST_START = ResumeState(checkpoint=None, snapshot_done=False, snapshot_mode="index")


class Connecting(Exception):
    """Raised instead of connecting: carries the DSN the source connects with."""


@pytest.fixture
def connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(conninfo: str, **_: Any) -> None:
        raise Connecting(conninfo)

    monkeypatch.setattr(AsyncConnection, "connect", connect)


def postgres(resolve: Any) -> PostgresSource:
    return PostgresSource(
        PostgresSourceConfig("orders", STORED, "orders", ("id",), "orders", resolve_dsn=resolve)
    )


def materialize(resolve: Any) -> MaterializeSource:
    return MaterializeSource(
        MaterializeSourceConfig("orders", STORED, "orders", ("id",), resolve_dsn=resolve)
    )


@pytest.mark.parametrize("build", [postgres, materialize])
async def test_the_source_connects_with_what_its_resolver_returns_when_it_opens(
    build: Any, connecting: None
) -> None:
    asked: list[str] = []

    def resolve(stored: str) -> str:
        asked.append(stored)
        return RESOLVED

    source = build(resolve)
    assert asked == []  # building a source reads no environment
    with pytest.raises(Connecting) as connected:
        await source.open(FIRST_START)
    assert asked == [STORED] and connected.value.args == (RESOLVED,)


@pytest.mark.parametrize("build", [postgres, materialize])
async def test_a_resolvers_refusal_is_raised_by_open(build: Any, connecting: None) -> None:
    def resolve(stored: str) -> str:
        raise UnsetVariable(stored.removeprefix("env:"))

    source = build(resolve)
    with pytest.raises(SourceConfigError, match="SOURCE_DATABASE_URL, which is not set"):
        await source.open(FIRST_START)


async def test_without_a_resolver_the_dsn_is_used_as_given(connecting: None) -> None:
    source = PostgresSource(PostgresSourceConfig("orders", RESOLVED, "orders", ("id",), "orders"))
    with pytest.raises(Connecting) as connected:
        await source.open(FIRST_START)
    assert connected.value.args == (RESOLVED,)


@pytest.mark.parametrize(
    "kind", [k for k in Subscription.SourceKind if kinds.kind(k).reads_database]
)
def test_the_wiring_gives_each_source_the_settings_bound_resolver(kind: str) -> None:
    sub = Subscription(
        name="orders",
        source_kind=kind,
        source_dsn=STORED,
        relation="orders",
        key_columns=["id"],
        slot_name="orders",
    )
    source = wiring.build_source(sub)
    assert isinstance(source, PostgresSource | MaterializeSource)
    assert source.config.resolve_dsn is dsn.resolve
