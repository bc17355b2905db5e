"""The runtime's clock: every timestamp, sleep and timeout of a run goes through one `Clock`.

Stage: interpreter (time). `SystemClock` is the real one (the functions of `time` and `anyio` themselves, bound as
attributes, so the per-step path pays nothing for the indirection). `ManualClock` is virtual time for tests and
embedders: nothing it governs happens until `advance()` moves time past it, so a test of a 30 s backoff, a wait's
timeout or a breaker's reset runs in microseconds and never depends on the machine's speed (Temporal's
time-skipping test environment is the model). A test synchronises with `await clock.parked(n)`: it returns once every
task is blocked with `n` sleeps or deadlines pending, i.e. once the run has reached the point where only time can
move it on.

What a clock governs (docs/testing.md, "Virtual time"): backoff sleeps, step timeouts and deadlines, `wait` timeouts,
signal polling, circuit breakers, scripted latency, MCP read timeouts, and the timestamps the runtime takes. Bounds
that guard processes (an MCP server's startup, stopping servers, `finally` after Ctrl-C) stay on real time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.lowlevel

# The wall time a ManualClock starts at unless told otherwise: 2026-01-01T00:00:00Z, so recorded times are stable.
MANUAL_EPOCH = 1_767_225_600.0


class Clock(Protocol):
    """What the runtime asks of time. `seconds=None` in the scopes means no limit, as in anyio."""

    def now(self) -> float:
        """Wall-clock time (seconds since the epoch), for the timestamps the runtime records."""
        ...

    def monotonic(self) -> float:
        """A clock for intervals (elapsed times, breaker resets); never goes back."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def move_on_after(self, seconds: float | None, shield: bool = False) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that cancels its block after `seconds`; `scope.cancelled_caught` tells it expired."""
        ...

    def fail_after(self, seconds: float | None, shield: bool = False) -> AbstractContextManager[anyio.CancelScope]:
        """Like `move_on_after`, but raises TimeoutError when the time runs out."""
        ...


class SystemClock:
    """Real time. The methods are the library functions themselves: calling one costs what calling it directly
    costs (the per-step path is benchmarked)."""

    __slots__ = ()

    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(anyio.sleep)
    move_on_after = staticmethod(anyio.move_on_after)
    fail_after = staticmethod(anyio.fail_after)


SYSTEM_CLOCK = SystemClock()


@dataclass(order=True, slots=True)
class _Timer:
    deadline: float
    seq: int
    fire: Callable[[], None] = field(compare=False)
    done: bool = field(default=False, compare=False)


class ManualClock:
    """Virtual time that moves only when a test (or an embedder) calls `advance`.

    Sleeps and deadline scopes register a timer; `advance(seconds)` moves time on and fires, in deadline order,
    every timer it passes (a sleeper wakes, a scope is cancelled). `parked(n)` waits until every task is blocked with
    `n` timers pending; `autojump()` advances by itself whenever that is so.
    Use one ManualClock per event loop (its events belong to the loop that created them)."""

    def __init__(self, start: float = 0.0, wall_start: float = MANUAL_EPOCH) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[_Timer] = []  # a heap; fired or removed timers are marked done and dropped lazily
        self._pending = 0
        self._seq = itertools.count()
        self._watchers: list[anyio.Event] = []  # parked() calls waiting for a timer to be added

    # reading ----------------------------------------------------------------------------------------------------

    def now(self) -> float:
        return self._wall_offset + self._now

    def monotonic(self) -> float:
        return self._now

    @property
    def pending(self) -> list[float]:
        """Seconds from now until each pending timer fires, soonest first."""
        return sorted(t.deadline - self._now for t in self._timers if not t.done)

    # what the runtime calls -------------------------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        timer = self._add(seconds, woken.set)
        try:
            await woken.wait()
        finally:
            self._remove(timer)

    @contextmanager
    def move_on_after(self, seconds: float | None, shield: bool = False) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope(shield=shield) as scope:
            if seconds is None:
                yield scope
                return
            timer = self._add(seconds, scope.cancel)
            try:
                yield scope
            finally:
                self._remove(timer)

    @contextmanager
    def fail_after(self, seconds: float | None, shield: bool = False) -> Iterator[anyio.CancelScope]:
        with self.move_on_after(seconds, shield) as scope:
            yield scope
        if scope.cancelled_caught:
            raise TimeoutError

    # what the test calls ----------------------------------------------------------------------------------------

    def advance(self, seconds: float | None = None) -> float:
        """Move time on by `seconds` (by default: to the next pending timer) and fire every timer it reaches.
        Returns the new monotonic time. Woken tasks run at the caller's next checkpoint."""
        if seconds is None:
            upcoming = self.pending
            seconds = upcoming[0] if upcoming else 0.0
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"time cannot move back (advance by {seconds})")
        self._now += seconds
        while self._timers and (self._timers[0].done or self._timers[0].deadline <= self._now):
            timer = heapq.heappop(self._timers)
            if not timer.done:
                self._finish(timer)
                timer.fire()
        return self._now

    async def autojump(self) -> None:
        """Skip time whenever nothing but time can move the run on: wait until every task is blocked with a timer
        pending, jump to the next timer, repeat (trio's autojump clock, Temporal's time skipping). Run it beside a
        run in a task group and cancel it when the run ends.

        Only for runs whose every wait is in-process (scripted models and tools): a task waiting on real I/O counts
        as blocked, so a timeout around a real HTTP or MCP call would fire at once. Drive those with `parked` and
        `advance` instead."""
        while True:
            await self.parked(1, limit=None)
            self.advance()

    async def parked(self, count: int = 1, *, limit: float | None = 60.0) -> None:
        """Wait until every task is blocked and at least `count` sleeps or deadline scopes are pending: the run can
        only go on once time moves. Tasks woken by the last `advance` run first, so a timer they are about to drop
        or add is counted as it will be. `limit` (real seconds) is a safety net for a broken test, never reached
        when things work (None: no limit)."""
        with anyio.fail_after(limit):
            while True:
                await anyio.wait_all_tasks_blocked()
                if self._pending >= count:
                    return
                added = anyio.Event()
                self._watchers.append(added)
                await added.wait()

    # timers -----------------------------------------------------------------------------------------------------

    def _add(self, seconds: float, fire: Callable[[], None]) -> _Timer:
        timer = _Timer(self._now + seconds, next(self._seq), fire)
        if seconds <= 0:  # already due: fire at once, as a deadline in the past does
            timer.done = True
            fire()
            return timer
        heapq.heappush(self._timers, timer)
        self._pending += 1
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.set()
        return timer

    def _remove(self, timer: _Timer) -> None:
        if not timer.done:
            self._finish(timer)  # left in the heap, skipped when reached

    def _finish(self, timer: _Timer) -> None:
        timer.done = True
        self._pending -= 1


__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]
