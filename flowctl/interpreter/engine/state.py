"""Shared state: declared keys, a reducer per key, and a log of every change.

Determinism for concurrent writers: steps inside a parallel group or a fan-out write into a per-branch buffer, and the
group applies the buffers in declaration (item) order when it finishes — so the result never depends on which branch
finished first. Elsewhere an update applies when its step succeeds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowctl.dsl.ir import Reducer, StateKey
from flowctl.interpreter.errors import FlowctlError


class StateError(FlowctlError):
    """A `set:` value its key's reducer cannot take (e.g. a non-mapping for `merge`)."""

    code = "state-update-failed"


@dataclass(frozen=True, slots=True)
class Change:
    step: str
    values: dict[str, Any]
    at: float


Update = tuple[str, dict[str, Any]]  # (step path, {key: value})


class SharedState:
    def __init__(self, keys: dict[str, StateKey], now: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.now = now  # the runtime clock's wall time, for the change log
        self.values: dict[str, Any] = {name: copy.deepcopy(key.default) for name, key in keys.items()}
        self.log: list[Change] = []
        self.listeners: list[Callable[[Change], None]] = []  # the store's change log, threshold triggers

    def apply(self, step: str, updates: dict[str, Any]) -> None:
        """Apply one step's updates through each key's reducer, and log the change."""
        for name, value in updates.items():
            try:
                self.values[name] = _reduce(self.keys[name].reducer, self.values.get(name), value)
            except TypeError as exc:
                raise StateError(f"step {step!r} cannot update state key {name!r}: {exc}") from None
        change = Change(step, {name: self.values[name] for name in updates}, self.now())
        self.log.append(change)
        for listener in self.listeners:
            listener(change)


class ChildState(SharedState):
    """A child run's state when it declares `parent_state`: its own keys, plus the caller's keys it names, read live
    (every change of the caller's state is seen at once) and written through to the caller at once, with the
    caller's reducers, as changes of `<pipeline step path>/<child step path>`. Shared keys are how concurrent
    children coordinate (the seed's `shared_state`), so their writes are never held back in a fan-out's or a
    parallel branch's buffer."""

    def __init__(
        self,
        keys: dict[str, StateKey],
        now: Callable[[], float],
        parent: SharedState,
        shared: tuple[str, ...],
        prefix: str,
    ) -> None:
        super().__init__(keys, now)
        self.parent, self.shared, self.prefix = parent, frozenset(shared), prefix
        for name in shared:
            self.values[name] = parent.values.get(name)
        parent.listeners.append(self._parent_changed)

    def _parent_changed(self, change: Change) -> None:
        for name, value in change.values.items():
            if name in self.shared:
                self.values[name] = value

    def detach(self) -> None:
        """The child run has ended: stop following the caller's state."""
        self.parent.listeners.remove(self._parent_changed)

    def apply(self, step: str, updates: dict[str, Any]) -> None:
        theirs = {name: value for name, value in updates.items() if name in self.shared}
        if len(theirs) < len(updates):
            super().apply(step, {name: value for name, value in updates.items() if name not in self.shared})
        if theirs:
            self.parent.apply(self.prefix + step, theirs)  # its listeners include ours: we see the result


def _reduce(reducer: Reducer, current: Any, value: Any) -> Any:
    if reducer is Reducer.APPEND:
        items = list(current) if isinstance(current, list) else ([] if current is None else [current])
        return items + value if isinstance(value, list) else [*items, value]
    if reducer is Reducer.MERGE:
        merged = dict(current) if isinstance(current, dict) else {}
        if not isinstance(value, dict):
            raise TypeError(f"merge reducer needs a mapping, got {type(value).__name__}")
        merged.update(value)
        return merged
    return value


class UpdateBuffer:
    """Collects the updates of one branch of a concurrent group, to be applied later in a fixed order."""

    __slots__ = ("updates",)

    def __init__(self) -> None:
        self.updates: list[Update] = []

    def __call__(self, step: str, values: dict[str, Any]) -> None:
        self.updates.append((step, values))
