"""Per-step meters: the tokens a step used and the calls it made anew (not replayed), counted into every step that
encloses the current task (a container sees its children's)."""

from __future__ import annotations

import contextvars

from flowctl.interpreter.providers.llm import Usage


class UsageMeter:
    """Tokens used by one step (and everything nested in it), and the LLM/tool calls it executed rather than
    replayed from the journal. Concurrent steps each have their own meter."""

    __slots__ = ("executed", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.executed = 0


# The meters of the steps enclosing the current task: a call adds its usage to each (a container sees its children).
STEP_METERS: contextvars.ContextVar[tuple[UsageMeter, ...]] = contextvars.ContextVar("flowctl_step_meters", default=())


def meter_usage(usage: Usage) -> None:
    for meter in STEP_METERS.get():
        meter.input_tokens += usage.input_tokens
        meter.output_tokens += usage.output_tokens


def meter_execution() -> None:
    """A call was made for real (its result was not in the journal)."""
    for meter in STEP_METERS.get():
        meter.executed += 1
