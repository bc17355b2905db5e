"""What watchers see of the calls a step makes: each model call, tool call and wait, as it happened, goes to the
run's reporter (the terminal, the event log, OpenTelemetry) — one function per kind, so the agent loop and the
handlers say it once.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flowctl.interpreter.reporting import ModelCallSeen, ToolCallSeen

if TYPE_CHECKING:
    from flowctl.dsl.ir import ModelDef, ServerDef
    from flowctl.interpreter.engine.context import RunContext
    from flowctl.interpreter.errors import FlowctlError
    from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse
    from flowctl.interpreter.tools import ToolResult

# The attempt of the step a call belongs to (set per attempt by the engine; 1 outside any).
STEP_ATTEMPT: ContextVar[int] = ContextVar("flowctl_step_attempt", default=1)


def saw_model_call(
    ctx: RunContext,
    path: str,
    key: str,
    model: ModelDef,
    request: CompletionRequest,
    response: CompletionResponse | None,
    error: FlowctlError | None,
    started: float,
    elapsed: float,
    *,
    replayed: bool = False,
) -> None:
    seen = ModelCallSeen(key, STEP_ATTEMPT.get(), model.provider, request, response, error, started, elapsed, replayed)
    ctx.runtime.reporter.model_call(ctx.run_id, path, seen)


def saw_tool_call(
    ctx: RunContext,
    path: str,
    key: str,
    server: ServerDef,
    tool: str,
    arguments: dict[str, Any],
    result: ToolResult | None,
    error: FlowctlError | None,
    started: float,
    elapsed: float,
    *,
    replayed: bool = False,
) -> None:
    seen = ToolCallSeen(
        key, STEP_ATTEMPT.get(), server.name, tool, arguments, result, error, started, elapsed, replayed
    )
    ctx.runtime.reporter.tool_call(ctx.run_id, path, seen)
