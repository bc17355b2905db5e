"""`flowctl validate --resolve-tools`: connect to the MCP servers a pipeline uses and check that the tools it names
exist — each `tool:` step's tool, each entry of an agent's `tools:` allow-list and of a server's `allowed_tools` and
`idempotent_tools`, in the file and its child files.

Stage: interpreter (it starts servers, so it is never part of plain `validate`). Problems come back as ordinary
diagnostics at the YAML position of the step or agent: `unknown-tool` for a tool a server does not offer (the
server's `allowed_tools` applies, as at run time), and `invalid-value` at the server's definition when it cannot be
started or reached (a warning for an `optional: true` server). A server's stderr quoted in a diagnostic is masked
like everything `flowctl run` prints (redact.redactor_for).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import anyio

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Diagnostic, Severity
from flowctl.dsl.ir import AgentDef, Graph, NodeKind, ServerDef, Step, ToolCall
from flowctl.interpreter.errors import FlowctlError
from flowctl.interpreter.redact import redactor_for


@dataclass(frozen=True, slots=True)
class _Listing:
    """A server's tool names, or why they could not be listed."""

    tools: tuple[str, ...] = ()
    error: str | None = None


def resolve_tools(graph: Graph, env: Mapping[str, str] | None = None) -> list[Diagnostic]:
    """Check every tool the graph names against its server's real tool list (sync: runs its own event loop)."""
    return anyio.run(_resolve, graph, os.environ if env is None else env)


async def _resolve(graph: Graph, env: Mapping[str, str]) -> list[Diagnostic]:
    from flowctl.interpreter.mcp.mcp_pool import McpPool  # imports mcp (~0.6 s): only when asked to resolve

    graphs = list(_graphs(graph))
    redactor = redactor_for([graph], env)  # a failing server's stderr may quote its environment
    servers = {_key(s): s for g in graphs for s in _used_servers(g)}
    listings: dict[tuple[str, str], _Listing] = {}
    async with McpPool(env=env) as pool:

        async def list_one(key: tuple[str, str], server: ServerDef) -> None:
            try:
                everything = dataclasses.replace(server, allowed_tools=None)  # `tool:` steps are not limited by it
                listings[key] = _Listing(tools=tuple(t.name for t in await pool.list_tools(everything)))
            except FlowctlError as exc:
                listings[key] = _Listing(error=redactor.redact_text(exc.message))

        async with anyio.create_task_group() as tg:
            for key, server in servers.items():
                tg.start_soon(list_one, key, server)
    diagnostics = [_unreachable(server, listings[key].error) for key, server in servers.items() if listings[key].error]
    for key, server in servers.items():
        diagnostics += _check_server_lists(server, listings[key])
    for g in graphs:
        diagnostics += _check_graph(g, listings)
    return diagnostics


def _check_server_lists(server: ServerDef, listing: _Listing) -> list[Diagnostic]:
    """Each `allowed_tools` and `idempotent_tools` entry names a tool the server has (a typo would silently offer
    models fewer tools, or leave a tool unretried)."""
    if listing.error:
        return []
    diagnostics = []
    for key, entries in (("allowed_tools", server.allowed_tools or ()), ("idempotent_tools", server.idempotent_tools)):
        for entry in entries:
            if entry not in listing.tools:
                diagnostic = cat.unknown_tool(server.span, server.name, entry, listing.tools)
                message = f"server {server.name!r} `{key}` names {entry!r}, which the server does not offer"
                diagnostics.append(dataclasses.replace(diagnostic, message=message))
    return diagnostics


def _graphs(graph: Graph) -> Iterator[Graph]:
    """The graph and its child files, each once."""
    seen: set[str] = set()
    stack = [graph]
    while stack:
        current = stack.pop()
        if current.file in seen:
            continue
        seen.add(current.file)
        yield current
        stack.extend(current.children.values())


