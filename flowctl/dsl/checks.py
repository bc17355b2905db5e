"""Stage 3, checks: semantic checks on a loaded, schema-checked document, each in its own small unit.

Every unit is a generator of Diagnostics over a `CheckContext`; `check_document` runs them all. The template units
live in `template_checks.py`. Units tolerate a
partial document (the schema stage may have reported errors) and never raise for user mistakes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from flowctl.dsl import catalogue as cat
from flowctl.dsl.agent_checks import check_agent_choices
from flowctl.dsl.check_context import CheckContext, ChildInfo, ChildResolver, agent_refs
from flowctl.dsl.composition_checks import (
    check_dispatch,
    check_parent_state,
    check_route_options,
    check_trigger_limits,
    dispatches,
    dispatches_over_all_pipelines,
)
from flowctl.dsl.diagnostics import Diagnostic, Span
from flowctl.dsl.index import DocIndex, StepInfo
from flowctl.dsl.kinds import is_file_reference, refs
from flowctl.dsl.loader import JsonPath
from flowctl.dsl.paths import confine
from flowctl.dsl.server_checks import check_server_context, check_server_values, check_servers
from flowctl.dsl.step_checks import check_fan_outs, check_state_updates
from flowctl.dsl.template_checks import check_template_limits, check_templates

# --- references to definitions ----------------------------------------------------------------------------------


def check_definitions(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Agents, models and servers named by steps and agents exist."""
    agents, models, servers = (ctx.index.section(k) for k in ("agents", "models", "servers"))
    if not models:
        models = {"default": None}  # without models, the compiler supplies the built-in one, called `default`
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            for name, path in agent_refs(step):
                if name not in agents:
                    yield cat.unknown_ref(cat.UNKNOWN_AGENT, "agent", ctx.span(path), name, agents)
            fallback = step.raw.get("fallback")
            if isinstance(fallback, dict) and isinstance(fallback.get("model"), str):
                name = fallback["model"]
                if name not in models:
                    yield cat.unknown_ref(
                        cat.UNKNOWN_MODEL, "model", ctx.span((*step.path, "fallback", "model")), name, models
                    )
            for ref, path in refs(step.kind, step.raw, step.path, "tool"):
                yield from _check_tool_ref(ctx, ref, path, servers)
    for name, agent in agents.items():
        if isinstance(agent, dict):
            yield from _check_agent(ctx, name, agent, models, servers)
    for name, server in servers.items():  # `sampling: {model: …}` answers the server's sampling requests
        sampling = server.get("sampling") if isinstance(server, dict) else None
        model = sampling.get("model") if isinstance(sampling, dict) else None
        if isinstance(model, str) and model not in models:
            path = (*ctx.index.servers_path(), name, "sampling", "model")
            yield cat.unknown_ref(cat.UNKNOWN_MODEL, "model", ctx.span(path), model, models)


def _check_tool_ref(ctx: CheckContext, ref: str, path: JsonPath, servers: dict[str, Any]) -> Iterator[Diagnostic]:
    span = ctx.span(path)
    server, dot, _tool = ref.partition(".")
    if not dot or not _tool:
        yield cat.invalid_value(
            span,
            f"tool {ref!r} must be written as 'server.tool'",
            hint=f"for example '{next(iter(servers), 'time')}.{ref}'",
        )
    elif server not in servers:
        yield cat.unknown_ref(cat.UNKNOWN_SERVER, "server", span, server, servers)


def _check_agent(
    ctx: CheckContext, name: str, agent: dict[str, Any], models: dict[str, Any], servers: dict[str, Any]
) -> Iterator[Diagnostic]:
    model = agent.get("model")
    if isinstance(model, str) and model not in models:
        yield cat.unknown_ref(cat.UNKNOWN_MODEL, "model", ctx.span(("agents", name, "model")), model, models)
    elif model is None and models and "default" not in models:
        yield cat.invalid_value(
            ctx.key_span(("agents", name)),
            f"agent {name!r} names no model and no model is called 'default'",
            hint="add `model:` to the agent or name one model `default`",
        )
    names = agent.get("servers")
    for i, server in enumerate(names if isinstance(names, list) else []):
        if isinstance(server, str) and server not in servers:
            yield cat.unknown_ref(
                cat.UNKNOWN_SERVER, "server", ctx.span(("agents", name, "servers", i)), server, servers
            )
    yield from _check_agent_tools(ctx, name, agent, servers)


def _allowed_tools(server: Any) -> list[str] | None:
    allowed = server.get("allowed_tools") if isinstance(server, dict) else None
    return [t for t in allowed if isinstance(t, str)] if isinstance(allowed, list) else None


