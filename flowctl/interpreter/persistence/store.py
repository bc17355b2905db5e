"""The run-store port: the journal of runs, steps, side-effect results, events, signals and state changes.

The interpreter only talks to this protocol, so a distributed durable engine can stand behind the same interpreter
later. The embedded default is SQLite (`sqlite_store.SqliteRunStore`).

Durability contract (see shared/design/ARCHITECTURE.md): side effects (LLM and tool calls) run at least once; their
completed results are recorded exactly once, keyed by (run id, call key); a resumed run looks each call up before
making it and never pays twice for an acknowledged result. A result is acknowledged once committed: `record_call`
commits before returning, or, with `durable=False`, in a group commit that is flushed before any tool call (an
external effect that may depend on it), at the end of the run, and at least every 50 ms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class JsonText(str):
    """A side effect's result already encoded as JSON by whoever produced it (a response writes its common form by
    hand, cheaper than a dict and an encoder). Stores keep the text as it is, or decode it when they need the value,
    e.g. to redact secrets from it; anything returned to the interpreter is decoded."""

    __slots__ = ()


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
    owner: str | None = None  # "host:pid" of the process running it; cleared when it finishes
    # how to restore the secrets masked in `inputs` (redact.Redactor.mask_inputs); None when none were
    input_secrets: dict[str, Any] | None = None


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


@dataclass(slots=True)
class CallRecord:
    """A completed side effect: an LLM completion or a tool call, with the digest of its rendered request."""

    run_id: str
    key: str  # step path + call index, e.g. "summary/llm#0", "summary/tool:time.get_current_time#1"
    request_digest: str
    result: dict[str, Any]
    recorded_at: float
    redacted: bool = False  # the stored result differs from the real one (a secret was masked): never replay it


@dataclass(slots=True)
class EventRecord:
    seq: int
    run_id: str
    name: str
    data: Any
    source: str  # step path, "signal", or "system"
    at: float


@dataclass(slots=True)
class StateChange:
    seq: int
    run_id: str
    step: str
    keys: list[str]
    values: dict[str, Any]
    at: float


@runtime_checkable
class RunStore(Protocol):
    # runs
    def create_run(self, record: RunRecord) -> None: ...
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
    ) -> None: ...
    def reopen_run(self, run_id: str) -> None:
        """Mark a failed/cancelled/interrupted run as running again (for resume)."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...
    def list_runs(self, limit: int = 50, *, roots_only: bool = False) -> list[RunRecord]: ...
    def child_runs(self, run_id: str) -> list[RunRecord]: ...

    # steps (observability: status, attempts, timings, tokens, errors)
    def step_started(self, run_id: str, path: str, kind: str, attempt: int, *, continued: bool = False) -> None:
        """Mark a step running; each start adds an attempt, except a `continued` one (a resumed run going on with
        an attempt an earlier process started)."""
        ...

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
    ) -> None: ...
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
        """A whole step row written once, at the end (fan-out items: one row each instead of two); a row an earlier
        process wrote for the same path gets the attempts and tokens added."""
        ...

    def steps(self, run_id: str) -> list[StepRecord]: ...

    # side effects: the durable part
    def lookup_call(self, run_id: str, key: str) -> CallRecord | None: ...
    def record_call(
        self, run_id: str, key: str, request_digest: str, result: dict[str, Any] | JsonText, *, durable: bool = True
    ) -> None:
        """Record a completed side effect (its result as a dict, or as JsonText). `durable=False` lets it ride in the
        next group commit: allowed for results whose loss only costs a repeat (an LLM completion), never before an
        external effect depends on it (callers `flush()` before tool calls and at the end of a run)."""
        ...

    def flush(self) -> None:
        """Make every write so far durable."""
        ...

    # events, signals, state
    def record_event(self, run_id: str, name: str, data: Any, source: str) -> None: ...
    def events(self, run_id: str) -> list[EventRecord]: ...
    def send_signal(self, run_id: str, name: str, data: Any) -> int:
        """Called from another process (`flowctl signal`): queue an external event for a run."""
        ...

    def take_signals(self, run_id: str, after_seq: int) -> list[EventRecord]:
        """Signals for `run_id` with seq > after_seq, oldest first."""
        ...

    def record_state_change(self, run_id: str, step: str, values: dict[str, Any]) -> None: ...
    def state_changes(self, run_id: str) -> list[StateChange]: ...

    # response cache (opt-in with --cache): identical requests across runs
    def cache_get(self, digest: str) -> dict[str, Any] | None: ...
    def cache_put(self, digest: str, result: dict[str, Any] | JsonText) -> None: ...

    def close(self) -> None: ...
