"""docs/prometheus-alerts.yml and docs/grafana-dashboard.json query what /metrics exports."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from syncer.engine.changes import RowChange, RowOp, Transaction
from syncer.engine.pipeline import Pipeline, PipelineConfig
from syncer.engine.testing import (
    InMemoryDeadLetters,
    InMemorySink,
    InMemorySource,
    InMemoryStore,
)
from syncer.worker.metrics import registry_for

DOCS = Path(__file__).resolve().parents[2] / "docs"
_METRIC = re.compile(r"\b(?:searchsync_[a-z0-9_]+|process_[a-z0-9_]+)\b")
_SELECTOR = re.compile(r"\b(searchsync_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"[^\"]*\"")
_CALL = re.compile(r"\b([a-z_]+)\s*\(")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_DURATION = re.compile(r"^\d+[smhd]$")
_PROMQL = {"sum", "max", "min", "avg", "rate", "increase", "histogram_quantile", "absent"}
_PROMQL_WORDS = {"by"}


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample names of a real scrape after changes flowed, with their label names."""

    async def flow() -> Pipeline:
        changes = [RowChange(RowOp.INSERT, (1,), {"id": 1}), RowChange(RowOp.DELETE, (2,))]
        source = InMemorySource([Transaction(10, time.time(), changes)])
        source.progressed = time.time()
        store = InMemoryStore(snapshot_done=True)
        pipeline = Pipeline(
            PipelineConfig(name="docs", poll_interval=0.005),
            source,
            InMemorySink(),
            store,
            InMemoryDeadLetters(),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        async with asyncio.timeout(5):
            while store.checkpoint != 10:
                await asyncio.sleep(0.002)
        stop.set()
        await task
        return pipeline

    pipeline = asyncio.run(flow())
    last = {"finished_at": 1.0, "failed": False, "checked": 9, "drifted": 1, "repaired": 1}
    registry = registry_for(
        lambda: {"docs": pipeline},
        lambda names: {"docs": 0},
        verifications=lambda names: {"docs": {**last, "running": False}},
        push_queues=lambda names: {"docs": 0},
    )
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def check_query(expr: str, exported: dict[str, set[str]]) -> None:
    """Fail unless `expr` is balanced, calls known functions and uses exported names."""
    for opening, closing in ("()", "{}", "[]"):
        assert expr.count(opening) == expr.count(closing), f"unbalanced {opening}: {expr}"
    assert expr.count('"') % 2 == 0, f"unbalanced quotes: {expr}"
    for function in _CALL.findall(expr):
        assert function in _PROMQL | _PROMQL_WORDS, f"unknown function {function}(): {expr}"
    metrics = _METRIC.findall(expr)
    assert metrics, f"no searchsync metric in {expr}"
    for name in metrics:
        assert name in exported, f"{name} is not exported by /metrics (in {expr})"
    for name, matchers in _SELECTOR.findall(expr):
        for label in _MATCHER.findall(matchers):
            assert label in exported[name], f"{name} has no label {label} (in {expr})"
    labels = set().union(*(exported[name] for name in metrics))
    for grouping in _BY.findall(expr):
        for label in (part.strip() for part in grouping.split(",")):
            assert label in labels, f"grouping by {label}, which {metrics} lack: {expr}"


def test_the_check_refuses_a_metric_that_is_not_exported(exported):
    with pytest.raises(AssertionError, match="searchsync_lag_secs is not exported"):
        check_query("max(searchsync_lag_secs) > 5", exported)
    with pytest.raises(AssertionError, match="has no label kind"):
        check_query('sum(rate(searchsync_bulk_requests_total{kind="x"}[5m]))', exported)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    assert set(document) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["name"]
        rules.extend(group["rules"])
    return rules


def test_alert_rules_are_a_valid_rule_file_over_exported_metrics(exported):
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert _DURATION.match(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "searchsync_" in rule["expr"]:
            check_query(rule["expr"], exported)
        else:
            assert rule["expr"] == 'up{job="searchsync-worker"} == 0'  # Prometheus' own


@pytest.mark.parametrize(
    ("metric", "threshold"),
    [
        ("searchsync_lag_seconds", "> 5"),
        ("searchsync_commit_to_ack_seconds_bucket", "> 5"),
        ("searchsync_bulk_requests_total", "> 0.01"),
        ("searchsync_buffer_changes", "> 8000"),
        ("searchsync_dead_letter_queue_entries", "> 100"),
        ("searchsync_verify_drifted - searchsync_verify_repaired", "> 0"),
        ("absent(searchsync_worker_subscriptions)", ""),
    ],
)
def test_the_runbook_alerts_are_all_there(metric, threshold):
    exprs = [" ".join(rule["expr"].split()) for rule in alert_rules()]
    assert any(metric in e and e.endswith(threshold) for e in exprs), (metric, threshold)


def test_the_p95_latency_alert_takes_the_95th_percentile():
    (latency,) = [r for r in alert_rules() if "commit_to_ack" in r["expr"]]
    assert "histogram_quantile(0.95," in latency["expr"]


def test_the_grafana_dashboard_is_json_with_the_panels_an_operator_needs(exported):
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in ("lag", "latency", "throughput", "buffer", "dead letters", "errors"):
        assert needed in titles, needed
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            check_query(target["expr"], exported)
    (variable,) = dashboard["templating"]["list"]
    assert _METRIC.findall(variable["definition"])[0] in exported
