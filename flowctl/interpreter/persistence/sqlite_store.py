"""The embedded run store: `RunStore` on one SQLite file (by default `<cwd>/.flowctl/runs.db`).

Durability: every `commit` is one transaction, committed before it returns. WAL with `synchronous=NORMAL` makes a
commit survive a killed process without an fsync per commit; only a power loss (or an OS crash) may drop the last
commits. The file stays consistent either way.

A commit writes its batch a table at a time, in the order the writes were made within each table (a step's finished
row updates its started row), as multi-row statements: one SQLite call for many rows, which runs without the GIL.
Run rows go first, since a child run's steps refer to it.

Claims: the root run's row holds its owner (`host:pid`), a fencing token that grows with every claim, and a
heartbeat (the time of the owner's last commit). A commit under a claim first checks the token in the same
transaction (and refreshes the heartbeat), so a process that lost its claim writes nothing. An owner on this host
is alive while its process is; an owner on another host while its heartbeat is younger than `lease`.

Every failure of the file or its disk (not a database, damaged, read-only, full, …), from opening on, is raised as a
`store_errors.StoreError` naming the file and what to do; one raised while a root run is running names that run,
which stays `running` with this process as owner, so `flowctl resume` takes it over once the problem is fixed.

One connection serves the interpreter (single-threaded async), the recorder's background commits and the CLI;
`_lock` serialises the SQL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flowctl.interpreter.persistence.owners import local_owner_alive
from flowctl.interpreter.persistence.rows import ReadSql, RecordReads, call_row
from flowctl.interpreter.persistence.sqlite_open import open_connection
from flowctl.interpreter.persistence.sqlite_schema import (
    FENCE,
    FENCED_CALL,
    FINISH_RUN,
    HEARTBEAT,
    INSERT_CHILD,
    INSERT_RUN,
    MIGRATIONS,
    REOPEN_RUN,
    ROWS,
    SCHEMA_VERSION,
    Insert,
)
from flowctl.interpreter.persistence.store import (
    CacheStored,
    CallDone,
    Claim,
    Liveness,
    RunFinished,
    RunRecord,
    RunReopened,
    RunStarted,
    RunStatus,
    RunStore,
    Write,
    check_in_tree,
    root_of,
)
from flowctl.interpreter.persistence.store_errors import ClaimLost, RunBusy, StoreAccess, from_exception

BUSY_TIMEOUT_MS = 5000
# Rows per INSERT statement. Preparing a statement costs in proportion to its text (a 1,024-row one ~2 M
# instructions, measured), and each run prepares its own: 64 rows make preparing negligible, while executing stays as
# cheap per row.
MAX_ROWS_PER_STATEMENT = 64
DEFAULT_LEASE = 600.0  # seconds without a commit after which another host's owner counts as gone
HEARTBEATS_PER_LEASE = 10


# Python's sqlite3 binds a value of an exact built-in type (int, float, str) directly, and runs anything else through
# its adapter lookup: a failed attribute lookup that builds an AttributeError, ~1 µs a value (measured), which a
# 10,000-row commit feels. None and bool are common in rows; identity adapters for them skip the lookup and bind the
# same NULL and 0/1. Registered only when nobody else has registered one. (Transcript bodies are plain str: recorder.)
if (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters:
    sqlite3.register_adapter(type(None), lambda value: value)
if (bool, sqlite3.PrepareProtocol) not in sqlite3.adapters:
    sqlite3.register_adapter(bool, int)

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


class SqliteRunStore(RecordReads):
    """`RunStore` on an SQLite file, shared safely by the interpreter and `flowctl` commands. Use it as a context
    manager or call `close()`.

    `access`: "create" makes the file (and its folder) if missing; "write" and "read" need an existing store and never
    create one ("read" opens it read-only). Every failure of the file or its disk, from opening on, is raised as a
    `StoreError` that names the file and what to do.
    """

    _sql = ReadSql.using("?")  # the reads (rows.RecordReads) run on `_rows`

    def __init__(self, path: str | Path, *, access: StoreAccess = "create", lease: float = DEFAULT_LEASE) -> None:
        self.path = path if str(path) == ":memory:" else Path(path)
        self.lease = lease
        self._running_root: str | None = None  # the root run this process runs (named by a StoreError mid-run)
        self._beats: dict[str, float] = {}  # root run → when its claim's heartbeat was last written or seen
        self._lock = threading.RLock()  # every SQL statement runs under it
        self._closed = False
        self._conn, self._access = open_connection(self.path, access, MIGRATIONS, BUSY_TIMEOUT_MS)
        variables = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._max_rows = {insert: max(1, min(MAX_ROWS_PER_STATEMENT, variables // insert.params))
                          for insert, _ in ROWS.values()}  # fmt: skip

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

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SqliteRunStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- claims ----------------------------------------------------------------------------------------------------

    def create_run(self, record: RunRecord, inputs: str, input_secrets: str | None, owner: str) -> Claim:
        params = (
            record.run_id,
            record.parent_id,
            record.pipeline,
            record.file,
            RunStatus.RUNNING.value,
            record.started_at,
            None,
            inputs,
            None,
            None,
            record.source_digest,
            0,
            0,
            0.0,
            owner,
            input_secrets,
            record.scripted,
            1,
            time.time(),
        )
        with self._lock:
            self._transaction(lambda: self._execute(INSERT_RUN, params))
            self._running_root = record.run_id
        return Claim(record.run_id, owner, 1)

    def claim(self, run_id: str, owner: str) -> Claim:
        """Atomic under SQLite's write lock, so two `flowctl resume` of one run cannot both claim it: the second sees
        the first as a live owner and is refused (RunBusy)."""

        def take() -> int:
            row = self._conn.execute(
                "SELECT owner, claim_token, heartbeat_at, parent_id FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None or row["parent_id"] is not None:
                raise KeyError(f"unknown root run {run_id!r}")
            held_by = row["owner"]
            if held_by is not None and held_by != owner and self._alive(held_by, row["heartbeat_at"]):
                raise RunBusy(run_id, held_by)
            token = int(row["claim_token"]) + 1
            self._conn.execute(
                "UPDATE runs SET owner = ?, claim_token = ?, heartbeat_at = ? WHERE run_id = ?",
                (owner, token, time.time(), run_id),
            )
            return token

        with self._lock:
            token = self._transaction(take)
            self._running_root = run_id
        return Claim(run_id, owner, token)

    def release(self, claim: Claim) -> None:
        # the token moves on too, so that nothing more commits under the released claim
        sql = "UPDATE runs SET owner = NULL, claim_token = claim_token + 1 WHERE run_id = ? AND claim_token = ?"
        with self._lock:
            self._transaction(lambda: self._execute(sql, (claim.run_id, claim.token)))
            if self._running_root == claim.run_id:
                self._running_root = None

    def liveness(self, run_id: str) -> Liveness:
        rows = self._rows("SELECT owner, heartbeat_at FROM runs WHERE run_id = ?", (root_of(run_id),))
        if not rows or rows[0]["owner"] is None:
            return Liveness(None, False)
        owner = rows[0]["owner"]
        return Liveness(owner, self._alive(owner, rows[0]["heartbeat_at"]))

    def _alive(self, owner: str, heartbeat_at: float | None) -> bool:
        local = local_owner_alive(owner)
        if local is not None:
            return local
        return heartbeat_at is not None and time.time() - heartbeat_at < self.lease

    # -- commits ---------------------------------------------------------------------------------------------------

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        with self._lock:
            if len(writes) == 1 and claim is not None and type(writes[0]) is CallDone and self._heartbeat_fresh(claim):
                self._commit_one_call(writes[0], claim)  # a chain's commit: see FENCED_CALL
                return
            self._transaction(lambda: self._apply(writes, claim))
            if self._running_root is not None and any(
                type(w) is RunFinished and w.run_id == self._running_root for w in writes
            ):
                self._running_root = None

    def _apply(self, writes: Sequence[Write], claim: Claim | None) -> None:
        if claim is not None:
            self._fence(claim)
            tree, token = claim.run_id, claim.token
        else:
            tree, token = "", 0
        grouped: dict[Insert, list[tuple[Any, ...]]] = {}
        for write in writes:
            kind = type(write)
            if kind is not CacheStored:
                check_in_tree(write, tree)
            row = ROWS.get(kind)
            if row is not None:
                insert, to_row = row
                rows = grouped.get(insert)
                if rows is None:
                    rows = grouped[insert] = []
                rows.append(to_row(write, token))
            else:  # run rows: few, and first (a child's steps refer to it)
                self._write_run(write)
        for insert, rows in grouped.items():
            self._insert(insert, rows)

    def _commit_one_call(self, write: CallDone, claim: Claim) -> None:
        """One call row in one statement, fenced inside it (sqlite_schema.FENCED_CALL), committed by SQLite's
        autocommit: what a chain commits once per model call, with one round trip instead of four (begin, fence,
        insert, commit). The general path (`_apply`) does the same for any batch; tests check they agree."""
        check_in_tree(write, claim.run_id)
        params = (*call_row(write, claim.token), claim.run_id, claim.token)
        try:
            inserted = self._execute(FENCED_CALL, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"the store refused the write: {exc} (a row of an unknown run)") from None
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        if inserted == 0:
            owner = self._conn.execute("SELECT owner FROM runs WHERE run_id = ?", (claim.run_id,)).fetchone()
            raise ClaimLost(claim.run_id, None if owner is None else owner["owner"])

    def _fence(self, claim: Claim) -> None:
        """Refuse a commit under a claim that is no longer current; refresh the claim's heartbeat now and then (a
        write to the run row on every commit would add a page to each commit's WAL frames)."""
        row = self._conn.execute(FENCE, (claim.run_id,)).fetchone()
        if row is None or row["claim_token"] != claim.token:
            raise ClaimLost(claim.run_id, None if row is None else row["owner"])
        now = time.time()
        if row["heartbeat_at"] is None or now - row["heartbeat_at"] > self.lease / HEARTBEATS_PER_LEASE:
            self._conn.execute(HEARTBEAT, (now, claim.run_id))
            self._beats[claim.run_id] = now
        else:
            self._beats[claim.run_id] = row["heartbeat_at"]

    def _heartbeat_fresh(self, claim: Claim) -> bool:
        """Whether this handle wrote the claim's heartbeat recently enough that a commit need not refresh it."""
        beat = self._beats.get(claim.run_id)
        return beat is not None and time.time() - beat <= self.lease / HEARTBEATS_PER_LEASE

    def _write_run(self, write: Write) -> None:
        if isinstance(write, RunFinished):
            params: tuple[Any, ...] = (
                write.status.value,
                write.finished_at,
                write.outputs,
                write.error,
                write.input_tokens,
                write.output_tokens,
                write.cost,
                write.run_id,
            )
            if self._execute(FINISH_RUN, params).rowcount == 0:
                raise KeyError(f"unknown run {write.run_id!r}")
        elif isinstance(write, RunStarted):
            w = write
            self._execute(INSERT_CHILD, (w.run_id, w.parent_id, w.pipeline, w.file, w.started_at, w.inputs,
                                         w.source_digest))  # fmt: skip
        elif isinstance(write, RunReopened):
            if self._execute(REOPEN_RUN, (write.run_id,)).rowcount == 0:
                raise KeyError(f"unknown run {write.run_id!r}")
        else:
            raise TypeError(f"not a store write: {write!r}")

    def _insert(self, insert: Insert, rows: list[tuple[Any, ...]]) -> None:
        """Rows in statements of ≤ the most a statement takes: full ones share one prepared statement, the rest take
        power-of-two sizes, so few statements are prepared and cached."""
        most = self._max_rows[insert]
        start = 0
        while start < len(rows):
            count = min(most, len(rows) - start)
            if count < most:
                count = 1 << (count.bit_length() - 1)
            chunk = rows[start : start + count]
            self._execute(insert.sql(count), list(chain.from_iterable(chunk)))
            start += count

    def _transaction(self, body: Any) -> Any:
        """Run `body` in a write transaction and commit it (`_lock` held); roll back on any error. A constraint
        failure is a caller's mistake (a run created twice, a row of an unknown run), said as such."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                self._conn.commit()
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise
        except sqlite3.IntegrityError as exc:
            raise ValueError(
                f"the store refused the write: {exc} (a run created twice, or a row of an unknown run)"
            ) from None
        except sqlite3.Error as exc:
            raise self._fail(exc) from None
        return result

    def _execute(self, sql: str, params: list[Any] | tuple[Any, ...]) -> sqlite3.Cursor:
        """Execute with values that SQLite can store: a lone surrogate (from undecodable command-line bytes, or a
        `"\\ud800"` JSON escape in a model's or tool's answer) is not UTF-8, so it is written as its JSON escape,
        which a JSON column reads back as the same character; an integer past 64 bits (a server's usage numbers) is
        written as a float."""
        try:
            return self._conn.execute(sql, params)
        except (UnicodeEncodeError, OverflowError):
            return self._conn.execute(sql, [_storable(value) for value in params])

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A query's rows (sqlite3.Row: by column name or position)."""
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    # -- signals ---------------------------------------------------------------------------------------------------

    def send_signal(self, run_id: str, name: str, data: Any) -> int:
        """Queue an external event for a run (from any process); committed before returning. Its position is the run
        row's counter, taken under the write lock: positions commit in order."""

        def send() -> int:
            row = self._conn.execute(
                "UPDATE runs SET signals_sent = signals_sent + 1 WHERE run_id = ? RETURNING signals_sent", (run_id,)
            ).fetchall()  # all: a RETURNING statement left unfinished would block the commit
            if not row:
                raise KeyError(f"unknown run {run_id!r}")
            position = int(row[0][0])
            self._execute(
                "INSERT INTO signals (run_id, position, name, data, at) VALUES (?, ?, ?, ?, ?)",
                (run_id, position, name, json.dumps(data, ensure_ascii=False, default=str), time.time()),
            )
            return position

        with self._lock:
            position: int = self._transaction(send)
        return position


if TYPE_CHECKING:  # mypy checks here that the SQLite store is the port, method by method
    _IS_A_RUN_STORE: type[RunStore] = SqliteRunStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteRunStore"]
