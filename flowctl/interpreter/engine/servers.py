"""An agent's MCP servers at step start: their tools listed concurrently, and an `optional: true` server that cannot
start left out with a warning (logged as the run's `server_unavailable` event and shown by the reporter) instead of
failing the step. A server nobody names is never started: the pool starts servers on first use."""

from __future__ import annotations

from flowctl.dsl.ir import AgentDef
from flowctl.interpreter.concurrency import task_group
from flowctl.interpreter.engine.context import RunContext
from flowctl.interpreter.errors import ServerStartError
from flowctl.interpreter.tools import ToolSpec

UNAVAILABLE_EVENT = "server_unavailable"


async def list_agent_tools(ctx: RunContext, agent: AgentDef, path: str) -> tuple[dict[str, list[ToolSpec]], set[str]]:
    """The tools of each of the agent's servers, by server name, and the optional servers left out."""
    listings: dict[str, list[ToolSpec]] = {}
    left_out: set[str] = set()

    async def list_one(name: str) -> None:
        server = ctx.graph.servers[name]
        try:
            listings[name] = await ctx.runtime.tools.list_tools(server)
        except ServerStartError as exc:
            if not server.optional:
                raise
            listings[name] = []
            left_out.add(name)
            warn_unavailable(ctx, agent, path, name, exc.message)

    async with task_group() as tg:
        for name in dict.fromkeys(agent.servers):
            tg.start_soon(list_one, name)
    return listings, left_out


def warn_unavailable(ctx: RunContext, agent: AgentDef, path: str, server: str, cause: str) -> None:
    """Record and show that an agent runs without an optional server's tools: once per server in a run tree (its
    child runs share the pool, so the server is as unavailable to them)."""
    runtime = ctx.runtime
    if server in runtime.warned:
        return
    runtime.warned.add(server)
    message = f"optional server {server!r} is unavailable: agent {agent.name!r} runs without its tools ({cause})"
    data = {"server": server, "agent": agent.name, "step": path, "error": cause}
    runtime.recorder.event(ctx.run_id, UNAVAILABLE_EVENT, data, path)
    runtime.reporter.warning(ctx.run_id, path, message)
