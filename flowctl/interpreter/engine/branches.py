"""Concurrent branches: a fan-out's items and a parallel group's branches run at once under an optional cap, and
the join policy (`all`, `any`, `first`, `at_least`) decides when to stop and what fails; then their outputs are put
together in declaration order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from flowctl.dsl import ir
from flowctl.interpreter.concurrency import Limiter, task_group
from flowctl.interpreter.engine.protocol import Outcome
from flowctl.interpreter.engine.tuning import branches_in_flight
from flowctl.interpreter.errors import FlowctlError, error_json, refused


class JoinFailed(FlowctlError):
    """A `first` or `at_least` join can no longer be satisfied (too many branches failed)."""

    code = "join-failed"


async def run_concurrent(
    count: int, branch: Callable[[int], Awaitable[Any]], join: ir.Join, limit: int | None
) -> list[Outcome | None]:
    """Run `branch(0)` … `branch(count - 1)` concurrently under an optional cap; the join policy decides when to
    stop and what fails. Outcomes are in branch order."""
    outcomes: list[Outcome | None] = [None] * count
    need = {ir.JoinKind.FIRST: 1, ir.JoinKind.AT_LEAST: join.at_least}.get(join.kind, count)
    limiter = Limiter(limit) if limit else None
    counts = {"ok": 0, "failed": 0}
    stops_early = join.kind in (ir.JoinKind.FIRST, ir.JoinKind.AT_LEAST)
    fatal: list[BaseException] = []

    async def one(i: int, stop: Callable[[], None], finished: Callable[[], None]) -> None:
        """Never raises: records the outcome, calls `stop` when the join is decided and `finished` when done."""
        try:
            try:
                if limiter is None:
                    value = await branch(i)
                else:
                    async with limiter:
                        value = await branch(i)
            except FlowctlError as exc:
                outcomes[i] = Outcome(False, error=exc)
                counts["failed"] += 1
                if join.kind is ir.JoinKind.ALL or refused(exc):
                    fatal.append(exc)
                    stop()
                elif stops_early and count - counts["failed"] < need:
                    stop()  # the join can no longer be satisfied
                return
            except Exception as exc:  # a bug: stop the group and let it surface
                fatal.append(exc)
                stop()
                return
            if stops_early and counts["ok"] >= need:
                return  # finished in the same instant as the ones that satisfied the join: too late to count
            counts["ok"] += 1
            outcomes[i] = Outcome(True, value)
            if stops_early and counts["ok"] >= need:
                stop()
        finally:
            finished()

    with branches_in_flight(min(count, limit) if limit else count):
        if _on_asyncio():
            await _gather_native(count, one)
        else:
            async with task_group() as tg:
                for i in range(count):
                    tg.start_soon(one, i, tg.cancel_scope.cancel, _nothing)
    if fatal:
        raise fatal[0]
    if stops_early and counts["ok"] < need:
        errors = [o.error for o in outcomes if o is not None and o.error is not None]
        raise JoinFailed(
            f"join {join.kind.value}{f' {need}' if join.kind is ir.JoinKind.AT_LEAST else ''} not satisfied: "
            f"{counts['ok']} succeeded, {counts['failed']} failed" + (f"; first error: {errors[0]}" if errors else "")
        )
    return outcomes


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another anyio backend (trio)
        return False
    return True


def _nothing() -> None:
    pass


async def _gather_native(
    count: int, one: Callable[[int, Callable[[], None], Callable[[], None]], Coroutine[Any, Any, None]]
) -> None:
    """Branches as plain asyncio tasks: ~5 µs and ~2.5 KB less per branch than anyio's task groups, which matters
    for fan-outs of thousands. Branches never raise (see `one`); an outer cancellation cancels them all and waits,
    shielded, until they are gone before it propagates — the same guarantee a task group gives.

    Each branch calls `finished` as it ends, and the last one wakes us: cheaper than `asyncio.wait`, which adds a
    done-callback to every task (a callback handle and a loop turn per branch). A task cancelled before it
    started never runs its `finally`, so once `stop` has cancelled branches, `asyncio.wait` waits for the rest."""
    if not count:
        return
    all_done = asyncio.get_running_loop().create_future()
    remaining = count
    stopped = False
    tasks: list[asyncio.Task[None]] = []

    def finished() -> None:
        nonlocal remaining
        remaining -= 1
        if not remaining and not all_done.done():
            all_done.set_result(None)

    def stop() -> None:
        nonlocal stopped
        stopped = True
        if not all_done.done():
            all_done.set_result(None)
        for task in tasks:
            if not task.done():
                task.cancel()

    tasks.extend(asyncio.create_task(one(i, stop, finished)) for i in range(count))
    try:
        await all_done
        if stopped:
            await asyncio.wait(tasks)
    except BaseException:
        stop()
        with anyio.CancelScope(shield=True):
            await asyncio.wait(tasks)
        raise


def join_output(join: ir.Join, outcomes: list[Outcome | None], keys: list[str] | None) -> Any:
    """Fan-outs give an ordered list; parallel groups give a map branch id → output. With `first`, only the
    winner's output (a fan-out) or entry (a parallel group); branches cancelled by a join are None."""

    def entry(outcome: Outcome | None) -> Any:
        if outcome is None:
            return None
        if outcome.ok:
            return outcome.value
        return {"error": error_json(outcome.error)} if outcome.error else None

    if join.kind is ir.JoinKind.FIRST:
        winner = next(i for i, o in enumerate(outcomes) if o is not None and o.ok)
        return outcomes[winner].value if keys is None else {keys[winner]: outcomes[winner].value}  # type: ignore[union-attr]
    values = [entry(o) for o in outcomes]
    return values if keys is None else dict(zip(keys, values, strict=True))
