"""What a running pipeline knows: the shared `Runtime` of a run tree, one `RunContext` per pipeline run (root or
child), and the `Scope` a step runs in (its journal path prefix, extra template variables, where its state goes).
"""

from __future__ import annotations

import random
from collections import ChainMap, Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from flowctl.dsl.ir import Graph, ModelDef, PipelineDef
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.concurrency import Caps, Limiter
from flowctl.interpreter.engine.events import EventBus
from flowctl.interpreter.engine.policies import Breakers
from flowctl.interpreter.engine.run_meta import iso, now_function
from flowctl.interpreter.engine.state import SharedState
from flowctl.interpreter.persistence.journal import Journal
from flowctl.interpreter.persistence.recorder import Recorder
from flowctl.interpreter.persistence.store import StepStatus
from flowctl.interpreter.providers.llm import LLMProvider, Usage
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.tools import ToolPool

ProviderFactory = Callable[[ModelDef], LLMProvider]


@dataclass(slots=True)
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def add(self, usage: Usage, model: ModelDef) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        if model.price_in_per_mtok is not None:
            self.cost += usage.input_tokens * model.price_in_per_mtok / 1e6
        if model.price_out_per_mtok is not None:
            self.cost += usage.output_tokens * model.price_out_per_mtok / 1e6


@dataclass(slots=True)
class Runtime:
    """Resources shared by a run and all its children: one of each per `flowctl run`."""

    recorder: Recorder  # every write of the run tree goes through it
    journal: Journal
    provider_factory: ProviderFactory
    tools: ToolPool
    reporter: Reporter
    concurrency: int
    clock: Clock = SYSTEM_CLOCK  # every timestamp, sleep and timeout of the run tree (see clock.py)
    bus: EventBus = field(init=False)
    breakers: Breakers = field(init=False)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    totals: Totals = field(default_factory=Totals)
    providers: dict[tuple[str, str], LLMProvider] = field(default_factory=dict)
    limiter: Limiter = field(init=False)
    stream: bool = field(init=False)
    hears_calls: bool = field(init=False)  # whether the reporter does anything with model and tool calls
    # resuming: per run, the events its log already holds, by (source, name), not yet sent again
    logged_events: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    child_starts: Counter[str] = field(default_factory=Counter)  # child run id → times this process started it
    child_started_at: dict[str, float] = field(default_factory=dict)  # child run id → when it first started
    now_calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (run id, step path) → `now()` calls
    warned: set[str] = field(default_factory=set)  # optional servers reported unavailable (once per run tree)
    server_limits: dict[str, Any] = field(default_factory=dict)  # per MCP server: its sampling semaphore
    caps: Any = None  # models' and servers' `concurrency:` (concurrency.Caps, or one shared by workers)

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.concurrency)
        if self.caps is None:
            self.caps = Caps()
        # `--stream`: providers hand the answer's text on as it arrives (providers/streaming.py), for the reporter
        self.stream = bool(getattr(self.reporter, "streams_text", False))
        # the silent reporter (`--quiet`, the Python API) ignores them: then no call is described for it
        kind = type(self.reporter)
        self.hears_calls = (
            getattr(kind, "model_call", None) is not Reporter.model_call
            or getattr(kind, "tool_call", None) is not Reporter.tool_call
        )
        self.bus = EventBus(self.clock)
        self.breakers = Breakers(self.clock)

    def provider(self, model: ModelDef) -> LLMProvider:
        """One provider instance per model definition per run tree (shares HTTP connections)."""
        key = (model.span.file, model.name)
        provider = self.providers.get(key)
        if provider is None:
            provider = self.providers[key] = self.provider_factory(model)
        return provider

    def announce(self, run_id: str, name: str, data: Any, source: str) -> None:
        """An event happened (an `emit`, a signal taken): log it, report it, and deliver it to waits and triggers."""
        self._log_event(run_id, name, data, source)
        self.reporter.event(run_id, name, source)
        self.bus.emit(name, data, source)

    def _log_event(self, run_id: str, name: str, data: Any, source: str) -> None:
        """Add an event to the run's log. A resumed run sends the events of the work it replays again (an `emit`
        step, a signal taken again): the log already holds those, so each is logged once."""
        if self.journal.resuming:
            logged = self.logged_events.get(run_id)
            if logged is None:
                events = self.recorder.events(run_id)
                logged = self.logged_events[run_id] = Counter((e.source, e.name) for e in events)
            if logged[source, name] > 0:
                logged[source, name] -= 1
                return
        self.recorder.event(run_id, name, data, source)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for provider in self.providers.values():
                await provider.aclose()
            await self.tools.aclose()


@dataclass(slots=True)
class StepResult:
    status: str = "pending"
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0

    def as_context(self) -> dict[str, Any]:
        return {"output": self.output, "status": self.status, "error": self.error, "attempts": self.attempts}


