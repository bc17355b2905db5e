"""Agents chosen from data: an agent step whose `agent:` is an expression over the declared agents, and
parameterised agents (`agent: {use: executor, with: {...}}`), whose name, instruction and servers are rendered from
their arguments.

The choice is made from the step's template context (inputs, step outputs, the item of a fan-out: all journaled or
replayed on resume), so a resumed run makes the same choice. The rendered agent is an ordinary `AgentDef` named as
rendered (`task_executor_design`): progress, transcripts and traces report that name. Servers stay limited to the
declared ones: a rendered server list that names another fails the step, before any server starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flowctl.dsl import ir
from flowctl.interpreter.errors import UndeclaredServer, UnknownAgent


def chosen_agent(graph: ir.Graph, body: ir.AgentCall, context: Mapping[str, Any], path: str, span: Any) -> ir.AgentDef:
    """The declared agent an `agent: "{{ expr }}"` names, or the step's `default_agent`; else UnknownAgent."""
    assert body.choose is not None
    value = body.choose.evaluate(context)
    agent = graph.agents.get(value) if isinstance(value, str) else None
    if agent is not None and not agent.params:
        return agent
    if body.default is not None:
        return graph.agents[body.default]
    plain = sorted(name for name, a in graph.agents.items() if not a.params)
    why = "a parameterised agent, which needs `agent: {use:, with:}`" if agent is not None else "no declared agent"
    raise UnknownAgent(
        f"step {path!r}: its agent expression gave {value!r}, {why}; agents: {', '.join(plain) or 'none'} "
        "(add the agent, or give the step a `default_agent:`)",
        span=span,
    )


def parameterised_agent(
    graph: ir.Graph, agent: ir.AgentDef, arguments: dict[str, Any], path: str, span: Any
) -> ir.AgentDef:
    """A parameterised agent for one use: named by its rendered `name:`, with its rendered servers (each declared)."""
    name = agent.title.render(arguments).strip() if agent.title is not None else agent.name
    if not name:
        raise UnknownAgent(f"step {path!r}: agent {agent.name!r} rendered an empty `name:`", span=agent.span)
    servers = agent.servers
    if agent.servers_from is not None:
        servers = _server_names(agent.servers_from.evaluate(arguments), agent, path)
    undeclared = [s for s in servers if s not in graph.servers]
    if undeclared:
        declared = ", ".join(graph.servers) or "none"
        raise UndeclaredServer(
            f"step {path!r}: agent {name!r} (from {agent.name!r}) was given the server(s) "
            f"{', '.join(map(repr, undeclared))}, which the file does not declare; declared servers: {declared}",
            span=span,
        )
    return dataclasses.replace(agent, name=name, servers=servers)


def _server_names(value: Any, agent: ir.AgentDef, path: str) -> tuple[str, ...]:
    """A rendered `servers:`: a list of names, or one name; `none` or an empty list for no servers."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise UndeclaredServer(
            f"step {path!r}: agent {agent.name!r}: `servers:` gave {value!r}; it must give a list of server names",
            span=agent.span,
        )
    return tuple(dict.fromkeys(value))
