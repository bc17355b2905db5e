"""The run-store port: what a store must do to keep flowctl's run record (runs, steps, side-effect results, events,
signals, state changes, the response cache) and to decide who may write a run.

The interpreter never calls a store directly: the `Recorder` (recorder.py) owns every write a run makes, redacts
secrets and encodes values above this port, and hands the store ordered batches of plain `Write` records. A store
implements `RunStore`; `open_store(url)` picks one. Everything crossing the port is plain data (str, int, float,
JSON text, enums, these dataclasses) and every error is a picklable `StoreError`, so a store may live in another
process or on another host.

The contract a store must keep (the conformance suite in tests/persistence is its definition):
- `commit(writes, claim)` applies the writes in order, atomically, and returns only once they are durable: a commit
  survives the process being killed. Writes are durable in order: when one is, every write before it is too.
- A `Claim` is the right to write a run tree (a root run and its child runs). `claim` takes it for a resume, and a
  run created by `create_run` starts claimed. Every `commit` under a claim is refused with `ClaimLost` once another
  process has claimed the run since, or the claim was released (fencing): a stale writer can never overwrite the new
  owner's record. A claim covers its run tree only (the root and `<root>/…` children); a commit without a claim may
  carry cache entries only (ValueError otherwise). A write naming an unknown run is a caller's mistake (KeyError /
  ValueError), never half applied.
- Liveness is the store's business: a claim whose owner is gone may be taken over, a live one may not (`RunBusy`).
- Calls and step rows keep the token of the claim they were committed under (`claim_token`).
- Signals are numbered per run in commit order (`Signal.position`): reading `signals(run_id, after=position)` never
  skips one that committed late.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class RunStatus(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# --- what a store returns ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunRecord:
    run_id: str
    pipeline: str
    file: str
    status: RunStatus
    started_at: float
    parent_id: str | None = None
    finished_at: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    source_digest: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    owner: str | None = None  # who holds the run tree's claim (the root's); None once it finished
    # how to restore the secrets masked in `inputs` (redact.Redactor.mask_inputs); None when none were
    input_secrets: dict[str, Any] | None = None
    scripted: str | None = (
        None  # the fixture file a scripted run answered from (`--scripted`): its resume stays offline
    )


@dataclass(slots=True)
class StepRecord:
    run_id: str
    path: str  # e.g. "analyses/sentiment", "per_task[2]", "refine#3/judge"
    kind: str
    status: StepStatus
    attempts: int
    started_at: float
    finished_at: float | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    claim_token: int = 0  # the claim its last start or outcome was committed under


@dataclass(slots=True)
class CallRecord:
    """A completed side effect: an LLM completion or a tool call, with the digest of its rendered request."""

    run_id: str
    key: str  # step path + call index, e.g. "summary/llm#0", "summary/tool:time.get_current_time#1"
    request_digest: str
    result: dict[str, Any]
    recorded_at: float
    masked: bool = False  # the stored result differs from the real one (a secret was masked): never replay it
    claim_token: int = 0  # the claim it was committed under (later claims have greater tokens)


@dataclass(slots=True)
class EventRecord:
    seq: int
    run_id: str
    name: str
    data: Any
    source: str  # step path, "signal", or "system"
    at: float


@dataclass(slots=True)
class Signal:
    """An external event sent to a run (`flowctl signal`). `position` numbers a run's signals in commit order."""

    run_id: str
    position: int
    name: str
    data: Any
    at: float


@dataclass(slots=True)
class StateChange:
    seq: int
    run_id: str
    step: str
    keys: list[str]
    values: dict[str, Any]
    at: float


@dataclass(slots=True)
class AttemptRecord:
    """One attempt of a step: when it ran, how it ended, and how long the engine waited before the next."""

    run_id: str
    path: str
    attempt: int  # 1, 2, … over the run's life (resumes continue the count)
    status: StepStatus
    started_at: float
    finished_at: float
    error: dict[str, Any] | None = None
    retry_in: float | None = None  # seconds until the next attempt (backoff or the server's Retry-After)


