"""`manage.py verify` as the verification tests run it, and the versions it writes."""

from __future__ import annotations

import io

from django.core.management import call_command
from django.core.management.base import CommandError
from opensearchpy import OpenSearch

from syncer.models import Verification
from tests.support.harness import index_docs


def verify(*args: str) -> tuple[int, Verification, str]:
    """Run the command; its exit status, its Verification and its output (stdout, then
    the progress on stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = 0
    try:
        call_command("verify", *args, stdout=out, stderr=err)
    except CommandError as exc:
        status = exc.returncode
    return status, Verification.objects.latest("requested_at"), out.getvalue() + err.getvalue()


def versions(search: OpenSearch, index: str) -> dict[str, int]:
    """Every document's version, by id."""
    search.indices.refresh(index=index)
    found = search.search(index=index, body={"version": True, "size": 10_000, "_source": False})
    assert len(found["hits"]["hits"]) == len(index_docs(search, index))
    return {h["_id"]: int(h["_version"]) for h in found["hits"]["hits"]}
