"""Where OpenSearch is and how to log in: a plain value, so that `syncer.conf` can build
it from the settings without loading opensearch-py."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Connection:
    """Where OpenSearch is and how to log in (`OPENSEARCH_*`, read by `syncer.conf`)."""

    url: str
    user: str = ""
    password: str = field(default="", repr=False)  # never in a log line or traceback
    ca_certs: str = ""
    """A CA bundle to verify an https server with; the system's when empty."""
    verify_certs: bool = True
