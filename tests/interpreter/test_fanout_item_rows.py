"""A fan-out item is journaled as one step row, written when it finishes (a StepFinished with no StepStarted): its
kind, attempts, outcome and tokens must be what a started row per attempt plus a finished row would have said."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunRecord, RunStatus, StepFinished, StepStatus
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


def test_an_item_row_adds_to_an_earlier_row(store: SqliteRunStore) -> None:
    """A resumed item adds its attempts and tokens to the row an earlier process wrote, like started/finished."""
    claim = store.create_run(RunRecord("r-1", "p", "p.yaml", RunStatus.RUNNING, 1.0), "{}", None, "here:1")
    failed = StepFinished("r-1", "fan[0]", "agent", StepStatus.FAILED, 10.0, 11.0, 2, None, '{"code": "x"}', 3)
    store.commit([failed], claim)
    store.commit([StepFinished("r-1", "fan[0]", "agent", StepStatus.SUCCEEDED, 20.0, 21.0, 1, '"ok"', None, 4)], claim)
    (row,) = store.steps("r-1")
    assert (row.kind, row.status, row.attempts, row.output, row.error) == ("agent", StepStatus.SUCCEEDED, 3, "ok", None)
    assert (row.started_at, row.input_tokens) == (10.0, 7)  # the row's start is its first
