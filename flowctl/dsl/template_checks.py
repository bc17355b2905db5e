"""Stage 3, checks (templates): every template and expression parses, and every variable it reads names something
that exists and is certain to have run — inputs, state keys, run fields, event and loop variables, and step results
that are dependencies of the reading step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flowctl.dsl import catalogue as cat
from flowctl.dsl.check_context import CheckContext, agent_refs
from flowctl.dsl.diagnostics import Diagnostic, Span
from flowctl.dsl.index import DocIndex, PipelineInfo, Region, StepInfo
from flowctl.dsl.kinds import KINDS, at
from flowctl.dsl.loader import JsonPath
from flowctl.dsl.template_refs import jinja_loop_misuses, reference_lines
from flowctl.dsl.templates import (
    ENV,
    JINJA_GLOBALS,
    Reference,
    TemplateProblem,
    compile_expression,
    compile_string_value,
    compile_text,
    has_template,
    literal_limit_problems,
)

STEP_FIELDS = ("output", "status", "error", "attempts")
RUN_FIELDS = ("id", "pipeline", "started_at", "status", "parent_id", "attempt", "file")
EVENT_FIELDS = ("name", "data", "error", "source", "step")
LOOP_FIELDS = ("iteration", "previous", "index")
BASE_ROOTS = frozenset({"inputs", "steps", "state", "run", "now"})


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

    for spec in KINDS[step.kind].fields if step.kind in KINDS else ():
        allowed = (fan if spec.fan_out else roots) | spec.roots
        for where, value in at(raw, spec.path, path):
            sub = where[len(path) :]
            if spec.form == "value":
                for leaf, _ in _value_leaves(value, sub):
                    yield field_(leaf, "value", allowed)
            elif isinstance(value, str):
                yield field_(sub, spec.form, allowed)
    if isinstance(raw.get("for_each"), str):
        yield field_(("for_each",), "value", roots)
    if isinstance(raw.get("item_id"), str):
        yield field_(("item_id",), "value", fan)
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
    agent_roots = frozenset({"inputs", "state", "run", "now"})
    for name, agent in index.section("agents").items():
        if not isinstance(agent, dict):
            continue
        params = agent.get("params")  # a parameterised agent's parameters
        own = frozenset(p for p in params if isinstance(p, str)) if isinstance(params, list) else frozenset()
        instruction = agent.get("instruction")
        if isinstance(instruction, str):
            yield TemplateField(("agents", name, "instruction"), "text", agent_roots | own, None, index.root)
        elif isinstance(instruction, dict):  # a server's prompt: its arguments are rendered like the instruction
            for leaf, _ in _value_leaves(instruction.get("arguments"), ("agents", name, "instruction", "arguments")):
                yield TemplateField(leaf, "value", agent_roots, None, index.root)
        for i, resource in enumerate(agent.get("resources") or []):
            arguments = resource.get("arguments") if isinstance(resource, dict) else None
            for leaf, _ in _value_leaves(arguments, ("agents", name, "resources", i, "arguments")):
                yield TemplateField(leaf, "value", agent_roots, None, index.root)
        if isinstance(agent.get("name"), str):  # its reported name and its servers: from its parameters only
            yield TemplateField(("agents", name, "name"), "text", own, None, index.root)
        if isinstance(agent.get("servers"), str):
            yield TemplateField(("agents", name, "servers"), "value", own, None, index.root)


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
    if span.file in ctx.texts:  # a prompt file: its lines are the template's own
        lines = ctx.lines_of(span.file)
        line = min(max(line_in_template, 1), max(len(lines), 1))
        text = lines[line - 1] if lines else ""
        return Span(span.file, line, len(text) - len(text.lstrip()) + 1)
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


_BINDING = re.compile(r"\b(?:for|set|with)\s+$")


def _find_dotted(lines: list[str], span: Span, last: int, text: str) -> Span | None:
    for line_no in range(span.line, min(last, len(lines)) + 1):
        line = lines[line_no - 1]
        start = line.find(text, span.col - 1 if line_no == span.line else 0)
        while start >= 0:
            end = start + len(text)
            before_ok = start == 0 or not (line[start - 1].isalnum() or line[start - 1] in "_.")
            before_ok = before_ok and not _BINDING.search(line, 0, start)  # `{% for x` binds x, it does not read it
            after_ok = end == len(line) or not (line[end].isalnum() or line[end] == "_")
            if before_ok and after_ok:
                return Span(span.file, line_no, start + 1, line_no, end + 1)
            start = line.find(text, start + 1)
    return None


def _first_read_line(tf: TemplateField, source: str, ref: Reference) -> int:
    """The template line where `ref` is first read as a context variable (not where the template binds the same
    name, as in `{% for entry in … %}`)."""
    text = "{{ " + source + " }}" if tf.form == "expr" else source
    try:
        return reference_lines(ENV.parse(text), JINJA_GLOBALS).get(ref, 1)
    except Exception:  # it compiled once already; a position is not worth a crash
        return 1


def _reference_span(ctx: CheckContext, tf: TemplateField, ref: Reference, source: str) -> Span:
    """Point at the reference itself inside the template text (block scalars span several lines)."""
    path = tf.path
    span = ctx.span(path)
    if path in ctx.doc.source_map.blocks or span.file in ctx.texts:  # search from the line Jinja read it on
        read_at = _template_line_span(ctx, path, _first_read_line(tf, source, ref))
        if read_at.line > span.line:
            span = Span(span.file, read_at.line, 1, span.end_line, span.end_col)
    lines = ctx.lines_of(span.file)
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
_SINGLE_EQUALS = re.compile(r"(?<![=!<>])=(?!=)")
# `{{` followed by what cannot start an expression: `{{"a": 1}}`, `{{{`, `{{ }}` — text meant literally
_LITERAL_BRACES = re.compile(r"\{\{\s*(?:[\"'][^\"']*[\"']\s*:|\{|\}\}|[^\w\s(\[\"'{+\-~])")


def _syntax_hint(form: str, source: str, line: int) -> str:
    """What the usual cause of a template syntax error is, when the text shows it."""
    text = source.splitlines()[line - 1] if 0 < line <= len(source.splitlines()) else source
    if form == "expr":
        if has_template(source):
            return _BARE_EXPRESSION_HINT
        if _SINGLE_EQUALS.search(_without_strings(source)):
            return "compare with `==`; a single `=` is not a comparison"
        return ""
    if _LITERAL_BRACES.search(text) or _SINGLE_EQUALS.search(_without_strings(_inside_braces(text))):
        return "if the braces are meant as text, wrap that part in `{% raw %}…{% endraw %}`"
    return ""


def _without_strings(text: str) -> str:
    return re.sub(r"\"[^\"]*\"|'[^']*'", "''", text)


def _inside_braces(text: str) -> str:
    return " ".join(re.findall(r"\{\{(.*?)\}\}", text))


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
            hint = _syntax_hint(tf.form, source, problem.line)
            yield cat.template_syntax(_template_line_span(ctx, tf.path, problem.line), str(problem), hint)
            continue
        if tf.form != "expr" and "{%" in source and "loop." in source:
            yield from _check_jinja_loops(ctx, tf, source)
        seen: set[Reference] = set()
        for ref in refs:
            if ref[:3] not in seen:
                seen.add(ref[:3])
                yield from _check_reference(ctx, tf, ref, ancestors, source)


def _check_jinja_loops(ctx: CheckContext, tf: TemplateField, source: str) -> Iterator[Diagnostic]:
    """Inside `{% for %}`, `loop` is Jinja's: `loop.iteration` there would fail when rendered."""
    try:
        misuses = jinja_loop_misuses(ENV.parse(source), JINJA_GLOBALS)
    except Exception:  # it compiled already; the check is not worth a crash
        return
    for attribute, line in dict(misuses).items():
        span = _template_line_span(ctx, tf.path, line)
        found = _find_dotted(ctx.lines_of(span.file), span, span.end_line or span.line, f"loop.{attribute}")
        diagnostic = cat.undefined_variable(found or span, f"loop.{attribute}", [])
        hint = (
            "inside `{% for %}`, `loop` is Jinja's loop (loop.index, loop.first, loop.length, …); to read flowctl's "
            f"loop there, save it first: `{{% set round = loop.{attribute} %}}` before the `{{% for %}}`"
        )
        yield dataclasses.replace(diagnostic, hint=hint)


