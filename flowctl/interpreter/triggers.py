"""Triggers: work that starts on an event, on a step's completion or failure (recovery), or when a condition on
state becomes true (thresholds). Fired triggers run their steps in the pipeline's task group, beside the main steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anyio.abc import TaskGroup

from flowctl.dsl import ir
from flowctl.dsl.templates import RenderError
from flowctl.interpreter.context import RunContext, Scope, StepResult
from flowctl.interpreter.events import Event
from flowctl.interpreter.state import Change

if TYPE_CHECKING:
    from flowctl.interpreter.engine import Engine


class TriggerSet:
    def __init__(self, engine: Engine, ctx: RunContext, tg: TaskGroup) -> None:
        self.engine = engine
        self.ctx = ctx
        self.tg = tg
        self.fired: dict[str, int] = {}
        self.triggers = ctx.pipeline.triggers
        self.active = bool(self.triggers)
        if not self.active:
            return
        ctx.runtime.bus.subscribe(self._on_event)
        ctx.step_listeners.append(self._on_step)
        ctx.state.listeners.append(self._on_state)

    def main_finished(self) -> None:
        """Fired triggers keep running; nothing new subscribes after the pipeline ends."""
        if self.active:
            self.ctx.runtime.bus.unsubscribe(self._on_event)

    def _fire(self, trigger: ir.Trigger, event: dict[str, Any]) -> None:
        count = self.fired.get(trigger.id, 0)
        if trigger.once and count:
            return
        self.fired[trigger.id] = count + 1
        scope = Scope(prefix=f"{trigger.id}#{count + 1}/", variables={"event": event})
        self.ctx.runtime.reporter.event(self.ctx.run_id, f"trigger {trigger.id}", trigger.kind.value)
        self.tg.start_soon(self.engine.run_list, self.ctx, trigger.steps, scope)

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
        for trigger in self.triggers:
            if trigger.kind is not ir.TriggerKind.WHEN or trigger.condition is None:
                continue
            if trigger.once and self.fired.get(trigger.id):
                continue
            try:
                hit = trigger.condition.evaluate(self.ctx.template_context(Scope()))
            except RenderError:
                hit = False  # a threshold over state that is not there yet is simply not reached
            if hit:
                self._fire(trigger, {"name": "when", "data": None, "error": None, "source": source, "step": source})
