"""Dynamic composition in the engine (issue 14): dispatch by name, reuse, events that keep flowing, route options.
Real pipelines from tests/interpreter/pipelines run with the scripted provider on an SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowctl.interpreter.errors import InputError
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


# --- reuse: child pipelines sharing their caller's state ------------------------------------------------------------


async def test_a_child_reads_and_updates_the_keys_of_its_callers_state_it_declares(store: SqliteRunStore) -> None:
    ran = await run_file("reuse.yaml", "reuse.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    outputs = ran.outcome.outputs
    patterns = ["data_ingestion", "data_validation", "initial_analysis", "detailed_analysis"]
    assert outputs["states"] == dict.fromkeys(patterns, "completed")
    # the caller's reducer (append) applies, at once: concurrent children coordinate through it
    assert outputs["log"][0] == "data_ingestion done"
    assert sorted(outputs["log"]) == sorted(f"{p} done" for p in patterns)
    # the child's own keys stay its own
    assert outputs["follow_ups"] == [{"result": "ok", "mine": 1}] * 3
    # the caller's change log names the child step that wrote, under the pipeline step's path
    changes = query(store.path, "SELECT step FROM state_changes WHERE run_id = ?", ran.run_id)
    assert [step for (step,) in changes][:2] == ["ingest/mark_running", "ingest/run"]
    assert ("follow_ups[2]/run",) in changes


async def test_a_child_in_its_own_file_shares_the_keys_of_its_callers_state_it_declares(
    store: SqliteRunStore,
) -> None:
    ran = await run_file("reuse_file.yaml", "reuse.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    outputs = ran.outcome.outputs
    patterns = ["data_ingestion", "data_validation", "initial_analysis", "detailed_analysis"]
    assert outputs["states"] == dict.fromkeys(patterns, "completed")
    assert outputs["log"][0] == "data_ingestion done"  # the caller's reducer (append)
    assert sorted(outputs["log"]) == sorted(f"{p} done" for p in patterns)
    assert outputs["follow_ups"] == [{"result": "ok", "mine": 1}] * 3  # the child's own key stays its own
    changes = query(store.path, "SELECT step FROM state_changes WHERE run_id = ?", ran.run_id)
    assert [step for (step,) in changes][:2] == ["ingest/mark_running", "ingest/run"]


async def test_a_file_that_shares_its_callers_state_runs_only_as_a_child(store: SqliteRunStore) -> None:
    with pytest.raises(InputError, match=r"parent_state: pattern_states, log\): it runs only as a child pipeline"):
        await run_file("children/execute_pattern.yaml", "reuse.fixture.yaml", store, inputs={"pattern": "x"})
    assert store.list_runs() == []  # refused before anything was recorded


# --- events keep flowing --------------------------------------------------------------------------------------------


async def test_events_emitted_by_triggered_steps_fire_triggers_until_the_run_is_quiescent(
    store: SqliteRunStore,
) -> None:
    ran = await run_file("events_flow.yaml", "events_flow.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    # the main step only emitted the first tick; every later tick came from a triggered step
    assert ran.outcome.outputs == {
        "count": 5,
        "seen": ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "done at 5"],
    }
    assert ran.provider.calls == 5
    paths = set(ran.steps())
    assert {f"on_tick#{i}/count" for i in range(1, 6)} | {"after_ticks#1/report"} <= paths
    assert "on_tick#6/count" not in paths


@pytest.mark.parametrize(("bounded", "limit", "trigger"), [(True, 5, "ping_again"), (False, 100, "pong_again")])
async def test_a_loop_of_events_stops_at_max_firings_with_an_error(
    store: SqliteRunStore, tmp_path: Path, bounded: bool, limit: int, trigger: str
) -> None:
    fixture = tmp_path / "none.yaml"
    fixture.write_text("responses: []\n")
    ran = await run_file("events_loop.yaml", fixture, store, inputs={"bounded": bounded})
    assert ran.outcome.status is RunStatus.FAILED
    error = ran.outcome.error
    assert error is not None and error.code == "trigger-limit"
    assert f"trigger {trigger!r} would fire more than max_firings={limit} times" in str(error)
    firings = {path.split("#")[1].split("/")[0] for path in ran.steps() if path.startswith(f"{trigger}#")}
    assert len(firings) == limit


# --- route fidelity -------------------------------------------------------------------------------------------------


async def test_route_runs_branches_in_order_places_its_constraint_and_reports_unknown_choices_in_results(
    store: SqliteRunStore,
) -> None:
    ran = await run_file("route_fidelity.yaml", "route_fidelity.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    # `sequential`: in the order chosen, each branch seeing the state the previous one left
    assert ran.outcome.outputs["order"] == ["technical", "rapid after technical"]
    assert list(ran.output("in_order")["results"]) == ["technical", "rapid"]
    # `constraint: user`: the options are told after the prompt, the system message is the agent's own
    told = ran.output("told_in_prompt")
    assert told["chosen"] == ["detailed", "rapid"]
    # `unknown_in_results`: every name chosen, in the order chosen, an unknown one with the seed's error
    assert told["results"] == {
        "detailed": "detailed result",
        "sentiment_analysis": {"error": "Unknown pattern: sentiment_analysis"},
        "rapid": "rapid result",
    }
    assert told["errors"] == [{"error": "Unknown pattern: sentiment_analysis"}]
    systems = {
        e.path: e.request["messages"][0]["content"] for e in store.exchanges(ran.run_id) if e.path.endswith("/router")
    }
    assert systems == {
        "told_in_prompt/router": "Select optimal processing patterns based on content analysis.",
        "told_nothing/router": "Select optimal processing patterns based on content analysis.",
    }
    # `constraint: none`: the prompt is sent as written, and the answer is still read leniently
    assert ran.output("told_nothing")["chosen"] == ["rapid", "detailed"]


async def test_a_resumed_run_fires_the_same_triggers_and_replays_what_they_did(
    store: SqliteRunStore, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "responses:\n"
        '  - {agent: worker, prompt: "^tick 3$", reply: {error: bad_request}}\n'
        '  - {agent: worker, prompt: "^tick (\\\\d)$", reply: "ticked"}\n'
    )
    failed = await run_file("events_flow.yaml", broken, store)
    assert failed.outcome.status is RunStatus.FAILED
    assert failed.provider.calls == 3

    resumed = await run_file("events_flow.yaml", "events_flow.fixture.yaml", store, run_id=failed.run_id, resuming=True)
    assert resumed.outcome.status is RunStatus.SUCCEEDED, resumed.outcome.error
    assert resumed.outcome.outputs["count"] == 5
    assert resumed.provider.calls == 3  # ticks 3, 4 and 5: ticks 1 and 2 came from the journal
    assert resumed.outcome.calls_replayed == 2


ROUTED_BY_FILE = """\
flowctl: 1
name: routed_by_file
inputs:
  document: {type: string}
