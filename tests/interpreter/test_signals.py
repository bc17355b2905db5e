"""External signals: `flowctl signal` from another process releases a waiting run; a resumed run's replayed waits
take their own signals again and leave later ones to later waits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.interpreter.clock import ManualClock
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus, StepStatus
from flowctl.interpreter.providers.scripted import Fixture
from flowctl.interpreter.runner import SIGNAL_POLL_INTERVAL
from tests.interpreter.pipelines.harness import HERE, flowctl, poll, query, run_file


def test_signal_from_another_process_releases_a_waiting_run(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    run = flowctl(
        "run", str(HERE / "approval.yaml"), "--scripted", str(HERE / "approval.fixture.yaml"),
        "--store", str(db), "--output", "json", "--quiet",
    )  # fmt: skip
    try:
        # the run is waiting once its `approval` step has started (and the draft is done)
        poll(
            lambda: run.poll() is not None or query(db, "SELECT 1 FROM steps WHERE path = 'approval'"),
            what="the run to reach its wait",
        )
        assert run.poll() is None, run.communicate()
        (run_id,) = query(db, "SELECT run_id FROM runs")[0]
        signal = flowctl("signal", run_id, "approved", "--data", '{"by": "ana"}', "--store", str(db))
        out, err = signal.communicate(timeout=60)
        assert signal.returncode == 0, err
        assert f"sent 'approved' to {run_id}" in out
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["status"] == "succeeded"
    assert result["outputs"] == {"approval": {"by": "ana"}, "published": "published"}
    events = query(db, "SELECT name, data, source FROM events WHERE run_id = ?", run_id)
    assert events == [("approved", '{"by": "ana"}', "signal")]


@pytest.mark.anyio
async def test_a_resumed_wait_takes_its_own_signal_again_not_the_next_one(tmp_path: Path) -> None:
    fixture = Fixture.from_data({})
    run_id = "r-signals-resume"
    pipeline = HERE / "two_approvals.yaml"
    with SqliteRunStore(tmp_path / "runs.db") as store, anyio.fail_after(60):  # a safety net, never reached

        def step_done(path: str) -> bool:
            return any(s.path == path and s.status is StepStatus.SUCCEEDED for s in store.steps(run_id))

        # first process: the first approval arrives, then the run is interrupted while waiting for the second
        clock = ManualClock()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_file(pipeline, fixture, store, run_id=run_id, clock=clock))
            await clock.parked(2)  # waiting for the first approval (30 s), and the signal poller
            assert clock.pending == [SIGNAL_POLL_INTERVAL, 30.0]
            store.send_signal(run_id, "approved", {"n": 1})
            clock.advance(SIGNAL_POLL_INTERVAL)  # the poller takes it
            await clock.parked(2)  # waiting for the second
            assert step_done("first")
            tg.cancel_scope.cancel()
        record = store.get_run(run_id)
        assert record is not None and record.status is RunStatus.CANCELLED

        # resumed: signal 1 is polled again; the first wait replays and takes it, the second waits for signal 2
        outcome: dict[str, Any] = {}
        clock = ManualClock()

        async def resume() -> None:
            outcome["ran"] = await run_file(pipeline, fixture, store, run_id=run_id, resuming=True, clock=clock)

        async with anyio.create_task_group() as tg:
            tg.start_soon(resume)
            await clock.parked(2)  # signal 1 polled again, and a wait (the second: the first replays) parked
            assert clock.pending == [SIGNAL_POLL_INTERVAL, 30.0]
            assert "ran" not in outcome, "the second wait took the first approval"
            store.send_signal(run_id, "approved", {"n": 2})
            clock.advance(SIGNAL_POLL_INTERVAL)
        ran = outcome["ran"]
        assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
        assert ran.outcome.outputs == {"first": {"n": 1}, "second": {"n": 2}}
        assert (ran.outcome.calls_executed, ran.outcome.calls_replayed) == (1, 1)
