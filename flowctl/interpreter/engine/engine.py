"""The graph walker: runs step lists readiness-driven, wraps every step in its failure policy, fans out, joins,
fires triggers and runs `finally`. One handler per node kind lives in handlers.py; this module owns the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextlib import nullcontext
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from flowctl.dsl import ir
from flowctl.dsl.templates import RenderError, RenderStopped
from flowctl.interpreter.concurrency import task_group
from flowctl.interpreter.engine.agent import run_agent_step
from flowctl.interpreter.engine.branches import join_output, run_concurrent
from flowctl.interpreter.engine.context import RecordedStep, RunContext, Scope, StepResult
from flowctl.interpreter.engine.observe import STEP_ATTEMPT
from flowctl.interpreter.engine.policies import backoff_delay, retry_notice, with_timeout
from flowctl.interpreter.engine.protocol import Handler, Outcome
from flowctl.interpreter.engine.rendering import handler_within_timeout, take_cancellation
from flowctl.interpreter.engine.run_meta import STEP_PATH, item_names
from flowctl.interpreter.engine.state import UpdateBuffer
from flowctl.interpreter.engine.triggers import TriggerSet
from flowctl.interpreter.errors import (
    DeadlineExceeded,
    FlowctlError,
    OutputsInvalid,
    RenderFailed,
    StepFailed,
    error_json,
    refused,
)
from flowctl.interpreter.meters import STEP_METERS, UsageMeter
from flowctl.interpreter.persistence.store import StepStatus

FINALLY_BOUND_ON_CANCEL = 10.0  # seconds `finally` may take after Ctrl-C before we give up on it
_STATUS = {status.value: status for status in StepStatus}  # a dict lookup: calling the enum costs ~0.5 µs
_SUCCEEDED, _FAILED = StepStatus.SUCCEEDED, StepStatus.FAILED
_NO_DEADLINE = nullcontext()  # stateless, so one instance serves every step without a deadline


def _nested_sets_state(step: ir.Step) -> bool:
    """Whether a step nested (at any depth) in this one has `set:`: only those write into a branch's buffer (the
    step's own `set:` applies once, after its fan-out joins; a child pipeline has a state of its own, and writes the
    keys it shares with its caller at once)."""
    return any(child.updates or child.kind is ir.NodeKind.SET or _nested_sets_state(child) for child in step.children())


def _replayed_whole(recorded: RecordedStep, result: StepResult, meter: UsageMeter) -> bool:
    """A resumed run went through a step that had succeeded, and everything in it came from the journal."""
    return recorded.status == "succeeded" and result.status == "succeeded" and not meter.executed


def _start_row(ctx: RunContext, path: str, kind: str, attempt: int) -> None:
    """The started row of an attempt. On resume, a step's first attempt continues the recorded one when that one
    succeeded (its row stays as it is while it is replayed) or was interrupted (the row is running again, with no
    attempt added); see RecordedStep.continued."""
    recorded = ctx.recorded.get(path) if ctx.recorded is not None and attempt == 1 else None
    if recorded is None or not recorded.continued:
        ctx.runtime.recorder.step_started(ctx.run_id, path, kind)
    elif recorded.status != "succeeded":
        ctx.runtime.recorder.step_started(ctx.run_id, path, kind, new_attempt=False)


def _earlier_attempts(ctx: RunContext, path: str) -> int:
    """Attempts of a step that earlier processes made and this one does not continue (resuming), so that the
    attempts an error names agree with the step's row."""
    recorded = ctx.recorded.get(path) if ctx.recorded is not None else None
    return 0 if recorded is None else recorded.attempts - recorded.continued


def _attempt_ended(
    ctx: RunContext,
    path: str,
    result: StepResult,
    status: StepStatus,
    started_at: float,
    error: FlowctlError | None = None,
    retry_in: float | None = None,
) -> None:
    """Record one attempt of a step that did not succeed at its first try (a lone successful attempt is the step's
    own row). Attempts are numbered over the run's life: a resume goes on counting."""
    attempt = result.attempts + _earlier_attempts(ctx, path)
    error_json = None if error is None else error.to_json()
    ctx.runtime.recorder.attempt_ended(
        ctx.run_id, path, attempt, status, started_at, error=error_json, retry_in=retry_in
    )


def _is_chain(steps: tuple[ir.Step, ...]) -> bool:
    return all(s.needs == ((steps[i - 1].id,) if i else ()) for i, s in enumerate(steps))


