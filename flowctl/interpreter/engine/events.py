"""The event bus of one run tree: emitted events, external signals, and waiters with correlation.

Events are durable facts of the run: a wait is satisfied by the earliest matching event not yet taken by another
wait, whether it arrived before or after the wait started. External signals (`flowctl signal`) are polled from the
run store and enter the bus like any other event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock


@dataclass(slots=True)
class Event:
    seq: int
    name: str
    data: Any
    source: str
    at: float
    taken: bool = False

    def as_context(self) -> dict[str, Any]:
        return {"name": self.name, "data": self.data, "source": self.source, "step": self.source, "error": None}


Matcher = Callable[[Event], bool]
Listener = Callable[[Event], None]


@dataclass(slots=True)
class _Waiter:
    name: str
    match: Matcher
    ready: anyio.Event = field(default_factory=anyio.Event)
    event: Event | None = None


class EventBus:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.history: list[Event] = []
        self._waiters: list[_Waiter] = []
        self._listeners: list[Listener] = []
        self._debts: list[tuple[str, Matcher]] = []  # replayed waits whose event has not come again yet
        self._seq = 0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, name: str, data: Any, source: str) -> Event:
        self._seq += 1
        event = Event(self._seq, name, data, source, self.clock.now())
        self.history.append(event)
        if not (self._debts and self._settle(event)):  # taken by a replayed wait: listeners still see it
            self._deliver(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def _deliver(self, event: Event) -> None:
        for waiter in self._waiters:
            if waiter.event is None and waiter.name == event.name and _safe_match(waiter.match, event):
                waiter.event, event.taken = event, True
                waiter.ready.set()
                break

    def consume(self, name: str, match: Matcher) -> None:
        """A wait replayed from the journal takes its event again: the earliest untaken match, or the next to come."""
        for event in self.history:
            if not event.taken and event.name == name and _safe_match(match, event):
                event.taken = True
                return
        self._debts.append((name, match))

    def _settle(self, event: Event) -> bool:
        for i, (name, match) in enumerate(self._debts):
            if name == event.name and _safe_match(match, event):
                del self._debts[i]
                event.taken = True
                return True
        return False

    async def wait(self, name: str, match: Matcher, timeout: float | None) -> Event | None:
        """The earliest untaken matching event; None on timeout."""
        for event in self.history:
            if not event.taken and event.name == name and _safe_match(match, event):
                event.taken = True
                return event
        waiter = _Waiter(name, match)
        self._waiters.append(waiter)
        try:
            with self.clock.move_on_after(timeout):
                await waiter.ready.wait()
            return waiter.event
        finally:
            self._waiters.remove(waiter)

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)


def _safe_match(match: Matcher, event: Event) -> bool:
    try:
        return bool(match(event))
    except Exception:  # a correlation expression that fails on an unrelated event simply does not match
        return False
