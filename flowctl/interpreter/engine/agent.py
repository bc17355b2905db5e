"""Agents: one LLM conversation with the tools of the agent's MCP servers, run as a bounded tool loop.

Every LLM call and tool call goes through the journal (replayed on resume), the run's concurrency limiter and the
resource's circuit breaker. Tool results are data: they go back to the model as tool messages and are never
rendered as templates.

Tool names: the model sees a tool under its own name when that name is unique among the tools the agent is
offered, else as `server__tool`; names are made OpenAI-safe (`[A-Za-z0-9_-]`, at most 64 characters). An agent's
`tools:` allow-list (`tool` or `server.tool`) narrows what is offered; an entry that matches nothing is an error,
so a typo does not silently take a tool away.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from flowctl.dsl import ir
from flowctl.dsl.ir import AgentDef, ModelDef, ServerDef
from flowctl.interpreter.concurrency import task_group
from flowctl.interpreter.engine.agent_choice import chosen_agent, parameterised_agent
from flowctl.interpreter.engine.context import RunContext, Runtime, Scope
from flowctl.interpreter.engine.observe import answered_entry, saw_model_call, saw_tool_call
from flowctl.interpreter.engine.server_context import agent_instruction, resource_messages, server_prompt
from flowctl.interpreter.engine.server_requests import CallHooks
from flowctl.interpreter.engine.servers import list_agent_tools
from flowctl.interpreter.engine.tool_content import media_message, media_parts
from flowctl.interpreter.errors import (
    FlowctlError,
    MalformedResponse,
    MaxIterationsExceeded,
    OutputSchemaMismatch,
    ServerStartError,
    ToolCallError,
)
from flowctl.interpreter.meters import meter_usage
from flowctl.interpreter.persistence.journal import step_of
from flowctl.interpreter.persistence.store import Exchanged
from flowctl.interpreter.providers.llm import (
    CompletionRequest,
    CompletionResponse,
    Message,
    ToolCallRequest,
    ToolSpec,
    Usage,
    parse_structured_output,
)
from flowctl.interpreter.providers.streaming import TEXT_SINK
from flowctl.interpreter.tools import TOOL_HOOKS, ToolResult

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from flowctl.interpreter.engine.protocol import StepEngine

MAX_BAD_ARGUMENTS = 3  # malformed tool-argument JSON sent back to the model; one more fails the step
MAX_TOOL_NAME = 64  # OpenAI's limit for function names
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")


def run_agent_step(
    engine: StepEngine,  # the handler signature (the fallback of any step calls it too)
    ctx: RunContext,
    step: ir.Step,
    scope: Scope,
    path: str,
    *,
    agent_name: str | None = None,
    model_name: str | None = None,
) -> Awaitable[Any]:
    """Render the prompt and hand back the agent's conversation to await. Not a coroutine itself: one frame fewer
    for every agent step (a fan-out has thousands in flight)."""
    body = step.body
    assert isinstance(body, ir.AgentCall)
    context = ctx.template_context(scope)
    prompt = body.prompt.render(context)
    if agent_name is not None or (body.choose is None and body.arguments is None):
        agent = ctx.graph.agents[agent_name or body.agent]
    elif body.arguments is None:
        agent = chosen_agent(ctx.graph, body, context, path, step.span)
    else:  # a parameterised agent: its instruction reads its arguments too
        arguments = _agent_arguments(body.arguments, context)
        agent = parameterised_agent(ctx.graph, ctx.graph.agents[body.agent], arguments, path, step.span)
        context = {**context, **arguments}
    if body.server_prompt is not None:
        return _run_with_server_prompt(ctx, agent, body.server_prompt, scope, path, model_name, context)
    return run_agent(ctx, agent, prompt, scope, path, model_name=model_name, context=context)


def _agent_arguments(arguments: tuple[tuple[str, ir.CompiledValue], ...], context: dict[str, Any]) -> dict[str, Any]:
    """A parameterised agent's arguments, evaluated. A function of its own: a comprehension over `context` in
    `run_agent_step` would make `context` a cell there, allocated for every agent step."""
    return {name: value.evaluate(context) for name, value in arguments}


async def _run_with_server_prompt(
    ctx: RunContext,
    agent: AgentDef,
    prompt: ir.ServerPrompt,
    scope: Scope,
    path: str,
    model_name: str | None,
    context: dict[str, Any],
) -> Any:
    """An agent step whose prompt is a server's prompt: its messages open the conversation (journaled)."""
    messages = await server_prompt(ctx, prompt, context, _CallCounter(path).key)
    opening = [Message("assistant" if m["role"] == "assistant" else "user", m["text"]) for m in messages]
    return await run_agent(ctx, agent, "", scope, path, model_name=model_name, context=context, opening=opening)