def _check_reference(
    ctx: CheckContext, tf: TemplateField, ref: Reference, ancestry: _Ancestry, source: str
) -> Iterator[Diagnostic]:
    root = ref[0]

    def where() -> Span:  # found only when reported: a search through the text
        return _reference_span(ctx, tf, ref, source)

    if root not in tf.roots:
        diagnostic = cat.undefined_variable(where(), root, sorted(tf.roots))
        if tf.form == "text" and len(ref) == 1:  # `Use {{name}} placeholders`: text that looks like a template
            raw = f"if `{{{{ {root} }}}}` is meant as text, wrap it in `{{% raw %}}…{{% endraw %}}`"
            diagnostic = dataclasses.replace(diagnostic, hint=f"{diagnostic.hint}; {raw}")
        yield diagnostic
        return
    if len(ref) < 2:
        return
    name = ".".join(ref[:2])
    if root in ("inputs", "state"):
        declared = _declared(ctx, tf, root)
        if ref[1] not in declared:
            yield cat.undefined_variable(where(), name, [f"{root}.{k}" for k in declared])
    elif root == "run" and ref[1] not in RUN_FIELDS:
        yield cat.undefined_variable(where(), name, [f"run.{k}" for k in RUN_FIELDS])
    elif root == "event" and ref[1] not in EVENT_FIELDS:
        yield cat.undefined_variable(where(), name, [f"event.{k}" for k in EVENT_FIELDS])
    elif root == "loop" and ref[1] not in LOOP_FIELDS:
        yield cat.undefined_variable(where(), name, [f"loop.{k}" for k in LOOP_FIELDS])
    elif root == "steps":
        yield from _check_step_reference(ctx, tf, ref, where, ancestry)


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
    return [p for p in ctx.index.pipelines() if any(name == agent for s in p.ordered for name, _ in agent_refs(s))]


