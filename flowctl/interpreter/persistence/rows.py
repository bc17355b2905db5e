"""Each write record of the port as the row its table takes, in the column order both SQL stores declare
(sqlite_schema.py, postgres_schema.py): one definition, so the two stores cannot drift apart. `token` is the claim the
commit is made under, which call rows and step outcomes keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowctl.interpreter.persistence.store import (
    AttemptEnded,
    CacheStored,
    CallDone,
    EventLogged,
    Exchanged,
    StateChanged,
    StepFinished,
    StepStarted,
)

Row = tuple[Any, ...]


def step_started_row(w: StepStarted, token: int) -> Row:
    return (w.run_id, w.path, w.kind, "running", int(w.new_attempt), w.at, None, None, None, 0, 0, token)


def step_finished_row(w: StepFinished, token: int) -> Row:
    status = w.status._value_  # `.value` is a descriptor costing ~0.1 µs a row
    return (w.run_id, w.path, w.kind, status, w.attempts, w.started_at, w.finished_at, w.output, w.error,
            w.input_tokens, w.output_tokens, token)  # fmt: skip


def call_row(w: CallDone, token: int) -> Row:
    return (w.run_id, w.key, w.request_digest, w.result, w.at, w.masked, token)


def event_row(w: EventLogged, token: int) -> Row:
    return (w.run_id, w.name, w.data, w.source, w.at)


def state_row(w: StateChanged, token: int) -> Row:
    return (w.run_id, w.step, w.keys, w.values, w.at)


def cache_row(w: CacheStored, token: int) -> Row:
    return (w.digest, w.result, w.at)


def attempt_row(w: AttemptEnded, token: int) -> Row:
    return (w.run_id, w.path, w.attempt, w.status._value_, w.started_at, w.finished_at, w.error, w.retry_in)


def exchange_row(w: Exchanged, token: int) -> Row:
    return (w.run_id, w.path, w.key, w.attempt, w.kind, w.started_at, w.elapsed, w.request, w.response, w.error)


# the write types that are rows of a table (runs are written by statements of their own), and their row
ROW_OF: dict[type, Callable[[Any, int], Row]] = {
    StepStarted: step_started_row,
    StepFinished: step_finished_row,
    CallDone: call_row,
    EventLogged: event_row,
    StateChanged: state_row,
    CacheStored: cache_row,
    AttemptEnded: attempt_row,
    Exchanged: exchange_row,
}
