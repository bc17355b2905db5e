"""The recorder: the one writer of a run's record. Engine, handlers and the journal tell it what happened; it masks
secrets, encodes values as JSON, stamps times from the run's clock, and hands the store ordered batches of plain
writes under the run tree's claim (store.py is the port).

Durable before dependent (the durability contract, docs/durability.md): a completed call's record must be durable
before anything depends on it — the call's answer is used, its step finishes, its success is shown. Writes queue in
memory (a list append) in two lines:
- the journal: call results and the run records (created, reopened, finished). `durable()` is group commit with
  waiters: the first waiter lets the other ready tasks queue their writes too (one loop turn), then commits the
  journal's queue in one transaction and releases every waiter whose writes it held. A lone chain commits at once; a
  fan-out of thousands shares a few commits. Nothing waits on a fixed delay.
- the account: step rows, events, state changes, transcripts, cache entries — what `flowctl show` reads, which nothing
  in the run depends on (a resume recomputes them). Always committed after the journal's queue (a child run's row
  comes before its steps'), and never making a chain step wait for them: a group commit (more than one journal write)
  takes the account along, and a background thread commits what waits every `background_delay` when no group
  commit did (so another terminal sees the run as it goes, at most twice that far behind), and the run's end the
  rest. In a busy fan-out the loop so writes its own account between its calls' commits instead of contending for
  the GIL with a thread that builds the same rows (measured: ~5 % of a 10,000-branch fan-out's makespan); a journal
  commit that finds the background mid-way goes before the background's next `BACKGROUND_CHUNK` writes.
A step's row may so lag behind its calls; the store stamps calls and step outcomes with the claim they were
committed under, which is how a resume tells the calls of a failed step from later ones (journal.py).

A lost claim (another process took the run over) makes every later commit raise `ClaimLost`, and the run stops
without being finished: its new owner writes its outcome.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Awaitable, Callable, Generator, Sized
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.persistence.record_encoding import RecordEncoder, Transcribed
from flowctl.interpreter.persistence.store import (
    AttemptEnded,
    CacheStored,
    CallDone,
    CallRecord,
    Claim,
    EventLogged,
    EventRecord,
    Exchanged,
    RunFinished,
    RunRecord,
    RunReopened,
    RunStarted,
    RunStatus,
    RunStore,
    Signal,
    StateChanged,
    StepFinished,
    StepRecord,
    StepStarted,
    StepStatus,
    Write,
)
from flowctl.interpreter.persistence.store_errors import ClaimLost
from flowctl.interpreter.redact import Redactor

BACKGROUND_COMMIT_DELAY = 0.05  # how far `flowctl show` may lag behind a run's step rows and events
HEARTBEAT_INTERVAL = 30.0  # seconds between the empty commits that keep an idle run's claim alive
# Account writes per background transaction. Between two, a journal commit the loop waits for goes first, so that a
# run's calls never wait behind thousands of step and transcript rows (measured: a 10,000-branch fan-out's loop waited
# 0.12 s of its 0.67 s for background commits made in one piece).
BACKGROUND_CHUNK = 512


def _ready_tasks() -> Sized | None:
    """Asyncio's queue of ready callbacks, which says for free whether another task is ready to run, so that a loop
    turn lets it queue writes our commit takes along (measured: skipping the turn when it is empty saves a chain ~4 µs
    a step); None on any other loop."""
    try:
        return asyncio.get_running_loop()._ready  # type: ignore[attr-defined,no-any-return]
    except (RuntimeError, AttributeError):
        return None


@types.coroutine
def _asyncio_turn() -> Generator[None, None, None]:
    """One loop turn on asyncio: a bare yield, which its task takes as "run me again after the others", as
    `asyncio.sleep(0)` does; `anyio.lowlevel.checkpoint()` does the same after looking up the running backend, which
    cost each of a fan-out's waiters ~1 µs (sniffio, a context variable) twice a call."""
    yield


def _others_may_be_ready(ready: Sized | None) -> bool:
    """Whether a loop turn may let another task queue writes (`ready`: `_ready_tasks()`; off asyncio, assume so)."""
    return ready is None or len(ready) > 0


def _loop_turn(ready: Sized | None) -> Awaitable[None]:
    """Let every other ready task run once (`ready`: `_ready_tasks()`, None off asyncio)."""
    return _asyncio_turn() if ready is not None else anyio.lowlevel.checkpoint()


