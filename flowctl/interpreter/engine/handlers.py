"""One handler per node kind. A handler runs one attempt of one step and returns its output; retries, timeouts,
fallbacks, `set`, `emit` and journaling of the step record are the engine's business, not the handler's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flowctl.dsl import ir
from flowctl.interpreter.concurrency import task_group
from flowctl.interpreter.engine.agent import _CallCounter, call_tool, run_agent, run_agent_step
from flowctl.interpreter.engine.branches import join_output, run_concurrent
from flowctl.interpreter.engine.context import RunContext, Scope, StepResult, recorded_steps
from flowctl.interpreter.engine.engine import emit_event
from flowctl.interpreter.engine.events import Event
from flowctl.interpreter.engine.observe import saw_wait
from flowctl.interpreter.engine.protocol import Handler, Outcome, StepEngine
from flowctl.interpreter.engine.server_context import fill_uri, read_resource
from flowctl.interpreter.engine.state import ChildState, SharedState, UpdateBuffer
from flowctl.interpreter.errors import RouteError, ToolCallError, UnknownPipelineChoice, WaitTimeout, error_json
from flowctl.interpreter.inputs import validate_inputs
from flowctl.interpreter.meters import STEP_METERS, UsageMeter
from flowctl.interpreter.persistence.store import RunStatus


async def handle_tool(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    body = step.body
    assert isinstance(body, ir.ToolCall)
    arguments = engine.evaluate_value(body.args, ctx, scope)
    server = ctx.graph.servers[body.server]
    result = await call_tool(ctx, server, body.tool, arguments, _CallCounter(path), journal_errors=False)
    if result.is_error:
        raise ToolCallError(f"tool {body.server}.{body.tool} reported an error: {result.text}", span=step.span)
    return result.value


async def handle_resource(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    """Read a server resource (journaled): its text, or its contents (MCP JSON) when not all of them are text."""
    body = step.body
    assert isinstance(body, ir.ResourceRead)
    arguments = engine.evaluate_value(body.arguments, ctx, scope)
    uri = fill_uri(body.uri, arguments)
    contents = await read_resource(ctx, body.server, uri, _CallCounter(path).key)
    if all(isinstance(c.get("text"), str) for c in contents):
        return "\n".join(c["text"] for c in contents)
    return contents


async def handle_parallel(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    body = step.body
    assert isinstance(body, ir.ParallelGroup)
    buffers = [UpdateBuffer() for _ in body.branches]

    async def branch(i: int) -> Any:
        result = await engine.run_step(ctx, body.branches[i], scope.child(sink=buffers[i]))
        return result.output

    outcomes = await run_concurrent(len(body.branches), branch, body.join, body.max_concurrency)
    engine.commit_buffers(ctx, scope, buffers, outcomes)
    return join_output(body.join, outcomes, [b.id for b in body.branches])


def _resolve_child(ctx: RunContext, ref: str, is_file: bool) -> tuple[ir.Graph, ir.PipelineDef]:
    if is_file:
        graph = ctx.graph.children[ref]
        return graph, graph.root
    return ctx.graph, ctx.graph.pipelines[ref]


async def _dispatch(
    engine: StepEngine, ctx: RunContext, step: ir.Step, dispatch: ir.Dispatch, scope: Scope, path: str
) -> ir.ChildRef | dict[str, Any]:
    """The child a name chooses, or the output that reports an unknown name. The name is journaled like a side
    effect: a resumed run takes the same decision even when the state it was computed from has moved on."""

    async def decide() -> dict[str, Any]:
        return {"name": engine.evaluate_value(dispatch.name, ctx, scope)}

    name = (await ctx.runtime.journal.call(ctx.run_id, f"{path}/dispatch#0", "dispatch", decide))["name"]
    child = dispatch.choices.get(name) if isinstance(name, str) else None
    if child is not None:
        return child
    if dispatch.on_unknown is ir.OnUnknown.FAIL:
        raise UnknownPipelineChoice(
            f"step {path!r} chose pipeline {name!r}, which is not one of its choices: {', '.join(dispatch.choices)}",
            span=step.span,
        )
    if dispatch.on_unknown is ir.OnUnknown.DEFAULT and dispatch.default is not None:
        return dispatch.default
    return {"error": f"Unknown pattern: {name}"}


async def handle_pipeline(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    """Run a child pipeline under its own id `<run>/<step>` (`<run>/<step>[i]` for a fan-out item)."""
    body = step.body
    assert isinstance(body, ir.ChildPipeline)
    ref, is_file = body.ref, body.is_file
    if body.dispatch is not None:
        chosen = await _dispatch(engine, ctx, step, body.dispatch, scope, path)
        if isinstance(chosen, dict):
            return chosen  # an unknown name, reported
        ref, is_file = chosen.ref, chosen.is_file
    graph, pipeline = _resolve_child(ctx, ref, is_file)
    inputs = validate_inputs(
        pipeline.inputs,
        engine.evaluate_value(body.inputs, ctx, scope),
        f"child pipeline {pipeline.name!r} (step {path!r})",
    )
    run_id = f"{ctx.run_id}/{path}"
    runtime = ctx.runtime
    recorder, now = runtime.recorder, runtime.clock.now
    state = SharedState(pipeline.state, now)
    if pipeline.parent_state:  # reuse: the child reads and updates the keys of the caller's state it declares
        state = ChildState(pipeline.state, now, ctx.state, pipeline.parent_state, f"{path}/")
    runs_before = runtime.child_starts[run_id]  # earlier attempts of this step in this process
    runtime.child_starts[run_id] += 1
    previous = recorder.get_run(run_id) if ctx.recorded is not None and not runs_before else None
    # `run.started_at`: when the child first started, in this process or (resuming) in the one that started it
    started_at = runtime.child_started_at.setdefault(run_id, previous.started_at if previous is not None else now())
    child = RunContext(runtime, graph, pipeline, run_id, inputs, state, started_at, ctx.run_id, attempt=ctx.attempt)
    if previous is None and not runs_before:
        file = str(Path(graph.file).resolve())
        recorder.child_started(run_id, ctx.run_id, pipeline.name, file, child.started_at, inputs, graph.source_digest)
    else:
        recorder.child_reopened(run_id)
        if previous is not None:  # resuming: see RunContext.recorded
            child.recorded = recorded_steps(runtime, run_id)
        if previous is None or previous.status is not RunStatus.SUCCEEDED:  # its body runs again, so its cleanup too
            child.finally_prefix = f"finally@{runtime.journal.epoch}.{runs_before}/"
    child.state.listeners.append(recorder.state_listener(run_id))
    meter = UsageMeter()  # the child run's own token totals
    token = STEP_METERS.set((*STEP_METERS.get(), meter))
    status, outputs = RunStatus.CANCELLED, None
    error: dict[str, Any] | None = {"code": "cancelled", "message": "cancelled"}
    try:
        outputs = await engine.run_pipeline(child)
        status, error = RunStatus.SUCCEEDED, None
        return outputs
    except Exception as exc:
        status, error = RunStatus.FAILED, error_json(exc)
        raise
    finally:
        if isinstance(state, ChildState):
            state.detach()
        STEP_METERS.reset(token)
        tokens = {"input_tokens": meter.input_tokens, "output_tokens": meter.output_tokens}
        recorder.run_finished(run_id, status, outputs=outputs, error=error, durable=False, **tokens)


# --- adaptive routing -------------------------------------------------------------------------------------------


def parse_choices(text: str | None) -> list[str]:
    """Read an LLM's choice leniently: {"choices": [...]}, {"choice": "x"}, ["x"], or plain "x, y"."""
    text = (text or "").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(value, dict):
        value = value.get("choices", value.get("choice", []))
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,;]+", value.strip("` \n")) if part]
    return [str(v).strip() for v in value] if isinstance(value, list) else []


def route_constraint(route: ir.Route) -> str:
    """What the routing agent is told of its options (after its system message, or after the prompt)."""
    names = ", ".join(route.branches)
    how = "one or more" if route.multiple else "exactly one"
    return f'\n\nChoose {how} of these options: {names}. Answer only with JSON: {{"choices": ["<option>", ...]}}'


async def _llm_choices(ctx: RunContext, route: ir.Route, scope: Scope, path: str) -> list[str]:
    assert route.agent is not None and route.prompt is not None
    constraint = route_constraint(route) if route.constraint != "none" else ""
    prompt = route.prompt.render(ctx.template_context(scope))
    if route.constraint == "user":
        prompt += constraint
    output = await run_agent(
        ctx,
        ctx.graph.agents[route.agent],
        prompt,
        scope,
        f"{path}/router",
        extra_instruction=constraint if route.constraint == "system" else "",
        output_schema={},
    )
    return parse_choices(json.dumps(output) if not isinstance(output, str) else output)


async def _choose(engine: StepEngine, ctx: RunContext, route: ir.Route, scope: Scope, path: str) -> tuple[list, str]:
    for rule in route.rules:
        if engine.evaluate_value(rule.when, ctx, scope):
            return list(rule.choose), "rule"
    if route.agent is not None:
        chosen = await _llm_choices(ctx, route, scope, path)
        if chosen:
            return chosen, "llm"
    return list(route.default), "default"


async def handle_route(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    """Rules, then the LLM, then `default`. `multiple` bounds only the LLM: a rule or default naming several
    branches runs them all. Branches run concurrently, their state updates applied in declaration order; with
    `sequential`, one after another in the order chosen, each seeing the state the previous ones left."""
    route = step.body
    assert isinstance(route, ir.Route)
    chosen, source = await _choose(engine, ctx, route, scope, path)
    known = [c for c in dict.fromkeys(chosen) if c in route.branches]
    unknown = [c for c in dict.fromkeys(chosen) if c not in route.branches]
    errors = [{"error": f"Unknown pattern: {c}"} for c in unknown]
    if unknown and route.on_unknown is ir.OnUnknown.FAIL:
        raise RouteError(
            f"route {path!r} chose unknown option(s) {', '.join(map(repr, unknown))}; "
            f"options: {', '.join(route.branches)}",
            span=step.span,
        )
    if unknown and route.on_unknown is ir.OnUnknown.DEFAULT and not known:
        known, source = [c for c in route.default if c in route.branches], "default"
    if source == "llm" and not route.multiple:
        known = known[:1]
    results: dict[str, Any] = {}

    async def run_branch(name: str, branch_scope: Scope) -> None:
        steps = route.branches[name]
        await engine.run_list(ctx, steps, branch_scope)
        results[name] = ctx.steps[steps[-1].id]["output"] if steps else None

    if route.sequential:
        for name in known:
            await run_branch(name, scope)
    else:
        names = [name for name in route.branches if name in known]  # declaration order
        buffers = {name: UpdateBuffer() for name in names} if len(names) > 1 else {}
        async with task_group() as tg:
            for name in known:
                buffer = buffers.get(name)
                tg.start_soon(run_branch, name, scope.child(sink=buffer) if buffer is not None else scope)
        engine.commit_buffers(ctx, scope, list(buffers.values()), [Outcome(True)] * len(buffers))
    if route.unknown_in_results:  # as the seed does: each name chosen, in the order chosen, with its result
        entries = {}
        for name in dict.fromkeys([*chosen, *known]):
            if name in known:
                entries[name] = results.get(name)
            elif name in unknown:
                entries[name] = {"error": f"Unknown pattern: {name}"}
    else:
        entries = {name: results.get(name) for name in known}
    return {"chosen": known, "source": source, "results": entries, "errors": errors}


# --- loops, events, state ---------------------------------------------------------------------------------------


async def handle_loop(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    """Evaluator–optimizer: run the body until `until` holds or `max_iterations` is reached."""
    loop = step.body
    assert isinstance(loop, ir.Loop)
    previous: dict[str, Any] | None = None
    outputs: dict[str, Any] = {}
    converged = False
    iteration = 0
    for iteration in range(1, loop.max_iterations + 1):
        body_scope = scope.child(
            prefix=f"{step.id}#{iteration}/",
            loop={"iteration": iteration, "index": iteration - 1, "previous": previous},
        )
        await engine.run_list(ctx, loop.steps, body_scope)
        outputs = {s.id: ctx.steps[s.id]["output"] for s in loop.steps}
        if loop.until is not None and engine.evaluate_value(loop.until, ctx, body_scope):
            converged = True
            break
        previous = outputs
    return {**outputs, "iterations": iteration, "converged": converged}


async def handle_wait(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    wait = step.body
    assert isinstance(wait, ir.Wait)
    context = ctx.template_context(scope)

    def matches(event: Event) -> bool:
        return wait.match is None or bool(wait.match.evaluate({**context, "event": event.as_context()}))

    executed = False

    async def execute() -> dict[str, Any]:
        nonlocal executed
        executed = True
        clock = ctx.runtime.clock
        started, began = clock.now(), clock.monotonic()
        ctx.runtime.reporter.waiting(ctx.run_id, path, wait.event)
        event = await ctx.runtime.bus.wait(wait.event, matches, wait.timeout)
        taken = None if event is None else {"name": event.name, "data": event.data, "source": event.source}
        saw_wait(ctx, path, f"{path}/wait#0", wait.event, taken, started, clock.monotonic() - began)
        if taken is None:
            raise WaitTimeout(
                f"step {path!r}: no {wait.event!r} event arrived within {wait.timeout:g}s", span=step.span
            )
        return taken

    # The event that released a wait is journaled like a side effect, so a resumed run does not wait again.
    recorded = await ctx.runtime.journal.call(ctx.run_id, f"{path}/wait#0", f"wait:{wait.event}", execute)
    if not executed:
        # Replayed on resume: the events come again (emits re-run, signals are polled from the start), so take the
        # one this wait took the first time; otherwise a later wait for the same event would take it a second time.
        ctx.runtime.bus.consume(wait.event, matches)
    return recorded["data"]


async def handle_emit(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    assert isinstance(step.body, ir.EmitSpec)
    return emit_event(ctx, step.body, scope, path, None)


async def handle_set(engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
    return None  # the engine applies `set:` for every kind; a set step has no other effect


HANDLERS: dict[ir.NodeKind, Handler] = {
    ir.NodeKind.AGENT: run_agent_step,  # a Handler itself (its keywords are for fallbacks): one frame less
    ir.NodeKind.TOOL: handle_tool,
    ir.NodeKind.RESOURCE: handle_resource,
    ir.NodeKind.PARALLEL: handle_parallel,
    ir.NodeKind.PIPELINE: handle_pipeline,
    ir.NodeKind.ROUTE: handle_route,
    ir.NodeKind.LOOP: handle_loop,
    ir.NodeKind.WAIT: handle_wait,
    ir.NodeKind.EMIT: handle_emit,
    ir.NodeKind.SET: handle_set,
}

__all__ = ["HANDLERS", "StepResult", "run_agent_step"]
