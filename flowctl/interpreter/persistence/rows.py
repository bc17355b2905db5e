"""Rows and records both ways, for both SQL stores (sqlite_store.py, postgres_store.py): one definition, so the two
stores cannot drift apart.

- Writing: each write record of the port as the row its table takes, in the column order both schemas declare.
  `token` is the claim the commit is made under, which call rows and step outcomes keep.
- Reading: `RecordReads`, the port's reads (runs, steps, calls, events, state changes, attempts, the transcript, the
  cache, signals): the same queries on both stores, each row made into its record by column name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

from flowctl.interpreter.persistence.store import (
    AttemptEnded,
    AttemptRecord,
    CacheStored,
    CallDone,
    CallRecord,
    EventLogged,
    EventRecord,
    Exchanged,
    ExchangeRecord,
    RunRecord,
    RunStatus,
    Signal,
    StateChange,
    StateChanged,
    StepFinished,
    StepRecord,
    StepStarted,
    StepStatus,
)

Row = tuple[Any, ...]

RUN_COLUMNS = (
    "run_id, parent_id, pipeline, file, status, started_at, finished_at, inputs, outputs, error, "
    "source_digest, input_tokens, output_tokens, cost, owner, input_secrets, scripted"
)
STEP_COLUMNS = (
    "run_id, path, kind, status, attempts, started_at, finished_at, output, error, input_tokens, output_tokens, "
    "claim_token"
)
# a call row: the journal's columns, then those of the transcript entry it may keep (CallDone.transcript)
CALL_COLUMNS = (
    "run_id, key, request_digest, result, recorded_at, redacted, claim_token, path, attempt, started_at, elapsed, "
    "request, ordinal"
)
# Recording a key again replaces the row (a transcript entry it kept is moved to `exchanges` by the schema's trigger).
CALL_UPDATE = """ON CONFLICT (run_id, key) DO UPDATE SET
        request_digest = excluded.request_digest, result = excluded.result, recorded_at = excluded.recorded_at,
        redacted = excluded.redacted, claim_token = excluded.claim_token, path = excluded.path,
        attempt = excluded.attempt, started_at = excluded.started_at, elapsed = excluded.elapsed,
        request = excluded.request, ordinal = excluded.ordinal"""
# an exchanges row
EXCHANGE_COLUMNS = "run_id, path, key, attempt, kind, started_at, elapsed, request, response, error, ordinal"


def step_started_row(w: StepStarted, token: int) -> Row:
    return (w.run_id, w.path, w.kind, "running", int(w.new_attempt), w.at, None, None, None, 0, 0, token)


def step_finished_row(w: StepFinished, token: int) -> Row:
    status = w.status._value_  # `.value` is a descriptor costing ~0.1 µs a row
    return (w.run_id, w.path, w.kind, status, w.attempts, w.started_at, w.finished_at, w.output, w.error,
            w.input_tokens, w.output_tokens, token)  # fmt: skip


def call_row(w: CallDone, token: int) -> Row:
    e = w.transcript
    if e is None:
        return (w.run_id, w.key, w.request_digest, w.result, w.at, w.masked, token, None, None, None, None, None,
                None)  # fmt: skip
    return (w.run_id, w.key, w.request_digest, w.result, w.at, w.masked, token, e.path, e.attempt, e.started_at,
            e.elapsed, e.request, token << 32 | e.number)  # fmt: skip


def event_row(w: EventLogged, token: int) -> Row:
    return (w.run_id, w.name, w.data, w.source, w.at)


def state_row(w: StateChanged, token: int) -> Row:
    return (w.run_id, w.step, w.keys, w.values, w.at)


def cache_row(w: CacheStored, token: int) -> Row:
    return (w.digest, w.result, w.at)


def attempt_row(w: AttemptEnded, token: int) -> Row:
    return (w.run_id, w.path, w.attempt, w.status._value_, w.started_at, w.finished_at, w.error, w.retry_in)


def exchange_row(w: Exchanged, token: int) -> Row:
    return (w.run_id, w.path, w.key, w.attempt, w.kind, w.started_at, w.elapsed, w.request, w.response, w.error,
            token << 32 | w.number)  # fmt: skip


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


# --- reading -------------------------------------------------------------------------------------------------------


class NamedRow(Protocol):
    """A row read by column name: `sqlite3.Row`, or a dict (psycopg's `dict_row`)."""

    def __getitem__(self, column: str, /) -> Any: ...


# by value, as a dict lookup: calling the enum costs ~0.5 µs a row
_RUN_STATUS = {status.value: status for status in RunStatus}
_STEP_STATUS = {status.value: status for status in StepStatus}


_decode = json.JSONDecoder().decode  # json.loads without its checks for bytes input (~0.2 µs a value)


def load(text: str | None) -> Any:
    """A JSON column's value (None for SQL NULL)."""
    return None if text is None else _decode(text)


def run_record(row: NamedRow) -> RunRecord:
    """A `runs` row selected with RUN_COLUMNS as its record."""
    return RunRecord(
        run_id=row["run_id"],
        pipeline=row["pipeline"],
        file=row["file"],
        status=_RUN_STATUS[row["status"]],
        started_at=row["started_at"],
        parent_id=row["parent_id"],
        finished_at=row["finished_at"],
        inputs=load(row["inputs"]),
        outputs=load(row["outputs"]),
        error=load(row["error"]),
        source_digest=row["source_digest"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cost=row["cost"],
        owner=row["owner"],
        input_secrets=load(row["input_secrets"]),
        scripted=row["scripted"],
    )


def step_record(row: NamedRow) -> StepRecord:
    """A `steps` row selected with STEP_COLUMNS as its record."""
    return StepRecord(
        run_id=row["run_id"],
        path=row["path"],
        kind=row["kind"],
        status=_STEP_STATUS[row["status"]],
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        output=load(row["output"]),
        error=load(row["error"]),
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        claim_token=row["claim_token"],
    )


_EXCHANGE_COLUMNS = "seq, path, key, attempt, kind, started_at, elapsed, request, response, error, ordinal"


@dataclass(frozen=True, slots=True)
class ReadSql:
    """The queries of `RecordReads`, written once with `?` for a parameter and made in each store's style
    (`using`): sqlite3 takes `?`, psycopg `%s`."""

    run: str = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"
    runs: str = f"SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, run_id DESC LIMIT ?"
    roots: str = f"SELECT {RUN_COLUMNS} FROM runs WHERE parent_id IS NULL ORDER BY started_at DESC, run_id DESC LIMIT ?"
    children: str = f"SELECT {RUN_COLUMNS} FROM runs WHERE parent_id = ? ORDER BY started_at, run_id"
    steps: str = f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY seq"
    call: str = """SELECT request_digest, result, recorded_at, redacted, claim_token FROM calls
        WHERE run_id = ? AND key = ?"""
    events: str = "SELECT seq, name, data, source, at FROM events WHERE run_id = ? ORDER BY seq"
    state_changes: str = 'SELECT seq, step, keys, "values", at FROM state_changes WHERE run_id = ? ORDER BY seq'
    attempts: str = """SELECT path, attempt, status, started_at, finished_at, error, retry_in FROM attempts
        WHERE run_id = ? ORDER BY started_at, path, attempt"""
    exchanges: str = f"SELECT {_EXCHANGE_COLUMNS} FROM exchanges WHERE run_id = ?"
    # model calls whose transcript entry is kept in their journal row (CallDone.transcript)
    transcribed_calls: str = """SELECT key, path, attempt, started_at, elapsed, request, result, ordinal FROM calls
        WHERE run_id = ? AND request IS NOT NULL"""
    cache: str = "SELECT result FROM cache WHERE digest = ?"
    signals: str = "SELECT position, name, data, at FROM signals WHERE run_id = ? AND position > ? ORDER BY position"

    @classmethod
    def using(cls, param: str) -> ReadSql:
        """The queries with `param` for each parameter (none of them holds a `?` otherwise)."""
        plain = cls()
        return cls(*(getattr(plain, field.name).replace("?", param) for field in fields(cls)))


def _transcript_order(record: ExchangeRecord, ordinal: int | None, seq: int) -> tuple[float, int, int]:
    """When the call ended; among calls that ended at the same instant (a virtual clock, a coarse one), the order the
    recorder noted them in (`ordinal`: the claim's token, then the entry's number in its process; none in files
    written before schema 7, whose entries are all in `exchanges`), then the order the exchanges were stored in."""
    return (record.started_at + record.elapsed, ordinal or 0, seq)


class RecordReads:
    """The port's reads, shared by the SQL stores. A store sets `_sql` (`ReadSql.using` its parameter style) and
    gives `_rows`: a query's rows, readable by column name."""

    _sql: ClassVar[ReadSql]

    def _rows(self, sql: str, params: Row) -> Sequence[NamedRow]:
        raise NotImplementedError

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._rows(self._sql.run, (run_id,))
        return run_record(rows[0]) if rows else None

    def list_runs(self, limit: int = 50, *, roots_only: bool = False) -> list[RunRecord]:
        """The most recent runs, newest first; `roots_only` leaves out child runs."""
        return [run_record(row) for row in self._rows(self._sql.roots if roots_only else self._sql.runs, (limit,))]

    def child_runs(self, run_id: str) -> list[RunRecord]:
        """Runs started by `run_id` (child pipelines), oldest first."""
        return [run_record(row) for row in self._rows(self._sql.children, (run_id,))]

    def steps(self, run_id: str) -> list[StepRecord]:
        """The run's steps in the order they first started (fan-out items, written once as they finish: in the order
        they finished)."""
        return [step_record(row) for row in self._rows(self._sql.steps, (run_id,))]

    def lookup_call(self, run_id: str, key: str) -> CallRecord | None:
        rows = self._rows(self._sql.call, (run_id, key))
        if not rows:
            return None
        row = rows[0]
        result, at, masked = load(row["result"]), row["recorded_at"], bool(row["redacted"])
        return CallRecord(run_id, key, row["request_digest"], result, at, masked, row["claim_token"])

    def events(self, run_id: str) -> list[EventRecord]:
        return [
            EventRecord(row["seq"], run_id, row["name"], load(row["data"]), row["source"], row["at"])
            for row in self._rows(self._sql.events, (run_id,))
        ]

    def state_changes(self, run_id: str) -> list[StateChange]:
        return [
            StateChange(row["seq"], run_id, row["step"], load(row["keys"]), load(row["values"]), row["at"])
            for row in self._rows(self._sql.state_changes, (run_id,))
        ]

    def attempts(self, run_id: str) -> list[AttemptRecord]:
        return [
            AttemptRecord(run_id, row["path"], row["attempt"], _STEP_STATUS[row["status"]], row["started_at"],
                          row["finished_at"], load(row["error"]), row["retry_in"])
            for row in self._rows(self._sql.attempts, (run_id,))
        ]  # fmt: skip

    def exchanges(self, run_id: str, path: str | None = None) -> list[ExchangeRecord]:
        """The entries of the exchanges table and those kept in call rows, merged: in the order the calls ended, each
        numbered by its position in the whole run's transcript (so a step's entries keep their numbers)."""
        ordered: list[tuple[tuple[float, int, int], ExchangeRecord]] = []
        moved: set[tuple[str, int]] = set()  # (key, ordinal) of entries a re-recorded call row moved to exchanges
        for row in self._rows(self._sql.exchanges, (run_id,)):
            record = ExchangeRecord(0, run_id, row["path"], row["key"], row["attempt"], row["kind"],
                                    row["started_at"], row["elapsed"], load(row["request"]), load(row["response"]),
                                    load(row["error"]))  # fmt: skip
            ordered.append((_transcript_order(record, row["ordinal"], row["seq"]), record))
            if row["ordinal"] is not None:
                moved.add((row["key"], row["ordinal"]))
        for row in self._rows(self._sql.transcribed_calls, (run_id,)):
            if (row["key"], row["ordinal"]) in moved:
                continue  # re-recorded by a flowctl from before kept entries, which left the moved one in the row
            record = ExchangeRecord(0, run_id, row["path"], row["key"], row["attempt"], "model", row["started_at"],
                                    row["elapsed"], load(row["request"]), load(row["result"]))  # fmt: skip
            ordered.append((_transcript_order(record, row["ordinal"], 0), record))
        ordered.sort(key=lambda pair: pair[0])
        records = []
        for position, (_, record) in enumerate(ordered, 1):
            record.seq = position
            if path is None or record.path == path or record.path.startswith((path + "/", path + "[")):
                records.append(record)
        return records

    def cache_get(self, digest: str) -> dict[str, Any] | None:
        rows = self._rows(self._sql.cache, (digest,))
        return load(rows[0]["result"]) if rows else None

    def signals(self, run_id: str, after: int = 0) -> list[Signal]:
        return [
            Signal(run_id, row["position"], row["name"], load(row["data"]), row["at"])
            for row in self._rows(self._sql.signals, (run_id, after))
        ]
