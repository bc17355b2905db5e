"""The injectable clock: ManualClock's virtual time on its own, then a run driven by it, where backoff, step timeouts,
deadlines, wait timeouts, signal polling, breakers, scripted latency and the recorded timestamps all follow virtual
time. Nothing here sleeps for real or measures the machine's speed: tests wait until the run parks on the clock
(`parked`), check what it waits for (`pending`), and move time on (`advance`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.interpreter.clock import MANUAL_EPOCH, SYSTEM_CLOCK, ManualClock
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.providers.scripted import Fixture
from flowctl.interpreter.runner import SIGNAL_POLL_INTERVAL, RunOptions, RunOutcome, run_graph
from tests.interpreter.pipelines.harness import compile_file

pytestmark = pytest.mark.anyio


# --- ManualClock on its own -------------------------------------------------------------------------------------


async def test_a_sleeper_wakes_only_when_time_passes_its_deadline() -> None:
    clock = ManualClock()
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, 5.0)
        tg.start_soon(sleeper, 2.0)
        await clock.parked(2)
        assert clock.pending == [2.0, 5.0]
        clock.advance(1.999)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        assert clock.pending == pytest.approx([0.001, 3.001])
        clock.advance(0.001)
        await anyio.wait_all_tasks_blocked()
        assert woke == [2.0]
        clock.advance(10.0)  # past the other: it wakes too, at the time advanced to
    assert woke == [2.0, 12.0]
    assert clock.pending == []


async def test_advance_without_an_amount_goes_to_the_next_timer() -> None:
    clock = ManualClock(start=100.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 30.0)
        await clock.parked(1)
        assert clock.advance() == 130.0
    assert clock.advance() == 130.0  # nothing pending: time stays
    with pytest.raises(ValueError, match="cannot move back"):
        clock.advance(-1)


async def test_deadline_scopes_fire_on_virtual_time() -> None:
    clock = ManualClock()
    outcome: dict[str, Any] = {}

    async def move_on() -> None:
        with clock.move_on_after(3.0) as scope:
            await anyio.sleep_forever()
        outcome["moved_on"] = scope.cancelled_caught

    async def fail() -> None:
        with pytest.raises(TimeoutError), clock.fail_after(5.0):
            await anyio.sleep_forever()
        outcome["failed_at"] = clock.monotonic()

    async def in_time() -> None:
        with clock.fail_after(60.0) as scope:
            await clock.sleep(1.0)
        outcome["in_time"] = not scope.cancelled_caught

    async with anyio.create_task_group() as tg:
        for task in (move_on, fail, in_time):
            tg.start_soon(task)
        await clock.parked(4)  # three scopes and one sleep
        clock.advance(5.0)
    assert outcome == {"moved_on": True, "failed_at": 5.0, "in_time": True}
    assert clock.pending == []  # a scope that ended removed its timer


async def test_no_limit_zero_and_past_deadlines_behave_as_in_anyio() -> None:
    clock = ManualClock()
    with clock.move_on_after(None) as unlimited:
        await clock.sleep(0)  # returns at once, registers nothing
    assert not unlimited.cancelled_caught and clock.pending == []
    with clock.move_on_after(0) as expired:
        await anyio.sleep_forever()
    assert expired.cancelled_caught
    with pytest.raises(TimeoutError), clock.fail_after(-1):
        await anyio.sleep_forever()


async def test_wall_time_moves_with_virtual_time() -> None:
    clock = ManualClock()
    assert clock.now() == MANUAL_EPOCH and clock.monotonic() == 0.0
    clock.advance(90.0)
    assert clock.now() == MANUAL_EPOCH + 90.0


async def test_parked_gives_up_after_its_safety_limit() -> None:
    with pytest.raises(TimeoutError):
        await ManualClock().parked(1, limit=0.01)  # nothing ever sleeps: a broken test ends instead of hanging


def test_the_system_clock_is_the_library_functions_themselves() -> None:
    import time

    assert SYSTEM_CLOCK.now is time.time and SYSTEM_CLOCK.monotonic is time.monotonic
    assert SYSTEM_CLOCK.sleep is anyio.sleep and SYSTEM_CLOCK.fail_after is anyio.fail_after


# --- a run on virtual time --------------------------------------------------------------------------------------


Driver = Callable[[ManualClock, SqliteRunStore, str], Awaitable[None]]


async def run_on(
    tmp_path: Path, store: SqliteRunStore, pipeline: str, fixture: dict[str, Any], drive: Driver
) -> tuple[RunOutcome, ManualClock]:
    """Run a pipeline on a ManualClock while `drive` moves its time; return the outcome."""
    (tmp_path / "p.yaml").write_text("flowctl: 1\nname: timed\nagents:\n  a: {instruction: x}\n" + pipeline)
    graph = compile_file(tmp_path / "p.yaml")
    clock = ManualClock()
    options = RunOptions(scripted=Fixture.from_data(fixture), clock=clock)
    outcomes: list[RunOutcome] = []

    async def run() -> None:
        outcomes.append(await run_graph(graph, {}, store, options, run_id="run-1"))

    with anyio.fail_after(60):  # real seconds: a safety net for a broken test, never reached when things work
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await drive(clock, store, "run-1")
    return outcomes[0], clock


async def test_a_rate_limited_step_waits_the_servers_retry_after_in_virtual_time(
    tmp_path: Path, store: SqliteRunStore
) -> None:
    pipeline = (
        "steps:\n  - {id: call, agent: a, prompt: go, retry: {max_attempts: 2, initial_delay: 1ms, jitter: false}}\n"
    )
    fixture = {"responses": [{"replies": [{"error": "rate_limit", "retry_after": "30s"}, "done"]}]}

    async def drive(clock: ManualClock, store: SqliteRunStore, run_id: str) -> None:
        await clock.parked(1)
        assert clock.pending == [30.0]  # the server's wait, not the policy's 1 ms
        clock.advance(30.0)

    outcome, _ = await run_on(tmp_path, store, pipeline, fixture, drive)
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert outcome.elapsed == 30.0  # elapsed time is the clock's too
    record = store.get_run("run-1")
    assert record is not None and record.started_at == MANUAL_EPOCH  # timestamps the runtime takes are virtual


async def test_a_step_timeout_and_a_deadline_fire_on_virtual_time(tmp_path: Path, store: SqliteRunStore) -> None:
    pipeline = (
        "steps:\n"
        "  - {id: slow, agent: a, prompt: slow, timeout: 5s, retry: {max_attempts: 1}, on_error: continue}\n"
        "  - id: bounded\n    agent: a\n    prompt: down\n    deadline: 1m\n"
        "    retry: {max_attempts: 100, backoff: fixed, initial_delay: 25s, jitter: false}\n"
    )
    fixture = {
        "responses": [{"prompt": "^slow$", "reply": "too late", "latency": "1h"}, {"reply": {"error": "unavailable"}}]
    }

    async def drive(clock: ManualClock, store: SqliteRunStore, run_id: str) -> None:
        await clock.parked(2)
        assert clock.pending == [5.0, 3600.0]  # the step's timeout and the scripted latency
        clock.advance(5.0)
        # `bounded` starts at 5 s with a 60 s deadline: attempts at 5, 30 and 55 s, each followed by a 25 s backoff
        for deadline_left in (60.0, 35.0):
            await clock.parked(2)
            assert clock.pending == [25.0, deadline_left]
            clock.advance(25.0)
        await clock.parked(2)
        assert clock.pending == [10.0, 25.0]  # the deadline comes first
        clock.advance()

    outcome, _ = await run_on(tmp_path, store, pipeline, fixture, drive)
    steps = outcome.steps
    assert steps["slow"]["error"]["cause"] == "step-timeout"
    assert steps["bounded"]["error"]["cause"] == "deadline-exceeded"
    assert steps["bounded"]["attempts"] == 3  # exactly: virtual time leaves nothing to the machine's speed
    assert outcome.elapsed == 5.0 + 60.0


async def test_a_wait_times_out_and_signals_are_polled_on_virtual_time(tmp_path: Path, store: SqliteRunStore) -> None:
    pipeline = (
        "steps:\n"
        "  - {id: approval, wait: {event: approved, timeout: 1h}}\n"
        "  - {id: never, wait: {event: other, timeout: 2h}, on_error: continue}\n"
    )

    async def drive(clock: ManualClock, store: SqliteRunStore, run_id: str) -> None:
        await clock.parked(2)  # the wait's timeout and the signal poller
        assert clock.pending == [SIGNAL_POLL_INTERVAL, 3600.0]
        store.send_signal(run_id, "approved", {"by": "ann"})
        clock.advance(SIGNAL_POLL_INTERVAL)  # the poller wakes, takes the signal, the wait ends
        await clock.parked(2)
        assert clock.pending == pytest.approx([SIGNAL_POLL_INTERVAL, 7200.0])
        clock.advance(7200.0)

    outcome, _ = await run_on(tmp_path, store, pipeline, {"default": "x"}, drive)
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert outcome.steps["approval"]["output"] == {"by": "ann"}
    assert outcome.steps["never"]["error"]["cause"] == "wait-timeout"


async def test_a_circuit_breaker_resets_on_virtual_time(tmp_path: Path, store: SqliteRunStore) -> None:
    pipeline = (
        "models:\n  default: {provider: openai, model: m, circuit_breaker: {failure_threshold: 1, reset_after: 10m}}\n"
        "steps:\n"
        "  - {id: trips, agent: a, prompt: one, retry: {max_attempts: 1}, on_error: continue}\n"
        "  - {id: open, agent: a, prompt: two, retry: {max_attempts: 1}, on_error: continue}\n"
        "  - {id: pause, wait: {event: nothing, timeout: 10m}, on_error: continue}\n"
        "  - {id: trial, agent: a, prompt: three}\n"
    )
    fixture = {"responses": [{"prompt": "^one$", "reply": {"error": "unavailable"}}, {"reply": "ok"}]}

    async def drive(clock: ManualClock, store: SqliteRunStore, run_id: str) -> None:
        await clock.parked(2)  # the pause and the signal poller
        clock.advance(600.0)

    outcome, _ = await run_on(tmp_path, store, pipeline, fixture, drive)
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert outcome.steps["open"]["error"]["cause"] == "circuit-open"
    assert outcome.steps["trial"]["output"] == "ok"