@dataclass(slots=True)
class ExchangeRecord:
    """What a call sent and what came back, as it happened (the transcript): a model call (`kind` "model"), a tool
    call ("tool") or a wait for an event ("wait"). Failed calls too, with their error. Values are redacted; a body
    over the recorder's cap is `{"truncated": true, "size": N, "head": "…"}`."""

    seq: int  # its position in the run's transcript (1, 2, …), in the order the calls ended
    run_id: str
    path: str  # the step
    key: str  # the journal key of the call
    attempt: int
    kind: str
    started_at: float
    elapsed: float
    request: Any
    response: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to write a run tree: `token` grows with every claim of the root run (the fencing token)."""

    run_id: str  # the root run
    owner: str
    token: int


@dataclass(frozen=True, slots=True)
class Liveness:
    """Who holds a run's claim and whether the store believes it is still there to write it."""

    owner: str | None
    alive: bool


# --- what a store is given: writes, in order -----------------------------------------------------------------------
# Values are JSON text, already redacted by the recorder; None is SQL NULL / no value.


@dataclass(slots=True)
class RunStarted:
    """A child run (a root run starts with `create_run`)."""

    run_id: str
    parent_id: str
    pipeline: str
    file: str
    started_at: float
    inputs: str
    source_digest: str


@dataclass(slots=True)
class RunReopened:
    """A run goes on in a resume: running again; its finish time, outputs and error cleared."""

    run_id: str


@dataclass(slots=True)
class RunFinished:
    run_id: str
    status: RunStatus
    finished_at: float | None
    outputs: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost: float


@dataclass(slots=True)
class StepStarted:
    """An attempt of a step starts: the row is running from `at`, its previous outcome cleared. `new_attempt` is False
    when a resume goes on with the attempt an earlier process started (no attempt is added)."""

    run_id: str
    path: str
    kind: str
    at: float
    new_attempt: bool = True


@dataclass(slots=True)
class StepFinished:
    """A step's outcome. On a row a `StepStarted` made, it sets status, finish, output and error, and adds
    `attempts` and the tokens; without one (a fan-out item, written once at its end, or a skipped step) it makes the
    row from `kind` and `started_at`. Attempts and tokens add up over retries and resumes."""

    run_id: str
    path: str
    kind: str
    status: StepStatus
    started_at: float
    finished_at: float
    attempts: int
    output: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class CallDone:
    """A completed side effect. Recording a key again (a forced re-run) replaces its result.

    `transcript`: the call's transcript entry, kept in the call's own row (a model call answered with nothing to
    mask, the common call: one row instead of two, and durable with the answer); its response is `result`. A store
    that replaces such a row keeps the entry it held (a re-run call's earlier answer stays in the transcript)."""

    run_id: str
    key: str
    request_digest: str
    result: str
    at: float
    masked: bool = False
    transcript: Exchanged | None = None


@dataclass(slots=True)
class EventLogged:
    run_id: str
    name: str
    data: str | None
    source: str
    at: float


@dataclass(slots=True)
class StateChanged:
    run_id: str
    step: str
    keys: str  # JSON list
    values: str  # JSON object
    at: float


@dataclass(slots=True)
class CacheStored:
    digest: str
    result: str
    at: float


@dataclass(slots=True)
class AttemptEnded:
    run_id: str
    path: str
    attempt: int
    status: StepStatus
    started_at: float
    finished_at: float
    error: str | None = None
    retry_in: float | None = None


@dataclass(slots=True)
class Exchanged:
    run_id: str
    path: str
    key: str
    attempt: int
    kind: str
    started_at: float
    elapsed: float
    request: str
    response: str | None = None
    error: str | None = None
    # its number among the transcript entries the recorder noted in this process: with the claim's token (one per
    # process that runs the tree), the order entries are read in when their calls ended at the same instant
    number: int = 0


