"""Run metadata and time in templates: `now()` is journaled (a resumed run reads the times the first run read,
and a step that failed reads the clock anew), `run.started_at` and `run.attempt` survive a resume, and `item_id`
names fan-out items and their child runs, refusing two alike."""

from __future__ import annotations

import re
from typing import Any

import anyio

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.providers.scripted import Fixture
from tests.interpreter.pipelines.harness import run_file

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def fixture(**replies: Any) -> Fixture:
    rules = [{"step": step, "reply": reply} for step, reply in replies.items()]
    return Fixture.from_data({"responses": rules, "default": "ok"}, "<test>")


def prompts(store: SqliteRunStore, run_id: str) -> dict[str, str]:
    """The prompt of each recorded model call of a run, by call key."""
    out = {}
    for exchange in store.exchanges(run_id):
        if exchange.kind == "model":
            out[exchange.key] = exchange.request["messages"][-1]["content"]
    return out


def test_a_resumed_run_reads_the_times_and_start_the_first_run_read(store: SqliteRunStore) -> None:
    async def main() -> tuple[Any, Any]:
        failed = await run_file("run_meta.yaml", fixture(last={"error": "bad_request"}), store)
        resumed = await run_file("run_meta.yaml", fixture(), store, run_id=failed.run_id, resuming=True)
        return failed, resumed

    failed, resumed = anyio.run(main)
    assert failed.outcome.status is RunStatus.FAILED
    assert resumed.outcome.status is RunStatus.SUCCEEDED, resumed.outcome.error
    outputs = resumed.outcome.outputs
    assert outputs is not None
    run = store.get_run(failed.run_id)
    assert run is not None
    # started_at is when the run first started, as UTC ISO-8601; the attempt counts the resume
    assert ISO_UTC.match(outputs["started"])
    assert outputs["attempt"] == 2
    # the `set` of `stamp` ran again on resume and read the same now() as the first run
    assert len(outputs["stamped"]) == 1 and ISO_UTC.match(outputs["stamped"][0])
    assert failed.outcome.state["stamps"] == outputs["stamped"]
    # the children's calls were replayed, not made again: their prompts (with now()) did not change
    assert resumed.outcome.calls_replayed == 2 and resumed.outcome.calls_executed == 1
    assert [c["attempt"] for c in outputs["children"]] == [2, 2]


def test_a_failed_step_reads_the_clock_anew_on_resume(store: SqliteRunStore) -> None:
    async def main() -> tuple[Any, Any]:
        failed = await run_file("run_meta.yaml", fixture(last={"error": "bad_request"}), store)
        resumed = await run_file("run_meta.yaml", fixture(), store, run_id=failed.run_id, resuming=True)
        return failed, resumed

    failed, _ = anyio.run(main)
    kept = store.lookup_call(failed.run_id, "stamp/now#0")
    asked_again = store.lookup_call(failed.run_id, "last/now#0")
    assert kept is not None and asked_again is not None
    # the succeeded step's time was replayed; the failed step's was read and journaled again, under the resume's claim
    assert asked_again.claim_token > kept.claim_token
    sent = [e.request["messages"][-1]["content"] for e in store.exchanges(failed.run_id) if e.key == "last/llm#0"]
    assert len(sent) == 2 and sent[1] == f"Finish at {asked_again.result['value']}"


def test_item_ids_name_the_items_and_their_child_runs(store: SqliteRunStore) -> None:
    ran = anyio.run(lambda: run_file("run_meta.yaml", fixture(), store))
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    children = ran.outcome.outputs["children"]  # type: ignore[index]
    root = ran.run_id
    assert [c["id"] for c in children] == [f"{root}/per_task[task-a1]", f"{root}/per_task[task-b2]"]
    assert {c["parent"] for c in children} == {root}
    assert [c["attempt"] for c in children] == [1, 1]
    assert {"per_task[task-a1]", "per_task[task-b2]"} <= set(ran.steps())
    assert sorted(r.run_id for r in store.child_runs(root)) == [c["id"] for c in children]


def test_two_items_with_the_same_id_fail_the_step_before_any_runs(store: SqliteRunStore) -> None:
    tasks = [{"id": "a1"}, {"id": "b2"}, {"id": "a1"}]
    ran = anyio.run(lambda: run_file("run_meta.yaml", fixture(), store, inputs={"tasks": tasks}))
    assert ran.outcome.status is RunStatus.FAILED
    message = str(ran.outcome.error)
    assert "items 0 and 2 have the same item_id 'task-a1'" in message
    assert store.child_runs(ran.run_id) == []