agents:
  selector: {instruction: You choose.}
steps:
  - id: pick
    route: {agent: selector, prompt_file: prompts/route.md, constraint: user}
    branches:
      rapid: [{id: quick, set: {}}]
      detailed: [{id: deep, set: {}}]
"""


async def test_a_routes_prompt_file_is_rendered_and_sent_as_its_prompt(store: SqliteRunStore, tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    template = "Choose for {{ inputs.document }}.\n{% if true %}Be quick.{% endif %}"
    (tmp_path / "prompts" / "route.md").write_text(template)
    (tmp_path / "routed.yaml").write_text(ROUTED_BY_FILE)
    rule = '{agent: selector, prompt: "^Choose for report.pdf.\\nBe quick.", reply: {json: {choices: [rapid]}}}'
    (tmp_path / "fixture.yaml").write_text(f"responses:\n  - {rule}\n")
    ran = await run_file(tmp_path / "routed.yaml", tmp_path / "fixture.yaml", store, inputs={"document": "report.pdf"})
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.output("pick")["chosen"] == ["rapid"]
    (prompt,) = [e.request["messages"][-1]["content"] for e in store.exchanges(ran.run_id) if e.path == "pick/router"]
    # the file's text rendered, then the options (`constraint: user`)
    told = "Choose exactly one of these options: rapid, detailed."
    assert prompt.startswith(f"Choose for report.pdf.\nBe quick.\n\n{told}")
