"""Stage 3, checks: semantic checks on a loaded, schema-checked document, each in its own small unit.

Every unit is a generator of Diagnostics over a `CheckContext`; `check_document` runs them all. Units tolerate a
partial document (the schema stage may have reported errors) and never raise for user mistakes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Diagnostic, Span
from flowctl.dsl.index import DocIndex, PipelineInfo, Region, StepInfo, is_file_reference
from flowctl.dsl.loader import JsonPath, LoadedDocument
from flowctl.dsl.templates import (
    Reference,
    TemplateProblem,
    compile_expression,
    compile_string_value,
    compile_text,
    has_template,
)

STEP_FIELDS = ("output", "status", "error", "attempts")
RUN_FIELDS = ("id", "pipeline", "started_at", "status", "parent_id", "file")
EVENT_FIELDS = ("name", "data", "error", "source", "step")
LOOP_FIELDS = ("iteration", "previous", "index")
BASE_ROOTS = frozenset({"inputs", "steps", "state", "run"})


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """What the checks need to know about a child pipeline file."""

    path: str
    inputs: dict[str, Any]
    error_count: int


# (reference as written in the pipeline, the file it is written in) → ChildInfo, or a Diagnostic-producing problem
ChildResolver = Callable[[str, Span], "ChildInfo | Diagnostic"]


@dataclass(slots=True)
class CheckContext:
    doc: LoadedDocument
    index: DocIndex
    resolve_child: ChildResolver | None = None
    emitted_events: set[str] = field(default_factory=set)
    _lines: list[str] | None = None

    @property
    def lines(self) -> list[str]:
        """The source split into lines once (template positions are looked up per reference)."""
        if self._lines is None:
            self._lines = self.doc.source.splitlines()
        return self._lines

    def span(self, path: JsonPath) -> Span:
        return self.doc.source_map.value(path)

    def key_span(self, path: JsonPath) -> Span:
        return self.doc.source_map.key(path)


# --- references to definitions ----------------------------------------------------------------------------------


def _agent_refs(step: StepInfo) -> Iterator[tuple[str, JsonPath]]:
    raw = step.raw
    if step.kind == "agent" and isinstance(raw.get("agent"), str):
        yield raw["agent"], (*step.path, "agent")
    route = raw.get("route")
    if step.kind == "route" and isinstance(route, dict) and isinstance(route.get("agent"), str):
        yield route["agent"], (*step.path, "route", "agent")
    fallback = raw.get("fallback")
    if isinstance(fallback, dict) and isinstance(fallback.get("agent"), str):
        yield fallback["agent"], (*step.path, "fallback", "agent")


def check_definitions(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Agents, models and servers named by steps and agents exist."""
    agents, models, servers = (ctx.index.section(k) for k in ("agents", "models", "servers"))
    if not models:
        models = {"default": None}  # without models, the compiler supplies the built-in one, called `default`
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            for name, path in _agent_refs(step):
                if name not in agents:
                    yield cat.unknown_ref(cat.UNKNOWN_AGENT, "agent", ctx.span(path), name, agents)
            fallback = step.raw.get("fallback")
            if isinstance(fallback, dict) and isinstance(fallback.get("model"), str):
                name = fallback["model"]
                if name not in models:
                    yield cat.unknown_ref(
                        cat.UNKNOWN_MODEL, "model", ctx.span((*step.path, "fallback", "model")), name, models
                    )
            if step.kind == "tool" and isinstance(step.raw.get("tool"), str):
                yield from _check_tool_ref(ctx, step, servers)
    for name, agent in agents.items():
        if isinstance(agent, dict):
            yield from _check_agent(ctx, name, agent, models, servers)


def _check_tool_ref(ctx: CheckContext, step: StepInfo, servers: dict[str, Any]) -> Iterator[Diagnostic]:
    ref: str = step.raw["tool"]
    span = ctx.span((*step.path, "tool"))
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


