"""The step-kind registry: one `KindSpec` per step kind, from which the front end derives everything kind-specific.

A spec says, for one kind: the key that makes a step that kind (and whether the key decides the kind on its own), the
JSON schema definition that checks it, the IR body the compiler builds and the function that builds it, the step
lists nested in it, its template-bearing fields, and what it calls out to (agents, tools, child pipelines). Kind
detection (`step_kind`), the walk over nested step lists (`nested_lists`), template fields, references and the
compiler all read these specs; the interpreter keys its handlers by the same names (`engine/handlers.py`), and
`tests/dsl/test_kinds.py` checks that every kind has a schema definition, a compiler, a handler, a golden case and a
section in docs/dsl.md. Adding a kind: docs/contributing.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from flowctl.dsl import ir
from flowctl.dsl.diagnostics import Span
from flowctl.dsl.loader import JsonPath
from flowctl.dsl.templates import CompiledValue, compile_text, has_template

ANY = "*"  # in a spec's path: every key of a mapping or every index of a list


class BodyCompiler(Protocol):
    """What a kind's body compiler may use of the compiler (compile.py's `_Compiler`)."""

    def span(self, path: JsonPath) -> Span: ...
    def value(self, raw: Any, path: JsonPath) -> CompiledValue: ...
    def expr(self, raw: Any, path: JsonPath) -> ir.Expression | None: ...
    def condition(self, raw: Any, path: JsonPath) -> ir.Expression: ...
    def steps(self, raws: list[dict[str, Any]], path: JsonPath, *, concurrent: bool) -> tuple[ir.Step, ...]: ...
    def emit(self, raw: dict[str, Any], path: JsonPath) -> ir.EmitSpec: ...
    def join(self, raw: Any) -> ir.Join: ...
    def duration(self, raw: Any) -> float | None: ...
    def child_key(self, ref: str) -> str: ...
    def pipeline_names(self) -> list[str]: ...


BodyCompile = Callable[[BodyCompiler, dict[str, Any], JsonPath], ir.StepBody]


@dataclass(frozen=True, slots=True)
class NestedList:
    """A step list inside a step of this kind, at `path` under the step (`*`: each branch)."""

    path: JsonPath
    concurrent: bool = False  # its steps do not depend on the previous one (parallel branches)
    loop: bool = False  # its steps run once per iteration (`loop` variables are in scope)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A template-bearing field: `text` (a prompt), `expr` (a condition) or `value` (any YAML value whose strings
    may hold templates)."""

    path: JsonPath
    form: str
    roots: frozenset[str] = frozenset()  # variable roots it may read besides the step's own
    fan_out: bool = False  # it is rendered per fan-out item, so the item variable is in scope


@dataclass(frozen=True, slots=True)
class RefSpec:
    """A name the step calls out to: an `agent`, a `tool` (`server.tool`) or a `pipeline` (a name or a file)."""

    target: str
    path: JsonPath


@dataclass(frozen=True, slots=True)
class FileField:
    """A key naming a file whose text stands for a template field (`prompt_file:` for `prompt:`), in the mapping at
    `where` under the step; prompt_files.py reads it into `field` before the checks."""

    where: JsonPath
    key: str
    field: str


@dataclass(frozen=True, slots=True)
class KindSpec:
    name: str
    body: type  # the IR body its compiler returns
    compile: BodyCompile
    primary: bool = True  # False for `emit` and `set`, which are also common keys of every other kind
    nested: tuple[NestedList, ...] = ()
    fields: tuple[FieldSpec, ...] = ()
    refs: tuple[RefSpec, ...] = ()
    files: tuple[FileField, ...] = ()  # keys naming the file of a template field
    calls_out: Callable[[dict[str, Any]], bool] = lambda raw: False  # calls a model or tool itself: transient retry
    fan_out: bool = False  # admits `for_each`

    @property
    def schema_def(self) -> str:
        """Its definition under `$defs` in flowctl/schemas/pipeline.schema.json."""
        return f"{self.name}Step"

    @property
    def node_kind(self) -> ir.NodeKind:
        return ir.NodeKind(self.name)


# --- body compilers ---------------------------------------------------------------------------------------------


