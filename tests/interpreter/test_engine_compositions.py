"""Every composition end to end: real pipeline files (tests/interpreter/pipelines/) run by the real interpreter with
the scripted provider and an SQLite run store. Assertions read the run's outcome, the provider's counters and what
the store journaled; nothing inside the interpreter is patched.
"""

from __future__ import annotations

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus, StepStatus
from tests.interpreter.pipelines.harness import HERE, max_overlap, run_file

pytestmark = pytest.mark.anyio


# --- sequential ---------------------------------------------------------------------------------------------------


async def test_sequential_steps_read_earlier_outputs_and_run_metadata(store: SqliteRunStore) -> None:
    # The fixture has no `default:` and matches prompts exactly: a wrongly rendered prompt fails the run.
    ran = await run_file("sequential.yaml", "sequential.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs == {
        "text": "Otters hold hands while sleeping.",
        "run_id": ran.run_id,
        "pipeline": "sequential",
        "draft_status": "succeeded",
    }
    assert ran.provider.calls == 2
    assert ran.provider.calls_by_rule == {0: 1, 1: 1}
    assert [s.path for s in store.steps(ran.run_id)] == ["draft", "edit"]
    assert (ran.outcome.calls_executed, ran.outcome.calls_replayed) == (2, 0)
    record = store.get_run(ran.run_id)
    assert record is not None and record.status is RunStatus.SUCCEEDED and record.outputs == ran.outcome.outputs
    assert record.file == str(HERE / "sequential.yaml")  # absolute, so `flowctl resume` works from anywhere


# --- parallel groups and joins ------------------------------------------------------------------------------------


async def test_join_all_first_failure_cancels_the_rest_and_fails_the_group(store: SqliteRunStore) -> None:
    ran = await run_file("joins.yaml", "joins.fixture.yaml", store, skip_time=True)
    assert ran.outcome.status is RunStatus.SUCCEEDED  # the group has on_error: continue
    steps = ran.steps()
    group = steps["all_group"]
    assert group.status is StepStatus.FAILED
    assert group.error is not None and group.error["cause"] == "step-failed"
    assert "all_fails" in group.error["message"] and "branch refused" in group.error["message"]
    assert steps["all_fails"].status is StepStatus.FAILED
    # the slow (2 s) and fast (50 ms) branches were cancelled by the failure at 20 ms, and say so
    assert steps["all_slow"].status is StepStatus.CANCELLED
    assert steps["all_fast"].status is StepStatus.CANCELLED
    assert ran.status("all_slow") == "cancelled"
    assert ran.elapsed < 2.0  # nobody waited for the 2 s branches


async def test_join_collect_keeps_failures_as_error_entries(store: SqliteRunStore) -> None:
    ran = await run_file("joins.yaml", "joins.fixture.yaml", store)
    collect = ran.outcome.outputs["collect"]
    assert collect["collect_ok"] == "fast answer"
    error = collect["collect_fails"]["error"]
    assert error["code"] == "step-failed" and error["cause"] == "bad-request" and error["step"] == "collect_fails"
    assert ran.steps()["collect_group"].status is StepStatus.SUCCEEDED


async def test_join_first_takes_the_winner_and_cancels_the_others_without_retrying(store: SqliteRunStore) -> None:
    ran = await run_file("joins.yaml", "joins.fixture.yaml", store)
    assert ran.outcome.outputs["first"] == {"first_fast": "fast answer"}  # a failure earlier is not a winner
    steps = ran.steps()
    slow = steps["first_slow"]
    # cancelled by the join although it has `retry: {max_attempts: 3}`: cancellation is never retried
    assert slow.status is StepStatus.CANCELLED and slow.attempts == 1
    assert steps["first_fails"].status is StepStatus.FAILED


async def test_join_at_least_k(store: SqliteRunStore) -> None:
    ran = await run_file("joins.yaml", "joins.fixture.yaml", store)
    at_least = ran.outcome.outputs["at_least"]
    assert at_least["k_fast1"] == at_least["k_fast2"] == "fast answer"
    assert at_least["k_slow"] is None  # cancelled once two had succeeded
    assert at_least["k_fails"]["error"]["cause"] == "bad-request"
    steps = ran.steps()
    assert steps["k_slow"].status is StepStatus.CANCELLED
    # two of three failed: {at_least: 2} can no longer be met; the group fails with a typed error
    unmet = steps["at_least_unmet"]
    assert unmet.status is StepStatus.FAILED and unmet.error is not None
    assert unmet.error["cause"] == "join-failed"
    assert "join at_least 2 not satisfied: 0 succeeded, 2 failed" in unmet.error["message"]
    assert steps["u_slow"].status is StepStatus.CANCELLED


