"""Running a compiled graph end to end: the run record, resources (providers, the MCP pool, the store), external
signals, and resume. This is the interpreter's public entry point; the CLI calls `run_graph` and `resume_run`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from flowctl.dsl import ir
from flowctl.dsl.variables import expand, variable_names
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.concurrency import task_group
from flowctl.interpreter.engine.context import RunContext, Runtime, Scope, recorded_steps
from flowctl.interpreter.engine.engine import Engine
from flowctl.interpreter.engine.handlers import HANDLERS
from flowctl.interpreter.engine.run_meta import run_attempt
from flowctl.interpreter.engine.state import SharedState
from flowctl.interpreter.engine.tuning import tuned_for_runs
from flowctl.interpreter.errors import FlowctlError, InputError, ProviderError, refused
from flowctl.interpreter.inputs import validate_inputs
from flowctl.interpreter.persistence.ids import new_run_id
from flowctl.interpreter.persistence.journal import Journal
from flowctl.interpreter.persistence.owners import this_process
from flowctl.interpreter.persistence.recorder import Recorder
from flowctl.interpreter.persistence.store import RunRecord, RunStatus, RunStore, SignalNotices
from flowctl.interpreter.persistence.store_errors import ClaimLost, RunBusy, StoreError
from flowctl.interpreter.providers.llm import LLMProvider
from flowctl.interpreter.redact import Redactor, redactor_for
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.tools import ToolPool, ToolResult

SIGNAL_POLL_INTERVAL = 0.1
# With a store that wakes a run when a signal is sent to it (PostgreSQL's LISTEN/NOTIFY), the run reads its signals
# on each wake-up, and polls as well at this longer interval, in case
SIGNAL_NOTICE_FALLBACK = 5.0


class InternalError(FlowctlError):
    """An unexpected exception inside the interpreter (a bug); the run is marked failed with it."""

    code = "internal-error"


@dataclass(slots=True)
class RunOptions:
    scripted: Any = None  # a scripted Fixture: replaces every model (and scripts the tools it names)
    scripted_file: str | None = None  # where `scripted` came from: kept with the run, so that its resume stays offline
    cache: bool = False  # serve identical LLM requests from the response cache
    force: bool = False  # resume even if recorded requests changed
    reporter: Reporter = field(default_factory=Reporter)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    provider_factory: Any = None  # override (tests, embedding)
    tool_pool: ToolPool | None = None  # override (tests, embedding)
    clock: Clock = SYSTEM_CLOCK  # time for the whole run tree; a ManualClock drives it in tests (see clock.py)
    # masks secrets in everything the run record keeps; default: the pipeline's secret variables and the secret-looking
    # ones of `env` (redact.redactor_for)
    redactor: Redactor | None = None
    # tune the process for runs while this one is in flight (the garbage collector's thresholds, the GIL switch
    # interval; engine/tuning.py): process-wide settings, so the CLI's opt-in, never an embedder's surprise
    tune_process: bool = False
    # who the run's claim names (default `host:pid`, judged alive by its process on this host); a worker names itself
    # (`NAME@HOST:PID`) so that its claims are judged by their heartbeat alone (flowctl/scale/worker.py)
    owner: str | None = None
    # models' and servers' `concurrency:` caps (default: kept in this process, concurrency.Caps); a worker passes one
    # kept in PostgreSQL so that a cap holds across every worker (flowctl/scale/slots.py)
    caps: Any = None


@dataclass(slots=True)
class RunOutcome:
    run_id: str
    status: RunStatus
    outputs: dict[str, Any] | None
    error: FlowctlError | None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    calls_executed: int = 0
    calls_replayed: int = 0
    calls_cached: int = 0  # served from the response cache (--cache)
    elapsed: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def _provider_factory(graph: ir.Graph, options: RunOptions) -> Any:
    shared_scripted: list[LLMProvider] = []

    def factory(model: ir.ModelDef) -> LLMProvider:
        unset = variable_names(model.model)  # left by _expand_models: never send a `${VAR}` as a model name
        if unset:
            error = ProviderError(f"model {model.name!r}: `model` refers to ${{{unset[0]}}}, but it is not set")
            error.retryable = False
            raise error
        if options.scripted is not None:
            from flowctl.interpreter.providers.scripted import ScriptedProvider

            if not shared_scripted:  # one instance for all models: one script, one call count
                shared_scripted.append(ScriptedProvider(options.scripted, options.clock))
            return shared_scripted[0]
        if model.provider == "scripted":
            from flowctl.interpreter.providers.scripted import ScriptedProvider, load_fixture

            if not model.fixture:
                raise ProviderError(f"model {model.name!r} uses provider 'scripted' but names no `fixture:`")
            return ScriptedProvider(load_fixture(Path(model.span.file).parent / model.fixture), options.clock)
        if model.provider == "openai":
            from flowctl.interpreter.providers.openai_provider import OpenAIProvider

            return OpenAIProvider(model, options.env)
        return _entry_point_provider(model)

    return factory


def _expand_models(graph: ir.Graph, env: Mapping[str, str]) -> ir.Graph:
    """`${VAR}` in each model's `model` expanded (child files too); a model whose variable is unset keeps it, and the
    provider factory refuses that model when a step uses it (a run that never does is not stopped by it)."""

    def settle(model: ir.ModelDef) -> ir.ModelDef:
        if "${" not in model.model:
            return model
        try:
            return dataclasses.replace(model, model=expand(model.model, env, KeyError))
        except KeyError:
            return model

    models = {name: settle(model) for name, model in graph.models.items()}
    children = {key: _expand_models(child, env) for key, child in graph.children.items()}
    return dataclasses.replace(graph, models=models, children=children)


def _entry_point_provider(model: ir.ModelDef) -> LLMProvider:
    """Third-party providers register under the `flowctl.providers` entry-point group."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="flowctl.providers"):
        if entry.name == model.provider:
            return entry.load()(model)
    raise ProviderError(f"model {model.name!r}: unknown provider {model.provider!r} (built in: openai, scripted)")


