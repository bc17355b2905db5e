"""Stage 3, checks (agents from data): agents chosen by an expression and parameterised agents.

- `agent: "{{ expr }}"`: the names the expression can give, where it says them literally (`'processor_' ~ x`: names
  starting `processor_`; `'a' if c else 'b'`), must be declared agents; `default_agent:` only with an expression.
- A parameterised agent (one with `params`) is used only as `agent: {use: NAME, with: {...}}`, with one argument per
  parameter; `use` names a parameterised agent; a fallback or a router cannot be one (they take no arguments).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from jinja2 import nodes

from flowctl.dsl import catalogue as cat
from flowctl.dsl.check_context import CheckContext
from flowctl.dsl.diagnostics import Diagnostic
from flowctl.dsl.index import StepInfo
from flowctl.dsl.loader import JsonPath
from flowctl.dsl.templates import ENV, ExprValue, TemplateProblem, compile_string_value, has_template

Possible = list[tuple[str, str]]  # ("exact", name) or ("prefix", start of the name)


def check_agent_choices(ctx: CheckContext) -> Iterator[Diagnostic]:
    agents = {name: a for name, a in ctx.index.section("agents").items() if isinstance(a, dict)}
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            if step.kind == "agent":
                yield from _check_agent_step(ctx, step, agents)
            for path, name in _argumentless_uses(step):
                if _params(agents.get(name)):
                    yield cat.agent_params(
                        ctx.span(path),
                        f"agent {name!r} takes parameters ({', '.join(_params(agents[name]))}); a fallback or a "
                        "router gives it no arguments",
                        hint="use an agent without `params` here",
                    )


def _argumentless_uses(step: StepInfo) -> Iterator[tuple[JsonPath, str]]:
    """The agents a step names but cannot give arguments to (its fallback's, a route's), with their paths."""
    fallback = step.raw.get("fallback")
    if isinstance(fallback, dict) and isinstance(fallback.get("agent"), str):
        yield (*step.path, "fallback", "agent"), fallback["agent"]
    route = step.raw.get("route") if step.kind == "route" else None
    if isinstance(route, dict) and isinstance(route.get("agent"), str):
        yield (*step.path, "route", "agent"), route["agent"]


def _params(agent: Any) -> list[str]:
    params = agent.get("params") if isinstance(agent, dict) else None
    return [p for p in params if isinstance(p, str)] if isinstance(params, list) else []


def _check_agent_step(ctx: CheckContext, step: StepInfo, agents: dict[str, Any]) -> Iterator[Diagnostic]:
    raw, path = step.raw, step.path
    agent = raw.get("agent")
    chosen = isinstance(agent, str) and has_template(agent)
    if "default_agent" in raw and not chosen:
        yield cat.invalid_value(
            ctx.key_span((*path, "default_agent")),
            "`default_agent` is for an agent chosen by an expression, and this step names its agent",
            hint='remove it, or choose the agent at run time: agent: "{{ expr }}"',
        )
    default = raw.get("default_agent")
    if isinstance(default, str) and _params(agents.get(default)):
        yield cat.agent_params(
            ctx.span((*path, "default_agent")),
            f"the default agent {default!r} takes parameters; an agent chosen by an expression gets no arguments",
        )
    if isinstance(agent, dict):
        yield from _check_use(ctx, step, agent, agents)
    elif isinstance(agent, str) and chosen:
        yield from _check_expression(ctx, step, agent, agents)
    elif isinstance(agent, str) and _params(agents.get(agent)):
        params = _params(agents[agent])
        example = ", ".join(f"{p}: …" for p in params)
        yield cat.agent_params(
            ctx.span((*path, "agent")),
            f"agent {agent!r} takes parameters ({', '.join(params)}) and is given none",
            hint=f"use it as agent: {{use: {agent}, with: {{{example}}}}}",
        )


def _check_use(
    ctx: CheckContext, step: StepInfo, agent: dict[str, Any], agents: dict[str, Any]
) -> Iterator[Diagnostic]:
    name = agent.get("use")
    if not isinstance(name, str) or name not in agents:
        return  # unknown agents are reported with every other reference
    params = _params(agents[name])
    given: dict[str, Any] = agent["with"] if isinstance(agent.get("with"), dict) else {}
    path = (*step.path, "agent")
    if not params:
        yield cat.agent_params(
            ctx.span((*path, "use")),
            f"agent {name!r} has no `params`, so it takes no arguments",
            hint=f"name it directly: agent: {name}",
        )
        return
    for key in given:
        if key not in params:
            yield cat.agent_params(
                ctx.key_span((*path, "with", key)),
                f"agent {name!r} takes no parameter {key!r}",
                hint=cat.did_you_mean(key, params) or f"its parameters: {', '.join(params)}",
            )
    missing = [p for p in params if p not in given]
    if missing:
        where = ctx.key_span((*path, "with")) if "with" in agent else ctx.span((*path, "use"))
        yield cat.agent_params(
            where,
            f"agent {name!r} is missing the argument(s) {', '.join(map(repr, missing))}",
            hint="give one argument per parameter under `with:` (`none` is a value too)",
        )


def _check_expression(ctx: CheckContext, step: StepInfo, source: str, agents: dict[str, Any]) -> Iterator[Diagnostic]:
    span = ctx.span((*step.path, "agent"))
    possible = _possible_names(source, span)
    if possible is None:
        return  # it reads data: only the run knows, and checks the name against the agents then
    plain = [name for name, agent in agents.items() if not _params(agent)]
    for how, text in possible:
        if how == "exact" and text in agents and _params(agents[text]):
            yield cat.agent_params(
                span,
                f"the agent expression can give {text!r}, a parameterised agent, which needs arguments",
                hint=f"use it as agent: {{use: {text}, with: {{…}}}}",
            )
        elif how == "exact" and text not in agents:
            yield cat.unknown_ref(cat.UNKNOWN_AGENT, "agent", span, text, plain)
        elif how == "prefix" and not any(name.startswith(text) for name in plain):
            yield cat.agent_never_declared(span, f"names starting with {text!r}", plain)


def _possible_names(source: str, span: Any) -> Possible | None:
    """What an agent expression can give, where the text says it; None when any part of it is data."""
    try:
        value = compile_string_value(source, span)
        if isinstance(value, ExprValue):
            node: nodes.Node = ENV.parse("{{ " + value.expression.source + " }}").body[0].nodes[0]  # type: ignore[attr-defined]
            return _possible(node)
        body = ENV.parse(source).body
    except (TemplateProblem, Exception):  # a syntax error is the template checks' to report
        return None
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    return _concat(body[0].nodes)


def _possible(node: nodes.Node) -> Possible | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [("exact", node.value)]
    if isinstance(node, nodes.TemplateData):
        return [("exact", node.data)]
    if isinstance(node, nodes.CondExpr) and node.expr2 is not None:
        a, b = _possible(node.expr1), _possible(node.expr2)
        return None if a is None or b is None else a + b
    if isinstance(node, nodes.Concat):
        return _concat(node.nodes)
    if isinstance(node, nodes.Add):
        return _concat([node.left, node.right])
    return None


def _concat(parts: Sequence[nodes.Node]) -> Possible | None:
    """`'processor_' ~ x` gives names starting `processor_`; all-literal parts give one name."""
    known = [_possible(part) for part in parts]
    if all(k is not None and len(k) == 1 and k[0][0] == "exact" for k in known):
        return [("exact", "".join(k[0][1] for k in known if k is not None))]
    first = known[0] if known else None
    if first is not None and all(how == "exact" for how, _ in first):
        return [("prefix", text) for _, text in first if text]
    return None
