"""The embedded run store: `RunStore` on one SQLite file (by default `<cwd>/.flowctl/runs.db`).

Durability (see `store.py` and ARCHITECTURE.md, "Durability contract"):
- `record_call`, `create_run`, `reopen_run`, `finish_run` and `send_signal` commit before they
  return. WAL with `synchronous=NORMAL` makes a commit survive a killed process (the contract)
  without an fsync per commit; only a power loss may drop the last commits.
- Observability writes (`step_started`, `step_finished`, `step_done`, `record_event`, `record_state_change`,
  `cache_put`, and `record_call(durable=False)`) are group-committed: they are queued in memory (a list append:
  the interpreter never waits for SQLite for them) and written by a writer thread, a table at a time, once
  `max_pending` (1,024) rows of a table wait, or `max_delay` (50 ms) after the first waiting row, or with the next
  durable write, read of that table, `flush()` or `close()`. The writer writes a batch as one multi-row statement,
  during which SQLite runs without the GIL, on another core. A killed process loses at most the rows not yet
  written; the file stays consistent, and `flowctl signal` in another process is never locked out for long.
- Each table has one grouped INSERT (steps: one upsert for started, finished and whole rows), so a batch is always
  one statement; rows of one table are written in the order they were made (a step's finished row updates its
  started row); rows of different tables never depend on each other.
- Reads use the same connection and first write and commit the waiting rows of the table they read, so they see
  this process's writes.
- Every value written passes through the `Redactor` first.
- Every failure of the file or its disk (not a database, damaged, read-only, full, …), from opening on, is raised as a
  `store_errors.StoreError` naming the file and what to do; one raised while a root run is running names that run,
  which stays `running` with this process as owner, so `flowctl resume` takes it over once the problem is fixed.

One connection serves the interpreter (single-threaded async), the writer thread and the CLI; `_lock` serialises
the SQL, and grouped writes only take `_queue_lock`, which no SQL runs under.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from types import TracebackType
from typing import Any

from flowctl.interpreter.errors import InputError
from flowctl.interpreter.persistence.sqlite_open import open_connection
from flowctl.interpreter.persistence.store import (
    CallRecord,
    EventRecord,
    JsonText,
    RunRecord,
    RunStatus,
    StateChange,
    StepRecord,
    StepStatus,
)
from flowctl.interpreter.persistence.store_errors import StoreAccess, from_exception
from flowctl.interpreter.redact import Redactor, redactor_for

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 5000
MAX_PENDING_WRITES = 1024
MAX_COMMIT_DELAY = 0.05

_SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        parent_id TEXT REFERENCES runs (run_id) ON DELETE SET NULL,
        pipeline TEXT NOT NULL,
        file TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        inputs TEXT NOT NULL,
        outputs TEXT,
        error TEXT,
        source_digest TEXT NOT NULL DEFAULT '',
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at)",
    "CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_id)",
    """CREATE TABLE IF NOT EXISTS steps (
        seq INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        output TEXT,
        error TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        UNIQUE (run_id, path)
    )""",
    """CREATE TABLE IF NOT EXISTS calls (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        request_digest TEXT NOT NULL,
        result TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (run_id, key)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        data TEXT,
        source TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS signals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        data TEXT,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS signals_by_run ON signals (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS state_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step TEXT NOT NULL,
        keys TEXT NOT NULL,
        "values" TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS state_changes_by_run ON state_changes (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS cache (
        digest TEXT PRIMARY KEY,
        result TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
)

# MIGRATIONS[i] upgrades a file from user_version i to i + 1.
# v2: the process that runs a run ("host:pid"), so `flowctl resume` can refuse a run that is still alive.
_SCHEMA_V2 = ("ALTER TABLE runs ADD COLUMN owner TEXT",)
# v3: call results that redaction altered are flagged, so a resume re-executes them instead of replaying the mask.
_SCHEMA_V3 = ("ALTER TABLE calls ADD COLUMN redacted INTEGER NOT NULL DEFAULT 0",)
# v4: secrets masked in a run's inputs are placeholders naming their variables; this column says which, with a
# salted hash of each value, so `flowctl resume` restores them from the environment.
_SCHEMA_V4 = ("ALTER TABLE runs ADD COLUMN input_secrets TEXT",)
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)

_RUN_COLUMNS = (
    "run_id, parent_id, pipeline, file, status, started_at, finished_at, inputs, outputs, error, "
    "source_digest, input_tokens, output_tokens, cost, owner, input_secrets"
)
_STEP_COLUMNS = (
    "run_id, path, kind, status, attempts, started_at, finished_at, output, error, input_tokens, output_tokens"
)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (one per table): a dataclass hash costs ~0.3 µs
class _Insert:
    """The one grouped INSERT of a table. Queued rows are written many to a statement (`INSERT … VALUES (…), (…), …
    ON CONFLICT …`): one SQLite call for a batch, which the writer thread makes without holding the GIL."""

    table: str
    head: str  # INSERT INTO table (columns)
    row: str  # (?, ?, …) — the parameters of one row
    tail: str = ""  # ON CONFLICT …

    @property
    def params(self) -> int:
        return self.row.count("?")

    def sql(self, rows: int) -> str:
        return _multi_row_sql(self, rows)


@functools.lru_cache(maxsize=64)
def _multi_row_sql(insert: _Insert, rows: int) -> str:
    return f"{insert.head} VALUES {', '.join([insert.row] * rows)} {insert.tail}"


# Every step write is this one upsert (so a table's queued rows are always one statement), told apart by its row:
# - started: (kind, 'running', attempts 1, started_at now, finished_at/output/error NULL, tokens 0) — a retry
#   restarts the clock and clears the previous attempt's outcome;
# - finished: (kind '', status, attempts 0, now, now, outcome, tokens) — keeps the kind and start of its started
#   row, or makes a row of its own (kind "", 0 attempts: a skipped step);
# - done: a fan-out item's whole row at once (kind, status, attempts, its start, now, outcome, tokens).
# Attempts and tokens add up (over retries and resumes).
_STEP_ROW = _Insert(
    "steps",
    "INSERT INTO steps (run_id, path, kind, status, attempts, started_at, finished_at, output, error, "
    "input_tokens, output_tokens)",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (run_id, path) DO UPDATE SET
        kind = CASE WHEN excluded.kind = '' THEN steps.kind ELSE excluded.kind END,
        status = excluded.status, attempts = steps.attempts + excluded.attempts,
        started_at = CASE WHEN excluded.kind = '' THEN steps.started_at ELSE excluded.started_at END,
        finished_at = excluded.finished_at, output = excluded.output, error = excluded.error,
        input_tokens = steps.input_tokens + excluded.input_tokens,
        output_tokens = steps.output_tokens + excluded.output_tokens""",
)
_CALL_ROW = _Insert(
    "calls",
    "INSERT INTO calls (run_id, key, request_digest, result, recorded_at, redacted)",
    "(?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (run_id, key) DO UPDATE SET
        request_digest = excluded.request_digest, result = excluded.result,
        recorded_at = excluded.recorded_at, redacted = excluded.redacted""",
)
_EVENT_ROW = _Insert("events", "INSERT INTO events (run_id, name, data, source, at)", "(?, ?, ?, ?, ?)")
_STATE_ROW = _Insert("state_changes", 'INSERT INTO state_changes (run_id, step, keys, "values", at)', "(?, ?, ?, ?, ?)")
_CACHE_ROW = _Insert(
    "cache",
    "INSERT INTO cache (digest, result, created_at)",
    "(?, ?, ?)",
    "ON CONFLICT (digest) DO UPDATE SET result = excluded.result, created_at = excluded.created_at",
)


_id_lock = threading.Lock()
_last_id: tuple[str, int] = ("", 0)


def new_run_id() -> str:
    """A short, unique id that sorts by creation time: `r-YYYYMMDD-HHMMSS-xxxxxx`.

    The time is UTC to the second; `xxxxxx` is 6 hex digits, random per second (24 bits, so ids
    from different processes collide with odds of 1 in 16 million per pair within one second) and
    incremented for further ids in the same second of this process, so they still sort in order.
    """
    global _last_id
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    with _id_lock:
        last_stamp, last_suffix = _last_id
        suffix = last_suffix + 1 if stamp == last_stamp else secrets.randbelow(0x800000)
        _last_id = (stamp, suffix)
    return f"r-{stamp}-{suffix:06x}"


def default_store_path(cwd: Path | None = None) -> Path:
    """Where a project's runs live: `<cwd>/.flowctl/runs.db`."""
    return (cwd if cwd is not None else Path.cwd()) / ".flowctl" / "runs.db"


_SQLITE_INT_MAX = 2**63 - 1


def _storable(value: Any) -> Any:
    """A value SQLite can bind: a str with its lone surrogates written as `\\udXXXX` escapes, an int past 64 bits as
    a float (as big, less exact); other values as they are."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int) and not -_SQLITE_INT_MAX - 1 <= value <= _SQLITE_INT_MAX:
        try:
            return float(value)
        except OverflowError:
            return float("inf") if value > 0 else float("-inf")
    return value


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _run_from_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        pipeline=row["pipeline"],
        file=row["file"],
        status=RunStatus(row["status"]),
        started_at=row["started_at"],
        parent_id=row["parent_id"],
        finished_at=row["finished_at"],
        inputs=_load(row["inputs"]),
        outputs=_load(row["outputs"]),
        error=_load(row["error"]),
        source_digest=row["source_digest"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cost=row["cost"],
        owner=row["owner"],
        input_secrets=_load(row["input_secrets"]),
    )


def this_process() -> str:
    """The owner id of runs this process runs: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process that owns a `running` run is alive. Only this host's processes can be checked; a run
    owned by another host is assumed alive (refusing is the safe side); a killed process is not."""
    host, _, pid = (owner or "").rpartition(":")
    if not pid.isdigit() or int(pid) <= 0:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunBusy(InputError):
    """A run is still running in another live process: resuming it now would run it twice."""

    def __init__(self, run_id: str, owner: str) -> None:
        super().__init__(
            f"run {run_id!r} is still running (process {owner}); resuming it now would run it twice — "
            "wait for it, or stop it first (Ctrl-C, or kill that process)"
        )


def _step_from_row(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        run_id=row["run_id"],
        path=row["path"],
        kind=row["kind"],
        status=StepStatus(row["status"]),
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        output=_load(row["output"]),
        error=_load(row["error"]),
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
    )


class SqliteRunStore:
    """`RunStore` on an SQLite file, shared safely by the interpreter and `flowctl` commands.

    `redactor` defaults to one built from `os.environ`, so secrets stay out of the file even when
    the caller forgets to pass one. Use it as a context manager or call `close()`.

    `access`: "create" makes the file (and its folder) if missing; "write" and "read" need an existing store and never
    create one ("read" opens it read-only). Every failure of the file or its disk, from opening on, is raised as a
    `StoreError` that names the file and what to do.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        redactor: Redactor | None = None,
        max_pending: int = MAX_PENDING_WRITES,
        max_delay: float = MAX_COMMIT_DELAY,
        access: StoreAccess = "create",
    ) -> None:
        self.path = path if str(path) == ":memory:" else Path(path)
        self._access = access
        self._running_root: str | None = None  # the root run this process runs (named by a StoreError mid-run)
        self._redactor = redactor if redactor is not None else redactor_for((), os.environ)
        # One encoder for every value. JSONEncoder.encode builds its C encoder anew per call (~0.7 µs of a 1.6 µs
        # call response); the C encoder, made once, writes the same text. Without circular-reference checks: the
        # values are JSON-like data (parsed JSON, template results), which cannot refer to themselves.
        self._encoder = json.JSONEncoder(ensure_ascii=False, default=self._encode_odd)
        self._c_encoder = (
            None
            if c_make_encoder is None
            else c_make_encoder(None, self._encode_odd, encode_basestring, None, ": ", ", ", False, False, True)
        )
        self._max_pending = max_pending
        self._max_delay = max_delay
        # The connection: every SQL statement runs under this lock (the writer thread holds it while it writes).
        self._lock = threading.RLock()
        # The queues below: held only for list operations, never while SQLite works, so grouped writes never wait
        # for the writer thread. Lock order: `_lock` before `_queue_lock`.
        self._queue_lock = threading.Lock()
        self._wakeup = threading.Condition(self._queue_lock)
        # grouped rows not yet written, per table in the order they were made: rows of one table may depend on each
        # other (a step's finished row updates its started row); rows of different tables never do
        self._queued: dict[_Insert, list[tuple[Any, ...]]] = {}
        self._pending = 0  # rows in `_queued`
        self._first_pending_at = 0.0
        self._handed: deque[tuple[_Insert, list[tuple[Any, ...]]]] = deque()  # full batches for the writer
        self._writer: threading.Thread | None = None
        self._writer_parked = False
        self._writer_error: Exception | None = None
        self._closed = False
        self._conn, self._access = open_connection(self.path, access, MIGRATIONS, BUSY_TIMEOUT_MS)
        self._max_variables = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # caps rows per statement

    # -- connection and schema -------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file (`PRAGMA user_version`)."""
        with self._lock:
            try:
                return int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    def _fail(self, exc: BaseException) -> BaseException:
        """The StoreError an sqlite3/OS error means (naming the run it stopped, if any); a bug's error unchanged."""
        return from_exception(exc, self.path, self._access, self._running_root) or exc

    # -- writing: redaction and group commit -----------------------------------------------------

    def _dump(self, value: Any) -> str | None:
        """Redacted JSON text; None stays NULL."""
        if value is None:
            return None
        if type(value) is str:  # the common step output: 0.15 µs cheaper than the encoder
            return encode_basestring(self._redactor.redact_text(value))
        return self._encode(self._redactor.redact(value))

    def _encode(self, redacted: Any) -> str:
        """JSON text of an already redacted value; odd values become their (redacted) `str`."""
        if self._c_encoder is None:
            return self._encoder.encode(redacted)
        return "".join(self._c_encoder(redacted, 0))

    def _result_text(self, result: dict[str, Any] | JsonText) -> tuple[str, bool]:
        """A call result's redacted JSON text, and whether redaction altered it (replaying it would replay the mask,
        not the answer). Pre-encoded text is kept as it is unless there are secrets to look for."""
        if isinstance(result, JsonText):
            if not self._redactor:
                # an exact str: SQLite binds a str subclass only after looking for adapters (~0.25 µs a row, in
                # the writer thread, holding the GIL)
                return str.__str__(result), False
            result = json.loads(result)
        stored = self._redactor.redact(result)
        return self._encode(stored), bool(self._redactor) and stored != result

    def _encode_odd(self, odd: object) -> str:
        return self._redactor.redact_text(str(odd))

    def _grouped(self, insert: _Insert, params: tuple[Any, ...]) -> None:
        """Queue a row for the group commit. Cheap: a list append under a lock no SQL runs under. A table's full
        batch goes to the writer thread; the writer also commits a group `max_delay` after its first row."""
        with self._queue_lock:
            if self._writer_error is not None:
                self._raise_writer_error()
            if not self._pending:
                self._first_pending_at = time.monotonic()
                self._wake_writer()
            elif self._writer is None:  # it stopped on an error, which the caller has seen
                self._wake_writer()
            rows = self._queued.get(insert)
            if rows is None:
                rows = self._queued[insert] = []
            rows.append(params)
            self._pending += 1
            if len(rows) >= self._max_pending:
                self._hand_off(insert)

    def _hand_off(self, insert: _Insert) -> None:
        """Give a table's queued rows to the writer thread (`_queue_lock` held)."""
        rows = self._queued.pop(insert)
        self._pending -= len(rows)
        self._handed.append((insert, rows))
        self._wake_writer(batch=True)

    def _wake_writer(self, *, batch: bool = False) -> None:
        """Start the writer thread, or wake it (`_queue_lock` held): if it is parked, or, for a `batch`, also if it is
        waiting for the group to come due. Waking a thread costs ~18 µs of switching here, so it is done only when
        needed: at the first row of a group, or a batch."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="flowctl-store-writer", daemon=True)
            self._writer.start()
        elif batch or self._writer_parked:
            self._writer_parked = False
            self._wakeup.notify()

    def _write_loop(self) -> None:
        """The writer thread: writes handed-off batches, and commits a group `max_delay` after its first row.

        A batch is one multi-row statement per ≤`max_pending` rows, during which SQLite runs without the GIL: on a
        second core, while the interpreter goes on. (`executemany` would take the GIL back after every row, which
        costs a writer thread a switch interval, 5 ms, each time the interpreter is busy.)"""
        while True:
            with self._wakeup:
                while not self._handed:
                    if self._closed:
                        return
                    if not self._pending:
                        self._writer_parked = True
                        self._wakeup.wait()
                        continue
                    due = self._first_pending_at + self._max_delay - time.monotonic()
                    if due > 0:
                        self._wakeup.wait(due)
                        continue
                    for insert in list(self._queued):  # the group is due: commit what is queued
                        self._hand_off(insert)
            # Every batch waiting, in one go: each time this thread wakes or takes the GIL back while the
            # interpreter is busy costs it up to a switch interval (5 ms). `_lock` is held from taking a batch to
            # writing it, so rows of a table are written in order.
            with self._lock:
                while True:
                    with self._queue_lock:
                        batch = self._handed.popleft() if self._handed else None  # a flush may have written it
                    if batch is None:
                        break
                    try:
                        self._insert(*batch)
                    except Exception as error:  # raised at the next write; the batch waits for the next commit
                        with self._queue_lock:
                            self._handed.appendleft(batch)
                            self._writer_error, self._writer = error, None
                        return

    def _insert(self, insert: _Insert, rows: list[tuple[Any, ...]]) -> None:
        """Write rows in statements of ≤`max_pending` rows: full batches share one prepared statement, the rest take
        power-of-two sizes, so few statements are prepared and cached."""
        most = max(1, min(self._max_pending, self._max_variables // insert.params))
        start = 0
        while start < len(rows):
            count = min(most, len(rows) - start)
            if count < most:
                count = 1 << (count.bit_length() - 1)
            chunk = rows[start : start + count]
            self._execute(insert.sql(count), list(chain.from_iterable(chunk)))
            start += count

    def _execute(self, sql: str, params: list[Any] | tuple[Any, ...]) -> sqlite3.Cursor:
        """Execute with values that SQLite can store: a lone surrogate (from undecodable command-line bytes, or a
        `"\\ud800"` JSON escape in a model's or tool's answer) is not UTF-8, so it is written as its JSON escape,
        which a JSON column reads back as the same character; an integer past 64 bits (a server's usage numbers) is
        written as a float."""
        try:
            return self._conn.execute(sql, params)
        except (UnicodeEncodeError, OverflowError):
            return self._conn.execute(sql, [_storable(value) for value in params])

    def _drain(self, table: str | None = None) -> list[tuple[_Insert, list[tuple[Any, ...]]]]:
        """Write every row handed off or queued (all tables, oldest first) into a transaction the caller commits
        (`_lock` held), and return them, for `_restore` if that fails. With `table`: only if that table has rows
        waiting."""
        with self._queue_lock:
            waiting = [*self._handed, *self._queued.items()]
            if table is not None and all(insert.table != table for insert, _ in waiting):
                return []
            self._handed.clear()
            self._queued, self._pending = {}, 0
        try:
            if waiting:
                self._begin()
                for insert, rows in waiting:
                    self._insert(insert, rows)
        except BaseException:
            self._restore(waiting)
            raise
        return waiting

    def _restore(self, batches: list[tuple[_Insert, list[tuple[Any, ...]]]]) -> None:
        """After a failed write or commit: roll back and put the rows back at the front of the line (nothing is
        lost; the next commit tries again)."""
        if self._conn.in_transaction:
            self._conn.rollback()
        with self._queue_lock:
            self._handed.extendleft(reversed(batches))

    def _begin(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")

    def _durable(self, sql: str, params: Iterable[Any]) -> sqlite3.Cursor:
        """Run a write and commit it, with every grouped row before it, before returning (`_lock` held)."""
        self._raise_writer_error()
        try:
            written = self._drain()
            try:
                self._begin()
                cursor = self._execute(sql, tuple(params))
                self._conn.commit()
            except BaseException:
                self._restore(written)
                raise
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return cursor

    def _read(self, table: str, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a query on `table` that sees this process's grouped writes: if that table has rows waiting, they
        are written and committed first. Reading runs or signals (never grouped) starts no write transaction."""
        with self._lock:
            self._commit(table)
            try:
                return self._execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    def _commit(self, table: str | None = None) -> None:
        """Write and commit every grouped row (with `table`: only if that table has rows waiting; `_lock` held)."""
        self._raise_writer_error()
        try:
            written = self._drain(table)
            try:
                if self._conn.in_transaction:
                    self._conn.commit()
            except BaseException:
                self._restore(written)
                raise
        except sqlite3.Error as exc:
            raise self._fail(exc) from None

    def _raise_writer_error(self) -> None:
        error = self._writer_error
        if error is not None:
            self._writer_error = None
            raise self._fail(error) from None

    def use_redactor(self, redactor: Redactor) -> None:
        """Mask these secrets in everything written from now on (the CLI adds the pipeline's own variables)."""
        with self._lock:
            self._redactor = redactor

    def flush(self) -> None:
        """Commit every grouped write now."""
        with self._lock:
            self._commit()

    def close(self) -> None:
        """Commit pending writes, stop the writer thread and close the file. Idempotent."""
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
            self._wakeup.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._lock:
            try:
                self._commit()
            finally:
                self._conn.close()

    def __enter__(self) -> SqliteRunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- runs ------------------------------------------------------------------------------------

    def create_run(self, record: RunRecord) -> None:
        """Insert a run and commit, so other processes (`flowctl signal`, `runs`) see it at once. Secrets in its inputs
        become placeholders naming their variables, so that a resume can restore them (Redactor.mask_inputs)."""
        inputs, input_secrets = self._redactor.mask_inputs(record.inputs)
        params = (
            record.run_id,
            record.parent_id,
            record.pipeline,
            record.file,
            record.status.value,
            record.started_at,
            record.finished_at,
            self._encode(inputs) if inputs is not None else "{}",  # every secret in it is already a placeholder
            self._dump(record.outputs),
            self._dump(record.error),
            record.source_digest,
            record.input_tokens,
            record.output_tokens,
            record.cost,
            this_process() if record.status is RunStatus.RUNNING else None,
            self._encode(input_secrets) if input_secrets is not None else None,
        )
        sql = f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * len(params))})"
        with self._lock:
            self._durable(sql, params)
            if record.parent_id is None and record.status is RunStatus.RUNNING:
                self._running_root = record.run_id

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
    ) -> None:
        """Record the outcome and totals of a run and commit everything pending."""
        sql = """UPDATE runs SET owner = NULL, status = ?, finished_at = ?, outputs = ?, error = ?,
                 input_tokens = ?, output_tokens = ?, cost = ? WHERE run_id = ?"""
        params = (
            status.value,
            time.time(),
            self._dump(outputs),
            self._dump(error),
            input_tokens,
            output_tokens,
            cost,
            run_id,
        )
        with self._lock:
            self._require_updated(self._durable(sql, params), run_id)
            if run_id == self._running_root:
                self._running_root = None

    def reopen_run(self, run_id: str) -> None:
        """Claim a run for resume: mark it running by this process, clearing finished_at, outputs and error.

        Atomic under SQLite's write lock, so two `flowctl resume` of one run cannot both claim it: the second sees
        the first's live process as owner and is refused (RunBusy).
        """
        update = """UPDATE runs SET status = ?, finished_at = NULL, outputs = NULL, error = NULL, owner = ?
                    WHERE run_id = ?"""
        with self._lock:
            self._commit()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    row = self._conn.execute("SELECT status, owner FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                    if row is None:
                        raise KeyError(f"unknown run {run_id!r}")
                    owner = row["owner"]
                    if row["status"] == RunStatus.RUNNING.value and owner != this_process() and owner_alive(owner):
                        raise RunBusy(run_id, owner)
                    self._conn.execute(update, (RunStatus.RUNNING.value, this_process(), run_id))
                except BaseException:
                    self._conn.rollback()
                    raise
                self._conn.commit()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
            if self._running_root is None:  # the root is claimed first (a child's id names its root run)
                self._running_root = run_id.split("/", 1)[0]

    @staticmethod
    def _require_updated(cursor: sqlite3.Cursor, run_id: str) -> None:
        if cursor.rowcount == 0:
            raise KeyError(f"unknown run {run_id!r}")

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._read("runs", f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return _run_from_row(rows[0]) if rows else None

    def list_runs(self, limit: int = 50, *, roots_only: bool = False) -> list[RunRecord]:
        """The most recent runs, newest first; `roots_only` leaves out child runs."""
        where = "WHERE parent_id IS NULL " if roots_only else ""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs {where}ORDER BY started_at DESC, run_id DESC LIMIT ?"
        return [_run_from_row(row) for row in self._read("runs", sql, (limit,))]

    def child_runs(self, run_id: str) -> list[RunRecord]:
        """Runs started by `run_id` (child pipelines), oldest first."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE parent_id = ? ORDER BY started_at, run_id"
        return [_run_from_row(row) for row in self._read("runs", sql, (run_id,))]

    # -- steps -----------------------------------------------------------------------------------

    def step_started(self, run_id: str, path: str, kind: str, attempt: int, *, continued: bool = False) -> None:
        """Mark a step running. `attempts` counts starts (across resumes too), except `continued` ones (a resumed run
        going on with an attempt an earlier process started); `attempt` is advisory.

        A retry restarts the step's clock and clears the previous attempt's output and error.
        """
        params = (run_id, path, kind, StepStatus.RUNNING.value, int(not continued), time.time(), None, None, None, 0, 0)
        self._grouped(_STEP_ROW, params)

    def step_finished(
        self,
        run_id: str,
        path: str,
        status: StepStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Record a step's outcome. Tokens add up over attempts: the step's cost includes retries.

        A step finished without being started (e.g. skipped) gets a row with kind "" and 0 attempts. The row is the
        one `step_done` writes, with kind "" (keep the started row's kind and start) and no attempt added.
        """
        self.step_done(
            run_id,
            path,
            "",
            0,
            time.time(),
            status,
            output=output,
            error=error,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    def step_done(
        self,
        run_id: str,
        path: str,
        kind: str,
        attempts: int,
        started_at: float,
        status: StepStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """`step_started` for each of `attempts` attempts and `step_finished`, in one row written at the end: what
        the engine writes for a fan-out item (one row per item instead of two; the fan-out's own row shows it
        running). A resumed item adds its attempts and tokens to the row an earlier process wrote."""
        params = (
            run_id,
            path,
            kind,
            status._value_,  # `.value` is a descriptor costing ~0.1 µs a row
            attempts,
            started_at,
            time.time(),
            self._dump(output),
            self._dump(error),
            input_tokens,
            output_tokens,
        )
        self._grouped(_STEP_ROW, params)

    def steps(self, run_id: str) -> list[StepRecord]:
        """The run's steps in the order they first started (fan-out items, written once as they finish: in the order
        they finished)."""
        sql = f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY seq"
        return [_step_from_row(row) for row in self._read("steps", sql, (run_id,))]

    # -- side effects ----------------------------------------------------------------------------

    def lookup_call(self, run_id: str, key: str) -> CallRecord | None:
        sql = "SELECT request_digest, result, recorded_at, redacted FROM calls WHERE run_id = ? AND key = ?"
        rows = self._read("calls", sql, (run_id, key))
        if not rows:
            return None
        row = rows[0]
        return CallRecord(
            run_id, key, row["request_digest"], _load(row["result"]), row["recorded_at"], bool(row["redacted"])
        )

    def record_call(
        self, run_id: str, key: str, request_digest: str, result: dict[str, Any] | JsonText, *, durable: bool = True
    ) -> None:
        """Journal a completed side effect; committed before returning unless `durable=False` (group commit).

        One row per (run, key): recording a key again (a forced re-run) replaces the result.
        """
        text, altered = self._result_text(result)
        params = (run_id, key, request_digest, text, time.time(), int(altered))
        if durable:
            with self._lock:
                self._durable(_CALL_ROW.sql(1), params)
        else:
            self._grouped(_CALL_ROW, params)

    # -- events, signals, state ------------------------------------------------------------------

    def record_event(self, run_id: str, name: str, data: Any, source: str) -> None:
        params = (run_id, self._redactor.redact_text(name), self._dump(data), source, time.time())
        self._grouped(_EVENT_ROW, params)

    def events(self, run_id: str) -> list[EventRecord]:
        sql = "SELECT seq, name, data, source, at FROM events WHERE run_id = ? ORDER BY seq"
        rows = self._read("events", sql, (run_id,))
        return [
            EventRecord(row["seq"], run_id, row["name"], _load(row["data"]), row["source"], row["at"]) for row in rows
        ]

    def send_signal(self, run_id: str, name: str, data: Any) -> int:
        """Queue an external event for a run (from any process); committed before returning."""
        if self.get_run(run_id) is None:
            raise KeyError(f"unknown run {run_id!r}")
        sql = "INSERT INTO signals (run_id, name, data, at) VALUES (?, ?, ?, ?)"
        params = (run_id, self._redactor.redact_text(name), self._dump(data), time.time())
        with self._lock:
            seq = self._durable(sql, params).lastrowid
        assert seq is not None
        return seq

    def take_signals(self, run_id: str, after_seq: int) -> list[EventRecord]:
        """Signals for `run_id` with seq > after_seq, oldest first (source "signal")."""
        sql = "SELECT seq, name, data, at FROM signals WHERE run_id = ? AND seq > ? ORDER BY seq"
        rows = self._read("signals", sql, (run_id, after_seq))
        return [EventRecord(row["seq"], run_id, row["name"], _load(row["data"]), "signal", row["at"]) for row in rows]

    def record_state_change(self, run_id: str, step: str, values: dict[str, Any]) -> None:
        redacted = self._redactor.redact(values)
        params = (run_id, step, self._encode(list(redacted)), self._encode(redacted), time.time())
        self._grouped(_STATE_ROW, params)

    def state_changes(self, run_id: str) -> list[StateChange]:
        sql = 'SELECT seq, step, keys, "values", at FROM state_changes WHERE run_id = ? ORDER BY seq'
        rows = self._read("state_changes", sql, (run_id,))
        return [
            StateChange(row["seq"], run_id, row["step"], _load(row["keys"]), _load(row["values"]), row["at"])
            for row in rows
        ]

    # -- response cache --------------------------------------------------------------------------

    def cache_get(self, digest: str) -> dict[str, Any] | None:
        rows = self._read("cache", "SELECT result FROM cache WHERE digest = ?", (digest,))
        return _load(rows[0]["result"]) if rows else None

    def cache_put(self, digest: str, result: dict[str, Any] | JsonText) -> None:
        """Remember a response for identical requests; grouped (a lost entry is only a miss)."""
        self._grouped(_CACHE_ROW, (digest, self._result_text(result)[0], time.time()))