@dataclass(frozen=True, slots=True)
class _Tool:
    exposed: str  # the unambiguous name the model sees
    server: ServerDef
    name: str  # the server's own name for it
    spec: ToolSpec


class _CallCounter:
    """Numbers the side effects of one step attempt, so journal keys are stable across resumes."""

    __slots__ = ("n", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.n = 0

    def key(self, what: str) -> str:
        key = f"{self.path}/{what}#{self.n}"
        self.n += 1
        return key


# --- the tools an agent is offered -------------------------------------------------------------------------------


def allows(agent: AgentDef, server: str, tool: str) -> bool:
    """Whether the agent's `tools:` allow-list (if any) names this tool, bare or as `server.tool`."""
    return agent.tools is None or tool in agent.tools or f"{server}.{tool}" in agent.tools


def unmatched_allow_list(agent: AgentDef, offered: list[tuple[str, str]]) -> list[str]:
    """Allow-list entries that name none of the (server, tool) pairs offered."""
    names = {tool for _, tool in offered} | {f"{server}.{tool}" for server, tool in offered}
    return [entry for entry in agent.tools or () if entry not in names]


def name_tools(found: list[tuple[ServerDef, ToolSpec]]) -> dict[str, _Tool]:
    """Give each tool the name the model sees: bare when unique, else `server__tool`; OpenAI-safe and distinct."""
    counts: dict[str, int] = {}
    for _, spec in found:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    tools: dict[str, _Tool] = {}
    for server, spec in found:
        wanted = spec.name if counts[spec.name] == 1 else f"{server.name}__{spec.name}"
        exposed = _safe_name(wanted, tools)
        tools[exposed] = _Tool(exposed, server, spec.name, ToolSpec(exposed, spec.description, spec.input_schema))
    return tools


def _safe_name(wanted: str, taken: dict[str, Any]) -> str:
    name = _TOOL_NAME.sub("_", wanted) or "tool"
    if len(name) > MAX_TOOL_NAME:
        name = name[: MAX_TOOL_NAME - 9] + "_" + hashlib.sha256(wanted.encode()).hexdigest()[:8]
    base, n = name, 2
    while name in taken:  # two names that only differ in characters OpenAI does not allow
        suffix = f"_{n}"
        name, n = base[: MAX_TOOL_NAME - len(suffix)] + suffix, n + 1
    return name


async def _agent_tools(ctx: RunContext, agent: AgentDef, path: str) -> dict[str, _Tool]:
    """The agent's servers' tools (the servers start concurrently, each once per run; an optional one that cannot
    start is left out with a warning), allow-listed and named."""
    listings, left_out = await list_agent_tools(ctx, agent, path)
    found = [(ctx.graph.servers[name], spec) for name in dict.fromkeys(agent.servers) for spec in listings[name]]
    missing = unmatched_allow_list(agent, [(server.name, spec.name) for server, spec in found])
    if missing and not left_out:  # with a server left out, its allow-listed tools are missing by design
        offered = ", ".join(f"{server.name}.{spec.name}" for server, spec in found) or "none"
        raise ToolCallError(
            f"agent {agent.name!r}: `tools:` names {', '.join(map(repr, missing))}, which none of its servers "
            f"({', '.join(agent.servers)}) offers; offered: {offered}",
            span=agent.span,
        )
    return name_tools([(server, spec) for server, spec in found if allows(agent, server.name, spec.name)])


def _tools_generation(ctx: RunContext, agent: AgentDef) -> int:
    """How often the agent's servers said their tools changed (0 for a pool that cannot tell)."""
    generation = getattr(ctx.runtime.tools, "tools_generation", None)
    if generation is None:
        return 0
    return sum(generation(ctx.graph.servers[name]) for name in agent.servers) + 1


async def _server_instructions(ctx: RunContext, agent: AgentDef) -> str:
    """The `instructions` of the agent's servers that have `include_instructions: true`, for its system message."""
    read = getattr(ctx.runtime.tools, "instructions", None)
    texts = []
    for name in dict.fromkeys(agent.servers):
        server = ctx.graph.servers[name]
        if not server.include_instructions or read is None:
            continue
        try:
            text = await read(server)
        except ServerStartError:
            if server.optional:  # left out of this step with a warning already (engine/servers.py)
                continue
            raise
        if text:
            texts.append(f"\n\nInstructions of the MCP server {name!r}:\n{text}")
    return "".join(texts)


# --- journaled side effects ----------------------------------------------------------------------------------------


def _replay_model_call(
    ctx: RunContext, model: ModelDef, request: CompletionRequest, counter: _CallCounter
) -> tuple[str, str, CompletionResponse | None]:
    """The first half of one journaled LLM call: its key and request digest, and the recorded (or cached) response
    if there is one; None means the provider is to be asked, and `_record_model_call` follows."""
    journal = ctx.runtime.journal
    key = counter.key("llm")
    digest = request.digest()
    recorded = journal.replay(ctx.run_id, key, digest, cacheable=True)
    if recorded is None:
        return key, digest, None
    response = CompletionResponse.from_json(recorded)
    if journal.count_replayed(ctx.run_id, key):
        _account(ctx, model, response.usage)
    saw_model_call(ctx, request.step, key, model, request, response, None, ctx.runtime.clock.now(), 0.0, replayed=True)
    return key, digest, response


async def _complete_guarded(ctx: RunContext, model: ModelDef, request: CompletionRequest) -> CompletionResponse:
    """Ask the provider under the run's limiter and the model's circuit breaker (if it has one)."""
    runtime = ctx.runtime
    breaker = runtime.breakers.get(f"model:{model.name}", model.circuit_breaker) if model.circuit_breaker else None
    _tell_if_held_back(ctx, request.step)
    ask = partial(_ask, runtime, model, request)  # not a lambda: no cells made on every call
    async with runtime.limiter:
        if model.concurrency is None:
            return await runtime.breakers.guard(breaker, ask)
        async with runtime.caps.slot(f"model:{model.name}", model.concurrency):
            return await runtime.breakers.guard(breaker, ask)


def _ask(runtime: Runtime, model: ModelDef, request: CompletionRequest) -> Awaitable[CompletionResponse]:
    return runtime.provider(model).complete(request)


def _tell_if_held_back(ctx: RunContext, path: str) -> None:
    limiter = ctx.runtime.limiter
    if limiter.borrowed >= limiter.total:
        ctx.runtime.reporter.held_back(ctx.run_id, path, limiter.waiting + 1, limiter.total)


def _record_model_call(
    ctx: RunContext, model: ModelDef, key: str, digest: str, response: CompletionResponse, entry: Exchanged | None
) -> None:
    """The second half: the answer journaled (with its transcript `entry` when the call has one to keep in its row)
    and its usage counted (the caller awaits the recorder's `durable()` before using the answer)."""
    ctx.runtime.journal.record(ctx.run_id, key, digest, response.journal_text(), cacheable=True, transcript=entry)
    _account(ctx, model, response.usage)


def _account(ctx: RunContext, model: ModelDef, usage: Usage) -> None:
    ctx.runtime.totals.add(usage, model)
    meter_usage(usage)


async def call_tool(
    ctx: RunContext,
    server: ServerDef,
    tool: str,
    arguments: dict[str, Any],
    counter: _CallCounter,
    *,
    journal_errors: bool = True,
    model: ModelDef | None = None,
    agent: str = "",
) -> ToolResult:
    """One journaled MCP tool call (agents and `tool:` steps share it, and the run's one session per server).

    In an agent's tool loop an error result is data the model has seen, so it is journaled and replayed like any
    result. A `tool:` step fails on an error result, so there (`journal_errors=False`) it is not recorded: a
    resumed run calls the tool again instead of replaying the failure.
    """
    runtime = ctx.runtime
    breaker = runtime.breakers.get(f"server:{server.name}", server.circuit_breaker)
    request = json.dumps({"server": server.name, "tool": tool, "arguments": arguments}, sort_keys=True, default=str)
    digest = hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()  # never the arguments themselves
    key = counter.key(f"tool:{server.name}.{tool}")
    journal = runtime.journal
    recorded = journal.replay(ctx.run_id, key, digest)
    path = step_of(key)  # a tool call of an agent's turn is keyed under it: `plan/turn#1/tool:…`
    if recorded is not None and (journal_errors or not recorded.get("is_error")):
        replayed = ToolResult.from_json(recorded)
        saw_tool_call(ctx, path, key, server, tool, arguments, replayed, None, runtime.clock.now(), 0.0, replayed=True)
        return replayed
    started, began = runtime.clock.now(), runtime.clock.monotonic()
    _tell_if_held_back(ctx, path)
    hooks = TOOL_HOOKS.set(CallHooks(ctx, path, _CallCounter(key), model, agent))
    call = partial(runtime.tools.call_tool, server, tool, arguments)  # not a lambda: no cells made on every call
    try:
        async with runtime.limiter:
            if server.concurrency is None:
                result = await runtime.breakers.guard(breaker, call)
            else:
                async with runtime.caps.slot(f"server:{server.name}", server.concurrency):
                    result = await runtime.breakers.guard(breaker, call)
    except FlowctlError as exc:
        saw_tool_call(ctx, path, key, server, tool, arguments, None, exc, started, runtime.clock.monotonic() - began)
        raise
    finally:
        TOOL_HOOKS.reset(hooks)
    saw_tool_call(ctx, path, key, server, tool, arguments, result, None, started, runtime.clock.monotonic() - began)
    if journal_errors or not result.is_error:
        journal.record(ctx.run_id, key, digest, result.to_json())
        await runtime.recorder.durable(alone=not runtime.limiter.borrowed)
    else:
        journal.executed_unrecorded()
    return result


def _check_structured(response: CompletionResponse, schema: dict[str, Any], model: str) -> None:
    try:
        parse_structured(response.content, schema, model)
    except OutputSchemaMismatch as exc:
        exc.usage = response.usage  # type: ignore[attr-defined]  # as the openai provider does
        raise


def parse_structured(text: str | None, schema: dict[str, Any], model: str) -> Any:
    """Parse and validate a structured answer; a mismatch is retryable (the model may do better next time)."""
    return parse_structured_output(text, schema, f"model {model!r}")


# --- the loop ----------------------------------------------------------------------------------------------------


async def run_agent(
    ctx: RunContext,
    agent: AgentDef,
    prompt: str,
    scope: Scope,
    path: str,
    *,
    model_name: str | None = None,
    extra_instruction: str = "",
    output_schema: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    opening: list[Message] | None = None,
) -> Any:
    """Run one agent conversation to its final answer and return it (parsed when the agent has an output schema).
    `context`: the scope's template context, when the caller already built it (for the prompt)."""
    model = ctx.graph.models[model_name or agent.model]
    context = ctx.template_context(scope) if context is None else context
    counter = _CallCounter(path)
    # the opening: a server prompt's messages, or the prompt
    asked = opening if opening is not None else (Message("user", prompt),)
    if agent.instruction_prompt is None and not agent.resources:
        instruction = agent.instruction.render(context) + extra_instruction
        messages: list[Message] = [Message("system", instruction), *asked]
    else:  # from the agent's servers (engine/server_context.py): journaled reads
        instruction = await agent_instruction(ctx, agent, context, counter.key) + extra_instruction
        given = await resource_messages(ctx, agent, context, counter.key)
        messages = [Message("system", instruction), *given, *asked]
    context = None  # not needed past here, and a fan-out of thousands keeps this frame alive during each call
    # an explicit {} asks for plain text even from an agent that declares a schema (the router parses leniently)
    schema = (output_schema or None) if output_schema is not None else agent.output_schema
    tools = await _agent_tools(ctx, agent, path) if agent.servers else {}
    if agent.servers and (given_instructions := await _server_instructions(ctx, agent)):
        messages[0] = Message("system", f"{messages[0].content}{given_instructions}")
    generation = _tools_generation(ctx, agent) if agent.servers else 0  # 0: nothing to watch
    called: list[str] = []  # server.tool of each tool call, for the max_iterations message
    bad: _BadArguments | None = None
    specs = tuple(t.spec for t in tools.values()) if tools else ()  # the same every turn (unless a server's change)
    for _ in range(agent.max_iterations):
        if generation and generation != (now := _tools_generation(ctx, agent)):  # notifications/tools/list_changed
            generation, tools = now, await _agent_tools(ctx, agent, path)
            specs = tuple(t.spec for t in tools.values())
        # positional: keyword arguments cost a dataclass __init__ ~0.2 µs more per call
        # (model, messages, tools, output_schema, params, timeout, agent, step)
        request = CompletionRequest(
            model.model, tuple(messages), specs, schema, model.params, model.timeout, agent.name, path
        )
        # One journaled LLM call, awaited in this frame rather than in a helper coroutine: a frame costs every call
        # ~0.5 µs and ~500 B, which adds up in a fan-out of thousands.
        key, digest, response = _replay_model_call(ctx, model, request, counter)
        if response is None:
            limiter, clock = ctx.runtime.limiter, ctx.runtime.clock
            started, began = clock.now(), clock.monotonic()
            sink = (
                TEXT_SINK.set(partial(ctx.runtime.reporter.model_text, ctx.run_id, path))
                if ctx.runtime.stream
                else None
            )
            try:
                if model.circuit_breaker is None and model.concurrency is None and limiter.try_acquire():
                    try:
                        response = await ctx.runtime.provider(model).complete(request)
                    finally:
                        limiter.release()
                else:
                    response = await _complete_guarded(ctx, model, request)
                elapsed = clock.monotonic() - began
                if schema is not None and not response.tool_calls:
                    _check_structured(response, schema, model.model)  # a mismatch is raised, never journaled
                entry = answered_entry(ctx, path, key, model, request, response, started, elapsed)
                _record_model_call(ctx, model, key, digest, response, entry)
            except OutputSchemaMismatch as exc:
                usage = getattr(exc, "usage", None)  # a rejected answer was paid for, though it is not kept
                if isinstance(usage, Usage):
                    _account(ctx, model, usage)
                answer = response if response is not None else getattr(exc, "response", None)  # the rejected answer
                saw_model_call(ctx, path, key, model, request, answer, exc, started, clock.monotonic() - began)
                raise
            except FlowctlError as exc:
                saw_model_call(ctx, path, key, model, request, None, exc, started, clock.monotonic() - began)
                raise
            finally:
                if sink is not None:
                    TEXT_SINK.reset(sink)
            if entry is None or ctx.runtime.hears_calls:  # else its entry went with the answer, and nobody listens
                kept = entry is not None
                saw_model_call(ctx, path, key, model, request, response, None, started, elapsed, transcribed=kept)
            # durable before its answer is used (or its step finishes); `alone`: no other call of the run in flight
            await ctx.runtime.recorder.durable(alone=not limiter.borrowed)
        if not response.tool_calls:
            return parse_structured(response.content, schema, model.model) if schema else response.content
        messages.append(Message("assistant", response.content, response.tool_calls))
        bad = bad or _BadArguments(agent, model)
        messages.extend(await _run_tool_calls(ctx, tools, response.tool_calls, counter, called, bad, model, agent.name))
    last = ", ".join(called[-3:]) or "none"
    raise MaxIterationsExceeded(
        f"agent {agent.name!r} reached max_iterations={agent.max_iterations} without a "
        f"final answer; last tools called: {last}",
        span=agent.span,
    )


class _BadArguments:
    """Counts tool calls whose arguments are not a JSON object; past MAX_BAD_ARGUMENTS the step fails for good."""

    def __init__(self, agent: AgentDef, model: ModelDef) -> None:
        self.agent = agent
        self.model = model
        self.count = 0

    def parse(self, call: ToolCallRequest) -> dict[str, Any] | str:
        """The arguments, or the error text the model gets back."""
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError as exc:
            problem = f"invalid JSON ({exc})"
        except RecursionError:
            problem = "invalid JSON (nested too deeply)"
        else:
            if isinstance(arguments, dict):
                return arguments
            problem = f"a JSON {type(arguments).__name__}, not an object"
        self.count += 1
        if self.count > MAX_BAD_ARGUMENTS:
            error = MalformedResponse(
                f"agent {self.agent.name!r}: model {self.model.model!r} sent unusable tool arguments "
                f"{self.count} times (the limit is {MAX_BAD_ARGUMENTS}); last, for {call.name!r}: {problem}",
                span=self.agent.span,
            )
            error.retryable = False  # the journal would replay the same answers: retrying cannot help
            raise error
        return f"error: the arguments for {call.name} are {problem}; call it again with a JSON object"


async def _run_tool_calls(
    ctx: RunContext,
    tools: dict[str, _Tool],
    calls: tuple[ToolCallRequest, ...],
    counter: _CallCounter,
    called: list[str],
    bad: _BadArguments,
    model: ModelDef | None = None,
    agent: str = "",
) -> list[Message]:
    """Run a turn's tool calls concurrently; the replies keep the model's order, and the images and audio they
    returned follow in one user message (engine/tool_content.py)."""
    replies: list[Message | None] = [None] * len(calls)
    media: list[tuple[str, str, list[dict[str, Any]]] | None] = [None] * len(calls)
    keys = [counter.key("turn") for _ in calls]  # reserve indices so concurrent calls keep stable journal keys
    parsed = [bad.parse(call) if call.name in tools else None for call in calls]  # fails before any tool runs

    async def one(i: int, call: ToolCallRequest) -> None:
        tool, arguments = tools.get(call.name), parsed[i]
        if tool is None:
            text = f"error: unknown tool {call.name!r}; available: {', '.join(tools) or 'none'}"
        elif isinstance(arguments, str):
            text = arguments
        else:
            assert arguments is not None
            called.append(f"{tool.server.name}.{tool.name}")
            result = await call_tool(
                ctx, tool.server, tool.name, arguments, _CallCounter(keys[i]), model=model, agent=agent
            )
            text = _reply_text(result)
            found = media_parts(result) if result.parts else None
            if found:
                media[i] = (call.id, call.name, found)
        replies[i] = Message("tool", text, tool_call_id=call.id)

    async with task_group() as tg:
        for i, call in enumerate(calls):
            tg.start_soon(one, i, call)
    attached = media_message([m for m in media if m is not None])
    return [r for r in replies if r is not None] + ([attached] if attached is not None else [])


def _reply_text(result: ToolResult) -> str:
    """What the model reads: the tool's text (its structured content when it sent no text), verbatim."""
    text = result.text
    if not text and result.value not in (None, ""):
        text = json.dumps(result.value, ensure_ascii=False, default=str)
    return ("error: " + text) if result.is_error else text
