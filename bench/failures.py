"""The "failures" phase of `make bench`: backfill throughput when 1% of documents fail.

Two source tables hold the backfill's realistic rows plus a text column `code`,
into an index that maps `code` as an integer (OpenSearch coerces "12345" and rejects
"x-17" with 400 mapper_parsing_exception):

- failing (`bench_failures`): digits on most rows, a non-number ("x-<id>") on exactly
  `--failure-percent` of them, chosen at random. Each bad row becomes a DeadLetter
  and the snapshot goes on;
- clean (`bench_failures_clean`): the same rows with digits everywhere.

The clean run keeps the integer mapping rather than mapping `code` as a keyword:
osmem-server indexes an integer-mapped `code` about 15% slower than a keyword one,
which would be counted as the cost of the failures.

The order alternates (failing then clean, then clean then failing, ...) and the two
are compared as a ratio of docs/s. After each run the dead letters and the index
are checked against the plan: the failing run must have dead-lettered exactly the
bad rows and indexed exactly the good ones.

This module is the phase's data and arithmetic; bench/run.py's `Bench.failures`
runs it with the machinery the other phases use.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

MAPPINGS: dict[str, Any] = {"properties": {"code": {"type": "integer"}}}
EXPECTED_ERROR = "mapper_parsing_exception"


@dataclass(frozen=True)
class Variant:
    name: str
    table: str
    fails: bool
    """Whether the table holds the plan's bad rows."""


FAILING = Variant("failing", "bench_failures", fails=True)
CLEAN = Variant("clean", "bench_failures_clean", fails=False)


def order(round_no: int) -> tuple[Variant, Variant]:
    """Failing then clean in odd rounds, the other way round in even ones."""
    return (FAILING, CLEAN) if round_no % 2 == 1 else (CLEAN, FAILING)


@dataclass(frozen=True)
class Plan:
    """Which of the table's rows (ids 1..rows) hold a `code` an integer field rejects."""

    rows: int
    bad: frozenset[int]

    @property
    def good(self) -> int:
        return self.rows - len(self.bad)

    def codes(self, variant: Variant) -> Callable[[int], str]:
        """The `code` of each row of `variant`'s table."""

        def code(row_id: int) -> str:
            if variant.fails and row_id in self.bad:
                return f"x-{row_id}"
            return str(10_000 + row_id % 90_000)

        return code

    def expected(self, variant: Variant) -> tuple[set[str], set[str]]:
        """The document ids `variant`'s index should hold, and those it should dead-letter."""
        dead = {str(i) for i in self.bad} if variant.fails else set()
        return {str(i) for i in range(1, self.rows + 1)} - dead, dead


def make_plan(rows: int, percent: float, seed: int = 17) -> Plan:
    """Exactly round(rows * percent / 100) bad rows, spread at random over the table."""
    count = round(rows * percent / 100)
    return Plan(rows, frozenset(random.Random(seed).sample(range(1, rows + 1), count)))


def check(
    variant: Variant,
    plan: Plan,
    dead_letters: Sequence[tuple[str, str]],
    indexed: Collection[str],
    stats: dict[str, Any] | None,
) -> dict[str, Any]:
    """Compare one run's dead letters `(doc_id, error_type)` and index ids with the plan."""
    want_indexed, want_dead = plan.expected(variant)
    dead_ids = {doc_id for doc_id, _ in dead_letters}
    indexed_ids = set(indexed)
    stats = stats or {}
    problems = []
    if len(dead_letters) != len(want_dead) or dead_ids != want_dead:
        problems.append(
            f"{len(dead_letters):,} dead letters, expected {len(want_dead):,} "
            f"({len(dead_ids - want_dead):,} unexpected, {len(want_dead - dead_ids):,} missing)"
        )
    types = Counter(error_type for _, error_type in dead_letters)
    if set(types) - {EXPECTED_ERROR}:
        problems.append(f"dead-letter error types {dict(types)}")
    if len(indexed) != len(want_indexed) or indexed_ids != want_indexed:
        problems.append(
            f"index holds {len(indexed):,} documents, expected {len(want_indexed):,} "
            f"({len(indexed_ids - want_indexed):,} unexpected, "
            f"{len(want_indexed - indexed_ids):,} missing)"
        )
    if stats.get("dead_lettered") != len(want_dead) or stats.get("written") != len(want_indexed):
        problems.append(
            f"worker counted {stats.get('written')} written and "
            f"{stats.get('dead_lettered')} dead-lettered"
        )
    return {
        "dead_letters": len(dead_letters),
        "expected_dead_letters": len(want_dead),
        "error_types": dict(types),
        "indexed": len(indexed),
        "expected_indexed": len(want_indexed),
        "problems": problems,
        "correct": not problems,
    }


def summarize(plan: Plan, percent: float, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The phase's figures: docs/s of each variant (mean time per run) and their ratio."""
    failing = [r for r in runs if r["variant"] == FAILING.name]
    clean = [r for r in runs if r["variant"] == CLEAN.name]
    failing_s = sum(r["seconds"] for r in failing) / len(failing)
    clean_s = sum(r["seconds"] for r in clean) / len(clean)
    return {
        "rows": plan.rows,
        "bad_rows": len(plan.bad),
        "percent": percent,
        "mappings": MAPPINGS,
        "codes": {"good": "str(10000 + id % 90000)", "bad": "x-<id>"},
        "failing": failing,
        "clean": clean,
        "failing_docs_per_s": plan.rows / failing_s,
        "clean_docs_per_s": plan.rows / clean_s,
        "ratio": clean_s / failing_s,
        "correct": all(r["check"]["correct"] for r in runs),
    }


def report_rows(f: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The phase's rows of the bench table; none has a target."""

    def per_round(runs: Sequence[dict[str, Any]]) -> str:
        return ", ".join(f"{r['docs_per_s']:,.0f}" for r in runs)

    failing, clean = f["failing"], f["clean"]
    dead = ", ".join(f"{r['check']['dead_letters']:,}" for r in failing)
    wrong = [p for r in f["failing"] + f["clean"] for p in r["check"]["problems"]]
    if wrong:
        correctness = "WRONG: " + "; ".join(wrong)
    else:
        correctness = (
            f"failing: exactly the {f['rows'] - f['bad_rows']:,} good rows indexed, "
            f"the {f['bad_rows']:,} bad ones dead-lettered; clean: all rows, none"
        )
    return [
        (
            f"failures, clean ({f['rows']:,} rows, integer code)",
            f"{f['clean_docs_per_s']:,.0f} docs/s  [{per_round(clean)}]",
            "",
            "",
        ),
        (
            f"failures, {f['percent']:g}% failing ({f['bad_rows']:,} rejected)",
            f"{f['failing_docs_per_s']:,.0f} docs/s  [{per_round(failing)}]",
            "",
            "",
        ),
        ("failures, failing / clean", f"{f['ratio']:.0%}", "", ""),
        (
            "failures, dead letters per failing run",
            f"{dead} (bad rows: {f['bad_rows']:,})",
            "",
            "",
        ),
        ("failures, index and dead letters vs plan", correctness, "", ""),
    ]
