"""Stage 3, checks (dynamic composition): dispatch by name (`pipeline: "{{ expr }}"` over `choices:`).

Kept apart from checks.py, which owns the references every step kind shares; these units check how the keys of one
feature fit together, where they are literal.
"""

from __future__ import annotations

from collections.abc import Iterator

from flowctl.dsl import catalogue as cat
from flowctl.dsl.check_context import CheckContext
from flowctl.dsl.diagnostics import Diagnostic
from flowctl.dsl.index import StepInfo
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