def _steps(graph: Graph) -> Iterator[Step]:
    for pipeline in (graph.root, *graph.pipelines.values()):
        yield from pipeline.all_steps()


def _tool_steps(graph: Graph) -> Iterator[tuple[Step, ToolCall]]:
    for step in _steps(graph):
        if step.kind is NodeKind.TOOL and isinstance(step.body, ToolCall):
            yield step, step.body


def _used_servers(graph: Graph) -> Iterator[ServerDef]:
    names = {name for agent in graph.agents.values() for name in agent.servers}
    names |= {body.server for _, body in _tool_steps(graph)}
    for name in sorted(names):
        if name in graph.servers:  # an unknown server name is the front end's diagnostic, not ours
            yield graph.servers[name]


def _key(server: ServerDef) -> tuple[str, str]:
    return (server.span.file, server.name)


def _unreachable(server: ServerDef, error: str | None) -> Diagnostic:
    cause = (error or "").removeprefix(f"server {server.name!r}").lstrip(": ")
    diagnostic = cat.invalid_value(
        server.span,
        f"cannot connect to server {server.name!r}: {cause}",
        hint="check its command, url and environment; `flowctl validate` without --resolve-tools skips this check",
    )
    if server.optional:  # a run goes on without it: worth knowing, not a reason to refuse the pipeline
        return dataclasses.replace(
            diagnostic,
            severity=Severity.WARNING,
            hint="it is `optional: true`: " + ("agents that name it will run without its tools"),
        )
    return diagnostic


def _check_graph(graph: Graph, listings: dict[tuple[str, str], _Listing]) -> list[Diagnostic]:
    def tools_of(name: str, offered: bool = True) -> tuple[str, ...] | None:
        """The server's tools (`offered`: those models are offered, per `allowed_tools`); None when the server is
        unknown or could not be listed (reported once, at the server)."""
        server = graph.servers.get(name)
        listing = listings.get(_key(server)) if server is not None else None
        if server is None or listing is None or listing.error:
            return None
        if offered and server.allowed_tools is not None:
            return tuple(t for t in listing.tools if t in server.allowed_tools)
        return listing.tools

    diagnostics = []
    for step, body in _tool_steps(graph):
        known = tools_of(body.server, offered=False)
        if known is not None and body.tool not in known:
            diagnostics.append(cat.unknown_tool(step.span, body.server, body.tool, known))
    for agent in graph.agents.values():
        diagnostics += _check_allow_list(agent, tools_of)
    return diagnostics


def _check_allow_list(agent: AgentDef, tools_of: Callable[[str], tuple[str, ...] | None]) -> list[Diagnostic]:
    """Each `tools:` entry (`server.tool` or a bare `tool`) must name a tool one of the agent's servers offers."""
    listed: dict[str, tuple[str, ...]] = {}
    for name in agent.servers:
        tools = tools_of(name)
        if tools is None:
            return []  # a server could not be listed: already reported, and nothing can be said about its tools
        listed[name] = tools
    diagnostics = []
    for entry in agent.tools or ():
        if any(entry in tools for tools in listed.values()):
            continue
        server, dot, tool = entry.partition(".")
        if dot and server in listed:
            if tool not in listed[server]:
                diagnostics.append(cat.unknown_tool(agent.span, server, tool, listed[server]))
            continue
        diagnostics.append(_unknown_bare_tool(agent, entry, listed))
    return diagnostics


def _unknown_bare_tool(agent: AgentDef, entry: str, listed: dict[str, tuple[str, ...]]) -> Diagnostic:
    known = [tool for tools in listed.values() for tool in tools]
    first = agent.servers[0] if agent.servers else "?"
    diagnostic = cat.unknown_tool(agent.span, first, entry, known)
    if len(agent.servers) == 1:
        return diagnostic
    names = ", ".join(repr(s) for s in agent.servers) or "none"
    message = f"agent {agent.name!r} allows tool {entry!r}, which none of its servers ({names}) has"
    return dataclasses.replace(diagnostic, message=message)