def is_file_reference(ref: str) -> bool:
    """`pipeline: ./child.yaml` names a file; `pipeline: child` names a pipeline defined in this file."""
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _agent(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.AgentCall:
    raw_prompt = raw.get("prompt", "")
    server_prompt = None
    if isinstance(raw_prompt, dict):  # a server's prompt: its messages open the conversation
        prompt_arguments = c.value(raw_prompt.get("arguments") or {}, (*path, "prompt", "arguments"))
        span = c.span((*path, "prompt"))
        server_prompt = ir.ServerPrompt(raw_prompt["server"], raw_prompt["prompt"], prompt_arguments, span)
        raw_prompt = ""
    prompt = compile_text(raw_prompt, c.span((*path, "prompt")))
    agent = raw["agent"]
    if isinstance(agent, dict):  # a parameterised agent: `{use: executor, with: {type: …}}`
        arguments = agent.get("with") or {}
        values = tuple((k, c.value(v, (*path, "agent", "with", k))) for k, v in arguments.items())
        return ir.AgentCall(agent["use"], prompt, arguments=values, server_prompt=server_prompt)
    if has_template(agent):  # chosen by an expression over the declared agents
        choose = c.value(agent, (*path, "agent"))
        return ir.AgentCall("", prompt, choose=choose, default=raw.get("default_agent"), server_prompt=server_prompt)
    return ir.AgentCall(agent, prompt, server_prompt=server_prompt)


def _tool(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.ToolCall:
    server, _, tool = raw["tool"].partition(".")
    return ir.ToolCall(server, tool, c.value(raw.get("args") or {}, (*path, "args")))


def _resource(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.ResourceRead:
    body = raw["resource"]
    arguments = c.value(body.get("arguments") or {}, (*path, "resource", "arguments"))
    return ir.ResourceRead(body["server"], body["uri"], arguments, c.span((*path, "resource")))


def _parallel(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.ParallelGroup:
    branches = c.steps(raw["parallel"], (*path, "parallel"), concurrent=True)
    return ir.ParallelGroup(branches, c.join(raw.get("join")), raw.get("max_concurrency"))


def _child(c: BodyCompiler, name: str) -> ir.ChildRef:
    is_file = is_file_reference(name)
    return ir.ChildRef(name, c.child_key(name) if is_file else name, is_file)


def _pipeline(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.ChildPipeline:
    ref: str = raw["pipeline"]
    inputs = c.value(raw.get("inputs") or {}, (*path, "inputs"))
    if not has_template(ref):
        child = _child(c, ref)
        return ir.ChildPipeline(child.ref, child.is_file, inputs)
    default = raw.get("default_pipeline")
    dispatch = ir.Dispatch(
        name=c.value(ref, (*path, "pipeline")),
        choices={name: _child(c, name) for name in raw.get("choices") or c.pipeline_names()},
        on_unknown=ir.OnUnknown(raw.get("on_unknown", "default" if default else "report")),
        default=_child(c, default) if default else None,
    )
    return ir.ChildPipeline("", False, inputs, dispatch)


def _route(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.Route:
    route = raw["route"]
    rules = tuple(
        ir.RouteRule(
            c.condition(rule["when"], (*path, "route", "rules", i, "when")),
            _names(rule["choose"]),
            c.span((*path, "route", "rules", i)),
        )
        for i, rule in enumerate(route.get("rules") or [])
    )
    prompt = route.get("prompt")
    return ir.Route(
        rules=rules,
        agent=route.get("agent"),
        prompt=compile_text(prompt, c.span((*path, "route", "prompt"))) if isinstance(prompt, str) else None,
        multiple=bool(route.get("multiple", False)),
        default=_names(route.get("default")),
        on_unknown=ir.OnUnknown(route.get("on_unknown", "report")),
        branches={
            name: c.steps(steps, (*path, "branches", name), concurrent=False) for name, steps in raw["branches"].items()
        },
        sequential=bool(route.get("sequential", False)),
        constraint=str(route.get("constraint", "system")),
        unknown_in_results=bool(route.get("unknown_in_results", False)),
    )


def _loop(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.Loop:
    loop = raw["loop"]
    return ir.Loop(
        max_iterations=int(loop["max_iterations"]),
        until=c.expr(loop.get("until"), (*path, "loop", "until")),
        steps=c.steps(loop["steps"], (*path, "loop", "steps"), concurrent=False),
    )


def _wait(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.Wait:
    wait = raw["wait"]
    return ir.Wait(wait["event"], c.duration(wait.get("timeout")), c.expr(wait.get("match"), (*path, "wait", "match")))


def _emit(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.EmitSpec:
    return c.emit(raw["emit"], (*path, "emit"))


def _set(c: BodyCompiler, raw: dict[str, Any], path: JsonPath) -> ir.SetState:
    return ir.SetState()


def _route_calls_out(raw: dict[str, Any]) -> bool:
    route = raw.get("route")
    return isinstance(route, dict) and "agent" in route


# --- the registry -----------------------------------------------------------------------------------------------

_EVENT = frozenset({"event"})

KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec(
            "agent",
            ir.AgentCall,
            _agent,
            fields=(
                FieldSpec(("prompt",), "text", fan_out=True),
                FieldSpec(("prompt", "arguments"), "value", fan_out=True),
                FieldSpec(("agent",), "value", fan_out=True),
            ),
            refs=(
                RefSpec("agent", ("agent",)),
                RefSpec("agent", ("agent", "use")),
                RefSpec("agent", ("default_agent",)),
            ),
            files=(FileField((), "prompt_file", "prompt"),),
            calls_out=lambda raw: True,
            fan_out=True,
        ),
        KindSpec(
            "tool",
            ir.ToolCall,
            _tool,
            fields=(FieldSpec(("args",), "value", fan_out=True),),
            refs=(RefSpec("tool", ("tool",)),),
            calls_out=lambda raw: True,
            fan_out=True,
        ),
        KindSpec(
            "resource",
            ir.ResourceRead,
            _resource,
            fields=(FieldSpec(("resource", "arguments"), "value", fan_out=True),),
            calls_out=lambda raw: True,
            fan_out=True,
        ),
        KindSpec("parallel", ir.ParallelGroup, _parallel, nested=(NestedList(("parallel",), concurrent=True),)),
        KindSpec(
            "pipeline",
            ir.ChildPipeline,
            _pipeline,
            fields=(FieldSpec(("pipeline",), "value", fan_out=True), FieldSpec(("inputs",), "value", fan_out=True)),
            refs=(
                RefSpec("pipeline", ("pipeline",)),
                RefSpec("pipeline", ("choices", ANY)),
                RefSpec("pipeline", ("default_pipeline",)),
            ),
            fan_out=True,
        ),
        KindSpec(
            "route",
            ir.Route,
            _route,
            nested=(NestedList(("branches", ANY)),),
            fields=(
                FieldSpec(("route", "rules", ANY, "when"), "expr"),
                FieldSpec(("route", "prompt"), "text"),
            ),
            refs=(RefSpec("agent", ("route", "agent")),),
            files=(FileField(("route",), "prompt_file", "prompt"),),
            calls_out=_route_calls_out,
        ),
        KindSpec(
            "loop",
            ir.Loop,
            _loop,
            nested=(NestedList(("loop", "steps"), loop=True),),
            fields=(FieldSpec(("loop", "until"), "expr", frozenset({"loop"})),),
        ),
        KindSpec("wait", ir.Wait, _wait, fields=(FieldSpec(("wait", "match"), "expr", _EVENT),)),
        KindSpec("emit", ir.EmitSpec, _emit, primary=False),
        KindSpec("set", ir.SetState, _set, primary=False),
    )
}

STEP_KINDS = tuple(KINDS)
_PRIMARY = tuple(name for name, spec in KINDS.items() if spec.primary)
_SECONDARY = tuple(name for name, spec in KINDS.items() if not spec.primary)  # in order of precedence

# Lists nested in a step of any kind (the steps of a `fallback`), walked with the kind's own.
FALLBACK_STEPS = NestedList(("fallback", "steps"))


def step_kinds(raw: Any) -> list[str]:
    """The kind keys that decide what a step mapping is: one for a well-formed step, none or several for a bad one
    (a primary kind key wins over `emit` and `set`, which are also common keys of the other kinds)."""
    primary = [kind for kind in _PRIMARY if kind in raw]
    if primary:
        return primary
    return next(([kind] for kind in _SECONDARY if kind in raw), [])


def step_kind(raw: Any) -> str | None:
    """The kind of a step mapping; the first one when it has several, None when it has none."""
    kinds = step_kinds(raw)
    return kinds[0] if kinds else None


def at(raw: Any, pattern: JsonPath, path: JsonPath) -> Iterator[tuple[JsonPath, Any]]:
    """The values at `pattern` under `raw` (which sits at `path`), `*` expanding to every key or index."""
    if not pattern:
        yield path, raw
        return
    head, rest = pattern[0], pattern[1:]
    if head == ANY:
        items = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
        for key, value in items:
            yield from at(value, rest, (*path, key))
    elif isinstance(raw, dict) and head in raw:
        yield from at(raw[head], rest, (*path, head))


def nested_lists(kind: str | None, raw: Any, path: JsonPath) -> Iterator[tuple[NestedList, JsonPath, Any]]:
    """Every step list nested directly in a step (its kind's, then its fallback's), with its path and raw value
    (not necessarily a list: the schema may have refused it)."""
    spec = KINDS.get(kind) if kind is not None else None
    for nested in (*(spec.nested if spec is not None else ()), FALLBACK_STEPS):
        for list_path, value in at(raw, nested.path, path):
            yield nested, list_path, value


def refs(kind: str, raw: Any, path: JsonPath, target: str) -> Iterator[tuple[str, JsonPath]]:
    """The names of `target` kind (agent, tool, pipeline) a step of `kind` calls out to, as written, with their
    paths (a fallback's agent is a reference of every kind: see check_context.agent_refs). A name given by a
    template is no reference: the names it may give are (`choices:`)."""
    spec = KINDS.get(kind)
    for ref in spec.refs if spec is not None else ():
        if ref.target == target:
            for where, value in at(raw, ref.path, path):
                if isinstance(value, str) and not has_template(value):
                    yield value, where
