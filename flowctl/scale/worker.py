"""One worker process (`flowctl worker`): takes run requests from the queue and runs them, as many at once as its
concurrency, under the run's claim.

- The claim decides, the queue only delivers: a request for a run whose claim is held by a live owner is retried
  a moment later (`RunBusy`); a request for a run that has finished is done at once; a request for a run that has
  started is a resume (the journal replays what was recorded).
- The worker's claims carry the owner `NAME@HOST:PID` and are judged by their heartbeat (the store's `lease`, short
  for workers), never by the process table: a frozen worker loses its claims as surely as one on another host.
- Dead workers: procrastinate keeps each worker's heartbeat; every worker looks for requests held by a worker whose
  heartbeat is older than the lease and puts them back in the queue (`get_stalled_jobs` + `retry_job`).
- Fencing: a worker that finds it was frozen past its lease, or whose write was refused (`ClaimLost`), stops at once
  without another word to the store or the queue (exit 75): its runs are someone else's now.
- Caps: a model's or a server's `concurrency:` holds across every worker (slots.py).
- SIGTERM drains: no new requests; runs in flight may finish within `drain_timeout`, the rest are cancelled (marked
  cancelled in the store) and queued again for another worker to resume. A second SIGTERM or Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from procrastinate import App, RetryStrategy

from flowctl import __version__
from flowctl.interpreter.engine.stack_room import with_stack_room
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.persistence.store_errors import ClaimLost, RunBusy, StoreError
from flowctl.scale import database, queue, slots, sources

EXIT_FENCED = 75  # EX_TEMPFAIL: start me again
BUSY_RETRY = 1  # seconds before a request for a run someone else still holds is tried again


@dataclass(slots=True)
class WorkerConfig:
    store_url: str  # the run store (the journal)
    queue_url: str  # the queue's PostgreSQL database
    name: str = ""
    concurrency: int = 8
    lease: float = 10.0  # how long a silent claim (and a silent worker) counts as alive
    drain_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{socket.gethostname()}-{os.getpid()}"


def say(line: str) -> None:
    """One line of the worker's log on stdout (tests and operators read it)."""
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.owner = f"{config.name}@{socket.gethostname()}:{os.getpid()}"
        self.holding: dict[str, asyncio.Event] = {}  # run id → set when this worker is done with it
        self.state = "running"
        self.app: App = queue.make_app(config.queue_url, max_size=max(2, config.concurrency // 4 + 2))
        self.graphs: dict[str, Any] = {}  # submission digest → compiled graph
        self.stores: dict[str, Any] = {}  # run id → the store its run writes through
        self.shared_store: Any = None  # on PostgreSQL: one store (and pool) for every run of this worker
        self.opening = threading.Lock()
        self.conn: Any = None
        self.caps: Any = None  # models' and servers' `concurrency:`, shared by every worker (slots.py)

    # --- the process --------------------------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until drained (0) or fenced (75)."""
        # The server ends this worker's sessions that sit in a transaction past the lease: a worker frozen mid-commit
        # must not keep its run's row locked, or the next worker could not claim the run (libpq reads PGOPTIONS).
        timeout = f"-c idle_in_transaction_session_timeout={int(self.config.lease * 1000)}"
        os.environ["PGOPTIONS"] = f"{os.environ.get('PGOPTIONS', '')} {timeout}".strip()
        await asyncio.to_thread(lambda: queue.prepare(self.config.queue_url).close())
        _import_what_runs_need()  # now, not in the first run: importing the SDKs holds the event loop for a second
        self.conn = await database.connect_async(self.config.queue_url)
        caps_conn = await database.connect_async(self.config.queue_url)
        self.caps = slots.SharedCaps(caps_conn, self.owner, self.config.lease)
        await self._register()
        self.app.task(
            name=queue.TASK,
            queue=queue.QUEUE,
            # a run held by a live worker, or a store that cannot be reached now: again in a moment (a store error
            # leaves the run resumable)
            retry=RetryStrategy(max_attempts=100_000, wait=BUSY_RETRY, retry_exceptions={RunBusy, StoreError}),
        )(self.run_request)
        lease = self.config.lease
        async with self.app.open_async():
            work = asyncio.create_task(
                self.app.run_worker_async(
                    queues=[queue.QUEUE],
                    name=self.config.name,
                    concurrency=self.config.concurrency,
                    install_signal_handlers=False,
                    update_heartbeat_interval=lease / 5,
                    stalled_worker_timeout=lease,
                    fetch_job_polling_interval=1.0,
                    shutdown_graceful_timeout=self.config.drain_timeout,
                    delete_jobs="successful",
                )
            )
            self._on_signals(work)
            side = [asyncio.create_task(c) for c in (self._heartbeat(), self._recover(), self._watchdog())]
            say(f"worker {self.config.name} ({self.owner}) ready: concurrency {self.config.concurrency}")
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            finally:
                for task in side:
                    task.cancel()
        if self.shared_store is not None:
            self.shared_store.close()
        await self._set_state("stopped")
        say(f"worker {self.config.name} stopped")
        return 0

    def _on_signals(self, work: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()

        def drain() -> None:
            if self.state == "draining":  # the second one: stop now (the claims lapse; others resume the runs)
                os._exit(143)
            self.state = "draining"
            say(f"draining: {len(self.holding)} run(s) in flight, up to {self.config.drain_timeout:g} s")
            work.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, drain)

    async def _register(self) -> None:
        await self.conn.execute(
            "INSERT INTO flowctl_scale_workers (name, owner, concurrency, lease, flowctl_version, state)"
            " VALUES (%s, %s, %s, %s, %s, 'running') ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner,"
            " concurrency = EXCLUDED.concurrency, lease = EXCLUDED.lease, flowctl_version = EXCLUDED.flowctl_version,"
            " state = 'running', started_at = now(), heartbeat_at = now(), holding = '[]'",
            (self.config.name, self.owner, self.config.concurrency, self.config.lease, __version__),
        )

    async def _set_state(self, state: str) -> None:
        await self.conn.execute(
            "UPDATE flowctl_scale_workers SET state = %s, heartbeat_at = now(), holding = %s WHERE name = %s",
            (state, json.dumps(sorted(self.holding)), self.config.name),
        )

    async def _heartbeat(self) -> None:
        while True:
            await self._set_state(self.state)
            await self.caps.renew()
            await asyncio.sleep(self.config.lease / 4)

    async def _recover(self) -> None:
        """Put back in the queue the requests of workers whose heartbeat stopped (killed, frozen, cut off)."""
        manager = self.app.job_manager
        while True:
            await asyncio.sleep(self.config.lease / 4)
            stalled = await manager.get_stalled_jobs(
                queue=queue.QUEUE, task_name=queue.TASK, seconds_since_heartbeat=self.config.lease
            )
            for job in stalled:
                run_id = job.task_kwargs.get("run_id")
                try:
                    await manager.retry_job(job)
                except Exception as exc:  # another worker put it back first
                    say(f"run {run_id}: not recovered here ({str(exc).strip().splitlines()[0]})")
                else:
                    say(f"recovered run {run_id} from a stalled worker")
            await manager.prune_stalled_workers(self.config.lease * 3)

    async def _watchdog(self) -> None:
        """A loop that stood still past the lease (SIGSTOP, a suspended VM, a starved CPU) means the claims may be
        someone else's: before another call is paid for, ask the store, and stop if one was taken over."""
        tick = min(1.0, self.config.lease / 10)
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - last > self.config.lease:
                lost = [r for r, store in list(self.stores.items()) if store.liveness(r).owner != self.owner]
                if lost:
                    self.fence(
                        f"stood still for {now - last:.1f} s, past the lease; run {lost[0]} is not ours any more"
                    )
            last = now

    def fence(self, why: str) -> None:
        say(f"fenced: {why}; abandoning {len(self.holding)} run(s) to other workers and stopping")
        sys.stdout.flush()
        os._exit(EXIT_FENCED)

    # --- one request --------------------------------------------------------------------------------------------

    async def run_request(self, run_id: str) -> str:
        """The task procrastinate calls for a request: run (or resume) the run, or say why not."""
        request = await self._request(run_id)
        if request is None:
            say(f"run {run_id}: no such submitted run; dropped")
            return "unknown"
        queue.check_format(request)
        if run_id in self.holding:  # delivered again while this worker still runs it (its heartbeat was late)
            say(f"run {run_id}: delivered again while running here; left to the run in progress")
            await self.holding[run_id].wait()
            return "duplicate"
        try:
            graph = await self._graph(request.source)
        except (ValueError, OSError) as exc:  # the job fails for good: `submit --wait` reports it
            say(f"run {run_id}: cannot be run here: {exc}")
            raise
        self.holding[run_id] = asyncio.Event()
        store = None
        try:
            store = await asyncio.to_thread(self._open_store)
            self.stores[run_id] = store
            return await self._run(store, graph, request)
        except StoreError as exc:
            say(f"run {run_id}: the store failed ({exc}); trying again in {BUSY_RETRY} s")
            raise
        except ClaimLost:
            self.fence(f"run {run_id}: the store refused a write (another worker holds its claim now)")
            raise
        except asyncio.CancelledError:
            if self.state == "draining":  # released: marked cancelled by the run; another worker resumes it
                with anyio.CancelScope(shield=True):
                    await queue.enqueue_async(self.app, run_id)
                say(f"run {run_id}: released (draining); queued again")
            raise
        finally:
            self.holding.pop(run_id).set()
            self.stores.pop(run_id, None)
            if store is not None:
                await asyncio.to_thread(self._close_store, store)

    async def _run(self, store: Any, graph: Any, request: queue.RunRequest) -> str:
        from flowctl.interpreter.runner import resume_inputs, run_graph

        run_id = request.run_id
        record = store.get_run(run_id)
        if record is not None and record.status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            return record.status.value  # a request delivered again after the run ended
        if record is not None:
            liveness = store.liveness(run_id)
            if liveness.alive and liveness.owner != self.owner:
                raise RunBusy(run_id, liveness.owner or "?")  # retried in a moment (checked again when claimed)
        options = self._options(graph)
        if record is None:
            say(f"run {run_id}: started")
            outcome = await run_graph(graph, request.inputs, store, options, run_id=run_id)
        else:
            say(f"run {run_id}: resumed")
            inputs = resume_inputs(record, self.config.env)
            outcome = await run_graph(graph, inputs, store, options, run_id=run_id, resuming=True)
        say(f"run {run_id}: {outcome.status.value}")
        return str(outcome.status.value)

    def _options(self, graph: Any) -> Any:
        from flowctl.interpreter.redact import redactor_for
        from flowctl.interpreter.runner import RunOptions

        options = RunOptions(env=self.config.env, owner=self.owner, caps=self.caps)
        options.redactor = redactor_for([graph], self.config.env)
        return options

    def _open_store(self) -> Any:
        """The store a run writes through: on PostgreSQL one for the whole worker (its connection pool sized for the
        worker's concurrency), on SQLite one per run (a connection each)."""
        from flowctl.interpreter.persistence.locate import open_store

        url = self.config.store_url
        if not database.is_postgres_url(url):
            store = open_store(url, access="create")
            store.lease = self.config.lease
            return store
        with self.opening:  # runs start in threads of their own: one opens it, the others wait for it
            if self.shared_store is None:
                url = self._store_url(url)
                store = open_store(url, access="create")
                store.lease = self.config.lease
                self.shared_store = store
            return self.shared_store

    def _store_url(self, url: str) -> str:
        """The worker's store URL: a pool for its concurrency."""
        if "pool_size=" in url:
            return url
        return url + ("&" if "?" in url else "?") + f"pool_size={self.config.concurrency + 2}"

    def _close_store(self, store: Any) -> None:
        if store is not self.shared_store:
            store.close()

    async def _request(self, run_id: str) -> queue.RunRequest | None:
        cursor = await self.conn.execute(
            "SELECT source, inputs, flowctl_version, journal_format FROM flowctl_scale_runs WHERE run_id = %s",
            (run_id,),
        )
        row = await cursor.fetchone()
        return None if row is None else queue.RunRequest(run_id, row[0], row[1], row[2], row[3])

    async def _graph(self, digest: str) -> Any:
        """The compiled graph of a submission: materialised from the database once per worker and digest."""
        if digest not in self.graphs:
            self.graphs[digest] = await asyncio.to_thread(self._compile, digest)
        return self.graphs[digest]

    def _compile(self, digest: str) -> Any:
        from flowctl.dsl.frontend import load_pipeline

        conn = database.connect(self.config.queue_url)
        try:
            root = sources.fetch_to_disk(conn, digest)
        finally:
            conn.close()
        graph, diagnostics, _ = load_pipeline(root)
        if graph is None:
            raise ValueError(f"submission {digest[:12]}… does not compile here: {diagnostics[0]}")
        return graph


def _import_what_runs_need() -> None:
    import flowctl.interpreter.mcp.mcp_pool
    import flowctl.interpreter.providers.openai_provider
    import flowctl.interpreter.runner  # noqa: F401


def run_worker(config: WorkerConfig) -> int:
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack on stderr
    return with_stack_room(partial(asyncio.run, Worker(config).serve()))
