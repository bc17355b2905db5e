"""A fan-out item is journaled as one step row, written when it finishes (`step_done`): its kind, attempts, outcome
and tokens must be what a started row per attempt plus a finished row would have said."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunRecord, RunStatus, StepStatus
from tests.interpreter.pipelines.harness import run_file

PIPELINE = """\
flowctl: 1
name: retried_items
agents:
  worker: {instruction: You work.}
steps:
  - id: fan
    agent: worker
    for_each: "{{ ['a', 'b'] }}"
    prompt: "item {{ item }}"
    retry: {max_attempts: 3, initial_delay: 1ms, jitter: false}
outputs:
  results: "{{ steps.fan.output }}"
"""

FIXTURE = """\
responses:
  - {prompt: "^item a$", replies: [{error: unavailable}, "A"]}
  - {prompt: "^item b$", reply: "B"}
"""


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_retried_item_row_counts_its_attempts(store: SqliteRunStore, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "p.fixture.yaml").write_text(FIXTURE)
    ran = await run_file(tmp_path / "p.yaml", tmp_path / "p.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs == {"results": ["A", "B"]}
    rows = {s.path: s for s in store.steps(ran.run_id)}
    assert set(rows) == {"fan", "fan[0]", "fan[1]"}
    first, second = rows["fan[0]"], rows["fan[1]"]
    assert (first.kind, first.status, first.attempts, first.output) == ("agent", StepStatus.SUCCEEDED, 2, "A")
    assert (second.kind, second.status, second.attempts, second.output) == ("agent", StepStatus.SUCCEEDED, 1, "B")
    assert first.finished_at is not None and first.started_at <= first.finished_at
    assert first.input_tokens > 0 and rows["fan"].input_tokens == first.input_tokens + second.input_tokens


def test_step_done_adds_to_an_earlier_row(store: SqliteRunStore) -> None:
    """A resumed item adds its attempts and tokens to the row an earlier process wrote, like started/finished."""
    store.create_run(RunRecord("r-1", "p", "p.yaml", RunStatus.RUNNING, 1.0))
    store.step_done("r-1", "fan[0]", "agent", 2, 10.0, StepStatus.FAILED, error={"code": "x"}, input_tokens=3)
    store.step_done("r-1", "fan[0]", "agent", 1, 20.0, StepStatus.SUCCEEDED, output="ok", input_tokens=4)
    (row,) = store.steps("r-1")
    assert (row.kind, row.status, row.attempts, row.output, row.error) == ("agent", StepStatus.SUCCEEDED, 3, "ok", None)
    assert (row.started_at, row.input_tokens) == (20.0, 7)
