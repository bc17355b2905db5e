"""Stage 3, checks (step values): what a step's fan-out and state updates name, checked before anything runs.

- `for_each` gives a list: a list, or one `{{ expression }}`; text (`for_each: inputs.items`) is a mistake.
- `item_id:` (with `for_each` only) differs per item: a template.
- `as:` names a new variable: not one of the roots a template reads, nor an enclosing fan-out's item variable.
- `set:` writes declared state keys only (the run would otherwise stop with the first write).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from flowctl.dsl import catalogue as cat
from flowctl.dsl.check_context import CheckContext
from flowctl.dsl.diagnostics import Diagnostic
from flowctl.dsl.index import StepInfo
from flowctl.dsl.templates import TemplateProblem, TextValue, compile_string_value, has_template

# Names every template may read, or that flowctl binds itself: an item variable may not hide them.
RESERVED_NAMES = ("inputs", "steps", "state", "run", "now", "event", "loop", "output", "index")

# `inputs.items`, `steps.plan.output.tasks`, `state['queue']`: text that reads like a variable path
_VARIABLE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\]]+\])+$")


def check_fan_outs(ctx: CheckContext) -> Iterator[Diagnostic]:
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            if "for_each" not in step.raw:
                if "item_id" in step.raw:
                    yield cat.invalid_value(
                        ctx.key_span((*step.path, "item_id")),
                        "`item_id` names the items of a fan-out, and this step has no `for_each`",
                        hint="add `for_each`, or remove `item_id` (a single child run is `<run>/<step>`)",
                    )
                continue
            yield from _check_items(ctx, step)
            yield from _check_item_name(ctx, step)
            yield from _check_item_id(ctx, step)


def _check_items(ctx: CheckContext, step: StepInfo) -> Iterator[Diagnostic]:
    items = step.raw["for_each"]
    if not isinstance(items, str):
        return
    span = ctx.span((*step.path, "for_each"))
    if not has_template(items):
        text = items.strip()
        hint = (
            f'write it as an expression: "{{{{ {text} }}}}"'
            if _VARIABLE_PATH.match(text) or text in RESERVED_NAMES
            else 'give a list, or one expression that gives a list: "{{ steps.plan.output.tasks }}"'
        )
        yield cat.invalid_value(span, f"`for_each` is the text {items!r}, not a list", hint)
        return
    try:
        value = compile_string_value(items, span)
    except TemplateProblem:
        return  # reported by the template checks
    if isinstance(value, TextValue):
        yield cat.invalid_value(
            span,
            "`for_each` renders to text, not a list: it mixes text and `{{ }}`",
            hint='write exactly one expression, such as "{{ inputs.a + inputs.b }}"',
        )


def _check_item_id(ctx: CheckContext, step: StepInfo) -> Iterator[Diagnostic]:
    """An `item_id` without a template names every item alike: the run would refuse it."""
    item_id = step.raw.get("item_id")
    if isinstance(item_id, str) and not has_template(item_id):
        yield cat.invalid_value(
            ctx.span((*step.path, "item_id")),
            f"`item_id` is the text {item_id!r}, the same for every item; item ids must be unique",
            hint=f'name each item from its data, such as "{item_id}-{{{{ index }}}}"',
        )


def _check_item_name(ctx: CheckContext, step: StepInfo) -> Iterator[Diagnostic]:
    name = step.raw.get("as")
    if not isinstance(name, str):
        return
    span = ctx.span((*step.path, "as"))
    if name in RESERVED_NAMES:
        yield cat.invalid_value(
            span, f"the item variable {name!r} would hide `{name}` in the step's templates", hint="choose another name"
        )
        return
    container = step.container
    while container is not None:
        if container.fan_out_var == name:
            yield cat.invalid_value(
                span,
                f"the item variable {name!r} would hide the item of the enclosing fan-out {container.id!r}",
                hint="choose another name",
            )
            return
        container = container.container


def check_state_updates(ctx: CheckContext) -> Iterator[Diagnostic]:
    """`set:` writes only keys declared under the pipeline's `state:` (each key's reducer comes from there)."""
    for pipeline in ctx.index.pipelines():
        declared = pipeline.state_keys()
        for step in pipeline.ordered:
            updates = step.raw.get("set")
            if not isinstance(updates, dict):
                continue
            for key in updates:
                if key not in declared:
                    yield cat.undeclared_state_key(ctx.key_span((*step.path, "set", key)), key, declared)