def _check_agent_tools(
    ctx: CheckContext, name: str, agent: dict[str, Any], servers: dict[str, Any]
) -> Iterator[Diagnostic]:
    """A `server.tool` entry of an agent's `tools:` must be a tool the server offers, when it lists `allowed_tools`.

    A dotted entry whose prefix is no server may be a bare tool name with a dot, so only known servers are checked.
    """
    entries = agent.get("tools")
    offered = {t for s in servers.values() for t in _allowed_tools(s) or ()}
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, str):
            continue
        server, dot, tool = entry.partition(".")
        allowed = _allowed_tools(servers.get(server)) if dot else None
        if allowed is not None and tool not in allowed and entry not in offered:
            yield cat.unknown_tool(ctx.span(("agents", name, "tools", i)), server, tool, allowed)


# --- ids and dependencies ---------------------------------------------------------------------------------------


def check_duplicate_ids(ctx: CheckContext) -> Iterator[Diagnostic]:
    for pipeline in ctx.index.pipelines():
        first: dict[str, Span] = {}
        for step in pipeline.ordered:
            span = ctx.span((*step.path, "id"))
            if step.id in first:
                yield cat.duplicate_id(span, step.id, first[step.id])
            else:
                first[step.id] = span
        for trigger_id, path in pipeline.triggers.items():
            span = ctx.span((*path, "id"))
            if trigger_id in first:
                yield cat.duplicate_id(span, trigger_id, first[trigger_id])
            first.setdefault(trigger_id, span)


def check_needs(ctx: CheckContext) -> Iterator[Diagnostic]:
    """`needs` names steps of the same list (the interpreter schedules one list at a time)."""
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            needs = step.raw.get("needs")
            if needs is None:
                continue
            entries = [needs] if isinstance(needs, str) else needs if isinstance(needs, list) else []
            for i, name in enumerate(entries):
                if not isinstance(name, str):
                    continue
                path = (*step.path, "needs") if isinstance(needs, str) else (*step.path, "needs", i)
                if name == step.id:
                    yield cat.dependency_cycle(ctx.span(path), [step.id, step.id])
                elif name not in pipeline.steps:
                    yield cat.unknown_ref(cat.UNKNOWN_STEP, "step", ctx.span(path), name, step.list_ids)
                elif name not in step.list_ids:
                    yield cat.step_out_of_scope(
                        ctx.span(path),
                        name,
                        f"is not in the same step list as {step.id!r}; `needs` names siblings only",
                    )