class _CompositeToolPool:
    """Servers the fixture scripts answer from the fixture; every other server is a real MCP connection."""

    def __init__(self, scripted: Any, real: ToolPool) -> None:
        self.scripted = scripted
        self.real = real
        self.names = scripted.scripted_servers() if scripted is not None else set()

    def _pool(self, server: ir.ServerDef) -> ToolPool:
        return self.scripted if server.name in self.names else self.real

    async def list_tools(self, server: ir.ServerDef) -> list[Any]:
        return await self._pool(server).list_tools(server)

    async def call_tool(self, server: ir.ServerDef, tool: str, arguments: dict[str, Any]) -> ToolResult:
        return await self._pool(server).call_tool(server, tool, arguments)

    async def read_resource(self, server: ir.ServerDef, uri: str) -> list[dict[str, Any]]:
        return await self._pool(server).read_resource(server, uri)

    async def get_prompt(self, server: ir.ServerDef, name: str, arguments: dict[str, str]) -> list[dict[str, Any]]:
        return await self._pool(server).get_prompt(server, name, arguments)

    def tools_generation(self, server: ir.ServerDef) -> int:
        generation = getattr(self._pool(server), "tools_generation", None)
        return generation(server) if generation is not None else 0

    async def instructions(self, server: ir.ServerDef) -> str | None:
        read = getattr(self._pool(server), "instructions", None)
        return await read(server) if read is not None else None

    async def aclose(self) -> None:
        await self.real.aclose()


def _uses_events(graph: ir.Graph) -> bool:
    """Whether a run of the graph may wait for events: triggers, `wait` steps, and MCP servers whose elicitation
    requests wait for `flowctl signal RUN elicitation` when no terminal answers them."""
    if any(server.elicitation_mode == "ask" for server in graph.servers.values()):
        return True
    pipelines = [graph.root, *graph.pipelines.values(), *(g.root for g in graph.children.values())]
    for pipeline in pipelines:
        if any(t.kind is ir.TriggerKind.EVENT for t in pipeline.triggers):
            return True
        if any(s.kind is ir.NodeKind.WAIT for s in pipeline.all_steps()):
            return True
    return any(_uses_events(child) for child in graph.children.values())


async def _poll_signals(runtime: Runtime, run_id: str) -> None:
    """External signals (`flowctl signal`) arrive through the store from another process, read in the order they
    committed.

    A resumed run polls from the first signal again, so that the events of the run come back in order (replayed waits
    take theirs again, see EventBus.consume); the event log lists each once (Runtime.announce).
    """
    position = 0
    notices = await _signal_notices(runtime, run_id)  # before the first read: no signal falls in between
    try:
        while True:
            for signal in runtime.recorder.signals(run_id, position):
                position = signal.position
                runtime.announce(run_id, signal.name, signal.data, "signal")
            if notices is not None:
                try:
                    await notices.wait(SIGNAL_NOTICE_FALLBACK)
                    continue
                except StoreError:  # its connection dropped (a server restart): poll instead
                    with anyio.CancelScope(shield=True):
                        await notices.aclose()
                    notices = None
            await runtime.clock.sleep(SIGNAL_POLL_INTERVAL)
    finally:
        if notices is not None:
            with anyio.CancelScope(shield=True):
                await notices.aclose()


