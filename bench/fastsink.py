"""A BENCHMARK INSTRUMENT, NOT OPENSEARCH AND NOT A TEST DOUBLE: a bulk endpoint that is
never the bottleneck, so that a benchmark measures the worker and nothing behind it.

    .venv/bin/python bench/fastsink.py --port 9250

It answers the few requests the worker makes (cluster info `GET /`, index existence and
creation, mappings, `_bulk`, refresh, count, search/scroll for the sweep, delete) in the
shape opensearch-py and syncer/sinks/opensearch read. Each `_bulk` body is parsed line by
line (an action line, then a source line for `index`/`create`, none for `delete`) and
every item is answered as done, with the action's own op name and its external version
echoed. It keeps no documents: only the ids each index holds, so that `_count` is right.
It never refuses a write (no version conflicts, no mapping errors): never use it to test
anything the product does with OpenSearch's answers. Any other request gets a 404 JSON
error and a line on stderr, so that a new call of the worker shows up at once.

It runs in its own process (bench/ceiling.py starts it), so its CPU is not the worker's.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson

VERSION = {"number": "2.11.0", "distribution": "opensearch"}

indexes: dict[str, set[str]] = {}
"""Index name → ids of the documents it holds (ids only: the documents are dropped)."""
mappings: dict[str, dict[str, Any]] = {}


def bulk(body: bytes) -> dict[str, Any]:
    """Every action of a `_bulk` body answered as done."""
    items: list[dict[str, Any]] = []
    lines = iter(body.split(b"\n"))
    for line in lines:
        if not line.strip():
            continue
        ((op, meta),) = orjson.loads(line).items()
        index = str(meta.get("_index", ""))
        doc_id = str(meta.get("_id", ""))
        ids = indexes.setdefault(index, set())
        version = meta.get("version", 1)
        if op == "delete":
            found = doc_id in ids
            ids.discard(doc_id)
            result, status = ("deleted", 200) if found else ("not_found", 404)
        else:
            next(lines)  # the document: not kept
            result, status = ("updated", 200) if doc_id in ids else ("created", 201)
            ids.add(doc_id)
        items.append(
            {
                op: {
                    "_index": index,
                    "_id": doc_id,
                    "_version": version,
                    "result": result,
                    "status": status,
                    "_shards": {"total": 1, "successful": 1, "failed": 0},
                    "_seq_no": 0,
                    "_primary_term": 1,
                }
            }
        )
    return {"took": 0, "errors": False, "items": items}


def not_found(index: str) -> tuple[int, dict[str, Any]]:
    error = {
        "type": "index_not_found_exception",
        "reason": f"no such index [{index}]",
        "index": index,
    }
    return 404, {"error": {**error, "root_cause": [error]}, "status": 404}


def route(method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]] | None:
    """The answer to one request, or None when it is not one the instrument knows."""
    parts = [p for p in urlsplit(path).path.split("/") if p]
    if not parts:
        if method in ("GET", "HEAD"):
            return 200, {"name": "fastsink", "cluster_name": "fastsink", "version": VERSION}
        return None
    if parts == ["_bulk"] or parts[-1:] == ["_bulk"]:
        return 200, bulk(body)
    if parts[0] in ("_refresh",) or parts[-1:] == ["_refresh"]:
        return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
    if parts[0] == "_search" and parts[1:] == ["scroll"]:
        return 200, {"_scroll_id": "none", "hits": {"total": {"value": 0}, "hits": []}}
    if parts[0] == "_alias" and len(parts) == 2:
        return 404, {"error": f"alias [{parts[1]}] missing", "status": 404}
    index = parts[0]
    rest = parts[1:]
    if not rest:
        if method == "HEAD":
            return (200, {}) if index in indexes else (404, {})
        if method == "PUT":
            if index in indexes:
                error = {"type": "resource_already_exists_exception", "reason": "exists"}
                return 400, {"error": error, "status": 400}
            indexes[index] = set()
            request = orjson.loads(body) if body else {}
            mappings[index] = request.get("mappings", {}) if isinstance(request, dict) else {}
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": index}
        if method == "DELETE":
            if indexes.pop(index, None) is None:
                return not_found(index)
            mappings.pop(index, None)
            return 200, {"acknowledged": True}
        if method == "GET" and index in indexes:
            return 200, {index: {"mappings": mappings.get(index, {}), "settings": {}}}
        return not_found(index)
    if index not in indexes:
        return not_found(index)
    if rest == ["_mapping"]:
        if method == "GET":
            return 200, {index: {"mappings": mappings.get(index, {})}}
        if method == "PUT":
            mappings[index] = {**mappings.get(index, {}), **orjson.loads(body)}
            return 200, {"acknowledged": True}
    if rest == ["_count"]:
        return 200, {"count": len(indexes[index])}
    if rest == ["_alias"]:
        return 200, {index: {"aliases": {}}}
    if rest == ["_search"]:
        return 200, {"_scroll_id": "none", "hits": {"total": {"value": 0}, "hits": []}}
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    # Headers and body go out in two writes: with Nagle on, the second waits for the
    # client's delayed ACK (40 ms), which would make every bulk look slow.
    disable_nagle_algorithm = True
    bulk_delay = 0.0
    """Seconds each `_bulk` answer waits: a cluster's latency, for bulks in flight to overlap."""

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        routed = route(self.command, self.path, body)
        if self.bulk_delay and self.path.split("?")[0].endswith("/_bulk"):
            time.sleep(self.bulk_delay)  # this request's thread only
        if routed is None:
            print(f"fastsink: unknown request {self.command} {self.path}", file=sys.stderr)
            routed = 404, {"error": f"fastsink does not answer {self.command} {self.path}"}
        status, payload = routed
        data = b"" if self.command == "HEAD" else orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: one line per request would cost more than the answer."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A bulk endpoint that is never the bottleneck.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bulk-delay-ms", type=float, default=0.0, help="latency per _bulk")
    args = parser.parse_args(argv)
    Handler.bulk_delay = args.bulk_delay_ms / 1000
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"fastsink: listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