def check_cycles(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Dependency cycles within each step list, reported once each with the whole path."""
    for pipeline in ctx.index.pipelines():
        lists: dict[tuple[str, ...], list[StepInfo]] = {}
        for step in pipeline.ordered:
            lists.setdefault(step.list_ids, []).append(step)
        for steps in lists.values():
            yield from _cycles_in_list(ctx, steps)


def _cycles_in_list(ctx: CheckContext, steps: list[StepInfo]) -> Iterator[Diagnostic]:
    by_id: dict[str, StepInfo] = {}
    for step in steps:
        by_id.setdefault(step.id, step)  # a duplicate id is reported elsewhere; follow its first definition
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    reported: set[frozenset[str]] = set()

    def visit(step: StepInfo, stack: list[str]) -> Iterator[Diagnostic]:
        state[step.id] = 1
        stack.append(step.id)
        for dep in step.deps:
            target = by_id.get(dep)
            if target is None or dep == step.id:
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    first = min((by_id[s] for s in cycle), key=lambda s: ctx.span(s.path))
                    start = cycle.index(first.id)
                    ordered = cycle[start:] + cycle[:start]
                    # walk the cycle in dependency order starting from the earliest step
                    yield cat.dependency_cycle(ctx.key_span((*first.path, "needs")), [*ordered, first.id])
            elif dep not in state:
                yield from visit(target, stack)
        stack.pop()
        state[step.id] = 2

    for step in steps:
        if step.id not in state:
            yield from visit(step, [])


# --- children, routes, events --------------------------------------------------------------------------------------


def check_children(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Child pipelines exist, stay inside the folder tree, are valid, and get exactly the inputs they declare."""
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            for ref, path in refs(step.kind, step.raw, step.path, "pipeline"):
                if path[len(step.path)] == "pipeline" or dispatches(step):  # else check_dispatch says they are unused
                    yield from _check_child(ctx, step, ref, ctx.span(path))
            if dispatches_over_all_pipelines(step):  # `pipeline: "{{ expr }}"` without `choices:`
                for name in ctx.index.children:
                    yield from _check_child(ctx, step, name, ctx.span((*step.path, "pipeline")))


def _check_child(ctx: CheckContext, step: StepInfo, ref: str, span: Span) -> Iterator[Diagnostic]:
    if is_file_reference(ref):
        if ctx.resolve_child is None:
            return
        resolved = ctx.resolve_child(ref, span)
        if isinstance(resolved, Diagnostic):
            yield resolved
            return
        declared, label = resolved.inputs, ref
    elif ref not in ctx.index.children:
        yield cat.unknown_ref(cat.UNKNOWN_PIPELINE, "pipeline", span, ref, ctx.index.children)
        return
    else:
        declared, label = ctx.index.children[ref].inputs(), ref
    yield from _check_child_inputs(ctx, step, label, declared, span)


def _check_child_inputs(
    ctx: CheckContext, step: StepInfo, child: str, declared: dict[str, Any], span: Span
) -> Iterator[Diagnostic]:
    given = step.raw.get("inputs")
    given = given if isinstance(given, dict) else {}
    for name, spec in declared.items():
        required = not (isinstance(spec, dict) and "default" in spec)
        if required and name not in given:
            yield cat.missing_input(span, child, name)
    for name in given:
        if name not in declared:
            yield cat.unknown_input(ctx.key_span((*step.path, "inputs", name)), child, name, declared)


def check_routes(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Every choice a route's rules or default can make has a branch."""
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            route, branches = step.raw.get("route"), step.raw.get("branches")
            if step.kind != "route" or not isinstance(route, dict):
                continue
            names = list(branches) if isinstance(branches, dict) else []
            for i, rule in enumerate(route.get("rules") or []):
                if isinstance(rule, dict):
                    yield from _check_choices(
                        ctx, rule.get("choose"), (*step.path, "route", "rules", i, "choose"), names
                    )
            yield from _check_choices(ctx, route.get("default"), (*step.path, "route", "default"), names)


def _check_choices(ctx: CheckContext, value: Any, path: JsonPath, branches: list[str]) -> Iterator[Diagnostic]:
    choices = (
        [(value, path)]
        if isinstance(value, str)
        else [(v, (*path, i)) for i, v in enumerate(value if isinstance(value, list) else []) if isinstance(v, str)]
    )
    for choice, choice_path in choices:
        if choice not in branches:
            yield cat.route_choice_without_branch(ctx.span(choice_path), choice, branches)


def _emitted_events(index: DocIndex) -> set[str]:
    events: set[str] = set()
    for pipeline in index.pipelines():
        for step in pipeline.ordered:
            emit = step.raw.get("emit")
            if isinstance(emit, dict) and isinstance(emit.get("event"), str):
                events.add(emit["event"])
    return events


def check_events(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Waits and triggers on events nothing emits are probably typos (they may still come as signals)."""
    emitted = _emitted_events(ctx.index)
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            wait = step.raw.get("wait")
            waited = wait.get("event") if step.kind == "wait" and isinstance(wait, dict) else None
            if isinstance(waited, str) and waited not in emitted:
                yield cat.unknown_event(ctx.span((*step.path, "wait", "event")), waited, emitted)
        for i, trigger in enumerate(pipeline.raw.get("triggers") or []):
            if not isinstance(trigger, dict):
                continue
            path = (*pipeline.path, "triggers", i)
            if isinstance(trigger.get("event"), str) and trigger["event"] not in emitted:
                yield cat.unknown_event(ctx.span((*path, "event")), trigger["event"], emitted)
            for key in ("failed", "completed"):
                target = trigger.get(key)
                if isinstance(target, str) and target not in pipeline.steps:
                    yield cat.unknown_ref(cat.UNKNOWN_STEP, "step", ctx.span((*path, key)), target, pipeline.steps)


def check_embedded_schemas(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Agents' and pipelines' output schemas and input schemas are themselves valid JSON schemas, with patterns that
    compile — otherwise the run would fail (or crash) on the first answer or input it checks."""
    for name, agent in ctx.index.section("agents").items():
        if isinstance(agent, dict) and isinstance(agent.get("output_schema"), dict):
            yield from _check_one_schema(ctx, ("agents", name, "output_schema"), agent["output_schema"])
    for pipeline in ctx.index.pipelines():
        if isinstance(pipeline.raw.get("output_schema"), dict):
            yield from _check_one_schema(ctx, (*pipeline.path, "output_schema"), pipeline.raw["output_schema"])
        for name, spec in pipeline.inputs().items():
            if isinstance(spec, dict):
                schema = {k: v for k, v in spec.items() if k not in ("default", "description")}
                path = (*pipeline.path, "inputs", name)
                problems = list(_check_one_schema(ctx, path, schema))
                yield from problems
                if not problems and "default" in spec:
                    yield from _check_default(ctx, (*path, "default"), spec["default"], schema)


def _check_default(ctx: CheckContext, path: JsonPath, default: Any, schema: dict[str, Any]) -> Iterator[Diagnostic]:
    """An input's default obeys its own schema: a run without the input would otherwise start with a value the
    input refuses (or fail only then)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(default))
    if error is not None:
        where = (*path, *error.absolute_path)
        message = error.message if len(error.message) <= 120 else error.message[:119] + "…"
        raw = ctx.doc.source_map.raw.get(where)  # a number or boolean as written, where text was meant
        wants_text = error.validator == "type" and "string" in str(error.validator_value)
        hint = f"quote it: '{raw}'" if raw is not None and wants_text else ""
        yield cat.invalid_value(
            ctx.span(where),
            f"the default breaks the input's own schema: {message}",
            hint=hint or "change the default, or the schema, so that they agree",
        )


def _check_one_schema(ctx: CheckContext, path: JsonPath, schema: dict[str, Any]) -> Iterator[Diagnostic]:
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = (*path, *exc.relative_path)
        if exc.relative_path and exc.relative_path[-1] == "type" and isinstance(exc.instance, str):
            yield cat.invalid_value(
                ctx.span(where),
                f"unknown JSON schema type {exc.instance!r}",
                hint=cat.did_you_mean(exc.instance, _JSON_TYPES) or "use " + ", ".join(_JSON_TYPES),
            )
        else:
            yield cat.invalid_value(ctx.span(where), f"not a valid JSON schema: {exc.message}")
        return
    for where, pattern in _patterns(schema, path):
        try:
            re.compile(pattern)
        except re.error as exc:
            yield cat.invalid_value(ctx.span(where), f"pattern {pattern!r} is not a valid regular expression: {exc}")


_JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")


def _patterns(schema: Any, path: JsonPath) -> Iterator[tuple[JsonPath, str]]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                yield (*path, key), value
            else:
                yield from _patterns(value, (*path, key))
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _patterns(value, (*path, i))


def check_joins(ctx: CheckContext) -> Iterator[Diagnostic]:
    """`join: {at_least: K}` on a parallel group with fewer than K branches can never succeed."""
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            join, branches = step.raw.get("join"), step.raw.get("parallel")
            k = join.get("at_least") if isinstance(join, dict) else None
            if step.kind == "parallel" and isinstance(k, int) and isinstance(branches, list) and k > len(branches):
                yield cat.invalid_value(
                    ctx.span((*step.path, "join", "at_least")),
                    f"at_least {k} can never be met: the group has {len(branches)} branch(es)",
                )


def check_fixture_paths(ctx: CheckContext) -> Iterator[Diagnostic]:
    """A model's `fixture:` stays in the root pipeline's folder tree, as child pipelines do (flowctl/dsl/paths.py)."""
    if ctx.folders is None:
        return
    base, root = ctx.folders
    for name, model in ctx.index.section("models").items():
        fixture = model.get("fixture") if isinstance(model, dict) else None
        if isinstance(fixture, str) and confine(root, base, fixture) is None:
            span = ctx.span(("models", name, "fixture"))
            yield cat.path_escape(span, fixture, "fixture path", "the pipeline's folder")


def check_serve(ctx: CheckContext) -> Iterator[Diagnostic]:
    """`serve:` hints that contradict each other: a read-only tool has no destructive or idempotent hint."""
    serve = ctx.index.data.get("serve")
    if isinstance(serve, dict) and serve.get("read_only") is True:
        for key in ("destructive", "idempotent"):
            if key in serve:
                yield cat.serve_hint_unused(ctx.key_span(("serve", key)), key)


CHECKS: tuple[Callable[[CheckContext], Iterator[Diagnostic]], ...] = (
    check_definitions,
    check_fixture_paths,
    check_servers,
    check_server_values,
    check_server_context,
    check_duplicate_ids,
    check_needs,
    check_cycles,
    check_templates,
    check_template_limits,
    check_fan_outs,
    check_state_updates,
    check_agent_choices,
    check_children,
    check_dispatch,
    check_parent_state,
    check_routes,
    check_route_options,
    check_events,
    check_trigger_limits,
    check_embedded_schemas,
    check_joins,
    check_serve,
)


def check_document(ctx: CheckContext) -> list[Diagnostic]:
    diagnostics: list[Diagnostic] = []
    for check in CHECKS:
        diagnostics.extend(check(ctx))
    return diagnostics


__all__ = ["CHECKS", "CheckContext", "ChildInfo", "ChildResolver", "check_document"]
