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
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Diagnostic, Severity
from flowctl.dsl.ir import (
    AgentCall,
    AgentDef,
    Graph,
    NodeKind,
    ResourceRead,
    ServerDef,
    ServerPrompt,
    ServerResource,
    Step,
    ToolCall,
)
from flowctl.dsl.templates import Literal, MapValue
from flowctl.interpreter.errors import FlowctlError
from flowctl.interpreter.redact import redactor_for


@dataclass(frozen=True, slots=True)
class _Listing:
    """A server's tool names (and resources, URI templates, prompts), or why they could not be listed."""

    tools: tuple[str, ...] = ()
    error: str | None = None
    context: dict[str, Any] | None = None  # McpPool.list_context, for servers agents read resources or prompts from


def resolve_tools(graph: Graph, env: Mapping[str, str] | None = None) -> list[Diagnostic]:
    """Check every tool the graph names against its server's real tool list (sync: runs its own event loop)."""
    return anyio.run(_resolve, graph, os.environ if env is None else env)


async def _resolve(graph: Graph, env: Mapping[str, str]) -> list[Diagnostic]:
    from flowctl.interpreter.mcp.mcp_pool import McpPool  # imports mcp (~0.6 s): only when asked to resolve

    graphs = list(_graphs(graph))
    redactor = redactor_for([graph], env)  # a failing server's stderr may quote its environment
    servers = {_key(s): s for g in graphs for s in _used_servers(g)}
    read_from = {name for g in graphs for name, _ in _graph_context_refs(g)}
    listings: dict[tuple[str, str], _Listing] = {}
    async with McpPool(env=env) as pool:

        async def list_one(key: tuple[str, str], server: ServerDef) -> None:
            try:
                everything = dataclasses.replace(server, allowed_tools=None)  # `tool:` steps are not limited by it
                tools = tuple(t.name for t in await pool.list_tools(everything))
                context = await pool.list_context(server) if server.name in read_from else None
                listings[key] = _Listing(tools=tools, context=context)
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


def _context_refs(agent: AgentDef) -> Iterator[tuple[str, ServerPrompt | ServerResource]]:
    """The server prompt and resources an agent reads, with the server each names."""
    if agent.instruction_prompt is not None:
        yield agent.instruction_prompt.server, agent.instruction_prompt
    for resource in agent.resources:
        yield resource.server, resource


def _graph_context_refs(graph: Graph) -> Iterator[tuple[str, ServerPrompt | ServerResource | ResourceRead]]:
    """Every server prompt and resource the graph reads: its agents' and its `resource:` steps'."""
    for agent in graph.agents.values():
        yield from _context_refs(agent)
    for step in _steps(graph):
        if isinstance(step.body, ResourceRead):
            yield step.body.server, step.body
        elif isinstance(step.body, AgentCall) and step.body.server_prompt is not None:
            yield step.body.server_prompt.server, step.body.server_prompt


def _used_servers(graph: Graph) -> Iterator[ServerDef]:
    names = {name for agent in graph.agents.values() for name in agent.servers}
    names |= {name for name, _ in _graph_context_refs(graph)}
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
    for name, ref in _graph_context_refs(graph):
        server = graph.servers.get(name)
        listing = listings.get(_key(server)) if server is not None else None
        if listing is not None and listing.context is not None:
            diagnostics += _check_context_ref(name, ref, listing.context)
    return diagnostics


def _check_context_ref(
    server: str, ref: ServerPrompt | ServerResource | ResourceRead, found: dict[str, Any]
) -> list[Diagnostic]:
    """A prompt the server offers, with its required arguments given and no others; a resource it lists, or one
    that matches (or is) one of its URI templates."""
    if isinstance(ref, ServerPrompt):
        prompts: dict[str, dict[str, bool]] = found["prompts"]
        if ref.name not in prompts:
            hint = cat.did_you_mean(ref.name, list(prompts)) or _known("prompts", prompts)
            return [cat.invalid_value(ref.span, f"server {server!r} has no prompt {ref.name!r}", hint=hint)]
        given = set(_argument_names(ref))
        wanted = prompts[ref.name]
        problems = [f"missing required argument {a!r}" for a, required in wanted.items() if required and a not in given]
        problems += [f"unknown argument {a!r}" for a in sorted(given - wanted.keys())]
        hint = _known("arguments", wanted)
        return [
            cat.invalid_value(ref.span, f"prompt {ref.name!r} of server {server!r}: {p}", hint=hint) for p in problems
        ]
    resources: list[str] = found["resources"]
    templates: list[str] = found["templates"]
    if ref.uri in resources or ref.uri in templates or any(_matches(t, ref.uri) for t in templates):
        return []
    known = sorted({*resources, *templates})
    hint = cat.did_you_mean(ref.uri, known) or _known("resources", known)
    return [cat.invalid_value(ref.span, f"server {server!r} has no resource {ref.uri!r}", hint=hint)]


def _argument_names(ref: ServerPrompt) -> list[str]:
    arguments = ref.arguments
    if isinstance(arguments, MapValue):
        return [key for key, _ in arguments.items]
    return (
        [str(key) for key in arguments.value]
        if isinstance(arguments, Literal) and isinstance(arguments.value, dict)
        else []
    )


def _matches(template: str, uri: str) -> bool:
    """Whether `uri` is an expansion of the simple URI template (`{name}` matches one path segment or more)."""
    pattern = "".join(
        "[^/?#]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^{}]+\})", template)
    )
    return re.fullmatch(pattern, uri) is not None


def _known(kind: str, names: Any) -> str:
    names = sorted(names)
    if not names:
        return f"the server offers no {kind}"
    shown = ", ".join(repr(n) for n in names[:8]) + (", …" if len(names) > 8 else "")
    return f"it offers: {shown}"


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
