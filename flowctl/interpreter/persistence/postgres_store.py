"""The shared run store: `RunStore` on a PostgreSQL database (`postgresql://user@host/db`), for runs that outlive a
machine or move between workers. psycopg 3 and its connection pool are imported only when such a store is opened
(the `postgres` extra: `pip install 'flowctl-agents[postgres]'`).

Durability: every `commit` is one transaction, committed before it returns, so it survives the process being
killed; with the server's default `synchronous_commit = on` it also survives the server's host losing power (and,
with synchronous replication, the host itself). A commit is sent in one round trip (pipeline mode): the fence, the
run rows in order, each table's rows in order as one `executemany`, COMMIT; a heartbeat or a lone call row (a
chain's commit) is one statement.

Claims: the root run's row holds its owner (`host:pid`), a fencing token that grows with every claim, and a
heartbeat (the server's time of the owner's last commit, refreshed at most every lease/10). Every commit under a
claim first locks that row and checks the token in the same transaction (schema function `flowctl_fence`), so a
process that lost its claim writes nothing; a claim locks the row too, so two claimers of one run never both win. An
owner on this host is alive while its process is; an owner on another host while its heartbeat is younger than
`lease` (seconds: `?lease=` in the URL, or the constructor's argument). Signals are numbered per run by a counter on
the run row, taken under its lock: positions commit in order.

Every failure of the server or the connection (unreachable, refused login, no such database, no permission, a
dropped connection) is raised as a `StoreError` naming the URL without its password, and what to do; one raised while
a root run is running names that run, which stays `running` with this process as owner, so `flowctl resume` takes it
over once the problem is fixed.

Connections come from a pool (`pool_size`, default 4, `?pool_size=` in the URL): the interpreter's reads, the
recorder's background commits and a command's queries each take one, so none waits behind another's round trip.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from flowctl.interpreter.persistence import postgres_schema as schema
from flowctl.interpreter.persistence.locate import mask_url
from flowctl.interpreter.persistence.owners import local_owner_alive
from flowctl.interpreter.persistence.postgres_listen import RunNotices, SignalListener
from flowctl.interpreter.persistence.postgres_open import (
    CONNECT_TIMEOUT,
    connect_extra,
    positive_option,
    prepare,
    schema_version,
    secret_scrubber,
    split_url,
    store_error,
)
from flowctl.interpreter.persistence.rows import ReadSql, RecordReads
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
from flowctl.interpreter.persistence.store_errors import ClaimLost, RunBusy, StoreAccess, StoreError

DEFAULT_LEASE = 60.0  # seconds without a commit after which another host's owner counts as gone
DEFAULT_POOL_SIZE = 4
HEARTBEATS_PER_LEASE = 10

_INT_MAX = 2**63 - 1
Row = tuple[Any, ...]
Group = tuple[str, list[Row]]  # a statement and its rows, executed one after another


def _storable(value: Any) -> Any:
    """A value PostgreSQL can take: a str with its lone surrogates and NUL characters written as their JSON escapes
    (`\\udXXXX`, `\\u0000`: a JSON column reads them back as the same character), an int past 64 bits at the
    nearest 64-bit one; other values as they are."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT_MAX - 1 <= value <= _INT_MAX:
        return _INT_MAX if value > 0 else -_INT_MAX - 1
    return value


def _storable_row(row: Row) -> Row:
    return tuple(_storable(value) for value in row)


