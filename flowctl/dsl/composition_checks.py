"""Stage 3, checks (dynamic composition): dispatch by name (`pipeline: "{{ expr }}"` over `choices:`), reuse
(child pipelines that share keys of their caller's state: `parent_state`), the bound on a trigger's firings and the
options of a route that only apply to some routes.

Kept apart from checks.py, which owns the references every step kind shares; these units check how the keys of one
feature fit together, where they are literal.
"""

from __future__ import annotations

from collections.abc import Iterator

from flowctl.dsl import catalogue as cat
from flowctl.dsl.check_context import CheckContext, ChildInfo
from flowctl.dsl.diagnostics import Diagnostic
from flowctl.dsl.index import StepInfo
from flowctl.dsl.kinds import is_file_reference, refs
from flowctl.dsl.loader import JsonPath
from flowctl.dsl.templates import has_template

DISPATCH_KEYS = ("choices", "on_unknown", "default_pipeline")


def dispatches(step: StepInfo) -> bool:
    """A pipeline step that chooses its child by an expression."""
    ref = step.raw.get("pipeline")
    return step.kind == "pipeline" and isinstance(ref, str) and has_template(ref)


def dispatches_over_all_pipelines(step: StepInfo) -> bool:
    """A pipeline step that chooses its child by an expression over every name under `pipelines:`."""
    return dispatches(step) and "choices" not in step.raw


def check_dispatch(ctx: CheckContext) -> Iterator[Diagnostic]:
    """The keys of dispatch by name fit together: they need an expression to apply to, an expression needs names
    to choose from, and `on_unknown: default` needs `default_pipeline` (which nothing else uses)."""
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            if step.kind != "pipeline" or not isinstance(step.raw.get("pipeline"), str):
                continue
            raw = step.raw
            if not dispatches(step):
                for key in DISPATCH_KEYS:
                    if key in raw:
                        yield cat.dispatch_without_expression(ctx.key_span((*step.path, key)), key)
                continue
            if "choices" not in raw and not ctx.index.children:
                yield cat.dispatch_without_choices(ctx.span((*step.path, "pipeline")))
            on_unknown = raw.get("on_unknown")
            if on_unknown == "default" and "default_pipeline" not in raw:
                yield cat.dispatch_default(
                    ctx.span((*step.path, "on_unknown")), "`on_unknown: default` names no `default_pipeline`"
                )
            elif on_unknown in ("report", "fail") and "default_pipeline" in raw:
                yield cat.dispatch_default(
                    ctx.key_span((*step.path, "default_pipeline")),
                    f"`default_pipeline` is never run with `on_unknown: {on_unknown}`",
                )


def _children_run(ctx: CheckContext, step: StepInfo) -> Iterator[tuple[str, tuple[str, ...], JsonPath]]:
    """The child pipelines a step may run (under `pipelines:` or in their own files), each with the keys of its
    caller's state it declares in `parent_state`, and where the step names it."""
    for name, path in refs(step.kind, step.raw, step.path, "pipeline"):
        if path[len(step.path)] != "pipeline" and not dispatches(step):
            continue  # a choice without an expression to choose it: check_dispatch reports it
        if not is_file_reference(name):
            if name in ctx.index.children:
                yield name, tuple(ctx.index.children[name].parent_state()), path
        elif ctx.resolve_child is not None:
            resolved = ctx.resolve_child(name, ctx.span(path))
            if isinstance(resolved, ChildInfo):  # else check_children reports why it cannot be used
                yield name, resolved.parent_state, path
    if dispatches_over_all_pipelines(step):
        for name, child in ctx.index.children.items():
            yield name, tuple(child.parent_state()), (*step.path, "pipeline")


def check_parent_state(ctx: CheckContext) -> Iterator[Diagnostic]:
    """A child's `parent_state` keys are declared by every pipeline that runs it (whether the child is defined
    under `pipelines:` or in its own file), and not in its own `state:`."""
    for child in ctx.index.pipelines():
        own = child.raw.get("state")
        for i, key in enumerate(child.parent_state()):
            if isinstance(own, dict) and key in own:
                yield cat.parent_state_key(
                    ctx.span((*child.path, "parent_state", i)),
                    f"{child.label} declares {key!r} both in `state:` and in `parent_state:`",
                    "a key is either the child's own or its caller's: remove one of the two",
                )
    for pipeline in ctx.index.pipelines():
        declared = pipeline.state_keys()
        for step in pipeline.ordered:
            for name, keys, path in _children_run(ctx, step):
                for key in (key for key in keys if key not in declared):
                    yield cat.parent_state_key(
                        ctx.span(path),
                        f"pipeline {name!r} reads and updates state key {key!r} of its caller, "
                        f"which {pipeline.label} does not declare",
                        f"declare it under `state:` of {pipeline.label}",
                    )


def check_trigger_limits(ctx: CheckContext) -> Iterator[Diagnostic]:
    """`max_firings` bounds a trigger that fires more than once: with `once: true` it is a contradiction."""
    for pipeline in ctx.index.pipelines():
        for i, trigger in enumerate(pipeline.raw.get("triggers") or []):
            if isinstance(trigger, dict) and trigger.get("once") is True and "max_firings" in trigger:
                ident = trigger.get("id")
                name = ident if isinstance(ident, str) else f"#{i + 1}"
                yield cat.once_with_max_firings(ctx.key_span((*pipeline.path, "triggers", i, "max_firings")), name)


def check_route_options(ctx: CheckContext) -> Iterator[Diagnostic]:
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            route = step.raw.get("route")
            if step.kind != "route" or not isinstance(route, dict):
                continue
            if "constraint" in route and "agent" not in route:
                yield cat.route_option_unused(
                    ctx.key_span((*step.path, "route", "constraint")),
                    "`constraint` places what the routing agent is told, and this route has no `agent`",
                )
            prompt = "prompt_file" if "prompt_file" in route else "prompt" if "prompt" in route else None
            if prompt is not None and "agent" not in route:
                yield cat.route_option_unused(
                    ctx.key_span((*step.path, "route", prompt)),
                    f"`{prompt}` is the routing agent's prompt, and this route has no `agent`",
                )
            if route.get("unknown_in_results") is True and route.get("on_unknown") == "fail":
                yield cat.route_option_unused(
                    ctx.key_span((*step.path, "route", "unknown_in_results")),
                    "`unknown_in_results` has no effect with `on_unknown: fail`: an unknown choice fails the step",
                )
