"""The log an operator reads while OpenSearch is down: our lines, not a driver's tracebacks.

A real `runsyncer` process (logging configured as in production: JSON on stderr) writes
through a TCP proxy to a real osmem-server; the proxy refuses every connection for a
while, then lets them through again.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from syncer.logconfig import LibraryOneLine
from tests.support.harness import status_of, wait_for
from tests.support.materialize_double import MaterializeDouble
from tests.support.process import WorkerProcess

LIBRARIES = ("opensearch", "opensearchpy", "urllib3", "aiohttp", "elastic_transport")


def records(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def events(log: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in records(log) if r.get("event") == name]


def test_an_outage_logs_what_is_wrong_and_what_happens_next_without_tracebacks(
    make_subscription, opensearch_proxy, tmp_path
):
    log = tmp_path / "worker.log"
    with MaterializeDouble("orders_mv", (("order_id", "int8"), ("total", "numeric"))) as mz:
        mz.insert((1, "1.00"), (2, "2.00"))
        make_subscription(
            "outage-logs",
            "orders_mv",
            source_kind="materialize",
            source_dsn=mz.dsn,
            key_columns=["order_id"],
            batch_max_age_ms=100,
        )
        worker = WorkerProcess(opensearch_proxy.url(), log)
        try:
            wait_for(
                lambda: (
                    worker.process.poll() is not None
                    or status_of("outage-logs").snapshot_completed_at
                ),
                what="the snapshot",
            )
            assert worker.process.poll() is None, worker.output()
            with opensearch_proxy.down():
                mz.insert((3, "3.00"))
                wait_for(lambda: len(events(log, "sink_retrying")) >= 4, what="four retries")
            wait_for(lambda: events(log, "sink_available"), what="OpenSearch back")
        finally:
            worker.process.terminate()
            worker.process.wait(40)

    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    for record in records(log):
        if str(record.get("logger", "")).startswith(LIBRARIES):
            # A driver adds at most one line of its own, without a stack.
            assert "exception" not in record and "\n" not in record["event"], record

    [down] = events(log, "sink_unavailable")
    assert down["level"] == "warning"
    assert "cannot reach OpenSearch" in down["error"]
    assert down["holding"] == 1 and isinstance(down["checkpoint"], int)
    assert down["next"] == (
        "reading paused, 1 changes held and retried with backoff until OpenSearch answers; "
        f"checkpoint held at {down['checkpoint']}"
    )
    for retrying in events(log, "sink_retrying")[:4]:
        assert "cannot reach OpenSearch" in retrying["error"]
        assert re.fullmatch(
            rf"retrying in \d+\.\d s; checkpoint held at {down['checkpoint']}", retrying["next"]
        ), retrying
    [back] = events(log, "sink_available")
    assert back["down_s"] > 0 and back["next"] == "writing the held changes; reading resumes"


def test_a_drivers_traceback_becomes_one_line():
    """The filter itself, on a record as opensearch-py logs a failed request."""
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError:
        record = logging.LogRecord(
            "opensearch",
            logging.WARNING,
            __file__,
            1,
            "%s %s [status:%s]",
            ("POST", "http://127.0.0.1:9/_bulk", "N/A"),
            sys.exc_info(),
        )
    assert LibraryOneLine().filter(record)
    assert record.exc_info is None
    assert record.getMessage() == (
        "POST http://127.0.0.1:9/_bulk [status:N/A]: ConnectionRefusedError: "
        "[Errno 111] Connection refused"
    )
