"""Triggers: work that starts on an event, on a step's completion or failure (recovery), or when a condition on
state becomes true (thresholds). Fired triggers run their steps in the pipeline's task group, beside the main steps,
and events their steps emit fire triggers like any other: the group, and so the run's body, ends only when it is
quiescent (main steps done, no triggered steps running; events are delivered as they are emitted, so none is ever
pending). A `once: false` trigger fires at most `max_firings` times: one firing more stops the run with
`trigger-limit`, so a loop of events cannot run forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anyio.abc import TaskGroup

from flowctl.dsl import ir
from flowctl.dsl.templates import RenderError
from flowctl.interpreter.engine.context import RunContext, Scope, StepResult
from flowctl.interpreter.engine.events import Event
from flowctl.interpreter.engine.state import Change
from flowctl.interpreter.errors import TriggerLimitExceeded

if TYPE_CHECKING:
    from flowctl.interpreter.engine.protocol import StepEngine


class TriggerSet:
    """The triggers of one pipeline run. They fire only while the pipeline's task group is open (`open` to
    `close`): a step of `finally`, which runs after the group, never starts a trigger."""

    def __init__(self, engine: StepEngine, ctx: RunContext) -> None:
        self.engine = engine
        self.ctx = ctx
        self.tg: TaskGroup | None = None
        self.fired: dict[str, int] = {}
        self.holding: set[str] = set()  # `when` triggers whose condition held at the last check (edge detection)
        self.triggers = ctx.pipeline.triggers
        self.active = bool(self.triggers)
        self.failure: TriggerLimitExceeded | None = None  # a trigger went past its `max_firings`

    def open(self, tg: TaskGroup) -> None:
        self.tg = tg
        if not self.active:
            return
        self.ctx.runtime.bus.subscribe(self._on_event)
        self.ctx.step_listeners.append(self._on_step)
        self.ctx.state.listeners.append(self._on_state)

    def close(self) -> None:
        """The task group has ended: stop listening to events, steps and state."""
        if self.active and self.tg is not None:
            self.active = False
            self.ctx.runtime.bus.unsubscribe(self._on_event)
            self.ctx.step_listeners.remove(self._on_step)
            self.ctx.state.listeners.remove(self._on_state)

    def _fire(self, trigger: ir.Trigger, event: dict[str, Any]) -> None:
        if not self.active or self.tg is None:
            return
        count = self.fired.get(trigger.id, 0)
        if trigger.once and count:
            return
        if count >= trigger.max_firings:
            self._stop(trigger)
            return
        self.fired[trigger.id] = count + 1
        # each firing gets its own step results: with `once: false`, firings can run at the same time
        scope = Scope(prefix=f"{trigger.id}#{count + 1}/", variables={"event": event}).isolated()
        self.ctx.runtime.reporter.event(self.ctx.run_id, f"trigger {trigger.id}", trigger.kind.value)
        self.tg.start_soon(self.engine.run_list, self.ctx, trigger.steps, scope)

    def _stop(self, trigger: ir.Trigger) -> None:
        """One firing past the limit: nothing more starts, what runs is cancelled, and the run fails with why."""
        assert self.tg is not None
        self.active = False
        self.failure = TriggerLimitExceeded(
            f"trigger {trigger.id!r} would fire more than max_firings={trigger.max_firings} times in run "
            f"{self.ctx.run_id!r}: its steps keep causing what starts it again (a loop of events?); make the loop "
            "stop, or raise `max_firings`",
            span=trigger.span,
        )
        self.tg.cancel_scope.cancel()

    def _on_event(self, event: Event) -> None:
        for trigger in self.triggers:
            if trigger.kind is ir.TriggerKind.EVENT and trigger.target == event.name:
                self._fire(trigger, event.as_context())

    def _on_step(self, step_id: str, result: StepResult) -> None:
        for trigger in self.triggers:
            if trigger.target != step_id:
                continue
            if trigger.kind is ir.TriggerKind.FAILED and result.status == "failed":
                self._fire(
                    trigger, {"name": "failed", "data": None, "error": result.error, "source": step_id, "step": step_id}
                )
            elif trigger.kind is ir.TriggerKind.COMPLETED and result.status == "succeeded":
                self._fire(
                    trigger,
                    {"name": "completed", "data": result.output, "error": None, "source": step_id, "step": step_id},
                )
        self._check_conditions(step_id)

    def _on_state(self, change: Change) -> None:
        self._check_conditions(change.step)

    def _check_conditions(self, source: str) -> None:
        """A `when` trigger fires when its condition becomes true (an edge, not a level): with `once: false` it fires
        again only after the condition was false in between, never on every change while it holds."""
        for trigger in self.triggers:
            if trigger.kind is not ir.TriggerKind.WHEN or trigger.condition is None:
                continue
            if trigger.once and self.fired.get(trigger.id):
                continue
            try:
                hit = bool(trigger.condition.evaluate(self.ctx.template_context(Scope())))
            except RenderError:
                hit = False  # a threshold over state that is not there yet is simply not reached
            if not hit:
                self.holding.discard(trigger.id)
            elif trigger.id not in self.holding:
                self.holding.add(trigger.id)
                self._fire(trigger, {"name": "when", "data": None, "error": None, "source": source, "step": source})
