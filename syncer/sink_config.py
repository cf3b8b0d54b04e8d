"""The OpenSearch sink settings of a subscription: the worker's and the DLQ retries'."""

from __future__ import annotations

from syncer import conf
from syncer.models import Subscription
from syncer.sinks.opensearch import OpenSearchSinkConfig


def sink_config(sub: Subscription, index: str | None = None) -> OpenSearchSinkConfig:
    """Where the subscription writes: its index (or alias), or `index` instead."""
    search = conf.opensearch()
    return OpenSearchSinkConfig(
        name=sub.name,
        index=index or sub.index_name,
        url=search.url,
        settings=sub.index_settings or {},
        mappings=sub.index_mappings or {},
        user=search.user,
        password=search.password,
        ca_certs=search.ca_certs,
        verify_certs=search.verify_certs,
        adopt_index=sub.adopt_index,
    )
