"""Interpreter settings tuned while runs are in flight: the garbage collector and the GIL switch interval.

Collector: a wide fan-out holds tens of thousands of live objects (frames, tasks, contexts) for the length of one
LLM call. CPython's young generation is collected whenever allocations outnumber deallocations by its threshold
(700 by default), and each collection walks every young object, all alive, to find no garbage: with the default
thresholds that was over half the makespan of a 10,000-branch fan-out. So during a run, objects that existed before
it (the compiled graph, imported modules) are frozen out of collection and the threshold is raised to
`RUN_YOUNG_GENERATION`; while a wide fan-out or parallel group is in flight it is raised further, to
`OBJECTS_PER_BRANCH` per branch in flight, so that the branches' own objects do not set collections off
(measured: ~7 collections walking ~15 ms in a 10,000-branch fan-out). When it ends, the next collection waits for
`RUN_YOUNG_GENERATION` more objects than the fan-out left alive (its outputs, the transcript entries the background
commit has not taken yet): lowering the threshold below them set off a collection at once that walked them all and
freed nothing (measured: 20-25 ms of a 10,000-branch fan-out's makespan, 2-3 ms after). Garbage that only the
collector can free (reference cycles) may then wait longer, bounded by the width of the work in flight.

Switch interval: the run store's writer thread hands SQLite its batches without the GIL, and needs the GIL back
after each SQLite call; while the interpreter is busy it gets it only after a switch interval. At 5 ms it falls
behind a busy fan-out (a 1,024-row batch took ~12 ms instead of ~2.5) and the run ends waiting for it; at 1 ms it
keeps up. The interval only matters when another thread asks for the GIL, so single-threaded work is unaffected.

Everything is restored when the last concurrent run ends.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

RUN_SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005
RUN_YOUNG_GENERATION = 50_000  # generation-0 threshold during a run; CPython's default is 700
OBJECTS_PER_BRANCH = 64  # container objects a branch keeps alive in flight (an agent step: ~35), with room

_runs = 0  # runs in flight in this process
_branches = 0  # branches in flight in wide fan-outs and parallel groups, across runs
_gc_saved: tuple[int, int, int] = (700, 10, 10)
_switch_saved = 0.005


@contextmanager
def tuned_for_runs() -> Iterator[None]:
    """The collector and the switch interval set for runs while this run is in flight (see the module docstring)."""
    global _runs, _gc_saved, _switch_saved
    if _runs == 0:
        _gc_saved = gc.get_threshold()
        gc.freeze()
        _switch_saved = sys.getswitchinterval()
        sys.setswitchinterval(min(_switch_saved, RUN_SWITCH_INTERVAL))
    _runs += 1
    _set_young_threshold()
    try:
        yield
    finally:
        _runs -= 1
        if _runs == 0:
            sys.setswitchinterval(_switch_saved)
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


@contextmanager
def branches_in_flight(count: int) -> Iterator[None]:
    """While `count` concurrent branches run: a young generation wide enough that their objects set off no
    collection. Narrow groups (the common case) leave the threshold alone."""
    global _branches
    if count * OBJECTS_PER_BRANCH <= RUN_YOUNG_GENERATION or _runs == 0:
        yield
        return
    _branches += count
    _set_young_threshold()
    try:
        yield
    finally:
        _branches -= count
        if _runs:
            # What the branches leave behind is alive (their outputs, transcript entries not yet committed): a
            # collection now would walk all of it and free nothing, so the next one comes after as much again.
            _set_young_threshold(gc.get_count()[0])


def _set_young_threshold(young: int = 0) -> None:
    """`young`: objects in the young generation now, which the next collection waits to see `RUN_YOUNG_GENERATION`
    more than."""
    gc.set_threshold(max(RUN_YOUNG_GENERATION + young, _branches * OBJECTS_PER_BRANCH), 20, 100)
