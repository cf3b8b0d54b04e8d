"""Resync into a new index: build `<index>-<request time>`, then point the name at it.

The subscription's index name becomes an alias of the freshly built index, swapped
in one `_aliases` request; the index (or indexes) it named before are deleted. The
new index's name comes from the request's time, so a worker that dies mid-copy and
its successor build the same one.

Only indexes searchsync created (or the subscription adopts) are deleted: a name that
stands for another application's index is refused before the copy starts
(`check_resync`) and again at the swap (`point_alias`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from opensearchpy import AsyncOpenSearch

from syncer.errors import ForeignIndex
from syncer.sinks.opensearch import marks
from syncer.sinks.opensearch.client import none_if, translated
from syncer.sinks.opensearch.sink import OpenSearchSinkConfig, make_client

log = structlog.get_logger(__name__)


def new_index_name(index: str, requested_at: datetime) -> str:
    """The concrete index a new-index resync requested at `requested_at` builds."""
    return f"{index}-{requested_at:%Y%m%d%H%M%S%f}".lower()


async def check_resync(config: OpenSearchSinkConfig, new_index: bool) -> None:
    """Raise ForeignIndex if a resync of `config.index` would remove what is not ours.

    In place, it would sweep the index; into a new index, it would delete the index (or
    indexes) the name stands for now. Unless the subscription adopts them, both need
    every one of them to carry searchsync's mark.
    """
    if config.adopt_index:
        return
    client = make_client(config)
    try:
        with translated(f"checking index {config.index}", plain=True):
            foreign = await marks.unmarked(client, config.index)
    finally:
        await client.close()
    if foreign and new_index:
        raise _delete_refusal(config.index, foreign)
    if foreign:
        raise marks.refusal(
            f"resync {config.index} in place",
            config.index,
            foreign,
            "the resync would delete every document in it that the copy does not contain, "
            "another application's too",
        )


async def point_alias(config: OpenSearchSinkConfig, alias: str) -> list[str]:
    """Make `alias` name `config.index` alone; delete what it named before; return those.

    Refused (ForeignIndex) when what it named before is not searchsync's, unless the
    subscription adopts it.
    """
    target = config.index
    client = make_client(config)
    try:
        with translated(f"pointing alias {alias} at {target}", plain=True):
            if not config.adopt_index:
                foreign = [i for i in await marks.unmarked(client, alias) if i != target]
                if foreign:
                    raise _delete_refusal(alias, foreign)
            return await _swap(client, config, alias)
    finally:
        await client.close()


async def _swap(client: AsyncOpenSearch, config: OpenSearchSinkConfig, alias: str) -> list[str]:
    target = config.index
    behind = list(await none_if(404, client.indices.get_alias(name=alias)) or {})
    old = [index for index in behind if index != target]
    to_delete = old
    if behind:
        actions: list[dict[str, Any]] = [
            {"remove": {"index": index, "alias": alias}} for index in old
        ]
        actions.append({"add": {"index": target, "alias": alias}})
        await client.indices.update_aliases(body={"actions": actions})
    elif await client.indices.exists(index=alias):
        # The name is still the original concrete index: replace it by the alias.
        old, to_delete = [alias], []  # removed by the swap itself
        add = {"add": {"index": target, "alias": alias}}
        swapped = await none_if(
            400,
            client.indices.update_aliases(
                body={"actions": [{"remove_index": {"index": alias}}, add]}
            ),
        )
        if swapped is None:
            # A server without `remove_index`: the name is missing for a moment.
            await client.indices.delete(index=alias)
            await client.indices.update_aliases(body={"actions": [add]})
    else:
        await client.indices.update_aliases(
            body={"actions": [{"add": {"index": target, "alias": alias}}]}
        )
    for index in to_delete:
        await client.indices.delete(index=index, ignore_unavailable=True)
    log.info("index_alias_swapped", subscription=config.name, alias=alias, index=target, old=old)
    return old


def _delete_refusal(name: str, foreign: list[str]) -> ForeignIndex:
    return marks.refusal(
        f"resync into a new index behind {name}",
        name,
        foreign,
        "the swap would delete it with whatever another application keeps there",
    )
