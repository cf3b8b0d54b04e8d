"""The worker's cyclic garbage collector, set for a process that allocates per change.

The sync makes a few container objects per change (a row dict, its jsonb and array
values, a row change, a document write, the parsed bulk answer's items) and nearly never a
reference cycle: reference counting frees them all. Python's collector still ran every
700 of them, and each full collection walked everything alive, Django and the loaded
modules included: a sixth of the worker's CPU per backfilled row and a quarter per streamed
change (docs/benchmarks.md, "the hot path, second pass"). `settle` moves what start-up
built out of the collector's sight (`gc.freeze`) and collects young objects less often;
cycles are still collected, only later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Container objects allocated (less those freed) between two young collections; 700 by
default. The middle and old generations keep their thresholds."""


def settle() -> None:
    """Collect once, then keep what is alive now out of every later collection.

    Called once start-up is done, before the worker runs (runsyncer, bench/worker.py)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