async def _signal_notices(runtime: Runtime, run_id: str) -> SignalNotices | None:
    """The store's wake-ups for the run's signals (optional, see store.RunStore), or None: then the run polls."""
    listen = getattr(runtime.recorder.store, "signal_notices", None)
    if listen is None:
        return None
    try:
        notices: SignalNotices = await listen(run_id)
    except StoreError:  # no connection to be had for it now: polling works all the same
        return None
    return notices


async def _open_tools(stack: Any, options: RunOptions) -> ToolPool:
    if options.tool_pool is not None:
        real = options.tool_pool
    else:
        from flowctl.interpreter.mcp.mcp_pool import McpPool

        real = await stack.enter_async_context(McpPool(env=options.env, clock=options.clock))
    scripted = None
    if options.scripted is not None and getattr(options.scripted, "tools", None):
        from flowctl.interpreter.providers.scripted import ScriptedToolPool

        scripted = ScriptedToolPool(options.scripted, options.clock)
    return _CompositeToolPool(scripted, real) if scripted is not None else real


async def run_graph(
    graph: ir.Graph,
    inputs: Mapping[str, Any],
    store: RunStore,
    options: RunOptions,
    *,
    run_id: str | None = None,
    resuming: bool = False,
) -> RunOutcome:
    """Run (or resume) the root pipeline of `graph`. Never raises for a failed run: the outcome says how it ended.
    Raises StoreError when the store cannot keep the run (it stays resumable) and ClaimLost when another process
    took the run over."""
    from contextlib import AsyncExitStack

    if graph.root.parent_state:  # it has no caller whose state it could share
        raise InputError(
            f"pipeline {graph.root.name!r} reads and updates its caller's state keys "
            f"(parent_state: {', '.join(graph.root.parent_state)}): it runs only as a child pipeline, from a "
            "pipeline that declares them"
        )
    values = validate_inputs(graph.root.inputs, inputs, f"pipeline {graph.root.name!r}")
    graph = _expand_models(graph, options.env)
    run_id = run_id or new_run_id()
    clock = options.clock
    redactor = options.redactor if options.redactor is not None else redactor_for((graph,), options.env)
    recorder = Recorder(store, redactor, options.owner or this_process(), clock=clock)
    journal = Journal(recorder, resuming=resuming, force=options.force, cache=options.cache)
    previous = store.get_run(run_id) if resuming else None  # what a refused resume leaves as it was
    try:
        if resuming:
            recorder.resume_root(run_id)
        else:
            file = str(Path(graph.file).resolve())  # absolute: `flowctl resume` may run from another directory
            record = RunRecord(run_id, graph.root.name, file, RunStatus.RUNNING, clock.now(), inputs=values)
            record.source_digest = graph.source_digest
            record.scripted = options.scripted_file
            recorder.start_root(record)
        started = clock.monotonic()
        started_at = previous.started_at if previous is not None else clock.now()  # `run.started_at` stays
        options.reporter.run_started(run_id, graph.root.name, resuming)
        async with AsyncExitStack() as stack:
            if options.tune_process:
                stack.enter_context(tuned_for_runs())
            tools = await _open_tools(stack, options)
            runtime = Runtime(
                recorder,
                journal,
                options.provider_factory or _provider_factory(graph, options),
                tools,
                options.reporter,
                graph.concurrency,
                clock,
                caps=options.caps,
            )
            state = SharedState(graph.root.state, clock.now)
            ctx = RunContext(runtime, graph, graph.root, run_id, values, state, started_at)
            ctx.attempt = run_attempt(journal, run_id)
            if resuming:
                ctx.recorded = recorded_steps(runtime, run_id)
                ctx.finally_prefix = f"finally@{journal.epoch}/"
            ctx.state.listeners.append(recorder.state_listener(run_id))
            return await _run_root(ctx, runtime, started, previous)
    finally:
        recorder.close()