@dataclass(slots=True)
class RunContext:
    """One pipeline run: the root run or a child run with its own id, inputs, state and step results."""

    runtime: Runtime
    graph: Graph  # the file the pipeline is defined in (its agents, models, servers)
    pipeline: PipelineDef
    run_id: str
    inputs: Mapping[str, Any]
    state: SharedState
    started_at: float  # wall-clock time, from the runtime's clock; a resumed run keeps the one it started at
    parent_id: str | None = None
    attempt: int = 1  # which start of the run tree this is: 1, then one more for each resume (run_meta.run_attempt)
    status: str = "running"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → {output, status, error, attempts}
    step_listeners: list[Callable[[str, StepResult], None]] = field(default_factory=list)  # triggers
    # `finally` cleans up after each execution of the body, so it is never replayed: a resumed run's `finally`
    # is journaled under a new prefix (`finally@<epoch>/`) and runs for real; a fresh run uses `finally/`.
    finally_prefix: str = "finally/"
    # resuming: the step rows the store already holds, by path (rows add tokens and attempts up); None on a fresh run
    recorded: dict[str, RecordedStep] | None = None
    _meta: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _now: Callable[[], str] | None = field(default=None, init=False, repr=False)

    def run_meta(self) -> dict[str, Any]:
        """`run` in templates. Built once per status, not per render; never changed in place (templates may have
        handed it on as a value), but replaced when the status changes."""
        meta = self._meta
        if meta is None or meta["status"] != self.status:
            meta = self._meta = {
                "id": self.run_id,
                "pipeline": self.pipeline.name,
                "started_at": iso(self.started_at),
                "status": self.status,
                "parent_id": self.parent_id,
                "attempt": self.attempt,
                "file": self.graph.file,
            }
        return meta

    def template_context(self, scope: Scope) -> dict[str, Any]:
        now = self._now
        if now is None:
            now = self._now = now_function(self)
        context: dict[str, Any] = {
            "inputs": self.inputs,
            "steps": self.steps if scope.results is None else ChainMap(scope.results, self.steps),
            "state": self.state.values,
            "run": self.run_meta(),
            "now": now,
        }
        context.update(scope.variables)
        return context

    def set_result(self, step_id: str, result: StepResult, scope: Scope | None = None) -> None:
        value = result.as_context()
        self.steps[step_id] = value  # the latest, for readers outside the instance (outputs, finally)
        if scope is not None and scope.results is not None:
            scope.results[step_id] = value

    def notify_step(self, step_id: str, result: StepResult) -> None:
        for listener in list(self.step_listeners):
            listener(step_id, result)


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """What the store holds of a step of a run being resumed."""

    status: str
    kind: str
    attempts: int
    input_tokens: int
    output_tokens: int

    @property
    def continued(self) -> bool:
        """Whether the resumed run's first attempt continues the recorded one rather than adding an attempt: it
        succeeded (and is replayed) or was interrupted (running when killed, or cancelled); a failed attempt is
        over, and running the step again is a new attempt."""
        return self.status in ("succeeded", "running", "cancelled")


def recorded_steps(runtime: Runtime, run_id: str) -> dict[str, RecordedStep]:
    """The step rows the store holds for a run being resumed, by path. The calls of the failed ones are asked again
    (see Journal.ask_again). Cleanup steps an earlier process was running when it stopped are closed as cancelled:
    `finally` never replays, it runs anew under a new prefix, so nothing else would ever finish their rows."""
    rows = runtime.recorder.steps(run_id)
    runtime.journal.ask_again(run_id, {s.path: s.claim_token for s in rows if s.status.value == "failed"})
    recorded = {}
    for row in rows:
        if row.status.value == "running" and row.path.startswith(("finally/", "finally@")):
            stopped = {"code": "cancelled", "message": "its process stopped; the resumed run cleaned up anew"}
            runtime.recorder.step_finished(
                run_id, row.path, row.kind, StepStatus.CANCELLED, row.started_at, 0, error=stopped
            )
            continue
        recorded[row.path] = RecordedStep(row.status.value, row.kind, row.attempts, row.input_tokens, row.output_tokens)
    return recorded


StateSink = Callable[[str, dict[str, Any]], None]


@dataclass(slots=True)
class Scope:
    """Where a step runs: `prefix` makes journal paths unique across loop iterations and fan-out items.

    A value, never changed once made (not `frozen` only because that makes each of a fan-out's scopes ~0.3 µs
    dearer to build)."""

    prefix: str = ""
    variables: Mapping[str, Any] = field(default_factory=dict)
    sink: StateSink | None = None  # None: apply to the run's state immediately
    # Step results of this instance only, read before the run's: two firings of a trigger, or two fan-out items
    # with fallback steps, run the same step ids at once and must not read each other's results.
    results: ChainMap[str, Any] | None = None

    def path(self, step_id: str) -> str:
        return self.prefix + step_id

    def child(self, prefix: str = "", sink: StateSink | None = None, **variables: Any) -> Scope:
        variables = {**self.variables, **variables}
        return Scope(self.prefix + prefix, variables, sink if sink is not None else self.sink, self.results)

    def isolated(self) -> Scope:
        """The same scope with its own layer of step results (for concurrent instances of the same steps)."""
        layer: ChainMap[str, Any] = self.results.new_child() if self.results is not None else ChainMap()
        return Scope(self.prefix, self.variables, self.sink, layer)