async def test_parallel_max_concurrency_is_honoured(store: SqliteRunStore) -> None:
    ran = await run_file("joins.yaml", "joins.fixture.yaml", store)
    assert ran.outcome.outputs["capped"] == {f"c{i}": "medium answer" for i in range(1, 5)}
    branches = [record for path, record in ran.steps().items() if path in ("c1", "c2", "c3", "c4")]
    assert max_overlap(branches) == 2
    group = ran.steps()["capped_group"]
    assert group.finished_at is not None and group.finished_at - group.started_at >= 2 * 0.06


# --- fan-out ------------------------------------------------------------------------------------------------------


async def test_fan_out_output_is_in_item_order_whatever_the_completion_order(store: SqliteRunStore) -> None:
    ran = await run_file("fanout_state.yaml", "fanout_state.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs["results"] == ["A", "B", "C", "D", "E"]
    steps = ran.steps()
    items = [steps[f"per_item[{i}]"] for i in range(5)]
    assert all(item.status is StepStatus.SUCCEEDED and item.attempts == 1 for item in items)
    assert [item.output for item in items] == ["A", "B", "C", "D", "E"]
    finished = sorted(range(5), key=lambda i: items[i].finished_at or 0)
    assert finished == [4, 3, 2, 1, 0]  # latencies fall with the index: the last item finished first
    parent = steps["per_item"]
    assert parent.kind == "agent" and parent.status is StepStatus.SUCCEEDED
    assert parent.input_tokens == sum(item.input_tokens for item in items) > 0


async def test_fan_out_max_concurrency_is_honoured(store: SqliteRunStore) -> None:
    ran = await run_file("fanout_state.yaml", "fanout_state.fixture.yaml", store)
    steps = ran.steps()
    items = [steps[f"capped[{i}]"] for i in range(5)]
    assert max_overlap(items) == 2
    assert ran.provider.calls_by_rule[5] == 5  # the `capped*` rule answered each item once


# --- shared state -------------------------------------------------------------------------------------------------


async def test_fan_out_items_nested_state_updates_apply_in_item_order(store: SqliteRunStore) -> None:
    # Each item's fallback step sets state; the items finish in reverse order (the engine gives items a buffer only
    # when a nested step sets state, so this is the case that needs one).
    ran = await run_file("fanout_nested_state.yaml", "fanout_nested_state.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs == {"seen": ["A", "B", "C"], "results": ["A", "B", "C"]}
    changes = store.state_changes(ran.run_id)
    assert [change.step for change in changes] == [f"per_item[{i}]/per_item/fallback/rescue" for i in range(3)]


async def test_state_reducers_are_deterministic_under_parallel_writers(store: SqliteRunStore) -> None:
    ran = await run_file("fanout_state.yaml", "fanout_state.fixture.yaml", store)
    outputs = ran.outcome.outputs
    # slow_branch is declared first and finishes last: its updates still apply first
    assert outputs["seen"] == ["A", "B", "C", "D", "E", "slow", "fast"]  # append (a list value extends)
    assert outputs["last"] == "fast"  # replace: the last writer in declaration order
    assert outputs["merged"] == {"base": True, "who": "fast", "slow": True, "fast": True}  # merge, shallow
    assert outputs["counter"] == 1
    assert ran.outcome.state["seen"] == outputs["seen"]


async def test_state_change_log_has_step_keys_and_time(store: SqliteRunStore) -> None:
    ran = await run_file("fanout_state.yaml", "fanout_state.fixture.yaml", store)
    changes = store.state_changes(ran.run_id)
    assert [(c.step, c.keys) for c in changes] == [
        ("per_item", ["seen"]),
        ("slow_branch", ["seen", "last", "merged"]),
        ("fast_branch", ["seen", "last", "merged"]),
        ("bump", ["counter"]),
    ]
    assert changes[-1].values == {"counter": 1}
    record = store.get_run(ran.run_id)
    assert record is not None
    times = [c.at for c in changes]
    assert times == sorted(times) and record.started_at <= times[0] <= (record.finished_at or 0)


# --- nested pipelines ---------------------------------------------------------------------------------------------


async def test_child_pipelines_by_name_by_file_and_per_item(store: SqliteRunStore) -> None:
    ran = await run_file("nested.yaml", "nested.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    root = ran.run_id
    outputs = ran.outcome.outputs
    assert outputs["by_name"] == {"summary": "Water is wet.", "run_id": f"{root}/by_name", "pipeline": "summarise"}
    assert outputs["by_file"] == {"score": "7"}  # the child file's outputs, fed from the first child's output
    assert outputs["per_topic"] == [
        {"summary": "Tea is warm.", "run_id": f"{root}/per_topic[0]", "pipeline": "summarise"},
        {"summary": "Coffee is bitter.", "run_id": f"{root}/per_topic[1]", "pipeline": "summarise"},
    ]
    children = {child.run_id: child for child in store.child_runs(root)}
    assert set(children) == {f"{root}/by_name", f"{root}/by_file", f"{root}/per_topic[0]", f"{root}/per_topic[1]"}
    for child in children.values():
        assert child.parent_id == root and child.status is RunStatus.SUCCEEDED
        assert child.input_tokens > 0  # a child run's own totals
    assert children[f"{root}/by_file"].pipeline == "score"
    assert children[f"{root}/by_file"].inputs == {"text": "Water is wet.", "scale": 10}  # the default applied
    assert children[f"{root}/per_topic[1]"].inputs == {"topic": "coffee"}
    assert [s.path for s in store.steps(f"{root}/per_topic[0]")] == ["sum"]
    assert ran.steps()["per_topic[1]"].output == outputs["per_topic"][1]


async def test_child_inputs_are_validated_at_run_time(store: SqliteRunStore) -> None:
    ran = await run_file("nested_bad_input.yaml", "nested.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.FAILED
    error = ran.outcome.error
    assert error is not None and error.to_json()["cause"] == "invalid-input"
    assert "input 'scale': 'ten' is not of type 'integer'" in str(error)
    assert store.child_runs(ran.run_id) == []  # rejected before the child run existed
    assert ran.provider.calls == 0


# --- adaptive routes ----------------------------------------------------------------------------------------------


async def test_route_rules_llm_default_and_unknown_choices(store: SqliteRunStore) -> None:
    ran = await run_file("route.yaml", "route.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    out = ran.output
    # a rule that names two branches runs both (`multiple` bounds only the LLM), and the router is never asked
    assert out("by_rule") == {
        "chosen": ["rapid", "detailed"],
        "source": "rule",
        "results": {"rapid": "quick result", "detailed": "deep result"},
        "errors": [],
    }
    assert not any(path.startswith("by_rule") for path in ran.steps() if "router" in path)
    # the LLM picks one / several of the declared choices
    assert out("llm_one")["chosen"] == ["detailed"] and out("llm_one")["source"] == "llm"
    assert out("llm_one")["results"] == {"detailed": "deep result"}
    assert out("llm_several")["chosen"] == ["rapid", "extra"]
    assert out("llm_several")["results"] == {"rapid": "quick result", "extra": "extra result"}
    assert ran.status("sev_deep") == "pending"  # not chosen: never ran
    # the LLM chose nothing: the default
    assert out("llm_none")["chosen"] == ["detailed"] and out("llm_none")["source"] == "default"
    # unknown choices: report keeps the known ones and reports the rest
    assert out("unknown_report")["chosen"] == ["rapid"]
    assert out("unknown_report")["errors"] == [{"error": "Unknown pattern: sideways"}]
    # ... default falls back to the default branch
    assert out("unknown_default")["chosen"] == ["detailed"] and out("unknown_default")["source"] == "default"
    assert out("unknown_default")["errors"] == [{"error": "Unknown pattern: sideways"}]
    # ... fail fails the step
    assert ran.status("unknown_fail") == "failed"
    error = ran.outcome.steps["unknown_fail"]["error"]
    assert error["cause"] == "unknown-route-choice" and "'sideways'" in error["message"]
    assert ran.status("fail_quick") == "pending"


# --- events, waits and triggers -----------------------------------------------------------------------------------


async def test_emit_wait_correlation_and_wait_timeout(store: SqliteRunStore) -> None:
    ran = await run_file("events.yaml", "events.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    outputs = ran.outcome.outputs
    assert outputs["ping"] == {"n": 1, "text": "the draft"}  # the emitted payload, rendered
    assert outputs["correlated"] == {"request_id": ran.run_id, "answer": "yes"}  # `match` skipped the other reply
    assert outputs["never"] == {"answer": "timed out"}  # on_error: continue with its default
    assert (outputs["never_status"], outputs["never_error"]) == ("failed", "wait-timeout")
    events = [(e.name, e.source, e.data) for e in store.events(ran.run_id)]
    assert ("ping", "announce", {"n": 1, "text": "the draft"}) in events
    assert [e for e in events if e[0] == "reply"] == [
        ("reply", "other", {"request_id": "someone-else", "answer": "no"}),
        ("reply", "mine", {"request_id": ran.run_id, "answer": "yes"}),
    ]


async def test_completed_failed_event_and_when_triggers(store: SqliteRunStore) -> None:
    ran = await run_file("events.yaml", "events.fixture.yaml", store)
    fired = ran.outcome.outputs["fired"]
    assert "completed:the draft" in fired  # event.data is the completed step's output
    assert "failed:auth-error" in fired  # event.error is the failed step's error
    assert "event:1" in fired  # event.data is the emitted payload
    assert "go:42" in fired  # a trigger's steps may wait for a later event
    # the threshold fired once although the state kept changing after it was crossed (count 2, then 3) ...
    assert len([f for f in fired if f.startswith("when:")]) == 1
    # ... and a `once: false` threshold fires on the crossing, not on every change while it holds
    assert fired.count("edge") == 1
    paths = set(ran.steps())
    assert {"threshold#1/crossed", "edge#1/edge_step", "on_broken#1/recover", "waits_inside#1/after_go"} <= paths
    assert not {"threshold#2/crossed", "edge#2/edge_step"} & paths
    assert ran.outcome.steps["broken"]["status"] == "failed"  # recovery does not make the step succeed


# --- loops --------------------------------------------------------------------------------------------------------


async def test_loop_converges_before_its_bound_and_stops_at_it(store: SqliteRunStore) -> None:
    # prompts match only with the right loop.iteration and loop.previous
    ran = await run_file("loop.yaml", "loop.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs["converges"] == {
        "draft": "v3",
        "score": {"score": 9},
        "iterations": 3,
        "converged": True,
    }
    assert ran.outcome.outputs["bounded"] == {"attempt": "meh", "verdict": "bad", "iterations": 2, "converged": False}
    paths = list(ran.steps())
    assert [p for p in paths if p.startswith("converges#")] == [
        f"converges#{i}/{s}" for i in (1, 2, 3) for s in ("draft", "score")
    ]
    assert "converges#4/draft" not in paths and "bounded#3/attempt" not in paths
    assert ran.provider.calls == 10


# --- finally ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fail", [False, True])
async def test_finally_runs_after_success_and_failure_and_sees_run_status(store: SqliteRunStore, fail: bool) -> None:
    ran = await run_file("finally.yaml", "finally.fixture.yaml", store, inputs={"fail": fail})
    expected = "failed" if fail else "succeeded"
    assert ran.outcome.status is RunStatus(expected)
    assert ran.outcome.state["seen_status"] == expected
    steps = ran.steps()
    assert steps["finally/record"].status is StepStatus.SUCCEEDED
    assert steps["finally/notify"].output == "noted"  # its prompt rendered `run.status`
    assert [c.step for c in store.state_changes(ran.run_id)] == ["finally/record"]
    if fail:
        assert ran.outcome.error is not None and ran.outcome.error.to_json()["step"] == "work"
    else:
        assert ran.outcome.outputs == {"status_in_finally": "succeeded"}


async def test_state_changes_in_finally_do_not_start_triggers(store: SqliteRunStore) -> None:
    ran = await run_file("finally_trigger.yaml", "finally.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.state["level"] == 5
    assert "late#1/never" not in ran.steps()


async def test_when_skips_a_step_and_a_failing_when_fails_it(store: SqliteRunStore) -> None:
    ran = await run_file("when.yaml", "when.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs == {"last": "finished"}
    steps = ran.steps()
    assert steps["skipped"].status is StepStatus.SKIPPED
    broken = steps["broken_condition"]
    assert broken.status is StepStatus.FAILED and broken.output == "no score"
    assert broken.error is not None and broken.error["cause"] == "render-failed"
    assert ran.provider.calls == 2


async def test_a_value_its_reducer_cannot_take_fails_the_step(store: SqliteRunStore) -> None:
    ran = await run_file("bad_merge.yaml", "when.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.FAILED
    error = ran.outcome.error
    assert error is not None and error.to_json()["cause"] == "state-update-failed"
    assert "cannot update state key 'settings'" in str(error)
    assert ran.outcome.state["settings"] == {"a": 1}
    record = store.get_run(ran.run_id)
    assert record is not None and record.status is RunStatus.FAILED


async def test_concurrent_firings_of_a_trigger_read_their_own_step_results(store: SqliteRunStore) -> None:
    # firing 2 fetches while firing 1 still thinks: with shared step results, firing 1 would log "fetched-2"
    ran = await run_file("trigger_isolation.yaml", "trigger_isolation.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs == {"log": ["event 1 used fetched-1", "event 2 used fetched-2"]}
