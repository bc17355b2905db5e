"""Dynamic composition in the engine (issue 14): dispatch by name, reuse, events that keep flowing, route options.
Real pipelines from tests/interpreter/pipelines run with the scripted provider on an SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from tests.interpreter.pipelines.harness import HERE, query, run_file

pytestmark = pytest.mark.anyio


# --- dispatch by name ---------------------------------------------------------------------------------------------


async def test_a_pipeline_step_runs_the_child_its_expression_names(store: SqliteRunStore) -> None:
    ran = await run_file("dispatch.yaml", "dispatch.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    # per item: the named children run; the unknown name is reported as the item's output (`on_unknown: report`)
    assert ran.output("each_pattern") == [
        {"pattern": "rapid_analysis", "result": "quick"},
        {"pattern": "detailed_analysis", "result": "deep"},
        {"error": "Unknown pattern: sideways"},
    ]
    pipelines = {run.run_id.rsplit("/", 1)[-1]: run.pipeline for run in store.child_runs(ran.run_id)}
    assert pipelines["each_pattern[0]"] == "rapid_analysis" and pipelines["each_pattern[1]"] == "detailed_analysis"
    assert "each_pattern[2]" not in pipelines  # an unknown name starts no child run
    # an unknown name runs `default_pipeline`; a name among the choices may be a file
    assert ran.output("to_default") == {"pattern": "detailed_analysis", "result": "deep"}
    assert ran.output("to_file") == {"pattern": "file_analysis", "result": "file"}
    # `on_unknown: fail` fails the step, naming the choices
    error = ran.outcome.steps["strict"]["error"]
    assert ran.status("strict") == "failed" and error["cause"] == "unknown-pipeline-choice"
    assert "'sideways'" in error["message"] and "rapid_analysis, detailed_analysis" in error["message"]


async def test_a_resumed_run_takes_the_journaled_dispatch_decisions(store: SqliteRunStore, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (HERE / "dispatch.fixture.yaml").read_text().replace('reply: "done"', "reply: {error: bad_request}")
    )
    failed = await run_file("dispatch.yaml", broken, store)
    assert failed.outcome.status is RunStatus.FAILED
    decisions = {
        key: result for key, result in query(store.path, "SELECT key, result FROM calls") if "dispatch#" in key
    }
    assert set(decisions) == {f"each_pattern[{i}]/dispatch#0" for i in range(3)} | {
        f"{step}/dispatch#0" for step in ("to_default", "to_file", "strict")
    }
    resumed = await run_file("dispatch.yaml", "dispatch.fixture.yaml", store, run_id=failed.run_id, resuming=True)
    assert resumed.outcome.status is RunStatus.SUCCEEDED, resumed.outcome.error
    assert resumed.provider.calls == 1  # only `last`: every child and every decision came from the journal
    assert resumed.output("each_pattern")[2] == {"error": "Unknown pattern: sideways"}
