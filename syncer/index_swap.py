"""Resync into a new index: build `<index>-<request time>`, then point the name at it.

The subscription's index name becomes an alias of the freshly built index, swapped
in one `_aliases` request; the index (or indexes) it named before are deleted. The
new index's name comes from the request's time, so a worker that dies mid-copy and
its successor build the same one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from opensearchpy import exceptions as os_errors

from syncer.errors import SinkConfigError, SinkUnavailable
from syncer.logconfig import redact
from syncer.sinks.opensearch import OpenSearchSinkConfig, make_client

log = structlog.get_logger(__name__)


def new_index_name(index: str, requested_at: datetime) -> str:
    """The concrete index a new-index resync requested at `requested_at` builds."""
    return f"{index}-{requested_at:%Y%m%d%H%M%S%f}".lower()


async def point_alias(config: OpenSearchSinkConfig, alias: str) -> list[str]:
    """Make `alias` name `config.index` alone; delete what it named before; return those."""
    target = config.index
    client = make_client(config)
    try:
        try:
            behind = list(await client.indices.get_alias(name=alias))
        except os_errors.NotFoundError:
            behind = []
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
            try:
                await client.indices.update_aliases(
                    body={"actions": [{"remove_index": {"index": alias}}, add]}
                )
            except os_errors.RequestError:
                # A server without `remove_index`: the name is missing for a moment.
                await client.indices.delete(index=alias)
                await client.indices.update_aliases(body={"actions": [add]})
        else:
            await client.indices.update_aliases(
                body={"actions": [{"add": {"index": target, "alias": alias}}]}
            )
        for index in to_delete:
            await client.indices.delete(index=index, ignore_unavailable=True)
        log.info(
            "index_alias_swapped", subscription=config.name, alias=alias, index=target, old=old
        )
        return old
    except os_errors.ConnectionError as exc:
        raise SinkUnavailable(
            f"pointing alias {alias} at {target}: cannot reach OpenSearch "
            f"({redact(str(exc.error))})"
        ) from exc
    except os_errors.TransportError as exc:
        status = exc.status_code if isinstance(exc.status_code, int) else 0
        message = f"pointing alias {alias} at {target}: OpenSearch answered {status} {exc.error}"
        if status in (408, 429) or status >= 500 or status == 0:
            raise SinkUnavailable(redact(message)) from exc
        raise SinkConfigError(redact(message)) from exc
    finally:
        await client.close()