def _check_step_reference(
    ctx: CheckContext, tf: TemplateField, ref: Reference, where: Callable[[], Span], ancestry: _Ancestry
) -> Iterator[Diagnostic]:
    target, pipeline = ref[1], tf.pipeline
    if target not in pipeline.steps:
        yield cat.unknown_ref(cat.UNKNOWN_STEP, "step", where(), target, pipeline.steps)
        return
    if len(ref) > 2 and ref[2] not in STEP_FIELDS:
        yield cat.undefined_variable(where(), ".".join(ref[:3]), [f"steps.{target}.{f}" for f in STEP_FIELDS])
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
            yield cat.step_out_of_scope(where(), target, "reads its own output; use `output` in `set`/`emit`")
        return
    if not ancestry.may_read(step, target):
        fix = (
            f"add {target!r} to the `needs` of {step.id!r}"
            if target in step.list_ids
            else f"read it after the step that contains {target!r}"
        )
        yield cat.step_out_of_scope(where(), target, f"may not have run when {step.id!r} runs; {fix}")


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


# --- the sandbox's limits, where the template says them literally ------------------------------------------------


def check_template_limits(ctx: CheckContext) -> Iterator[Diagnostic]:
    """What the run would refuse, found in the template text: a file it would load, an attribute the sandbox
    refuses, literal numbers past a rendering limit (`range(10**9)`, `9**(9**9)`, `'x' * 10**11`)."""
    report = {"include": cat.template_include, "attribute": cat.unsafe_attribute, "budget": cat.template_budget}
    for tf in template_fields(ctx.index):
        source = _get(ctx.doc.data, tf.path)
        if isinstance(source, str) and (tf.form == "expr" or has_template(source)):
            for kind, line, detail in literal_limit_problems(source, expression=tf.form == "expr"):
                yield report[kind](_template_line_span(ctx, tf.path, line), detail)
