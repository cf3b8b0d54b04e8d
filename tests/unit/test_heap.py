"""The worker's garbage collector settings (syncer.worker.heap)."""

from __future__ import annotations

import gc

from syncer.worker import heap


def test_settle_freezes_what_is_alive_and_collects_young_objects_less_often() -> None:
    threshold = gc.get_threshold()
    kept = [{"alive": True}]
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *threshold[1:])
        assert heap.YOUNG_THRESHOLD > threshold[0]
        assert not any(o is kept[0] for o in gc.get_objects())  # frozen: out of sight
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_cycles_made_after_settling_are_still_collected() -> None:
    threshold = gc.get_threshold()
    try:
        heap.settle()
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
