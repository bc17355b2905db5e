"""Durability: runs killed with SIGKILL and resumed with the CLI, resume refused after an edit (and forced), and a
failed run resumed after its fixture was fixed. The journal, the resumed process's call counts and the outputs of an
uninterrupted run are the evidence that no completed call is paid for twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from tests.interpreter.pipelines.harness import HERE, fixture_without_latency, flowctl, poll, query, run_file

DURABLE = HERE / "durable.yaml"
DURABLE_FIXTURE = HERE / "durable.fixture.yaml"
TOTAL_CALLS = 14  # early, six fan-out items, three loop iterations of two, final


def steps_by_path(store: SqliteRunStore, run_id: str) -> dict[str, tuple[str, int, int, int]]:
    """Each step row's status, tokens and attempts: a resumed run's rows must say what an uninterrupted run's say."""
    return {s.path: (s.status.value, s.input_tokens, s.output_tokens, s.attempts) for s in store.steps(run_id)}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run, in process and without latency: outputs, token totals and per-step tokens."""
    db = tmp_path_factory.mktemp("baseline") / "runs.db"
    with SqliteRunStore(db) as store:

        async def main() -> Any:
            return await run_file(DURABLE, fixture_without_latency(DURABLE_FIXTURE), store)

        ran = anyio.run(main)
        assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
        assert ran.outcome.calls_executed == TOTAL_CALLS
        return {
            "outputs": ran.outcome.outputs,
            "usage": (ran.outcome.input_tokens, ran.outcome.output_tokens),
            "steps": steps_by_path(store, ran.run_id),
        }


def recorded_calls(db: Path) -> dict[str, float]:
    """The journal of the (only) run tree in `db`: call key → when it was recorded (not the values the run keeps
    about itself, such as the count of its starts: `@run/attempt`)."""
    return {key: at for key, at in query(db, "SELECT key, recorded_at FROM calls") if not key.startswith("@run/")}


def run_and_kill(pipeline: Path, fixture: Path, db: Path, at_calls: int) -> tuple[str, dict[str, float]]:
    """Start `flowctl run`, SIGKILL it once `at_calls` calls are journaled; the run id and the journal it left."""
    process = flowctl("run", str(pipeline), "--scripted", str(fixture), "--store", str(db), "--quiet")
    try:
        poll(
            lambda: process.poll() is not None or len(recorded_calls(db)) >= at_calls,
            what=f"{at_calls} journaled calls",
        )
        assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    (run_id,) = query(db, "SELECT run_id FROM runs WHERE parent_id IS NULL")[0]
    assert query(db, "SELECT status FROM runs WHERE run_id = ?", run_id) == [("running",)]  # killed: never finished
    return run_id, recorded_calls(db)


def resume(run_id: str, fixture: Path, db: Path, *extra: str, output: str = "json") -> tuple[int, Any, str]:
    process = flowctl("resume", run_id, "--scripted", str(fixture), "--store", str(db), "--output", output, *extra)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, json.loads(stdout) if output == "json" else stdout, stderr


@pytest.mark.parametrize(
    "where, at_calls",
    [("early", 1), ("in the fan-out", 4), ("in the loop", 10)],
    ids=["early", "mid-fan-out", "in-loop"],
)
def test_killed_run_resumes_without_repeating_completed_calls(
    tmp_path: Path, baseline: dict[str, Any], where: str, at_calls: int
) -> None:
    db = tmp_path / "runs.db"
    run_id, before = run_and_kill(DURABLE, DURABLE_FIXTURE, db, at_calls)
    assert at_calls <= len(before) < TOTAL_CALLS, where

    code, result, stderr = resume(run_id, DURABLE_FIXTURE, db, "--quiet")
    assert code == 0, stderr
    assert result["status"] == "succeeded"
    assert result["outputs"] == baseline["outputs"]
    # every call journaled before the kill was replayed; only the others reached the provider
    assert _counts(result["calls"]) == {"executed": TOTAL_CALLS - len(before), "replayed": len(before), "cached": 0}
    after = recorded_calls(db)
    assert len(after) == TOTAL_CALLS
    assert {key: after[key] for key in before} == before  # not one of them was recorded again
    # token accounting: each call counts once, in the run's totals and in its step's row
    assert (result["usage"]["input_tokens"], result["usage"]["output_tokens"]) == baseline["usage"]
    with SqliteRunStore(db) as store:
        record = store.get_run(run_id)
        assert record is not None and record.status is RunStatus.SUCCEEDED
        assert (record.input_tokens, record.output_tokens) == baseline["usage"]
        assert steps_by_path(store, run_id) == baseline["steps"]


def test_resume_is_refused_after_an_edit_unless_forced(tmp_path: Path, baseline: dict[str, Any]) -> None:
    pipeline = tmp_path / "durable.yaml"
    shutil.copy(DURABLE, pipeline)
    db = tmp_path / "runs.db"
    run_id, before = run_and_kill(pipeline, DURABLE_FIXTURE, db, 4)
    pipeline.write_text(pipeline.read_text().replace('prompt: "early"', 'prompt: "early, edited"'))

    with SqliteRunStore(db) as store:
        steps_before = steps_by_path(store, run_id)
    code, stdout, stderr = resume(run_id, DURABLE_FIXTURE, db, "--quiet", output="text")
    assert code == 2 and stdout == ""  # a usage problem: nothing ran
    assert stderr.count("step 'early' changed since run") == 1 and "--force" in stderr and "revert the edit" in stderr
    assert recorded_calls(db) == before  # nothing was paid for
    with SqliteRunStore(db) as store:  # ...and the run is left as the killed process left it
        record = store.get_run(run_id)
        assert record is not None and record.status is RunStatus.RUNNING and record.error is None
        assert steps_by_path(store, run_id) == steps_before

    code, result, stderr = resume(run_id, DURABLE_FIXTURE, db, "--quiet", "--force")
    assert code == 0, stderr
    assert result["outputs"] == baseline["outputs"]
    # the edited call ran again; its answer is unchanged, so everything after it still replays
    executed, replayed = TOTAL_CALLS - len(before) + 1, len(before) - 1
    assert _counts(result["calls"]) == {"executed": executed, "replayed": replayed, "cached": 0}


@pytest.mark.anyio
async def test_failed_run_keeps_its_journal_and_resumes_after_the_fixture_is_fixed(
    store: SqliteRunStore, baseline: dict[str, Any]
) -> None:
    broken = fixture_without_latency(DURABLE_FIXTURE, final={"error": "bad_request"})
    failed = await run_file(DURABLE, broken, store)
    assert failed.outcome.status is RunStatus.FAILED
    assert failed.outcome.error is not None and failed.outcome.error.to_json()["cause"] == "bad-request"
    assert failed.outcome.calls_executed == TOTAL_CALLS - 1
    rows_before = {s.path: s for s in store.steps(failed.run_id)}

    resumed = await run_file(
        DURABLE, fixture_without_latency(DURABLE_FIXTURE), store, run_id=failed.run_id, resuming=True
    )
    assert resumed.outcome.status is RunStatus.SUCCEEDED, resumed.outcome.error
    assert resumed.outcome.outputs == baseline["outputs"]
    assert (resumed.outcome.calls_executed, resumed.outcome.calls_replayed) == (1, TOTAL_CALLS - 1)
    assert resumed.provider.calls == 1
    assert (resumed.outcome.input_tokens, resumed.outcome.output_tokens) == baseline["usage"]
    # `final` failed once and succeeded on resume: two attempts; every other step was replayed, not attempted again
    expected = {path: (*row[:3], 2 if path == "final" else row[3]) for path, row in baseline["steps"].items()}
    assert steps_by_path(store, failed.run_id) == expected
    # a step replayed whole keeps the row of the run that did its work, timings included
    for record in store.steps(failed.run_id):
        if record.path != "final":
            assert record == rows_before[record.path], record.path


EVENTS = """\
flowctl: 1
name: evented
agents:
  worker: {instruction: You work.}