class PostgresRunStore(RecordReads):
    """`RunStore` on a PostgreSQL database, shared safely by threads, processes and hosts. Use it as a context
    manager or call `close()`.

    `access`: "create" makes the tables if the database has none; "write" and "read" need a database that holds a
    run store already (the database itself is never created: `createdb NAME`). `lease` and `pool_size`: see the
    module (None: from the URL, else the default).
    """

    # a commit is a network round trip: the recorder makes the journal's from a thread, so the loop runs on meanwhile
    commits_over_network = True
    _sql = ReadSql.using("%s")  # the reads (rows.RecordReads) run on `_rows`

    def __init__(
        self,
        url: str,
        *,
        access: StoreAccess = "create",
        lease: float | None = None,
        pool_size: int | None = None,
    ) -> None:
        self.url = mask_url(url)  # what errors name: never the password
        conninfo, options = split_url(url)
        self._scrub = secret_scrubber(conninfo)
        self.lease = lease if lease is not None else positive_option(options, "lease", DEFAULT_LEASE, self.url)
        if pool_size is None:
            pool_size = int(positive_option(options, "pool_size", DEFAULT_POOL_SIZE, self.url))
        self._running_root: str | None = None  # the root run this process runs (named by a StoreError mid-run)
        self._closed = False
        prepare(conninfo, self.url, access)
        self._conninfo, self._connect_extra = conninfo, connect_extra(conninfo)
        # the signal listeners' openings, one per event loop (postgres_listen.py)
        self._listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[SignalListener]] = {}
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, **connect_extra(conninfo)},
            open=False,
            name="flowctl-store",
            num_workers=1,
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT + 5)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(self.url, "cannot connect to the server", "check that it runs, then try again") from None

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self._connection() as conn:
            return schema_version(conn)

    def close(self) -> None:
        """Close the pool's connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._pool.close()

    def __enter__(self) -> PostgresRunStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- errors ----------------------------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> BaseException:
        """What a psycopg error means for the caller: ClaimLost, KeyError, ValueError (a caller's mistake), or a
        StoreError naming the server and what to do (and the run it stopped, if any)."""
        if isinstance(exc, StoreError):
            return exc
        if not isinstance(exc, psycopg.Error):
            return exc
        state = exc.sqlstate or ""
        detail = exc.diag.message_detail or ""
        if state == schema.CLAIM_LOST:
            return ClaimLost(exc.diag.message_hint or "", detail or None)
        if state == schema.UNKNOWN_RUN:
            return KeyError(f"unknown run {detail!r}")
        if isinstance(exc, psycopg.IntegrityError):
            said = self._scrub(exc.diag.message_primary or str(exc))
            return ValueError(f"the store refused the write: {said} (a run created twice, or a row of an unknown run)")
        return store_error(exc, self.url, self._scrub, self._running_root)

    # -- claims ----------------------------------------------------------------------------------------------------

    def create_run(self, record: RunRecord, inputs: str, input_secrets: str | None, owner: str) -> Claim:
        params = (record.run_id, record.parent_id, record.pipeline, record.file, RunStatus.RUNNING.value,
                  record.started_at, None, inputs, None, None, record.source_digest, 0, 0, 0.0, owner, input_secrets,
                  record.scripted, 1)  # fmt: skip

        def insert(conn: psycopg.Connection[Any]) -> None:
            try:
                conn.execute(schema.INSERT_RUN, params)
            except (UnicodeEncodeError, psycopg.DataError):  # a value PostgreSQL cannot take as it is: _storable
                conn.execute(schema.INSERT_RUN, _storable_row(params))

        self._run(insert)
        self._running_root = record.run_id
        return Claim(record.run_id, owner, 1)

    def claim(self, run_id: str, owner: str) -> Claim:
        """The run row is locked (FOR UPDATE) from the look at its holder to the new token's commit, so of two
        `flowctl resume` of one run the second sees the first as a live owner and is refused (RunBusy)."""

        def take(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                row = conn.execute(schema.CLAIM_ROW, (run_id,)).fetchone()
                if row is None or row[3] is not None:
                    raise KeyError(f"unknown root run {run_id!r}")
                held_by, token, age = row[0], int(row[1]), row[2]
                if held_by is not None and held_by != owner and self._alive(held_by, age):
                    raise RunBusy(run_id, held_by)
                conn.execute(schema.TAKE_CLAIM, (owner, token + 1, run_id))
                return token + 1

        token: int = self._run(take)
        self._running_root = run_id
        return Claim(run_id, owner, token)

    def release(self, claim: Claim) -> None:
        self._run(lambda conn: conn.execute(schema.RELEASE, (claim.run_id, claim.token)))
        if self._running_root == claim.run_id:
            self._running_root = None

    def liveness(self, run_id: str) -> Liveness:
        rows = self._rows(schema.LIVENESS, (root_of(run_id),))
        if not rows or rows[0]["owner"] is None:
            return Liveness(None, False)
        owner = rows[0]["owner"]
        return Liveness(owner, self._alive(owner, rows[0]["age"]))

    def _alive(self, owner: str, age: float | None) -> bool:
        local = local_owner_alive(owner)
        if local is not None:
            return local
        return age is not None and age < self.lease

    # -- commits ---------------------------------------------------------------------------------------------------

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        groups = self._groups(writes, claim)
        if not groups and claim is None:
            return
        if claim is not None and (not writes or (len(writes) == 1 and type(writes[0]) is CallDone)):
            # a heartbeat (repeatable), or a chain's call
            self._run(lambda conn: self._send_one(conn, groups, claim), repeatable=not groups)
        else:
            self._run(lambda conn: self._send(conn, groups, claim))
        if self._running_root is not None and any(
            type(w) is RunFinished and w.run_id == self._running_root for w in writes
        ):
            self._running_root = None

    def _groups(self, writes: Sequence[Write], claim: Claim | None) -> list[Group]:
        """The statements of a commit: the run rows first, one by one in their order (a child's start, finish and
        restart follow each other), then each table's rows, in the order they were written (a step's finish after its
        start, the last record of a call winning) and executed one after another, so a batch may touch a row twice.
        Tables are independent of each other (foreign keys are checked at COMMIT), so this keeps every order the port
        asks for and gives each table one `executemany`."""
        tree, token = (claim.run_id, claim.token) if claim is not None else ("", 0)
        runs: list[Group] = []
        tables: dict[str, list[Row]] = {}
        for write in writes:
            kind = type(write)
            if kind is not CacheStored:
                check_in_tree(write, tree)
            row = schema.ROWS.get(kind)
            if row is None:
                sql, params = _run_write(write)
                runs.append((sql, [params]))
                continue
            sql, to_row = row
            rows = tables.get(sql)
            if rows is None:
                rows = tables[sql] = []
            rows.append(to_row(write, token))
        return runs + list(tables.items())

    def _send(self, conn: psycopg.Connection[Any], groups: list[Group], claim: Claim | None) -> None:
        """The fence, the writes and COMMIT in one round trip (pipeline mode); any error undoes them all. A value
        PostgreSQL cannot take as it is (see `_storable`) makes the commit go again with the values it can."""
        try:
            self._pipeline(conn, groups, claim)
        except (UnicodeEncodeError, psycopg.DataError):
            self._pipeline(conn, [(sql, [_storable_row(row) for row in rows]) for sql, rows in groups], claim)

    def _send_one(self, conn: psycopg.Connection[Any], groups: list[Group], claim: Claim) -> None:
        """A heartbeat (no writes) or one call row: one statement, committed on its own (autocommit)."""
        fence = (claim.run_id, claim.token, self.lease / HEARTBEATS_PER_LEASE)
        if not groups:
            conn.execute(schema.FENCE, fence, prepare=True)
            return
        [row] = groups[0][1]
        try:
            conn.execute(schema.FENCED_CALL, (*fence, *row), prepare=True)
        except (UnicodeEncodeError, psycopg.DataError):  # a value PostgreSQL cannot take as it is: see _storable
            conn.execute(schema.FENCED_CALL, (*fence, *_storable_row(row)))

    def _pipeline(self, conn: psycopg.Connection[Any], groups: list[Group], claim: Claim | None) -> None:
        """BEGIN … COMMIT queued by hand: psycopg's `transaction()` syncs the pipeline once more at its end."""
        try:
            with conn.pipeline():
                cursor = conn.cursor()
                cursor.execute(b"BEGIN")
                if claim is not None:
                    cursor.execute(schema.FENCE, (claim.run_id, claim.token, self.lease / HEARTBEATS_PER_LEASE))
                for sql, rows in groups:
                    if len(rows) == 1:
                        cursor.execute(sql, rows[0], prepare=True)
                    else:
                        cursor.executemany(sql, rows)
                cursor.execute(b"COMMIT")
        except BaseException:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute(b"ROLLBACK")  # the statements after the failed one were skipped; end the transaction
            raise

    # -- plumbing --------------------------------------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._closed:
            raise StoreError(self.url, "the store was closed", "open it again")
        return self._pool.connection()

    def _run(self, body: Callable[[psycopg.Connection[Any]], Any], *, repeatable: bool = False) -> Any:
        """`body` on a pooled connection; psycopg errors said as what they mean (`_fail`). `repeatable`: `body` may
        run twice (a read, a heartbeat), so a connection the server dropped while it sat in the pool (a restart, an
        idle timeout, a failover) is replaced and `body` goes once more on a new one."""
        try:
            with self._connection() as conn:
                try:
                    return body(conn)
                except psycopg.OperationalError:
                    if not (repeatable and conn.closed):
                        raise
            with self._connection() as conn:  # the pool discarded the dropped one
                return body(conn)
        except PoolTimeout:
            raise StoreError(self.url, "no connection to the server", "check that it runs") from None
        except psycopg.Error as exc:
            raise self._fail(exc) from None

    def _rows(self, sql: str, params: Row = ()) -> list[dict[str, Any]]:
        """A query's rows as dicts by column name."""

        def read(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            cursor = conn.cursor(row_factory=dict_row)
            try:
                return cursor.execute(sql, params, prepare=True).fetchall()
            except UnicodeEncodeError:  # an id with a lone surrogate (undecodable command-line bytes)
                return cursor.execute(sql, _storable_row(params)).fetchall()

        rows: list[dict[str, Any]] = self._run(read, repeatable=True)
        return rows

    # -- signals ---------------------------------------------------------------------------------------------------

    def send_signal(self, run_id: str, name: str, data: Any) -> int:
        """Queue an external event for a run (from any process); committed before returning. Its position is the run
        row's counter, taken under the row's lock: positions commit in order."""
        text = json.dumps(data, ensure_ascii=False, default=str)

        def send(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                row = conn.execute(schema.NEXT_SIGNAL, (run_id,)).fetchone()
                if row is None:
                    raise KeyError(f"unknown run {run_id!r}")
                position = int(row[0])
                params = _storable_row((run_id, position, name, text, time.time()))
                conn.execute(schema.INSERT_SIGNAL, params)
                conn.execute(schema.NOTIFY_SIGNAL, (params[0],))
                return position

        position: int = self._run(send)
        return position

    async def signal_notices(self, run_id: str) -> RunNotices:
        """A wake-up for each signal sent to `run_id` from now on; the runs waiting in one event loop share one
        listening connection (postgres_listen.py), outside the pool. StoreError when the server cannot be reached."""
        loop = asyncio.get_running_loop()
        while True:
            opening = self._listeners.get(loop) or self._open_listener(loop)
            try:
                listener = await asyncio.shield(opening)
            except BaseException:
                if opening.done() and self._listeners.get(loop) is opening:
                    del self._listeners[loop]  # it failed to open: the next run tries again
                raise
            if not listener.closed:
                return listener.notices(_storable(run_id))  # as NOTIFY_SIGNAL's payload has it
            if self._listeners.get(loop) is opening:  # its last run left while this one came
                del self._listeners[loop]

    def _open_listener(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[SignalListener]:
        def forget() -> None:  # the listener stopped: the next run opens another
            if self._listeners.get(loop) is opening:
                del self._listeners[loop]

        opening = loop.create_task(SignalListener.open(self._listen_connection, self._fail, forget))
        self._listeners[loop] = opening
        return opening

    async def _listen_connection(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **self._connect_extra)


def _run_write(write: Write) -> tuple[str, Row]:
    if isinstance(write, RunFinished):
        return schema.FINISH_RUN, (write.run_id, write.status._value_, write.finished_at, write.outputs, write.error,
                                   write.input_tokens, write.output_tokens, write.cost)  # fmt: skip
    if isinstance(write, RunStarted):
        w = write
        return schema.INSERT_CHILD, (w.run_id, w.parent_id, w.pipeline, w.file, w.started_at, w.inputs,
                                     w.source_digest)  # fmt: skip
    if isinstance(write, RunReopened):
        return schema.REOPEN_RUN, (write.run_id,)
    raise TypeError(f"not a store write: {write!r}")


if TYPE_CHECKING:  # mypy checks here that the PostgreSQL store is the port, method by method
    _IS_A_RUN_STORE: type[RunStore] = PostgresRunStore

__all__ = ["DEFAULT_LEASE", "PostgresRunStore", "split_url"]
