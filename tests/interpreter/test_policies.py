"""Failure policies end to end: retry (attempt counts, Retry-After), per-attempt timeouts, deadlines, every kind of
fallback, circuit breakers, `on_error: continue`, and cancellation never being retried. Pipelines live in
tests/interpreter/pipelines/policies/; the scripted provider simulates the failures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus, StepStatus
from tests.interpreter.pipelines.harness import run_file

pytestmark = pytest.mark.anyio


async def test_retry_counts_total_attempts_and_skips_non_retryable_errors(store: SqliteRunStore) -> None:
    ran = await run_file("policies/retry.yaml", "policies/retry.fixture.yaml", store)
    steps = ran.steps()
    # max_attempts: 3 → exactly three provider calls for an always-failing (retryable) rule
    assert ran.provider.calls_by_rule[0] == 3
    assert steps["always_down"].attempts == 3 and steps["always_down"].status is StepStatus.FAILED
    error = steps["always_down"].error
    assert error is not None and error["cause"] == "provider-unavailable" and error["attempts"] == 3
    # bad_request is not retryable: one call, one attempt, whatever max_attempts says
    assert ran.provider.calls_by_rule[1] == 1
    assert steps["refused"].attempts == 1 and steps["refused"].error["cause"] == "bad-request"  # type: ignore[index]
    assert ran.provider.calls == 4
    assert ran.outcome.calls_executed == 0  # failed calls are never journaled


async def test_backoff_honours_a_retry_after_hint(store: SqliteRunStore) -> None:
    ran = await run_file("policies/retry_after.yaml", "policies/retry_after.fixture.yaml", store, skip_time=True)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    step = ran.steps()["call"]
    assert step.attempts == 2 and step.output == "finally"
    assert ran.provider.calls == 2
    # initial_delay is 1 ms: the run waited exactly the 300 ms Retry-After (virtual time: no other delay)
    assert ran.elapsed == pytest.approx(0.3)


async def test_per_attempt_timeout_is_retried_and_a_deadline_bounds_all_attempts(store: SqliteRunStore) -> None:
    ran = await run_file("policies/timeouts.yaml", "policies/timeouts.fixture.yaml", store, skip_time=True)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    steps = ran.steps()
    # the first reply takes 2 s against a 100 ms timeout: step-timeout, retried, and the second reply is in time
    assert steps["second_try"].attempts == 2 and steps["second_try"].output == "in time"
    slow = steps["always_slow"]
    assert slow.attempts == 2 and slow.error is not None and slow.error["cause"] == "step-timeout"
    # the deadline (300 ms) stops retries of a call failing after 10 ms, 50 ms apart (attempts at 0, 60, 120, 180,
    # 240 ms), long before 100 attempts: exactly 5 on virtual time, whatever the machine's speed
    bounded = steps["bounded"]
    assert bounded.error is not None and bounded.error["cause"] == "deadline-exceeded"
    assert bounded.attempts == 5
    assert ran.provider.calls_by_rule[2] == bounded.attempts
    # no 2 s reply was ever waited for: 100 ms + a backoff, 2 × 50 ms + a backoff, and the 300 ms deadline
    assert ran.elapsed < 0.6


async def test_every_kind_of_fallback_and_on_error_continue(store: SqliteRunStore) -> None:
    ran = await run_file("policies/fallback.yaml", "policies/fallback.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.outcome.outputs == {
        "to_agent": "backup answer",  # same prompt, other agent, after both retries failed
        "to_model": "small model answer",  # same agent and prompt on the other model
        "to_steps": "polished plan b",  # the last fallback step's output
        "to_value": {"answer": "canned", "from": "backup answer"},  # a value, rendered
        "continue_default": "default answer",
        "continue_status": "failed",
    }
    steps = ran.steps()
    assert steps["to_agent"].attempts == 2 and steps["to_agent"].status is StepStatus.SUCCEEDED
    assert steps["to_steps/fallback/plan_b_polish"].output == "polished plan b"
    assert ran.provider.calls_by_rule[0] == 2 + 1 + 1 + 1 + 1  # the primary model: every primary attempt


async def test_circuit_breaker_opens_fails_fast_and_closes_after_a_trial(store: SqliteRunStore) -> None:
    ran = await run_file("policies/breaker.yaml", "policies/breaker.fixture.yaml", store)
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    steps = ran.steps()
    assert steps["trips"].attempts == 2 and ran.provider.calls_by_rule[0] == 2  # two consecutive failures: open
    fast_fail = steps["fast_fail"]
    assert fast_fail.error is not None and fast_fail.error["cause"] == "circuit-open"
    assert fast_fail.attempts == 1  # circuit-open is not retried
    # the provider never saw "two"; after reset_after the half-open trial succeeds and the breaker closes
    assert steps["trial"].output == "ok" and steps["closed"].output == "ok"
    assert ran.provider.calls_by_rule[1] == 2
    assert ran.provider.calls == 4


async def test_cancellation_is_never_retried(store: SqliteRunStore) -> None:
    ran = await run_file(
        "policies/cancel_not_retried.yaml", "policies/cancel_not_retried.fixture.yaml", store, skip_time=True
    )
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    steps = ran.steps()
    assert steps["group"].error is not None and steps["group"].error["cause"] == "deadline-exceeded"
    assert steps["stuck"].status is StepStatus.CANCELLED and steps["stuck"].attempts == 1
    assert ran.provider.calls == 1
    assert ran.elapsed == pytest.approx(0.2)  # the deadline, not the 2 s reply


async def test_deeply_nested_json_from_a_model_is_a_typed_failure_not_a_crash(tmp_path: Path) -> None:
    from flowctl.dsl.frontend import load_pipeline
    from flowctl.interpreter.providers.scripted import Fixture
    from flowctl.interpreter.runner import RunOptions, run_graph

    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: deep\nagents:\n  j: {instruction: Judge., output_schema: {type: object}}\n"
        "steps:\n  - {id: judge, agent: j, prompt: go, retry: {max_attempts: 2, initial_delay: 1ms}}\n"
    )
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, diagnostics
    fixture = Fixture.from_data({"default": "[" * 200_000})  # hostile output: deeper than Python's recursion limit
    with SqliteRunStore(tmp_path / "runs.db") as store:
        outcome = await run_graph(graph, {}, store, RunOptions(scripted=fixture, tool_pool=None))
        steps = {s.path: s for s in store.steps(outcome.run_id)}
    assert outcome.status is RunStatus.FAILED
    assert outcome.error is not None and "nested too deeply" in str(outcome.error)
    assert steps["judge"].attempts == 2  # a mismatch is retryable, like any other bad answer
    assert steps["judge"].error is not None and steps["judge"].error["cause"] == "output-schema-mismatch"


async def test_a_failed_fallback_names_the_primary_attempts_and_says_the_fallback_failed(tmp_path: Path) -> None:
    from flowctl.dsl.frontend import load_pipeline
    from flowctl.interpreter.providers.scripted import Fixture
    from flowctl.interpreter.runner import RunOptions, run_graph

    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: fb\nagents:\n  a: {instruction: A.}\n  b: {instruction: B.}\n"
        "steps:\n  - {id: ask, agent: a, prompt: go, retry: {max_attempts: 3, initial_delay: 1ms},"
        " fallback: {agent: b}}\n"
    )
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, diagnostics
    fixture = Fixture.from_data({"default": {"error": "unavailable"}})  # every call fails, the fallback's too
    with SqliteRunStore(tmp_path / "runs.db") as store:
        outcome = await run_graph(graph, {}, store, RunOptions(scripted=fixture, tool_pool=None))
    assert outcome.status is RunStatus.FAILED
    assert outcome.error is not None
    assert "step 'ask' failed after 3 attempt(s); its fallback failed too:" in str(outcome.error)