async def _run_root(ctx: RunContext, runtime: Runtime, started: float, previous: RunRecord | None) -> RunOutcome:
    engine = Engine(HANDLERS)
    outputs: dict[str, Any] | None = None
    error: FlowctlError | None = None
    status = RunStatus.SUCCEEDED
    try:
        if _uses_events(ctx.graph):
            async with task_group() as tg:
                tg.start_soon(_poll_signals, runtime, ctx.run_id)
                try:
                    outputs = await engine.run_pipeline(ctx)
                finally:
                    tg.cancel_scope.cancel()
        else:  # no task group around the run when nothing runs beside it (see Engine.run_pipeline)
            outputs = await engine.run_pipeline(ctx)
    except FlowctlError as exc:
        error, status = exc, RunStatus.FAILED
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            _finish(ctx, runtime, RunStatus.CANCELLED, None, None)
            await runtime.aclose()
        raise
    except StoreError:  # the store cannot record how the run ended: it stays `running`, resumable once fixed
        raise
    except ClaimLost:  # another process runs it now: stop without a word to the store
        raise
    except Exception as exc:  # a bug: still leave the store saying how the run ended, then surface it
        with anyio.CancelScope(shield=True):
            _finish(ctx, runtime, RunStatus.FAILED, None, InternalError(f"internal error: {exc!r}"))
            await runtime.aclose()
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await runtime.aclose()
    if error is not None and previous is not None and refused(error):
        return _leave_as_it_was(ctx, runtime, previous, error)
    outcome = _finish(ctx, runtime, status, outputs, error)
    outcome.elapsed = runtime.clock.monotonic() - started
    runtime.reporter.run_finished(
        ctx.run_id,
        status.value,
        outcome.elapsed,
        outcome.input_tokens + outcome.output_tokens,
        str(error) if error else "",
    )
    return outcome


def _finish(
    ctx: RunContext, runtime: Runtime, status: RunStatus, outputs: dict[str, Any] | None, error: FlowctlError | None
) -> RunOutcome:
    totals = runtime.totals
    runtime.journal.write_kept()  # a resume that recorded no call of its own still counts as a start (run.attempt)
    runtime.recorder.run_finished(
        ctx.run_id,
        status,
        outputs=outputs,
        error=error.to_json() if error else None,
        input_tokens=totals.input_tokens,
        output_tokens=totals.output_tokens,
        cost=totals.cost,
    )
    events = [{"name": e.name, "data": e.data, "source": e.source} for e in runtime.bus.history]
    return RunOutcome(
        ctx.run_id,
        status,
        outputs,
        error,
        totals.input_tokens,
        totals.output_tokens,
        totals.cost,
        runtime.journal.executed,
        runtime.journal.replayed,
        runtime.journal.cached,
        state=dict(ctx.state.values),
        steps=dict(ctx.steps),
        events=events,
    )


def _leave_as_it_was(ctx: RunContext, runtime: Runtime, previous: RunRecord, error: FlowctlError) -> RunOutcome:
    """A refused resume (a recorded request changed) leaves the run as the earlier run left it, so that reverting the
    edit, or `--force`, can resume it as before: nothing queued is written, and the claim is given up. If work was
    committed before the refusal (a step interrupted by the kill was run again), the run record's outcome is put
    back as it was."""
    _name_the_edits(error, previous, ctx.graph)
    recorder = runtime.recorder
    if recorder.committed_any:
        recorder.restore_run(previous)
    recorder.abandon()
    return RunOutcome(ctx.run_id, RunStatus.FAILED, None, error)


def _name_the_edits(error: FlowctlError, previous: RunRecord, graph: ir.Graph) -> None:
    """Add to the refusal (and the steps it failed) which of the pipeline's files were edited since the run started,
    or that none was: the recorded request says only that something changed."""
    from flowctl.dsl.source_digest import describe_edits, edited_since

    note = describe_edits(edited_since(previous.source_digest, graph.sources))
    cause: BaseException | None = error
    while note and isinstance(cause, FlowctlError):
        cause.message = f"{cause.message}; {note}"
        cause.args = (cause.message,)
        cause = getattr(cause, "cause", None)


def load_resumable(store: RunStore, run_id: str) -> RunRecord:
    record = store.get_run(run_id)
    if record is None:
        raise InputError(f"no run {run_id!r} in the store (see `flowctl runs`)")
    if record.parent_id is not None:
        raise InputError(f"run {run_id!r} is a child run; resume its root run {record.run_id.split('/')[0]!r}")
    if record.status is RunStatus.SUCCEEDED:
        raise InputError(f"run {run_id!r} already succeeded; nothing to resume")
    liveness = store.liveness(run_id)
    if liveness.alive:
        raise RunBusy(run_id, liveness.owner or "?")  # checked again, atomically, when the run is claimed
    return record


def resume_inputs(record: RunRecord, env: Mapping[str, str]) -> dict[str, Any]:
    """The inputs the run started with: the store keeps secrets in them as placeholders naming their variables, and
    they are restored from `env`. Refused (InputError naming the variable) when one is unset or has changed."""
    from flowctl.interpreter.redact import SecretUnavailable, restore_inputs

    try:
        restored: dict[str, Any] = restore_inputs(record.inputs, record.input_secrets, env)
    except SecretUnavailable as exc:
        raise InputError(f"cannot resume run {record.run_id!r}: {exc}") from None
    return restored


__all__ = ["RunOptions", "RunOutcome", "Scope", "load_resumable", "resume_inputs", "run_graph"]