class Engine:
    def __init__(self, handlers: dict[ir.NodeKind, Handler]) -> None:
        self.handlers = handlers
        # by the kind's value: an enum's hash is computed in Python (~0.2 µs a lookup), a str's is cached
        self._handler_for = {kind._value_: handler for kind, handler in handlers.items()}

    # pipelines ------------------------------------------------------------------------------------------------

    async def run_pipeline(self, ctx: RunContext) -> dict[str, Any]:
        """Main steps and triggers, then `finally`; returns the pipeline's outputs or raises StepFailed."""
        for step in ctx.pipeline.all_steps():
            ctx.steps.setdefault(step.id, StepResult().as_context())
        failure: BaseException | None = None
        triggers = TriggerSet(self, ctx)
        try:
            if triggers.active:
                async with task_group() as tg:
                    triggers.open(tg)
                    failure = await self._run_main(ctx, tg)
                # the group ends when the run is quiescent: main steps and every triggered step done
            else:  # no task group: every cancel scope a step's calls exit walks up the scopes around it
                failure = await self._run_main(ctx, None)
        except FlowctlError as exc:
            failure = failure or exc
        except anyio.get_cancelled_exc_class():
            triggers.close()
            ctx.status = "cancelled"
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINALLY_BOUND_ON_CANCEL):
                await self._run_finally(ctx)
            raise
        triggers.close()  # `finally` steps and late state changes must not start triggers any more
        if triggers.failure is not None:  # a loop of events was stopped (the group was cancelled)
            failure = triggers.failure
        ctx.status = "failed" if failure else "succeeded"
        try:
            if failure is None or not refused(failure):
                await self._run_finally(ctx)
        except FlowctlError as exc:
            failure = failure or exc
        if failure is not None:
            raise failure
        try:
            outputs = {name: value.evaluate(ctx.template_context(Scope())) for name, value in ctx.pipeline.outputs}
        except RenderError as exc:
            raise RenderFailed(f"pipeline outputs: {exc}") from None
        except RenderStopped as stop:
            await take_cancellation(stop)
        if ctx.pipeline.output_schema is not None:
            _check_outputs(ctx.pipeline, ctx.pipeline.output_schema, outputs)
        return outputs

    async def _run_main(self, ctx: RunContext, tg: TaskGroup | None) -> FlowctlError | None:
        """The main steps; their failure is returned: recovery triggers started by it must still finish, unless the
        resume was refused: then nothing more runs."""
        try:
            await self.run_list(ctx, ctx.pipeline.steps, Scope())
        except FlowctlError as exc:
            if refused(exc) and tg is not None:
                tg.cancel_scope.cancel()
            return exc
        return None

    async def _run_finally(self, ctx: RunContext) -> None:
        if ctx.pipeline.finally_steps:
            await self.run_list(ctx, ctx.pipeline.finally_steps, Scope(prefix=ctx.finally_prefix))

    # lists ----------------------------------------------------------------------------------------------------

    async def run_list(self, ctx: RunContext, steps: tuple[ir.Step, ...], scope: Scope) -> None:
        """Run a step list: in order when it is a plain chain, else each step as soon as its `needs` are done."""
        if _is_chain(steps):
            for step in steps:
                # a zero-latency step may never yield: give timers, signals and Ctrl-C a chance between steps
                await anyio.lowlevel.checkpoint()
                await self.run_step(ctx, step, scope)
            return
        done = {step.id: anyio.Event() for step in steps}

        async def after_needs(step: ir.Step) -> None:
            for dep in step.needs:
                await done[dep].wait()
            try:
                await self.run_step(ctx, step, scope)
            finally:
                done[step.id].set()

        async with task_group() as tg:
            for step in steps:
                tg.start_soon(after_needs, step)

    # one step -------------------------------------------------------------------------------------------------

    async def run_step(self, ctx: RunContext, step: ir.Step, scope: Scope) -> StepResult:
        """Run one step under its policy and apply `set`/`emit`; raises StepFailed unless `on_error: continue`."""
        path = scope.path(step.id)
        started, meter = ctx.runtime.clock.monotonic(), UsageMeter()
        token = STEP_METERS.set((*STEP_METERS.get(), meter))
        path_token = STEP_PATH.set(path) if ctx.graph.uses_now else None  # whose `now()` a render reads
        result = StepResult("running")
        try:
            try:
                # a `when` that fails to evaluate fails the step
                if step.when is not None and not self.evaluate_value(step.when, ctx, scope):
                    result.status = "skipped"
                    ctx.set_result(step.id, result, scope)
                    now = ctx.runtime.clock.now()
                    ctx.runtime.recorder.step_finished(ctx.run_id, path, step.kind._value_, StepStatus.SKIPPED, now, 0)
                    ctx.runtime.reporter.step_finished(ctx.run_id, path, "skipped", 0.0, 0, "")
                    return result
                if step.fan_out is not None:
                    output = await self.run_fan_out(ctx, step, scope, path, result)
                else:
                    output = await self.run_attempts(ctx, step, scope, path, result)
                if step.updates or step.kind is ir.NodeKind.SET:
                    values = self._apply_updates(ctx, step, scope, path, output)
                    output = values if step.kind is ir.NodeKind.SET else output
                result.status, result.output = "succeeded", output
                if step.emit is not None:
                    emit_event(ctx, step.emit, scope, path, output)
            except RenderStopped as stop:  # its `when`, `set`, `emit` or `for_each` (or a trigger's `when` it set off)
                await take_cancellation(stop)  # ...delivered here, so the step below records itself cancelled
        except FlowctlError as exc:
            failed = (
                exc if isinstance(exc, StepFailed) else StepFailed(path, exc, attempts=result.attempts, span=step.span)
            )
            if refused(failed):
                raise failed from None  # a refused resume leaves the step's row as the earlier run wrote it
            result.status, result.error = "failed", failed.to_json()
            if step.policy.on_error is ir.OnError.CONTINUE:
                result.output = self._default_output(ctx, step, scope)
            else:
                self._finish(ctx, step, scope, path, result, started, meter)
                raise failed from None
        except anyio.get_cancelled_exc_class():
            # a join that no longer needs it, a timeout or deadline of an enclosing step, Ctrl-C: say so in the store
            result.status = "cancelled"
            self._finish(ctx, step, scope, path, result, started, meter, notify=False)
            raise
        finally:
            STEP_METERS.reset(token)
            if path_token is not None:
                STEP_PATH.reset(path_token)
        self._finish(ctx, step, scope, path, result, started, meter)
        return result

    def _finish(
        self,
        ctx: RunContext,
        step: ir.Step,
        scope: Scope,
        path: str,
        result: StepResult,
        started: float,
        meter: UsageMeter,
        *,
        notify: bool = True,
    ) -> None:
        ctx.set_result(step.id, result, scope)
        self._record(ctx, path, result, started, meter, step.kind._value_)
        if notify:
            ctx.notify_step(step.id, result)

    def _record(
        self,
        ctx: RunContext,
        path: str,
        result: StepResult,
        started: float,
        meter: UsageMeter,
        kind: str,
        item_started_at: float | None = None,
    ) -> None:
        """Journal a step's (or fan-out item's) outcome and report it. `item_started_at` (wall clock): a fan-out
        item, which wrote no started row, so its outcome makes its whole row."""
        runtime = ctx.runtime
        input_tokens, output_tokens, attempts = meter.input_tokens, meter.output_tokens, result.attempts
        before = ctx.recorded.pop(path, None) if ctx.recorded is not None else None
        if before is not None:  # resuming: the store adds tokens and attempts up, so record only what is new
            input_tokens, output_tokens = input_tokens - before.input_tokens, output_tokens - before.output_tokens
            attempts -= before.continued
        if before is not None and _replayed_whole(before, result, meter):
            pass  # its row stays as the run that did the work wrote it, timings included
        else:
            runtime.recorder.step_finished(
                ctx.run_id,
                path,
                kind,
                _STATUS[result.status],
                item_started_at if item_started_at is not None else runtime.clock.now(),
                attempts if item_started_at is not None else 0,  # a started row counted the others
                output=result.output,
                error=result.error,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        message = result.error["message"] if result.error else ""
        runtime.reporter.step_finished(
            ctx.run_id,
            path,
            result.status,
            runtime.clock.monotonic() - started,
            meter.input_tokens + meter.output_tokens,
            message,
        )

    def evaluate_value(
        self, value: ir.CompiledValue | ir.Expression, ctx: RunContext, scope: Scope, **extra: Any
    ) -> Any:
        """A value field or a condition, in the scope's template context (plus `extra` variables)."""
        context = ctx.template_context(scope)
        context.update(extra)
        try:
            return value.evaluate(context)
        except RenderError as exc:
            raise RenderFailed(str(exc)) from None

    def _default_output(self, ctx: RunContext, step: ir.Step, scope: Scope) -> Any:
        if step.policy.default is None:
            return None
        try:
            return self.evaluate_value(step.policy.default, ctx, scope)
        except RenderFailed:
            return None

    def _apply_updates(self, ctx: RunContext, step: ir.Step, scope: Scope, path: str, output: Any) -> dict[str, Any]:
        values = {key: self.evaluate_value(value, ctx, scope, output=output) for key, value in step.updates}
        if scope.sink is not None:
            scope.sink(path, values)
        else:
            ctx.state.apply(path, values)
        return values

    # policies -------------------------------------------------------------------------------------------------

    async def run_attempts(
        self, ctx: RunContext, step: ir.Step, scope: Scope, path: str, result: StepResult, *, item: bool = False
    ) -> Any:
        """Retry with backoff, per-attempt timeout, overall deadline, then fallback.

        One coroutine frame for all of it (the handler is awaited from here): a frame costs ~0.5 µs and ~500 B per
        in-flight step, which adds up in a fan-out of thousands. A fan-out `item` writes no started row per
        attempt: its one store row is written when it finishes (see `_run_item`).
        """
        policy = step.policy
        retry, timeout, kind = policy.retry, policy.timeout, step.kind._value_  # `.value`: a ~0.1 µs descriptor
        handler = self._handler_for[kind]
        runtime = ctx.runtime
        try:
            with _NO_DEADLINE if policy.deadline is None else runtime.clock.fail_after(policy.deadline):
                while True:
                    result.attempts += 1
                    if not item:
                        _start_row(ctx, path, kind, result.attempts)
                    runtime.reporter.step_started(ctx.run_id, path, kind, result.attempts)
                    if STEP_ATTEMPT.get() != result.attempts:  # this step's task context: its calls' attempt
                        STEP_ATTEMPT.set(result.attempts)  # (observe.py); a set costs a context copy and ~150 B
                    attempt_started = runtime.clock.now()
                    try:
                        if timeout is None:  # the common case: no with_timeout frame, no lambda
                            output = await handler(self, ctx, step, scope, path)
                        else:
                            # a partial, not a lambda: a closure would make six of this frame's variables cells,
                            # allocated on every call of this function (every step and fan-out item) to serve this one
                            call = partial(handler_within_timeout, handler, self, ctx, step, scope, path)
                            output = await with_timeout(runtime.clock, timeout, f"step {path!r}", call)
                        if result.attempts > 1:  # its earlier attempts are recorded: this one too
                            _attempt_ended(ctx, path, result, _SUCCEEDED, attempt_started)
                        return output
                    except RenderError as exc:
                        raise RenderFailed(str(exc), span=step.span) from None
                    except RenderStopped as stop:  # the deadline's scope, or Ctrl-C, turns this into cancellation
                        await take_cancellation(stop)
                    except FlowctlError as exc:
                        if not exc.retryable or result.attempts >= retry.max_attempts:
                            raise
                        delay = backoff_delay(retry, result.attempts, exc, runtime.rng)
                        _attempt_ended(ctx, path, result, _FAILED, attempt_started, exc, delay)
                        runtime.reporter.step_retrying(
                            ctx.run_id, path, retry_notice(retry, result.attempts, exc, delay)
                        )
                        await runtime.clock.sleep(delay)
        except TimeoutError:
            if policy.deadline is None:  # not ours: only the deadline scope turns into DeadlineExceeded
                raise
            error: FlowctlError = DeadlineExceeded(
                f"step {path!r} exceeded its deadline of {policy.deadline:g}s", span=step.span
            )
        except FlowctlError as exc:
            error = exc
        if result.attempts:
            _attempt_ended(ctx, path, result, _FAILED, attempt_started, error)
        attempts = result.attempts + _earlier_attempts(ctx, path)
        if policy.fallback is None or refused(error):
            raise StepFailed(path, error, attempts=attempts, span=step.span) from None
        return await self._fallback(ctx, step, scope, path, attempts)

    async def _fallback(self, ctx: RunContext, step: ir.Step, scope: Scope, path: str, attempts: int) -> Any:
        """The step's fallback, after its `attempts` failed."""
        fallback = step.policy.fallback
        assert fallback is not None
        try:
            if fallback.steps:
                await self.run_list(ctx, fallback.steps, scope.child(prefix=f"{step.id}/fallback/"))
                return ctx.steps[fallback.steps[-1].id]["output"]
            if fallback.value is not None:
                return self.evaluate_value(fallback.value, ctx, scope)
            return await run_agent_step(
                self, ctx, step, scope, f"{path}/fallback", agent_name=fallback.agent, model_name=fallback.model
            )
        except FlowctlError as exc:
            raise StepFailed(path, exc, attempts=attempts, span=step.span, fallback=True) from None

    # fan-out and joins ----------------------------------------------------------------------------------------

    async def run_fan_out(self, ctx: RunContext, step: ir.Step, scope: Scope, path: str, result: StepResult) -> Any:
        fan = step.fan_out
        assert fan is not None
        result.attempts = 1
        _start_row(ctx, path, step.kind._value_, 1)
        ctx.runtime.reporter.step_started(ctx.run_id, path, step.kind._value_, 1)
        items = self.evaluate_value(fan.items, ctx, scope)
        if isinstance(items, dict):
            items = list(items.items())
        if not isinstance(items, list | tuple):
            raise StepFailed(
                path, RenderFailed(f"for_each must give a list, got {type(items).__name__}"), span=step.span
            )
        # Items write state only through steps nested in them; without such steps they need no buffer each.
        buffers = [UpdateBuffer() for _ in items] if _nested_sets_state(step) else None
        has_nested_steps = next(step.children(), None) is not None
        prefix, variables, var = f"{scope.prefix}{step.id}[", scope.variables, fan.var
        names: list[Any] = list(range(len(items)))  # what goes between the brackets of an item's path
        if fan.item_id is not None:
            item_id = fan.item_id
            rendered = [self.evaluate_value(item_id, ctx, scope, **{var: x, "index": i}) for i, x in enumerate(items)]
            names = item_names(path, rendered)

        def item(i: int) -> Awaitable[Any]:
            # the item's scope is made when its branch starts (not 10,000 of them up front), directly: this is
            # scope.child(prefix=f"{step.id}[{i}]/", sink=…, item=…, index=i) without its kwargs and copies
            sink = buffers[i] if buffers is not None else scope.sink
            name = names[i]
            item_scope = Scope(f"{prefix}{name}]/", {**variables, var: items[i], "index": i}, sink, scope.results)
            if has_nested_steps:  # items run their fallback steps at once: each needs its own step results
                item_scope = item_scope.isolated()
            return self._run_item(ctx, step, item_scope, f"{path}[{name}]")

        outcomes = await run_concurrent(len(items), item, fan.join, fan.max_concurrency)
        if buffers is not None:
            self.commit_buffers(ctx, scope, buffers, outcomes)
        return join_output(fan.join, outcomes, None)

    async def _run_item(self, ctx: RunContext, step: ir.Step, scope: Scope, path: str) -> Any:
        """One item of a fan-out, under the step's policy, journaled as its own step record `step[i]`.

        Each item gets one store row, written when it finishes, instead of a started row per attempt
        and a finished row: a fan-out of thousands halves its step rows. While items run, the fan-out step's own row
        says it is running; `flowctl show` lists items as they finish.
        """
        clock = ctx.runtime.clock
        started, meter, result = clock.monotonic(), UsageMeter(), StepResult("running")
        kind, started_at = step.kind._value_, clock.now()
        token = STEP_METERS.set((*STEP_METERS.get(), meter))
        path_token = STEP_PATH.set(path) if ctx.graph.uses_now else None
        try:
            result.output = await self.run_attempts(ctx, step, scope, path, result, item=True)
            result.status = "succeeded"
        except FlowctlError as exc:
            result.status, result.error = "failed", error_json(exc)
            raise
        except anyio.get_cancelled_exc_class():
            result.status = "cancelled"
            raise
        finally:
            STEP_METERS.reset(token)
            if path_token is not None:
                STEP_PATH.reset(path_token)
            self._record(ctx, path, result, started, meter, kind, started_at)
        return result.output

    def commit_buffers(
        self, ctx: RunContext, scope: Scope, buffers: list[UpdateBuffer], outcomes: list[Outcome | None]
    ) -> None:
        """Apply concurrent branches' state updates in declaration order: deterministic whatever finished first."""
        for buffer, outcome in zip(buffers, outcomes, strict=True):
            if outcome is None or not outcome.ok:
                continue
            for path, values in buffer.updates:
                if scope.sink is not None:
                    scope.sink(path, values)
                else:
                    ctx.state.apply(path, values)


def emit_event(ctx: RunContext, spec: ir.EmitSpec, scope: Scope, path: str, output: Any) -> Any:
    context = ctx.template_context(scope)
    context["output"] = output
    try:
        data = spec.data.evaluate(context) if spec.data is not None else output
    except RenderError as exc:
        raise RenderFailed(str(exc)) from None
    ctx.runtime.announce(ctx.run_id, spec.event, data, path)
    return data


def _check_outputs(pipeline: ir.PipelineDef, schema: dict[str, Any], outputs: dict[str, Any]) -> None:
    """The outputs against the pipeline's declared `output_schema` (what `flowctl serve` promises its callers)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(outputs))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the outputs)"
        raise OutputsInvalid(
            f"pipeline {pipeline.name!r}: outputs do not match its output_schema at {where}: {error.message}",
            span=pipeline.span,
        )
