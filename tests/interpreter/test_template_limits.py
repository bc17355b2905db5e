"""Templates can never hang or exhaust a run: hostile templates sized by data end as clear step failures, a step's
`timeout:`/`deadline:` cover rendering, and SIGTERM stops a render in progress with the run cancelled and resumable.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus, StepStatus
from flowctl.interpreter.providers.scripted import Fixture
from tests.interpreter.pipelines.harness import HERE, flowctl, poll, query, run_file

HOSTILE = HERE / "limits" / "hostile.yaml"
ANSWER = json.dumps(list(range(2000)))  # 2,000 × 2,000 nested iterations: four times the loop budget


def _template_line(step: str, path: Path = HOSTILE) -> int:
    """The line of the step's template (its `prompt:` or `set:`)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if f"id: {step}" in line)
    return next(i for i, line in enumerate(lines[start:], start + 1) if "prompt:" in line or "set:" in line)


BUDGETS = {
    "nested_loops": "loops ran more than 1,000,000 iterations",
    "words": "lipsum() is limited to 100 paragraphs",
    "power": "would give a number of more than 100,000 bits",
    "repeat": "repeating a str 10,000,000,000 times would build more than 4,000,000 characters",
    "list_repeat": "repeating a list 100,000 times",
    "wide": "center width 10,000,000,000 is past 4,000,000 characters",
    "model_loops": "loops ran more than 1,000,000 iterations",
    "keep": "repeating a list 100,000 times",
}


@pytest.mark.anyio
async def test_hostile_templates_fail_their_steps_naming_the_position_and_the_budget(store: SqliteRunStore) -> None:
    fixture = Fixture.from_data(
        {"responses": [{"prompt": "^list everything$", "reply": ANSWER}, {"prompt": ".", "reply": "ok"}]}
    )
    inputs = {"n": 100_000, "big": 10**10, "exponent": 9**9}
    ran = await run_file(HOSTILE, fixture, store, inputs=inputs)
    steps = ran.steps()
    for step, budget in BUDGETS.items():
        record = steps[step]
        assert record.status is StepStatus.FAILED, step
        error = record.error
        assert error is not None and error["cause"] == "render-failed" and error["retryable"] is False, error
        assert budget in error["message"], error
        assert f"hostile.yaml:{_template_line(step)}:" in error["message"], error  # the template's own position
        assert "Traceback" not in error["message"] and "MemoryError" not in error["message"]
        assert record.attempts == 1  # a budget is not a transient fault: never retried
    # the run went on (on_error: continue) and nothing else was hurt
    assert ran.status("answer") == "succeeded" and ran.status("after") == "succeeded"
    assert ran.output("after") == "ok"
    assert ran.outcome.status is RunStatus.SUCCEEDED


@pytest.mark.anyio
async def test_a_step_timeout_and_deadline_cover_rendering(store: SqliteRunStore) -> None:
    fixture = Fixture.from_data({"responses": [{"reply": "ok"}]})
    ran = await run_file(HERE / "limits" / "timeouts.yaml", fixture, store, inputs={"n": 100_000})
    steps = ran.steps()
    assert steps["timed"].status is StepStatus.FAILED
    assert steps["timed"].error is not None and steps["timed"].error["cause"] == "step-timeout"
    assert "timed out after 0.3s" in steps["timed"].error["message"]
    assert steps["bounded"].status is StepStatus.FAILED
    assert steps["bounded"].error is not None and steps["bounded"].error["cause"] == "deadline-exceeded"
    assert ran.status("after") == "succeeded"


SPINNING = """\
flowctl: 1
name: spinning
inputs:
  n: {{type: integer, default: 100000}}
models:
  default: {{provider: scripted, model: m, fixture: fixture.yaml}}
agents:
  writer: {{instruction: You write.}}
steps:
  - {{id: first, agent: writer, prompt: hello}}
  - id: spin
    loop:
      max_iterations: 1000
      until: "{until}"
      steps:
        - id: work
          agent: writer
          on_error: continue
          prompt: "{prompt}"
"""
# ~100,000 sums of 100,000 numbers: minutes of work, cut at the 5 s time budget; the loop renders it again and again,
# so whenever SIGTERM comes, a render is almost surely in progress
HEAVY = "{% for i in range(inputs.n) %}{{ range(inputs.n) | sum }}{% endfor %}"


def test_sigterm_stops_a_render_in_progress_and_the_run_is_cancelled_and_resumable(tmp_path: Path) -> None:
    pipeline, db = tmp_path / "spinning.yaml", tmp_path / "runs.db"
    pipeline.write_text(SPINNING.format(until="false", prompt=HEAVY))
    (tmp_path / "fixture.yaml").write_text("responses:\n  - reply: ok\n")
    run = flowctl("run", str(pipeline), "--store", str(db), "--quiet", cwd=tmp_path)
    try:
        poll(
            lambda: run.poll() is not None or query(db, "SELECT 1 FROM steps WHERE path = 'spin#1/work'"),
            timeout=60,
            what="the heavy render to start",
        )
        assert run.poll() is None, run.communicate()
        os.kill(run.pid, signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    (run_id,) = query(db, "SELECT run_id FROM runs")[0]
    with SqliteRunStore(db) as store:
        record = store.get_run(run_id)
        assert record is not None and record.status is RunStatus.CANCELLED
        statuses = {s.path: s.status for s in store.steps(run_id)}
        assert statuses["first"] is StepStatus.SUCCEEDED
        assert StepStatus.CANCELLED in statuses.values()
    listed = flowctl("runs", "--store", str(db), cwd=tmp_path)
    out, err = listed.communicate(timeout=60)
    assert listed.returncode == 0, err
    assert run_id in out and "cancelled" in out.split(run_id, 1)[1].splitlines()[0]
    shown = flowctl("show", run_id, "--store", str(db), "--output", "json", cwd=tmp_path)
    out, err = shown.communicate(timeout=60)
    assert shown.returncode == 0, err
    assert json.loads(out)["status"] == "cancelled"

    # the same run, resumed once the prompt is light: the recorded call is replayed, the rest runs
    pipeline.write_text(SPINNING.format(until="loop.iteration >= 2", prompt="light {{ loop.iteration }}"))
    resumed = flowctl("resume", run_id, "--store", str(db), "--output", "json", "--quiet", cwd=tmp_path)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded"
    assert result["calls"]["replayed"] >= 1


@pytest.mark.anyio
async def test_a_render_stopped_outside_a_handler_cancels_its_step_and_the_run(store: SqliteRunStore) -> None:
    """A `finally:` step's `set:` is rendered by the engine, not by a handler: a Ctrl-C there (what the CLI's handler
    does: cancel the run, then stop renders in progress) still ends the step and the run as cancelled."""
    import anyio

    from flowctl.dsl.sandbox import interrupt_renders

    with anyio.CancelScope() as scope:

        def items() -> Iterator[int]:
            yield 1
            scope.cancel()
            interrupt_renders()
            while True:  # the render stops at its next budget check
                yield 2

        await run_file(
            HERE / "limits" / "finally_set.yaml", Fixture.from_data({"responses": []}), store, inputs={"items": items()}
        )
    assert scope.cancelled_caught
    (record,) = store.list_runs()
    assert record.status is RunStatus.CANCELLED
    statuses = {s.path: s.status for s in store.steps(record.run_id)}
    assert statuses["first"] is StepStatus.SUCCEEDED
    assert [status for path, status in statuses.items() if path.endswith("cleanup")] == [StepStatus.CANCELLED]
