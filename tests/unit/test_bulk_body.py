"""The `_bulk` body the OpenSearch sink sends: one action line per change, and its document."""

from __future__ import annotations

import json

import orjson
import pytest

from syncer.engine.changes import Change, Op
from syncer.sinks.opensearch.connection import Connection
from syncer.sinks.opensearch.sink import OpenSearchSink, OpenSearchSinkConfig


def body(index: str, changes: list[Change]) -> bytes:
    sink = OpenSearchSink(OpenSearchSinkConfig("orders", index, Connection("http://localhost")))
    return sink._payload(changes)


def dumped(index: str, changes: list[Change]) -> bytes:
    """The body as one orjson document per line, from dicts (what the sink sent before)."""
    lines = []
    for c in changes:
        meta = {"_index": index, "_id": c.doc_id, "version": c.version, "version_type": "external"}
        if c.op is Op.DELETE:
            lines.append(orjson.dumps({"delete": meta}))
        else:
            lines.append(orjson.dumps({"index": meta}))
            lines.append(orjson.dumps(c.doc, option=orjson.OPT_NON_STR_KEYS))
    return b"".join(line + b"\n" for line in lines)


IDS = ["1", 'quote " and \\ backslash', "tab\tnew\nline", "é ü 漢字 🙂", "a|b\\|c", ""]


@pytest.mark.parametrize("index", ["orders", "orders_v2-2026.12", 'odd"name'])
def test_each_change_is_an_action_line_then_its_document_as_orjson_writes_them(
    index: str,
) -> None:
    changes = [
        Change(
            Op.UPSERT if i % 3 else Op.DELETE,
            doc_id,
            (doc_id,),
            2**62 + i,
            0.0,
            None if i % 3 == 0 else {"id": doc_id, "n": i, "tags": [1, 2], "attrs": {"k": None}},
        )
        for i, doc_id in enumerate(IDS)
    ]
    sent = body(index, changes)
    assert sent == dumped(index, changes)
    lines = sent.split(b"\n")
    assert lines[-1] == b""  # every line ends, the last one too
    first = json.loads(lines[0])
    assert first == {
        "delete": {"_index": index, "_id": "1", "version": 2**62, "version_type": "external"}
    }
    assert json.loads(lines[1])["index"]["_id"] == IDS[1]
    assert json.loads(lines[2]) == changes[1].doc


def test_a_document_with_integer_keys_is_written_with_them_as_text() -> None:
    change = Change(Op.UPSERT, "1", (1,), 7, 0.0, {"id": 1, "by_year": {2026: 3}})
    assert body("orders", [change]).split(b"\n")[1] == b'{"id":1,"by_year":{"2026":3}}'
