"""Agents: one LLM conversation with the tools of the agent's MCP servers, run as a bounded tool loop.

Every LLM call and tool call goes through the journal (replayed on resume), the run's concurrency limiter and the
resource's circuit breaker. Tool results are data: they go back to the model as tool messages and are never
rendered as templates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from flowctl.dsl.ir import AgentDef, ModelDef, ServerDef
from flowctl.interpreter.concurrency import task_group
from flowctl.interpreter.context import RunContext, Scope, meter_usage
from flowctl.interpreter.errors import MalformedResponse, MaxIterationsExceeded, OutputSchemaMismatch
from flowctl.interpreter.llm import CompletionRequest, CompletionResponse, Message, ToolCallRequest, ToolSpec, Usage
from flowctl.interpreter.tools import ToolResult

MAX_BAD_ARGUMENTS = 3  # malformed tool-argument JSON sent back to the model before we give up
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(slots=True)
class AgentOutcome:
    output: Any
    usage: Usage = Usage()
    tool_calls: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Tool:
    exposed: str  # the unambiguous name the model sees
    server: ServerDef
    name: str  # the server's own name for it
    spec: ToolSpec


class _CallCounter:
    """Numbers the side effects of one step attempt, so journal keys are stable across resumes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.n = 0

    def key(self, what: str) -> str:
        key = f"{self.path}/{what}#{self.n}"
        self.n += 1
        return key


async def _agent_tools(ctx: RunContext, agent: AgentDef) -> dict[str, _Tool]:
    """Tools of the agent's servers, named `tool` when unique across them and `server__tool` otherwise."""
    found: list[tuple[ServerDef, ToolSpec]] = []
    for name in agent.servers:
        server = ctx.graph.servers[name]
        for spec in await ctx.runtime.tools.list_tools(server):
            found.append((server, spec))
    counts: dict[str, int] = {}
    for _, spec in found:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    tools: dict[str, _Tool] = {}
    for server, spec in found:
        exposed = spec.name if counts[spec.name] == 1 else f"{server.name}__{spec.name}"
        exposed = _TOOL_NAME.sub("_", exposed)
        allowed = agent.tools is None or spec.name in agent.tools or f"{server.name}.{spec.name}" in agent.tools
        if allowed:
            tools[exposed] = _Tool(exposed, server, spec.name, ToolSpec(exposed, spec.description, spec.input_schema))
    return tools


async def call_model(
    ctx: RunContext, model: ModelDef, request: CompletionRequest, counter: _CallCounter
) -> CompletionResponse:
    runtime = ctx.runtime
    breaker = runtime.breakers.get(f"model:{model.name}", model.circuit_breaker)

    async def execute() -> dict[str, Any]:
        async with runtime.limiter:
            response = await runtime.breakers.guard(breaker, lambda: runtime.provider(model).complete(request))
        return response.to_json()

    result = await runtime.journal.call(ctx.run_id, counter.key("llm"), request.digest(), execute, cacheable=True)
    response = CompletionResponse.from_json(result)
    runtime.totals.add(response.usage, model)
    meter_usage(response.usage)
    return response


async def call_tool(
    ctx: RunContext, server: ServerDef, tool: str, arguments: dict[str, Any], counter: _CallCounter
) -> ToolResult:
    runtime = ctx.runtime
    breaker = runtime.breakers.get(f"server:{server.name}", server.circuit_breaker)
    digest = json.dumps({"server": server.name, "tool": tool, "arguments": arguments}, sort_keys=True, default=str)

    async def execute() -> dict[str, Any]:
        async with runtime.limiter:
            result = await runtime.breakers.guard(breaker, lambda: runtime.tools.call_tool(server, tool, arguments))
        return result.to_json()

    return ToolResult.from_json(
        await runtime.journal.call(ctx.run_id, counter.key(f"tool:{server.name}.{tool}"), digest, execute)
    )


def parse_structured(text: str | None, schema: dict[str, Any], model: str) -> Any:
    """Parse and validate a structured answer; a mismatch is retryable (the model may do better next time)."""
    try:
        value = json.loads(text or "")
    except json.JSONDecodeError as exc:
        raise OutputSchemaMismatch(f"model {model!r} did not answer with JSON: {exc}") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the answer"
        raise OutputSchemaMismatch(
            f"model {model!r} answer does not match the output schema at {where}: {error.message}"
        )
    return value


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
) -> AgentOutcome:
    """Run one agent conversation to its final answer."""
    model = ctx.graph.models[model_name or agent.model]
    instruction = agent.instruction.render(ctx.template_context(scope)) + extra_instruction
    # an explicit {} asks for plain text even from an agent that declares a schema (the router parses leniently)
    schema = (output_schema or None) if output_schema is not None else agent.output_schema
    tools = await _agent_tools(ctx, agent) if agent.servers else {}
    messages: list[Message] = [Message("system", instruction), Message("user", prompt)]
    counter = _CallCounter(path)
    outcome = AgentOutcome(None)
    bad_arguments = 0
    for _ in range(agent.max_iterations):
        request = CompletionRequest(
            model=model.model,
            messages=tuple(messages),
            tools=tuple(t.spec for t in tools.values()),
            output_schema=schema,
            params=model.params,
            timeout=model.timeout,
            agent=agent.name,
            step=path,
        )
        response = await call_model(ctx, model, request, counter)
        outcome.usage = outcome.usage + response.usage
        if not response.tool_calls:
            outcome.output = parse_structured(response.content, schema, model.model) if schema else response.content
            return outcome
        messages.append(Message("assistant", response.content, response.tool_calls))
        replies, malformed = await _run_tool_calls(ctx, tools, response.tool_calls, counter, outcome)
        bad_arguments += malformed
        if bad_arguments > MAX_BAD_ARGUMENTS:
            raise MalformedResponse(f"model {model.model!r} sent malformed tool arguments {bad_arguments} times")
        messages.extend(replies)
    last = ", ".join(outcome.tool_calls[-3:]) or "none"
    raise MaxIterationsExceeded(
        f"agent {agent.name!r} reached max_iterations={agent.max_iterations} without a "
        f"final answer; last tools called: {last}"
    )


async def _run_tool_calls(
    ctx: RunContext,
    tools: dict[str, _Tool],
    calls: tuple[ToolCallRequest, ...],
    counter: _CallCounter,
    outcome: AgentOutcome,
) -> tuple[list[Message], int]:
    """Run a turn's tool calls concurrently; replies keep the model's order. Returns (messages, malformed count)."""
    replies: list[Message | None] = [None] * len(calls)
    malformed = 0
    keys = [counter.key("turn") for _ in calls]  # reserve indices so concurrent calls keep stable journal keys

    async def one(i: int, call: ToolCallRequest) -> None:
        nonlocal malformed
        tool = tools.get(call.name)
        if tool is None:
            text = f"error: unknown tool {call.name!r}; available: {', '.join(tools) or 'none'}"
        else:
            try:
                arguments = json.loads(call.arguments or "{}")
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be a JSON object")
            except ValueError as exc:
                malformed += 1
                text = f"error: invalid JSON arguments for {call.name}: {exc}; send a JSON object"
            else:
                outcome.tool_calls.append(f"{tool.server.name}.{tool.name}")
                result = await call_tool(ctx, tool.server, tool.name, arguments, _CallCounter(keys[i]))
                text = ("error: " + result.text) if result.is_error else result.text
        replies[i] = Message("tool", text, tool_call_id=call.id, name=call.name)

    async with task_group() as tg:
        for i, call in enumerate(calls):
            tg.start_soon(one, i, call)
    return [r for r in replies if r is not None], malformed
