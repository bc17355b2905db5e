"""What the parts of the engine see of it: `StepEngine`, the interface handlers, the agent loop and triggers call
(engine.Engine implements it), and the `Handler` signature of one node kind. Kept apart so that those modules need
not import engine.py, which imports them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from flowctl.dsl import ir
from flowctl.interpreter.engine.context import RunContext, Scope, StepResult
from flowctl.interpreter.engine.state import UpdateBuffer
from flowctl.interpreter.errors import FlowctlError


@dataclass(slots=True)
class Outcome:
    """How one branch of a fan-out or parallel group ended."""

    ok: bool
    value: Any = None
    error: FlowctlError | None = None


class StepEngine(Protocol):
    async def run_pipeline(self, ctx: RunContext) -> dict[str, Any]: ...
    async def run_list(self, ctx: RunContext, steps: tuple[ir.Step, ...], scope: Scope) -> None: ...
    async def run_step(self, ctx: RunContext, step: ir.Step, scope: Scope) -> StepResult: ...
    def evaluate_value(
        self, value: ir.CompiledValue | ir.Expression, ctx: RunContext, scope: Scope, **extra: Any
    ) -> Any: ...
    def commit_buffers(
        self, ctx: RunContext, scope: Scope, buffers: list[UpdateBuffer], outcomes: list[Outcome | None]
    ) -> None: ...


# One attempt of one step of a node kind: returns the step's output (policies, retries and records are the engine's)
Handler = Callable[[StepEngine, RunContext, ir.Step, Scope, str], Awaitable[Any]]
