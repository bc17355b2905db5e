"""Renders the run must stop: the bridge between the template sandbox's budgets and anyio's cancellation.

Rendering is synchronous, so neither a step's `timeout:` nor Ctrl-C can interrupt it from outside. The sandbox
checks the enclosing deadline and the CLI's signal flag itself and raises `RenderStopped`; the engine hands that to
`take_cancellation`, where the cancellation that stands behind it is delivered, so the step ends as timed out or
cancelled exactly as if it had been waiting on a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import anyio.lowlevel

from flowctl.dsl.templates import RenderStopped
from flowctl.interpreter.errors import RenderFailed

if TYPE_CHECKING:
    from flowctl.dsl import ir
    from flowctl.interpreter.engine.context import RunContext, Scope
    from flowctl.interpreter.engine.protocol import Handler, StepEngine

# A due timer fires within two loop turns on asyncio (it joins the ready queue after the task that yielded); a
# cancellation the signal handler queued, within one.
_TURNS_FOR_A_DUE_CANCELLATION = 3


async def take_cancellation(stop: RenderStopped) -> NoReturn:
    """A render stopped because the step's deadline passed or SIGINT/SIGTERM arrived: the cancellation behind it
    (the deadline's, or the one the CLI requests on a signal) is delivered at these checkpoints, and the step unwinds
    as timed out or cancelled. If none comes (a shielded `finally` after a second signal), the step fails."""
    for _ in range(_TURNS_FOR_A_DUE_CANCELLATION):
        await anyio.lowlevel.checkpoint()
    raise RenderFailed(str(stop))


async def handler_within_timeout(
    handler: Handler, engine: StepEngine, ctx: RunContext, step: ir.Step, scope: Scope, path: str
) -> Any:
    """The handler, inside a step timeout's scope: a render the timeout stopped must unwind inside that scope, so
    that the scope sees its own cancellation and the step fails as timed out."""
    try:
        return await handler(engine, ctx, step, scope, path)
    except RenderStopped as stop:
        await take_cancellation(stop)
