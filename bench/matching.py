"""Matching alone: 100,000 live subscriptions on one sync subscription, on one core.

    .venv/bin/python bench/matching.py [--subscriptions 100000] [--changes 100000]
        [--unpinned-changes 20000] [--ranges 5000] [--range-changes 5000]
        [--only all|ranges] [--seed 14] [--json artifacts/bench/matching.json]

No server: the engine's `Matcher` in this process, as `runsyncer` holds it.

(a) Pinned. Every live subscription pins a value: 60% `doc.tenant == T` (10,000
    tenants), 15% `doc.user_id == U` (10,000 users), 10% `doc.tenant in [3 tenants]`,
    5% `(doc.tenant == T1 || doc.tenant == T2) && doc.status != "draft"`, 10% a tenant
    plus ranges (`doc.total >= X && doc.created_at > timestamp(...)`); a third of the
    plain ones add an unpinned condition (`doc.total > 100.5`, a JSON path). Each
    change is a document of a random tenant and user with a numeric total, a jsonb
    `meta` and a timestamptz, typed from its source types as the worker does. Timed per
    change: building the activation and `Matcher.match`. Reported: changes/s, p50/p99,
    candidates per change, registration time, memory per live subscription (RSS growth
    over registration / subscriptions: the compiled programs live in Rust's heap).
(b) Unpinned. The same plus 100, then `DEFAULT_UNPINNED_QUOTA`, then 1,000 live
    subscriptions with no pinned conjunct (distinct texts, so nothing is shared: the
    worst case); the cost of one unpinned live subscription per change is the slope
    between 0 and 1,000, and the quota the number that keeps the worst case at 2,000
    changes/s or more (the round at the default quota shows it does).
(d) Ranges. The filters of (a) plus `--ranges` live subscriptions whose only selective
    conjunct bounds the total (`doc.total > X`, `doc.total >= X && doc.status !=
    "draft"`, distinct texts), the bounds drawn over the totals' whole range, then in
    their top tenth; each matched by a `Matcher(index_ranges=False)` (the range filters
    unpinned, as before the range index) and by the default one (indexed), twice
    alternated on the same changes, the better round of each reported. Ids are UUIDs,
    as the worker's.
(c) Engines. Compile and evaluate per call of common-expression-language (`cel`,
    the engine used) and cel-expr-python (Google's cel-cpp) on the same filters and
    documents (without timestamps: cel-expr-python takes no datetime in a map).

Absolute figures drift on a shared machine; run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from syncer.engine.matching import (  # noqa: E402
    DEFAULT_UNPINNED_QUOTA,
    Matcher,
    activation,
    compile_filter,
)

FIELDS = {
    "id": "int8",
    "tenant": "int8",
    "user_id": "int8",
    "status": "text",
    "total": "numeric",
    "meta": "jsonb",
    "created_at": "timestamptz",
}
TENANTS = 10_000
USERS = 10_000
STATUSES = ["draft", "open", "paid", "shipped", "cancelled"]
REGIONS = ["eu", "us", "apac", "latam"]
TARGET_CHANGES_PER_SECOND = 2_000
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def pinned_filter(rng: random.Random) -> str:
    draw = rng.random()
    tenant = rng.randrange(TENANTS)
    extra = rng.random()
    if draw < 0.60:
        text = f"doc.tenant == {tenant}"
        if extra < 0.15:
            text += " && doc.total > 100.5"
        elif extra < 0.30:
            text += f' && doc.meta.region == "{rng.choice(REGIONS)}"'
        return text
    if draw < 0.75:
        return f"doc.user_id == {rng.randrange(USERS)}"
    if draw < 0.85:
        tenants = ", ".join(str(rng.randrange(TENANTS)) for _ in range(3))
        return f"doc.tenant in [{tenants}]"
    if draw < 0.90:
        other = rng.randrange(TENANTS)
        return f'(doc.tenant == {tenant} || doc.tenant == {other}) && doc.status != "draft"'
    since = (EPOCH + dt.timedelta(days=rng.randrange(60))).strftime("%Y-%m-%dT%H:%M:%SZ")
    floor = rng.randrange(1000)
    return (
        f'doc.tenant == {tenant} && doc.total >= {floor} && doc.created_at > timestamp("{since}")'
    )


def unpinned_filter(rng: random.Random, number: int) -> str:
    """Distinct texts (the number is in each), so no two share a compiled program."""
    shapes = [
        f"!(doc.total <= {number}.5)",  # negated: a top-level `>` would be indexed
        f'doc.status != "draft" && !(doc.total >= {number})',
        f'doc.meta.region.startsWith("e") && doc.id % 1000 == {number % 1000}',
        f"has(doc.meta.vip) || doc.user_id < {number}",
    ]
    return rng.choice(shapes)


def document(rng: random.Random, number: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"region": rng.choice(REGIONS), "source": "web"}
    if rng.random() < 0.05:
        meta["vip"] = True
    created = EPOCH + dt.timedelta(seconds=rng.randrange(90 * 86400))
    return {
        "id": number,
        "tenant": rng.randrange(TENANTS),
        "user_id": rng.randrange(USERS),
        "status": rng.choice(STATUSES),
        "total": f"{rng.randrange(100_000) / 100:.2f}",
        "meta": meta,
        "created_at": created.isoformat(),
    }


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_changes(matcher: Matcher[Any], docs: list[dict[str, Any]]) -> dict[str, float]:
    """Activation and match per change, timed one by one."""
    timings: list[float] = []
    candidates = matched = errors = 0
    clock = time.perf_counter
    start = clock()
    for number, doc in enumerate(docs):
        begin = clock()
        result = matcher.match(activation(doc, None, "upsert", str(number), number, FIELDS))
        timings.append(clock() - begin)
        candidates += result.candidates
        matched += len(result.ids)
        errors += result.errors
    elapsed = clock() - start
    return {
        "changes": len(docs),
        "changes_per_s": len(docs) / elapsed,
        "mean_ms": statistics.fmean(timings) * 1e3,
        "p50_ms": percentile(timings, 0.50) * 1e3,
        "p99_ms": percentile(timings, 0.99) * 1e3,
        "max_ms": max(timings) * 1e3,
        "candidates_per_change": candidates / len(docs),
        "matches_per_change": matched / len(docs),
        "errors_per_change": errors / len(docs),
    }


def pinned(args: argparse.Namespace) -> tuple[Matcher[int], dict[str, Any]]:
    rng = random.Random(args.seed)
    texts = [pinned_filter(rng) for _ in range(args.subscriptions)]
    docs = [document(rng, number) for number in range(args.changes)]
    before = rss()
    start = time.perf_counter()
    matcher: Matcher[int] = Matcher()
    for number, text in enumerate(texts):
        matcher.add(number, compile_filter(text, FIELDS))
    registration = time.perf_counter() - start
    grown = rss() - before
    assert matcher.unpinned == 0, "every filter of (a) pins a value"
    figures = run_changes(matcher, docs)
    figures.update(
        subscriptions=args.subscriptions,
        distinct_texts=len(set(texts)),
        registration_s=registration,
        registration_us_each=registration / args.subscriptions * 1e6,
        bytes_per_subscription=grown / args.subscriptions,
    )
    return matcher, figures


def unpinned(matcher: Matcher[int], args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    docs = [document(rng, number) for number in range(args.unpinned_changes)]
    rounds: dict[int, dict[str, float]] = {0: run_changes(matcher, docs)}
    added = 0
    for total in sorted({100, DEFAULT_UNPINNED_QUOTA, 1_000}):
        while added < total:
            matcher.add(10_000_000 + added, compile_filter(unpinned_filter(rng, added), FIELDS))
            added += 1
        assert matcher.unpinned == total, "every filter of (b) is unpinned"
        rounds[total] = run_changes(matcher, docs)
    base, most = rounds[0]["mean_ms"], rounds[1_000]["mean_ms"]
    per_unpinned_us = (most - base) / 1_000 * 1e3
    budget_us = 1e6 / TARGET_CHANGES_PER_SECOND - base * 1e3
    return {
        "default_quota": DEFAULT_UNPINNED_QUOTA,
        "rounds": {str(count): figures for count, figures in rounds.items()},
        "cost_per_unpinned_per_change_us": per_unpinned_us,
        "quota_for_target": int(budget_us / per_unpinned_us),
    }


def range_filter(rng: random.Random, spread: str) -> str:
    """A filter whose only selective conjunct bounds the total (distinct texts). Totals
    are uniform in [0, 1000): `uniform` bounds too (a change meets half of them),
    `high` bounds in the top tenth (an alert on large orders: one in twenty met)."""
    low = 0 if spread == "uniform" else 90_000
    cents = rng.randrange(low, 100_000)
    bound = f"{cents // 100}.{cents % 100:02d}"
    if rng.random() < 0.5:
        return f"doc.total > {bound}"
    return f'doc.total >= {bound} && doc.status != "draft"'


def ranges(args: argparse.Namespace) -> dict[str, Any]:
    """(d) The pinned filters of (a) plus `--ranges` filters with only a range conjunct,
    matched by a matcher that indexes the ranges and by one that leaves them unpinned
    (as before the range index), on the same changes, alternated."""
    rng = random.Random(args.seed)
    texts = [pinned_filter(rng) for _ in range(args.subscriptions)]
    pinned = [compile_filter(text, FIELDS) for text in texts]
    rng = random.Random(args.seed + 3)
    docs = [document(rng, number) for number in range(args.range_changes)]
    results: dict[str, Any] = {"ranges": args.ranges, "changes_per_round": args.range_changes}
    for spread in ("uniform", "high"):
        extra = [compile_filter(range_filter(rng, spread), FIELDS) for _ in range(args.ranges)]
        # UUIDs, as the worker's: ints in allocation order would let the unindexed
        # matcher walk the compiled programs in memory order (30% faster per evaluation
        # here), which the worker's set of UUIDs does not
        ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(len(pinned) + len(extra))]
        matchers: dict[str, Matcher[uuid.UUID]] = {}
        for name, indexed in (("unindexed", False), ("indexed", True)):
            matcher: Matcher[uuid.UUID] = Matcher(index_ranges=indexed)
            for live_id, filter in zip(ids, [*pinned, *extra], strict=True):
                matcher.add(live_id, filter)
            assert matcher.unpinned == (0 if indexed else args.ranges)
            matchers[name] = matcher
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in matchers}
        for _ in range(2):
            for name, matcher in matchers.items():
                rounds[name].append(run_changes(matcher, docs))
        verdicts = {runs[0]["matches_per_change"] for runs in rounds.values()}
        assert len(verdicts) == 1, "both matchers find the same live subscriptions"
        results[spread] = {
            name: max(runs, key=lambda figures: figures["changes_per_s"])
            for name, runs in rounds.items()
        }
        results[spread]["all_rounds"] = rounds
    return results


def engines(args: argparse.Namespace) -> dict[str, Any]:
    """The two candidate engines on the same texts and documents, one call at a time."""
    import cel
    import cel_expr_python.cel as cpp  # type: ignore[import-untyped]  # stubs, no py.typed

    rng = random.Random(args.seed + 2)
    texts = [pinned_filter(rng).split(" && doc.created_at")[0] for _ in range(2_000)]
    docs = [document(rng, number) for number in range(2_000)]
    variables = [
        {
            "doc": {**doc, "total": float(doc["total"]), "created_at": None},
            "old": None,
            "op": "upsert",
            "key": "k",
            "position": 1,
        }
        for doc in docs
    ]
    env = cpp.NewEnv(
        variables={name: cpp.Type.DYN for name in ("doc", "old", "op", "key", "position")}
    )

    def per_call(calls: int, body: Callable[[int], object]) -> float:
        start = time.perf_counter()
        for number in range(calls):
            body(number)
        return (time.perf_counter() - start) / calls * 1e6

    rust_programs = [cel.compile(text) for text in texts]
    cpp_programs = [env.compile(text) for text in texts]
    rust_contexts = [cel.Context(variables=values) for values in variables]
    cpp_activations = [env.Activation(values) for values in variables]
    n = len(texts)
    figures = {
        "common-expression-language": {
            "compile_us": per_call(n, lambda i: cel.compile(texts[i] + " ")),
            "context_us": per_call(n, lambda i: cel.Context(variables=variables[i])),
            "evaluate_us": per_call(
                20 * n, lambda i: rust_programs[i % n].execute(rust_contexts[(i * 7) % n])
            ),
        },
        "cel-expr-python": {
            "compile_us": per_call(n, lambda i: env.compile(texts[i] + " ")),
            "context_us": per_call(n, lambda i: env.Activation(variables[i])),
            "evaluate_us": per_call(
                20 * n, lambda i: cpp_programs[i % n].eval(cpp_activations[(i * 7) % n])
            ),
        },
    }
    agree = sum(
        rust_programs[i].execute(rust_contexts[i])
        == cpp_programs[i].eval(cpp_activations[i]).value()
        for i in range(n)
    )
    figures["agree_of"] = {"agree": agree, "of": n}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--unpinned-changes", type=int, default=20_000)
    parser.add_argument("--ranges", type=int, default=5_000)
    parser.add_argument("--range-changes", type=int, default=5_000)
    parser.add_argument("--only", choices=["all", "ranges"], default="all")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", type=Path, default=ROOT / "artifacts" / "bench" / "matching.json")
    args = parser.parse_args()

    results: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if args.only == "ranges":
        results["ranges"] = ranges(args)
        print(json.dumps({"ranges": results["ranges"]}, indent=2), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"raw figures: {args.json}")
        return
    results["engines"] = engines(args)
    print(json.dumps({"engines": results["engines"]}, indent=2), flush=True)
    matcher, results["pinned"] = pinned(args)
    print(json.dumps({"pinned": results["pinned"]}, indent=2), flush=True)
    results["unpinned"] = unpinned(matcher, args)
    print(json.dumps({"unpinned": results["unpinned"]}, indent=2), flush=True)
    del matcher
    results["ranges"] = ranges(args)
    print(json.dumps({"ranges": results["ranges"]}, indent=2), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"raw figures: {args.json}")


if __name__ == "__main__":
    main()
