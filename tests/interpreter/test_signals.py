"""External signals: `flowctl signal` from another process releases a waiting run; a resumed run's replayed waits
take their own signals again and leave later ones to later waits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.interpreter.scripted import Fixture
from flowctl.interpreter.sqlite_store import SqliteRunStore
from flowctl.interpreter.store import RunStatus, StepStatus
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
        out, err = signal.communicate(timeout=30)
        assert signal.returncode == 0, err
        assert f"sent 'approved' to {run_id}" in out
        stdout, stderr = run.communicate(timeout=30)
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


async def _until(condition: Any, what: str, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout, shield=False):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), what


@pytest.mark.anyio
async def test_a_resumed_wait_takes_its_own_signal_again_not_the_next_one(tmp_path: Path) -> None:
    fixture = Fixture.from_data({})
    run_id = "r-signals-resume"
    with SqliteRunStore(tmp_path / "runs.db") as store:

        def step_done(path: str) -> bool:
            return any(s.path == path and s.status is StepStatus.SUCCEEDED for s in store.steps(run_id))

        # first process: the first approval arrives, then the run is interrupted while waiting for the second
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_file(HERE / "two_approvals.yaml", fixture, store, run_id=run_id))
            await _until(lambda: store.get_run(run_id) is not None, "the run to start")
            store.send_signal(run_id, "approved", {"n": 1})
            await _until(lambda: step_done("first"), "the first wait to be released")
            tg.cancel_scope.cancel()
        record = store.get_run(run_id)
        assert record is not None and record.status is RunStatus.CANCELLED

        # resumed: signal 1 is polled again; the first wait replays and takes it, the second waits for signal 2
        outcome: dict[str, Any] = {}

        async def resume() -> None:
            ran = await run_file(HERE / "two_approvals.yaml", fixture, store, run_id=run_id, resuming=True)
            outcome["ran"] = ran

        async with anyio.create_task_group() as tg:
            tg.start_soon(resume)
            await anyio.sleep(0.3)  # ample time for signal 1 to be polled again (every 0.1 s)
            assert "ran" not in outcome, "the second wait took the first approval"
            store.send_signal(run_id, "approved", {"n": 2})
        ran = outcome["ran"]
        assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
        assert ran.outcome.outputs == {"first": {"n": 1}, "second": {"n": 2}}
        assert (ran.outcome.calls_executed, ran.outcome.calls_replayed) == (1, 1)