def check_servers(ctx: CheckContext) -> Iterator[Diagnostic]:
    """A server's `command` is a literal: no Jinja, no ${VAR} (code execution must never come from templates)."""
    base = ctx.index.servers_path()
    for name, server in ctx.index.section("servers").items():
        command = server.get("command") if isinstance(server, dict) else None
        if isinstance(command, str) and (has_template(command) or "${" in command or "$(" in command):
            yield cat.templated_command(ctx.span((*base, name, "command")), command)


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


# --- templates ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateField:
    path: JsonPath
    form: str  # text | expr | value
    roots: frozenset[str]  # variable roots allowed here
    step: StepInfo | None
    pipeline: PipelineInfo


def _value_leaves(value: Any, path: JsonPath) -> Iterator[tuple[JsonPath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _value_leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _value_leaves(item, (*path, i))


def _step_roots(step: StepInfo, pipeline: PipelineInfo) -> frozenset[str]:
    roots = set(BASE_ROOTS)
    if step.region == Region.TRIGGER:
        roots.add("event")
    if step.in_loop:
        roots.add("loop")
    container = step.container
    while container is not None:  # a fan-out's item variable reaches nested steps, e.g. a fallback
        if container.fan_out_var:
            roots.update({container.fan_out_var, "index"})
        container = container.container
    return frozenset(roots)


def _step_fields(step: StepInfo, pipeline: PipelineInfo) -> Iterator[TemplateField]:
    raw, path = step.raw, step.path
    roots = _step_roots(step, pipeline)
    fan = roots | ({step.fan_out_var, "index"} if step.fan_out_var else set())

    def field_(subpath: JsonPath, form: str, allowed: frozenset[str] | set[str]) -> TemplateField:
        return TemplateField((*path, *subpath), form, frozenset(allowed), step, pipeline)

    if isinstance(raw.get("prompt"), str):
        yield field_(("prompt",), "text", fan)
    for key in ("args", "inputs"):
        for leaf, _ in _value_leaves(raw.get(key), (key,)):
            yield field_(leaf, "value", fan)
    if isinstance(raw.get("for_each"), str):
        yield field_(("for_each",), "value", roots)
    if isinstance(raw.get("when"), str):
        yield field_(("when",), "expr", roots)
    with_output = roots | {"output"}
    for leaf, _ in _value_leaves(raw.get("set"), ("set",)):
        yield field_(leaf, "value", with_output)
    emit = raw.get("emit")
    if isinstance(emit, dict):
        for leaf, _ in _value_leaves(emit.get("data"), ("emit", "data")):
            yield field_(leaf, "value", with_output)
    for leaf, _ in _value_leaves(raw.get("default"), ("default",)):
        yield field_(leaf, "value", roots)
    fallback = raw.get("fallback")
    if isinstance(fallback, dict):
        for leaf, _ in _value_leaves(fallback.get("value"), ("fallback", "value")):
            yield field_(leaf, "value", fan)
    yield from _kind_fields(step, roots, field_)


def _kind_fields(
    step: StepInfo, roots: frozenset[str], field_: Callable[[JsonPath, str, Any], TemplateField]
) -> Iterator[TemplateField]:
    raw = step.raw
    body = raw.get(step.kind)
    if not isinstance(body, dict):
        return
    if step.kind == "route":
        for i, rule in enumerate(body.get("rules") or []):
            if isinstance(rule, dict) and isinstance(rule.get("when"), str):
                yield field_(("route", "rules", i, "when"), "expr", roots)
        if isinstance(body.get("prompt"), str):
            yield field_(("route", "prompt"), "text", roots)
    elif step.kind == "loop" and isinstance(body.get("until"), str):
        yield field_(("loop", "until"), "expr", roots | {"loop"})
    elif step.kind == "wait" and isinstance(body.get("match"), str):
        yield field_(("wait", "match"), "expr", roots | {"event"})


def template_fields(index: DocIndex) -> Iterator[TemplateField]:
    """Every template-bearing field of the document, with the variable roots allowed in it."""
    for pipeline in index.pipelines():
        for step in pipeline.ordered:
            yield from _step_fields(step, pipeline)
        for leaf, _ in _value_leaves(pipeline.raw.get("outputs"), (*pipeline.path, "outputs")):
            yield TemplateField(leaf, "value", BASE_ROOTS, None, pipeline)
        for i, trigger in enumerate(pipeline.raw.get("triggers") or []):
            if isinstance(trigger, dict) and isinstance(trigger.get("when"), str):
                yield TemplateField((*pipeline.path, "triggers", i, "when"), "expr", BASE_ROOTS, None, pipeline)
    for name, agent in index.section("agents").items():
        if isinstance(agent, dict) and isinstance(agent.get("instruction"), str):
            yield TemplateField(
                ("agents", name, "instruction"), "text", frozenset({"inputs", "state", "run"}), None, index.root
            )


def _get(data: Any, path: JsonPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _template_line_span(ctx: CheckContext, path: JsonPath, line_in_template: int) -> Span:
    """The YAML line of a template's line. Only a literal block (`|`) keeps the template's lines one to one; in a
    folded block or a quoted string, lines are folded or escaped, so point at the start of the value instead."""
    span = ctx.span(path)
    lines = ctx.lines
    if path not in ctx.doc.source_map.blocks or not 0 < span.line <= len(lines):
        return span
    if lines[span.line - 1][span.col - 1 : span.col] != "|":
        return span
    line = span.line + max(line_in_template, 1)
    if line > len(lines) or (span.end_line and line > span.end_line):
        return span
    text = lines[line - 1]
    return Span(span.file, line, len(text) - len(text.lstrip()) + 1)


def _find_dotted(lines: list[str], span: Span, last: int, text: str) -> Span | None:
    for line_no in range(span.line, min(last, len(lines)) + 1):
        line = lines[line_no - 1]
        start = line.find(text, span.col - 1 if line_no == span.line else 0)
        while start >= 0:
            end = start + len(text)
            before_ok = start == 0 or not (line[start - 1].isalnum() or line[start - 1] in "_.")
            after_ok = end == len(line) or not (line[end].isalnum() or line[end] == "_")
            if before_ok and after_ok:
                return Span(span.file, line_no, start + 1, line_no, end + 1)
            start = line.find(text, start + 1)
    return None


def _reference_span(ctx: CheckContext, path: JsonPath, ref: Reference) -> Span:
    """Point at the reference itself inside the template text (block scalars span several lines)."""
    span = ctx.span(path)
    lines = ctx.lines
    last = span.end_line if span.end_line >= span.line else span.line
    for parts in range(min(len(ref), 3), 0, -1):  # the longest written form wins: `steps.a.outptu`, then `steps.a`
        found = _find_dotted(lines, span, last, ".".join(ref[:parts]))  # the usual spelling, without a regex
        if found is not None:
            return found
        needle = re.compile(r"\b" + r"(?:['\"]\s*\])?\s*(?:\.\s*|\[\s*['\"])".join(map(re.escape, ref[:parts])) + r"\b")
        for line_no in range(span.line, min(last, len(lines)) + 1):
            text = lines[line_no - 1]
            start = span.col - 1 if line_no == span.line else 0
            match = needle.search(text, start)
            if match:
                return Span(span.file, line_no, match.start() + 1, line_no, match.end() + 1)
    return span


_BARE_EXPRESSION_HINT = "`when`, `until` and `match` take a bare expression: write it without `{{ }}`"


def check_templates(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Templates parse, and every variable they read names something that exists and has run."""
    ancestors = _Ancestry(ctx.index)
    for tf in template_fields(ctx.index):
        source = _get(ctx.doc.data, tf.path)
        if not isinstance(source, str) or (tf.form != "expr" and not has_template(source)):
            continue
        span = ctx.span(tf.path)
        try:
            if tf.form == "text":
                refs = compile_text(source, span).references
            elif tf.form == "expr":
                refs = compile_expression(source, span).references
            else:
                refs = tuple(r for t in compile_string_value(source, span).templates() for r in t.references)
        except TemplateProblem as problem:
            hint = _BARE_EXPRESSION_HINT if tf.form == "expr" and has_template(source) else ""
            yield cat.template_syntax(_template_line_span(ctx, tf.path, problem.line), str(problem), hint)
            continue
        seen: set[Reference] = set()
        for ref in refs:
            if ref[:3] not in seen:
                seen.add(ref[:3])
                yield from _check_reference(ctx, tf, ref, ancestors)


def _check_reference(ctx: CheckContext, tf: TemplateField, ref: Reference, ancestry: _Ancestry) -> Iterator[Diagnostic]:
    root = ref[0]
    span = _reference_span(ctx, tf.path, ref)
    if root not in tf.roots:
        yield cat.undefined_variable(span, root, sorted(tf.roots))
        return
    if len(ref) < 2:
        return
    name = ".".join(ref[:2])
    if root in ("inputs", "state"):
        declared = _declared(ctx, tf, root)
        if ref[1] not in declared:
            yield cat.undefined_variable(span, name, [f"{root}.{k}" for k in declared])
    elif root == "run" and ref[1] not in RUN_FIELDS:
        yield cat.undefined_variable(span, name, [f"run.{k}" for k in RUN_FIELDS])
    elif root == "event" and ref[1] not in EVENT_FIELDS:
        yield cat.undefined_variable(span, name, [f"event.{k}" for k in EVENT_FIELDS])
    elif root == "loop" and ref[1] not in LOOP_FIELDS:
        yield cat.undefined_variable(span, name, [f"loop.{k}" for k in LOOP_FIELDS])
    elif root == "steps":
        yield from _check_step_reference(ctx, tf, ref, span, ancestry)


def _declared(ctx: CheckContext, tf: TemplateField, root: str) -> set[str]:
    """Inputs or state keys a template may read. An agent's instruction is rendered in every pipeline that uses the
    agent, so it may read only what all of them declare (an agent no step uses is checked against the file)."""
    if tf.path[0] != "agents":
        return set(tf.pipeline.inputs() if root == "inputs" else tf.pipeline.state_keys())
    users = _agent_users(ctx, str(tf.path[1]))
    declared = [set(p.inputs() if root == "inputs" else p.state_keys()) for p in users or ctx.index.pipelines()]
    return set.intersection(*declared) if users else set().union(*declared)


def _agent_users(ctx: CheckContext, agent: str) -> list[PipelineInfo]:
    """The pipelines of this file with a step that runs `agent` (as its agent, router or fallback)."""
    return [p for p in ctx.index.pipelines() if any(name == agent for s in p.ordered for name, _ in _agent_refs(s))]


def _check_step_reference(
    ctx: CheckContext, tf: TemplateField, ref: Reference, span: Span, ancestry: _Ancestry
) -> Iterator[Diagnostic]:
    target, pipeline = ref[1], tf.pipeline
    if target not in pipeline.steps:
        yield cat.unknown_ref(cat.UNKNOWN_STEP, "step", span, target, pipeline.steps)
        return
    if len(ref) > 2 and ref[2] not in STEP_FIELDS:
        yield cat.undefined_variable(span, ".".join(ref[:3]), [f"steps.{target}.{f}" for f in STEP_FIELDS])
        return
    step = tf.step
    if step is None or step.region in (Region.TRIGGER, Region.FINALLY):
        return  # outputs, triggers and finally run after (or beside) the main steps: any step may be read
    own_output_fields = ("set", "emit")
    field_path = tf.path[len(step.path) :]
    if field_path == ("loop", "until") and target in {s.id for s in _descendants(step)}:
        return  # `until` is checked after each iteration, when the body has run
    if target == step.id:
        if field_path[0] not in own_output_fields:
            yield cat.step_out_of_scope(span, target, "reads its own output; use `output` in `set`/`emit`")
        return
    if not ancestry.may_read(step, target):
        where = (
            f"add {target!r} to the `needs` of {step.id!r}"
            if target in step.list_ids
            else f"read it after the step that contains {target!r}"
        )
        yield cat.step_out_of_scope(span, target, f"may not have run when {step.id!r} runs; {where}")


class _Ancestry:
    """Which steps are certain to have finished before a step starts (its dependencies, transitively)."""

    def __init__(self, index: DocIndex) -> None:
        self.index = index
        self.memo: dict[tuple[str, str], frozenset[str]] = {}

    def may_read(self, step: StepInfo, target: str) -> bool:
        if step.in_loop and self._same_loop(step, target):
            return True  # inside a loop, later steps of the body hold the previous iteration's outputs
        return target in self.before(step)

    def _same_loop(self, step: StepInfo, target: str) -> bool:
        container = step.container
        while container is not None:
            if container.kind == "loop" and target in {s.id for s in _descendants(container)}:
                return True
            container = container.container
        return False

    def before(self, step: StepInfo) -> frozenset[str]:
        key = (step.pipeline, step.id + "@" + ".".join(map(str, step.path)))
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = frozenset()  # guards against cycles (reported elsewhere)
        pipeline = self.index.root if not step.pipeline else self.index.children[step.pipeline]
        result: set[str] = set()
        for dep in step.deps:
            target = pipeline.steps.get(dep)
            if target is None or dep not in step.list_ids:
                continue
            result.add(dep)
            result.update(s.id for s in _descendants(target))
            result.update(self.before(target))
        if step.container is not None:
            result.update(self.before(step.container))
        self.memo[key] = frozenset(result)
        return self.memo[key]


def _descendants(step: StepInfo) -> Iterator[StepInfo]:
    for child in step.nested:
        yield child
        yield from _descendants(child)


# --- children, routes, events --------------------------------------------------------------------------------------


def check_children(ctx: CheckContext) -> Iterator[Diagnostic]:
    """Child pipelines exist, stay inside the folder tree, are valid, and get exactly the inputs they declare."""
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            ref = step.raw.get("pipeline")
            if step.kind != "pipeline" or not isinstance(ref, str):
                continue
            span = ctx.span((*step.path, "pipeline"))
            if is_file_reference(ref):
                if ctx.resolve_child is None:
                    continue
                resolved = ctx.resolve_child(ref, span)
                if isinstance(resolved, Diagnostic):
                    yield resolved
                    continue
                declared, label = resolved.inputs, ref
            elif ref not in ctx.index.children:
                yield cat.unknown_ref(cat.UNKNOWN_PIPELINE, "pipeline", span, ref, ctx.index.children)
                continue
            else:
                declared, label = ctx.index.children[ref].inputs(), ref
            yield from _check_child_inputs(ctx, step, label, declared)


def _check_child_inputs(
    ctx: CheckContext, step: StepInfo, child: str, declared: dict[str, Any]
) -> Iterator[Diagnostic]:
    given = step.raw.get("inputs")
    given = given if isinstance(given, dict) else {}
    for name, spec in declared.items():
        required = not (isinstance(spec, dict) and "default" in spec)
        if required and name not in given:
            yield cat.missing_input(ctx.span((*step.path, "pipeline")), child, name)
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
    """Agents' output schemas and input schemas are themselves valid JSON schemas, with patterns that compile —
    otherwise the run would fail (or crash) on the first answer or input it checks."""
    for name, agent in ctx.index.section("agents").items():
        if isinstance(agent, dict) and isinstance(agent.get("output_schema"), dict):
            yield from _check_one_schema(ctx, ("agents", name, "output_schema"), agent["output_schema"])
    for pipeline in ctx.index.pipelines():
        for name, spec in pipeline.inputs().items():
            if isinstance(spec, dict):
                schema = {k: v for k, v in spec.items() if k not in ("default", "description")}
                yield from _check_one_schema(ctx, (*pipeline.path, "inputs", name), schema)


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


CHECKS: tuple[Callable[[CheckContext], Iterator[Diagnostic]], ...] = (
    check_definitions,
    check_servers,
    check_duplicate_ids,
    check_needs,
    check_cycles,
    check_templates,
    check_children,
    check_routes,
    check_events,
    check_embedded_schemas,
    check_joins,
)


def check_document(ctx: CheckContext) -> list[Diagnostic]:
    diagnostics: list[Diagnostic] = []
    for check in CHECKS:
        diagnostics.extend(check(ctx))
    return diagnostics