class Recorder:
    """Every write of one run tree (a root run and its child runs). Not thread-safe: the interpreter's event loop
    calls it; only its background committer runs in another thread, through `_commit_lock`."""

    def __init__(
        self,
        store: RunStore,
        redactor: Redactor,
        owner: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        background_delay: float | None = BACKGROUND_COMMIT_DELAY,
    ) -> None:
        self.store = store
        self.redactor = redactor
        self.owner = owner
        self.clock = clock
        self.claim: Claim | None = None
        self._now = clock.now
        self._pending: list[Write] = []  # the journal's queue
        self._account: list[Write | Transcribed] = []  # the account's queue
        self._queued = 0  # journal writes ever queued (a waiter's ticket is this count after its write)
        self._entries = 0  # transcript entries noted, which numbers them (Exchanged.number)
        self._committed = 0  # journal writes committed, in queue order
        self._committed_any = False
        # A resume commits nothing in the background until it makes a call of its own: a resume refused while it is
        # still replaying (an edited step) then leaves the run exactly as it was.
        self._holding = False
        self._commit_lock = threading.Lock()
        # A journal commit waits for the lock: the background commit hands it over between two of its chunks and goes
        # on once `_journal_turn` is set again (only then is it set: an Event's set costs a chain step ~1 µs).
        self._journal_waiting = False
        self._background_yielded = False
        self._journal_turn = threading.Event()
        self._account_taken_at = 0.0  # time.monotonic() of the last commit of the account not made in the background
        self._committing = False  # a waiter is between its loop turn and its commit
        # A store whose commits cross a network (PostgreSQL) is committed from a thread, so the event loop runs the
        # run's other branches (and a worker's other runs) during the round trip; SQLite's ~50 µs stay inline.
        self._off_loop = bool(getattr(store, "commits_over_network", False))
        self._commit_done: anyio.Event | None = None  # set when the commit in a thread ends
        self._lost: BaseException | None = None  # ClaimLost: nothing more is written
        self._background_error: BaseException | None = None
        self._background_delay = background_delay
        self._stop = threading.Event()
        self._background: threading.Thread | None = None
        # masking and JSON (record_encoding.py), its methods bound once: they run for every write
        self.encoder = encoder = RecordEncoder(redactor)
        self._dump = encoder.dump
        self._dump_value = encoder.dump_value
        self._encode = encoder.encode
        self._result_text = encoder.result_text

    # -- the run tree's lifecycle ------------------------------------------------------------------------------------

    def start_root(self, record: RunRecord) -> None:
        """Create the root run, claimed by this process; durable on return. Secrets in its inputs become
        placeholders naming their variables, so that a resume can restore them (Redactor.mask_inputs)."""
        inputs, secrets = self.redactor.mask_inputs(record.inputs)
        encoded_secrets = self._encode(secrets) if secrets is not None else None
        self.claim = self.store.create_run(record, self._encode(inputs or {}), encoded_secrets, self.owner)
        self._start_background()

    def resume_root(self, run_id: str) -> None:
        """Claim a root run for a resume (RunBusy if its holder is alive). It is marked running with the first commit,
        so a resume refused before anything is committed leaves the run exactly as it was (`abandon`)."""
        self.claim = self.store.claim(run_id, self.owner)
        self._holding = True
        self._queue(RunReopened(run_id))
        self._start_background()

    def child_started(
        self, run_id: str, parent_id: str, pipeline: str, file: str, started_at: float, inputs: Any, digest: str
    ) -> None:
        self._queue(RunStarted(run_id, parent_id, pipeline, file, started_at, self._dump_value(inputs), digest))

    def child_reopened(self, run_id: str) -> None:
        self._queue(RunReopened(run_id))

    def run_finished(
        self,
        run_id: str,
        status: RunStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
        durable: bool = True,
    ) -> None:
        """A run's outcome and totals; for the root (`durable`), committed with everything before it. Finishing the
        root gives its claim up."""
        finished = RunFinished(
            run_id,
            status,
            self._now(),
            self._dump(outputs),
            self._dump(error),
            input_tokens,
            output_tokens,
            cost,
        )
        self._queue(finished)
        if durable:
            self.commit()

    def restore_run(self, record: RunRecord) -> None:
        """Put a root run's outcome back as `record` has it (a refused resume that had committed work), durably."""
        self._queue(
            RunFinished(
                record.run_id,
                record.status,
                record.finished_at,
                self._dump(record.outputs),
                self._dump(record.error),
                record.input_tokens,
                record.output_tokens,
                record.cost,
            )
        )
        self.commit()

    def abandon(self) -> None:
        """A refused resume: drop what is not yet committed and give the claim up; the store keeps the run as the
        earlier process left it (see `committed_any` for what was committed before the refusal)."""
        self.close()
        with self._commit_lock:
            self._pending.clear()
            self._account.clear()
        claim, self.claim = self.claim, None
        if claim is not None and self._lost is None:
            self.store.release(claim)

    def going_on(self) -> None:
        """The resume does work of its own (Journal): the background commits start, as with its first call."""
        self._holding = False

    @property
    def committed_any(self) -> bool:
        """Whether a commit since the claim made anything of this process durable."""
        return self._committed_any

    # -- steps, calls, events, state ---------------------------------------------------------------------------------

    def step_started(self, run_id: str, path: str, kind: str, *, new_attempt: bool = True) -> None:
        self._note(StepStarted(run_id, path, kind, self._now(), new_attempt))

    def step_finished(
        self,
        run_id: str,
        path: str,
        kind: str,
        status: StepStatus,
        started_at: float,
        attempts: int,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """A step's outcome (see store.StepFinished: `attempts` and tokens are what this process adds)."""
        self._note(
            StepFinished(
                run_id,
                path,
                kind,
                status,
                started_at,
                self._now(),
                attempts,
                self._dump(output),
                self._dump(error),
                input_tokens,
                output_tokens,
            )
        )

    def call_done(
        self,
        run_id: str,
        key: str,
        digest: str,
        result: dict[str, Any] | str,
        transcript: Exchanged | None = None,
    ) -> None:
        """A completed side effect (its result as a dict, or as JSON text). Queued: `await durable()` before anything
        depends on it. A digest is a hash of the request, but should one carry a secret it is masked too, and the call
        flagged like a masked result (a resume asks it again rather than compare a mask with the request).

        `transcript`: the call's transcript entry whose response is `result` as given, kept in the call's row (see
        CallDone); should the result be masked after all, it goes to the account as an entry of its own."""
        text, masked = self._result_text(result)
        self._holding = False
        if self.redactor.masks:
            stored = self.redactor.redact_text(digest)
            masked, digest = masked or stored != digest, stored
        if transcript is not None:
            self._number(transcript)
            if masked or text is not transcript.response:
                self._note(transcript)
                transcript = None
        self._queue(CallDone(run_id, key, digest, text, self._now(), masked, transcript))

    def event(self, run_id: str, name: str, data: Any, source: str) -> None:
        self._note(EventLogged(run_id, self.redactor.redact_text(name), self._dump(data), source, self._now()))

    def state_changed(self, run_id: str, step: str, values: dict[str, Any]) -> None:
        redacted = self.redactor.redact(values)
        self._note(StateChanged(run_id, step, self._encode(list(redacted)), self._encode(redacted), self._now()))

    def cache_put(self, digest: str, result: dict[str, Any] | str) -> None:
        """Remember a response for identical requests (a lost entry is only a miss)."""
        self._note(CacheStored(digest, self._result_text(result)[0], self._now()))

    def attempt_ended(
        self,
        run_id: str,
        path: str,
        attempt: int,
        status: StepStatus,
        started_at: float,
        *,
        error: dict[str, Any] | None = None,
        retry_in: float | None = None,
    ) -> None:
        """One attempt of a step ended (the step's row keeps the sum of its attempts; this keeps each)."""
        self._note(AttemptEnded(run_id, path, attempt, status, started_at, self._now(), self._dump(error), retry_in))

    def exchange(
        self,
        run_id: str,
        path: str,
        key: str,
        attempt: int,
        kind: str,
        started_at: float,
        elapsed: float,
        bodies: Callable[[Any], tuple[Any, Any, dict[str, Any] | None]],
        raw: Any,
    ) -> None:
        """A call as it happened, for the transcript: what was sent and what came back (or the error). `bodies(raw)`
        gives the three as JSON-like values; it runs when the entry is committed, not now: an entry is kept as the
        objects it describes until then, so building and encoding its bodies (~10 µs for a model call) happens off
        the call's path — mostly in the background commit, while the run waits for a model or for SQLite."""
        entry = Exchanged(run_id, path, key, attempt, kind, started_at, elapsed, "")
        self._number(entry)
        self._note(Transcribed(entry, bodies, raw))

    def exchanged(self, entry: Exchanged) -> None:
        """A transcript entry whose bodies are JSON text already, redacted and capped (`exchange` for any other)."""
        self._number(entry)
        self._note(entry)

    def state_listener(self, run_id: str) -> Callable[[Any], None]:
        """What a run's SharedState calls with each change."""
        return lambda change: self.state_changed(run_id, change.step, change.values)

    # -- reads the interpreter makes ---------------------------------------------------------------------------------

    def lookup_call(self, run_id: str, key: str) -> CallRecord | None:
        return self.store.lookup_call(run_id, key)

    def cache_get(self, digest: str) -> dict[str, Any] | None:
        return self.store.cache_get(digest)

    def get_run(self, run_id: str) -> RunRecord | None:
        return self.store.get_run(run_id)

    def steps(self, run_id: str) -> list[StepRecord]:
        return self.store.steps(run_id)

    def events(self, run_id: str) -> list[EventRecord]:
        return self.store.events(run_id)

    def signals(self, run_id: str, after: int) -> list[Signal]:
        return self.store.signals(run_id, after)

    # -- commits -----------------------------------------------------------------------------------------------------

    async def durable(self, *, alone: bool = False) -> None:
        """Return once every journal write queued so far is durable (group commit with waiters, see the module
        docstring). `alone`: the caller knows no other call of the run is in flight, so no other task can have a
        write to add to this commit, and waiting a loop turn for them would only delay it (in a chain, another ready
        task is typically asyncio closing an async generator the model's SDK left unfinished)."""
        ticket = self._queued
        if self._committed >= ticket:
            return
        if self._off_loop:
            await self._durable_off_loop(ticket, alone)
            return
        if not self._committing:
            if not alone and _others_may_be_ready(ready := _ready_tasks()):
                self._committing = True
                try:
                    await _loop_turn(ready)  # the other ready tasks queue their writes: one commit for all
                finally:
                    self._committing = False
            if self._committed < ticket:
                self._commit(account=self._group_commit())
            return
        ready = _ready_tasks()
        while self._committed < ticket:  # another waiter commits for us in its next step
            await _loop_turn(ready)
            if not self._committing and self._committed < ticket:
                self._commit(account=self._group_commit())

    def _group_commit(self) -> bool:
        """Whether the commit to make now is a group commit, which takes the account along (see the module
        docstring); never while a resume only replays."""
        return len(self._pending) > 1 and not self._holding

    async def _durable_off_loop(self, ticket: int, alone: bool) -> None:
        """`durable` for a store across a network: one commit at a time, made in a thread; whoever waits meanwhile
        is taken along by the next one (their writes queue while the round trip runs)."""
        while self._committed < ticket:
            done = self._commit_done
            if done is not None:  # a commit is in flight: wait for it, then look again
                await done.wait()
                continue
            self._commit_done = done = anyio.Event()
            try:
                if not alone and _others_may_be_ready(ready := _ready_tasks()):
                    await _loop_turn(ready)  # the other ready tasks queue their writes: one commit for all
                await anyio.to_thread.run_sync(
                    partial(self._commit, account=self._group_commit()), abandon_on_cancel=False
                )
            finally:
                self._commit_done = None
                done.set()

    def commit(self) -> None:
        """Commit every queued write now, the account's too (blocking: the store returns once durable)."""
        self._commit(account=True)

    def _commit(self, *, account: bool) -> None:
        self._raise_if_stopped()
        self._journal_waiting = True
        try:
            with self._commit_lock:
                self._commit_locked(account)
            if account:
                self._account_taken_at = time.monotonic()
        finally:
            self._journal_waiting = False
            if self._background_yielded:
                self._journal_turn.set()

    def _commit_locked(self, account: bool, most: int | None = None) -> None:
        """Commit the journal's queued writes, and with `account` the account's after them (at `most` that many;
        `_commit_lock` held). The event loop appends to the queues without a lock while the background thread may be
        here, so a batch is a copy of the first writes and leaves its queue only once committed (list appends and
        prefix deletions are each atomic under the GIL)."""
        count = len(self._pending)
        noted = len(self._account) if account else 0
        if most is not None:
            noted = min(noted, most)
        if not count and not noted:
            return
        if noted:
            encoder = self.encoder
            noted_writes = [w.write(encoder) if isinstance(w, Transcribed) else w for w in self._account[:noted]]
            batch = self._pending[:count] + noted_writes
        else:
            batch = self._pending[:count]
        try:
            self.store.commit(batch, self.claim)
        except ClaimLost as lost:
            self._lost = lost
            raise
        del self._pending[:count]
        del self._account[:noted]
        self._committed += count
        self._committed_any = True

    def close(self) -> None:
        """Stop the background commits. Whatever is still queued is dropped: the run ends with `run_finished`, which
        commits, or is left for a resume (a failed store, a lost claim)."""
        self._stop.set()
        background = self._background
        if background is not None:
            background.join()
            self._background = None

    # -- internals ---------------------------------------------------------------------------------------------------

    def _queue(self, write: Write) -> None:
        """A journal write."""
        if self._lost is not None:
            return  # another process owns the run now: this one writes nothing more
        self._pending.append(write)
        self._queued += 1

    def _number(self, entry: Exchanged) -> None:
        """Number a transcript entry in the order this recorder noted it (read back as the order of calls that ended
        at the same instant)."""
        self._entries += 1
        entry.number = self._entries

    def _note(self, write: Write | Transcribed) -> None:
        """An account write."""
        if self._lost is None:
            self._account.append(write)

    def _raise_if_stopped(self) -> None:
        if self._lost is not None:
            raise self._lost
        error = self._background_error
        if error is not None:
            self._background_error = None
            raise error

    def _start_background(self) -> None:
        if self._background_delay is None or self._background is not None:
            return
        self._background = threading.Thread(target=self._commit_in_background, name="flowctl-recorder", daemon=True)
        self._background.start()

    def _commit_in_background(self) -> None:
        """Every `background_delay`, commit what waits (the account, and a journal write nobody waits for), so that
        another process reading the store sees the run as it goes; and while the run has nothing to commit (a long
        wait, a slow call), an empty commit every `HEARTBEAT_INTERVAL` (or a third of the store's lease, when
        shorter), which keeps its claim alive for stores that judge owners by their last commit. An error is raised
        to the interpreter at its next commit."""
        assert self._background_delay is not None
        heartbeat_every = min(HEARTBEAT_INTERVAL, self.store.lease / 3)
        last_commit = time.monotonic()
        while not self._stop.wait(self._background_delay):
            if self._lost is not None or self._background_error is not None or self._holding:
                continue
            if time.monotonic() - self._account_taken_at < self._background_delay:
                continue  # group commits take the account along: leave them the loop's thread
            idle = not self._pending and not self._account
            if idle and time.monotonic() - last_commit < heartbeat_every:
                continue
            try:
                with self._commit_lock:
                    if idle:
                        self.store.commit([], self.claim)
                    else:
                        self._commit_account_in_chunks()
                last_commit = time.monotonic()
            except ClaimLost as lost:
                self._lost = lost
            except BaseException as error:  # handed to the interpreter's thread
                self._background_error = error

    def _commit_account_in_chunks(self) -> None:
        """The background's commit (`_commit_lock` held): what is queued now, in transactions of `BACKGROUND_CHUNK`
        account writes, each with the journal writes queued before it; a journal commit that waits meanwhile goes
        between two of them (the lock is no fair queue: it is handed over explicitly)."""
        left = len(self._account)
        while True:
            chunk = min(left, len(self._account), BACKGROUND_CHUNK)  # the loop's commits may have taken some
            self._commit_locked(True, chunk)
            left -= chunk
            if left <= 0 or not self._account:
                return
            if self._journal_waiting:
                self._journal_turn.clear()
                self._background_yielded = True
                self._commit_lock.release()
                try:
                    self._journal_turn.wait(1.0)
                finally:
                    self._background_yielded = False
                    self._commit_lock.acquire()
                if self._lost is not None:
                    return