steps:
  - {id: first, agent: worker, prompt: "first", emit: {event: first_done, data: "{{ output }}"}}
  - {id: second, agent: worker, prompt: "second"}
"""


@pytest.mark.anyio
async def test_a_resumed_run_logs_each_event_once(store: SqliteRunStore, tmp_path: Path) -> None:
    """The `emit` of a replayed step sends its event again (triggers and waits may need it), but the run's event log
    already holds it."""
    pipeline = tmp_path / "evented.yaml"
    pipeline.write_text(EVENTS)
    (tmp_path / "broken.yaml").write_text("responses:\n  - {step: second, reply: {error: bad_request}}\ndefault: ok\n")
    (tmp_path / "fixed.yaml").write_text("default: ok\n")
    failed = await run_file(pipeline, tmp_path / "broken.yaml", store)
    assert failed.outcome.status is RunStatus.FAILED
    logged = [(e.name, e.source, e.data) for e in store.events(failed.run_id)]
    assert logged == [("first_done", "first", "ok")]

    resumed = await run_file(pipeline, tmp_path / "fixed.yaml", store, run_id=failed.run_id, resuming=True)
    assert resumed.outcome.status is RunStatus.SUCCEEDED, resumed.outcome.error
    assert [(e.name, e.source, e.data) for e in store.events(failed.run_id)] == logged


@pytest.mark.anyio
async def test_a_refused_resume_is_not_absorbed_by_on_error_fallback_or_triggers(
    store: SqliteRunStore, tmp_path: Path
) -> None:
    pipeline = tmp_path / "refuse.yaml"
    shutil.copy(HERE / "refuse.yaml", pipeline)
    broken = fixture_without_latency("refuse.fixture.yaml")
    first = await run_file(pipeline, broken, store)
    assert first.outcome.status is RunStatus.SUCCEEDED, first.outcome.error
    assert first.provider.calls == 3  # first, second, cleanup

    pipeline.write_text(pipeline.read_text().replace('prompt: "first question"', 'prompt: "first question, edited"'))
    resumed = await run_file(pipeline, "refuse.fixture.yaml", store, run_id=first.run_id, resuming=True)
    assert resumed.outcome.status is RunStatus.FAILED
    error = resumed.outcome.error
    assert error is not None and error.to_json()["cause"] == "resume-refused" and "step 'first'" in str(error)
    # neither the default, the fallback, the `failed:` trigger nor `finally` ran anything
    assert resumed.provider.calls == 0
    assert resumed.outcome.calls_executed == 0
    assert "recover#1/rescue" not in steps_by_path(store, first.run_id)


def _counts(calls: dict[str, int]) -> dict[str, int]:
    """The journal's counts of `--output json`'s `calls` (`requests` and `failed` count what was sent)."""
    return {key: calls[key] for key in ("executed", "replayed", "cached")}