Write = (
    RunStarted
    | RunReopened
    | RunFinished
    | StepStarted
    | StepFinished
    | CallDone
    | EventLogged
    | StateChanged
    | CacheStored
    | AttemptEnded
    | Exchanged
)


def root_of(run_id: str) -> str:
    """The root run of a run tree: a child's id is `<root>/<step path>`."""
    return run_id.split("/", 1)[0]


def check_in_tree(write: Write, tree: str) -> None:
    """A write of a run must be made under the claim of its run tree (the root run and its children); every store
    refuses one that is not, with this ValueError."""
    run_id: str = write.run_id  # type: ignore[union-attr]  # every write but CacheStored has one
    if not tree or (run_id != tree and not run_id.startswith(tree + "/")):
        raise ValueError(f"a write of run {run_id!r} needs the claim of its run tree, not {tree or 'none'!r}")


class SignalNotices(Protocol):
    """Wake-ups for one run's signals, from a store that can push them (RunStore's optional `signal_notices`)."""

    async def wait(self, timeout: float) -> bool:
        """Whether a signal was sent to the run since the last wait, within `timeout` seconds; StoreError when the
        store stopped listening (the run then polls)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class RunStore(Protocol):
    # How long a claim held by a writer on another host counts as alive without a commit (seconds). The recorder
    # commits (an empty commit when idle) at least every third of it.
    lease: float
    # Optional (absent: False): `commits_over_network = True` says a commit is a network round trip, which the
    # recorder then makes from a thread so that the event loop goes on running the run's other branches.
    # Optional (absent: the run polls its signals every 0.1 s): `async def signal_notices(run_id) -> SignalNotices`,
    # wake-ups as signals are sent to the run (StoreError when it cannot listen).

    # claims and the run tree's lifecycle
    def create_run(self, record: RunRecord, inputs: str, input_secrets: str | None, owner: str) -> Claim:
        """Insert a root run, running and claimed by `owner`; durable on return. `inputs` is its JSON text."""
        ...

    def claim(self, run_id: str, owner: str) -> Claim:
        """Take a root run's claim for a resume (raises RunBusy if its holder is alive, KeyError if unknown)."""
        ...

    def release(self, claim: Claim) -> None:
        """Give the claim up without finishing the run (a refused resume): the run is left as it was."""
        ...

    def liveness(self, run_id: str) -> Liveness:
        """Whether the claim of a run tree (`run_id` or its root) is held by a writer that is still there."""
        ...

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        """Apply `writes` in order in one transaction, durable on return; refused with ClaimLost if `claim` is no
        longer current. `claim` None: writes that need none (the response cache)."""
        ...

    # reads
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def list_runs(self, limit: int = 50, *, roots_only: bool = False) -> list[RunRecord]: ...
    def child_runs(self, run_id: str) -> list[RunRecord]: ...
    def steps(self, run_id: str) -> list[StepRecord]: ...
    def lookup_call(self, run_id: str, key: str) -> CallRecord | None: ...
    def events(self, run_id: str) -> list[EventRecord]: ...
    def state_changes(self, run_id: str) -> list[StateChange]: ...
    def cache_get(self, digest: str) -> dict[str, Any] | None: ...
    def attempts(self, run_id: str) -> list[AttemptRecord]:
        """Every attempt of every step of a run, in the order they started."""
        ...

    def exchanges(self, run_id: str, path: str | None = None) -> list[ExchangeRecord]:
        """The run's transcript (one step's, or the steps under `path/`), in the order the calls ended."""
        ...

    # signals: from any process
    def send_signal(self, run_id: str, name: str, data: Any) -> int:
        """Queue an external event for a run; durable on return. Returns its position."""
        ...

    def signals(self, run_id: str, after: int = 0) -> list[Signal]:
        """A run's signals with position > `after`, in position order."""
        ...

    def close(self) -> None: ...
