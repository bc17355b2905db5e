"""The run-store port's record keeping, through the port only, for every backend: runs and child runs, commits
applied in order and atomically, step rows (the upsert rules of store.StepStarted/StepFinished), calls, events,
state changes, attempts, the transcript and the response cache."""

from __future__ import annotations

import pytest

from flowctl.interpreter.persistence.store import (
    AttemptEnded,
    AttemptRecord,
    CacheStored,
    CallDone,
    CallRecord,
    EventLogged,
    Exchanged,
    ExchangeRecord,
    Liveness,
    RunFinished,
    RunReopened,
    RunStarted,
    RunStatus,
    RunStore,
    StateChanged,
    StepFinished,
    StepStarted,
    StepStatus,
)
from tests.persistence.backends import StoreFactory
from tests.persistence.helpers import ALIVE, create, jtext, root_record

CHILD = "r-1/nested"


def child_started(run_id: str = CHILD, started_at: float = 1001.0) -> RunStarted:
    return RunStarted(run_id, "r-1", "child", "demo.yaml", started_at, jtext({"n": 1}), "child-digest")


def finished(run_id: str, status: RunStatus = RunStatus.SUCCEEDED, **totals: float) -> RunFinished:
    return RunFinished(run_id, status, 2000.0, jtext({"out": 1}), None, int(totals.get("input_tokens", 0)),
                       int(totals.get("output_tokens", 0)), totals.get("cost", 0.0))  # fmt: skip


# -- runs ------------------------------------------------------------------------------------------------------------


def test_a_created_run_is_running_claimed_and_durable(store_factory: StoreFactory, store: RunStore) -> None:
    assert isinstance(store, RunStore)
    claim = store.create_run(root_record("r-1"), jtext({"topic": "ünï", "n": [1, 2.5, None]}), None, ALIVE)
    assert (claim.run_id, claim.owner) == ("r-1", ALIVE)
    run = store_factory.open().get_run("r-1")  # another handle: it is durable
    assert run is not None
    assert (run.run_id, run.pipeline, run.file, run.status, run.started_at, run.parent_id) == (
        "r-1", "demo", "demo.yaml", RunStatus.RUNNING, 1000.0, None)  # fmt: skip
    assert (run.inputs, run.source_digest, run.owner, run.input_secrets) == (
        {"topic": "ünï", "n": [1, 2.5, None]}, "digest", ALIVE, None)  # fmt: skip
    assert (run.finished_at, run.outputs, run.error) == (None, None, None)
    assert (run.input_tokens, run.output_tokens, run.cost) == (0, 0, 0.0)
    assert store.get_run("missing") is None


def test_input_secrets_are_kept_as_given(store: RunStore) -> None:
    record = {"OPENAI_API_KEY": {"placeholder": "${OPENAI_API_KEY}", "digest": "abc"}}
    store.create_run(root_record("r-1"), jtext({}), jtext(record), ALIVE)
    run = store.get_run("r-1")
    assert run is not None and run.input_secrets == record


def test_a_finished_run_has_its_outcome_and_totals_and_no_owner(store: RunStore) -> None:
    claim = create(store)
    store.commit(
        [RunFinished("r-1", RunStatus.FAILED, 2000.0, jtext({"partial": 1}), jtext({"code": "x"}), 10, 20, 1.5)],
        claim,
    )
    run = store.get_run("r-1")
    assert run is not None
    assert (run.status, run.finished_at, run.outputs, run.error) == (
        RunStatus.FAILED, 2000.0, {"partial": 1}, {"code": "x"})  # fmt: skip
    assert (run.input_tokens, run.output_tokens, run.cost, run.owner) == (10, 20, 1.5, None)
    assert store.liveness("r-1") == Liveness(None, False)


def test_a_reopened_run_is_running_again_with_its_outcome_cleared(store: RunStore) -> None:
    claim = create(store)
    store.commit([finished("r-1", RunStatus.CANCELLED, input_tokens=5)], claim)
    claim = store.claim("r-1", ALIVE)
    store.commit([RunReopened("r-1")], claim)
    run = store.get_run("r-1")
    assert run is not None
    assert (run.status, run.finished_at, run.outputs, run.error, run.owner) == (
        RunStatus.RUNNING, None, None, None, ALIVE)  # fmt: skip
    assert run.input_tokens == 5  # totals stay until the run finishes again


def test_list_runs_newest_first_with_limit_and_roots_only(store: RunStore) -> None:
    claims = [create(store, f"r-{index}", started_at=started) for index, started in enumerate([30.0, 10.0, 20.0])]
    store.commit([RunStarted("r-1/c", "r-1", "child", "demo.yaml", 40.0, "{}", "")], claims[1])
    assert [run.run_id for run in store.list_runs()] == ["r-1/c", "r-0", "r-2", "r-1"]
    assert [run.run_id for run in store.list_runs(limit=2)] == ["r-1/c", "r-0"]
    assert [run.run_id for run in store.list_runs(roots_only=True)] == ["r-0", "r-2", "r-1"]


def test_child_runs_start_finish_and_reopen_under_the_roots_claim(store: RunStore) -> None:
    claim = create(store)
    create(store, "r-2")
    store.commit([child_started("r-1/b", 1002.0), child_started("r-1/a", 1001.0)], claim)
    assert [run.run_id for run in store.child_runs("r-1")] == ["r-1/a", "r-1/b"]  # oldest first
    assert store.child_runs("r-2") == []
    child = store.get_run("r-1/a")
    assert child is not None
    assert (child.parent_id, child.pipeline, child.status, child.inputs, child.source_digest) == (
        "r-1", "child", RunStatus.RUNNING, {"n": 1}, "child-digest")  # fmt: skip
    store.commit([finished("r-1/a", RunStatus.FAILED, input_tokens=3)], claim)
    child = store.get_run("r-1/a")
    assert child is not None and (child.status, child.input_tokens) == (RunStatus.FAILED, 3)
    root = store.get_run("r-1")
    assert root is not None and root.owner == ALIVE  # a child finishing leaves the tree's claim alone
    store.commit([RunReopened("r-1/a")], claim)
    child = store.get_run("r-1/a")
    assert child is not None and (child.status, child.finished_at, child.outputs) == (RunStatus.RUNNING, None, None)
    # a resumed parent starting the same child again: running again, not a second run
    store.commit([finished("r-1/b"), child_started("r-1/b", 1002.0)], claim)
    again = store.get_run("r-1/b")
    assert again is not None and (again.status, again.finished_at) == (RunStatus.RUNNING, None)
    assert [run.run_id for run in store.child_runs("r-1")] == ["r-1/a", "r-1/b"]


# -- commits ---------------------------------------------------------------------------------------------------------


def test_a_commit_applies_its_writes_in_order(store: RunStore) -> None:
    claim = create(store)
    store.commit(
        [
            child_started(),  # a child's rows may follow its start in the same batch
            StepStarted(CHILD, "inner", "agent", 1.0),
            EventLogged("r-1", "first", jtext(1), "system", 1.0),
            CallDone("r-1", "a/llm#0", "d1", jtext({"content": "one"}), 1.0),
            StateChanged("r-1", "a", jtext(["k"]), jtext({"k": 1}), 1.0),
            EventLogged("r-1", "second", jtext(2), "system", 2.0),
            CallDone("r-1", "a/llm#0", "d2", jtext({"content": "two"}), 2.0),  # the later write wins
            StateChanged("r-1", "a", jtext(["k"]), jtext({"k": 2}), 2.0),
            StepStarted("r-1", "a", "agent", 1.0),
            StepFinished("r-1", "a", "agent", StepStatus.FAILED, 1.0, 1.5, 0, None, jtext({"code": "x"})),
            StepStarted("r-1", "a", "agent", 2.0),  # the retry: the row ends as it left it
            finished(CHILD),
        ],
        claim,
    )
    assert [event.name for event in store.events("r-1")] == ["first", "second"]
    call = store.lookup_call("r-1", "a/llm#0")
    assert call is not None and (call.request_digest, call.result) == ("d2", {"content": "two"})
    assert [change.values for change in store.state_changes("r-1")] == [{"k": 1}, {"k": 2}]
    [step] = store.steps("r-1")
    assert (step.status, step.attempts, step.started_at, step.error) == (StepStatus.RUNNING, 2, 2.0, None)
    assert [(s.path, s.status) for s in store.steps(CHILD)] == [("inner", StepStatus.RUNNING)]
    child = store.get_run(CHILD)
    assert child is not None and child.status is RunStatus.SUCCEEDED


def test_a_batch_with_a_failing_write_leaves_nothing(store_factory: StoreFactory, store: RunStore) -> None:
    claim = create(store)
    batch = [
        child_started(),
        StepStarted("r-1", "a", "agent", 1.0),
        CallDone("r-1", "a/llm#0", "d", jtext({"content": "x"}), 1.0),
        EventLogged("r-1", "e", None, "system", 1.0),
        StateChanged("r-1", "a", jtext(["k"]), jtext({"k": 1}), 1.0),
        CacheStored("digest", jtext({"content": "x"}), 1.0),
        finished("r-1"),
        RunFinished("r-1/no-such-child", RunStatus.SUCCEEDED, 2.0, None, None, 0, 0, 0.0),
    ]
    with pytest.raises(KeyError):
        store.commit(batch, claim)
    for handle in (store, store_factory.open()):
        assert handle.get_run(CHILD) is None
        assert handle.child_runs("r-1") == []
        assert handle.steps("r-1") == []
        assert handle.lookup_call("r-1", "a/llm#0") is None
        assert handle.events("r-1") == []
        assert handle.state_changes("r-1") == []
        assert handle.cache_get("digest") is None
        run = handle.get_run("r-1")
        assert run is not None and (run.status, run.owner) == (RunStatus.RUNNING, ALIVE)
    store.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)  # the store goes on: the claim still holds
    assert [step.path for step in store.steps("r-1")] == ["a"]


def test_a_batch_whose_row_names_an_unknown_run_leaves_nothing(store: RunStore) -> None:
    # the failing write comes after rows of every kind (a store may apply them first): all are undone with it. Which
    # error a backend raises is not part of the port yet (SQLite: its IntegrityError)
    claim = create(store)
    batch = [
        child_started(),
        StepStarted("r-1", "a", "agent", 1.0),
        EventLogged("r-1", "e", None, "system", 1.0),
        CallDone("r-1", "a/llm#0", "d", jtext({"content": "x"}), 1.0),
        StepStarted("no-such-run", "a", "agent", 1.0),
    ]
    with pytest.raises(Exception):  # noqa: B017
        store.commit(batch, claim)
    assert store.get_run(CHILD) is None
    assert (store.steps("r-1"), store.events("r-1"), store.lookup_call("r-1", "a/llm#0")) == ([], [], None)


def test_an_empty_commit_is_accepted(store: RunStore) -> None:
    claim = create(store)
    store.commit([], claim)
    store.commit([], None)


# -- steps -----------------------------------------------------------------------------------------------------------


def test_a_retry_restarts_the_clock_and_clears_the_outcome(store: RunStore) -> None:
    claim = create(store)
    store.commit([StepStarted("r-1", "s", "agent", 10.0)], claim)
    store.commit([StepFinished("r-1", "s", "agent", StepStatus.FAILED, 10.0, 11.0, 0, jtext("partial"),
                               jtext({"code": "x"}), 5, 1)], claim)  # fmt: skip
    failed = store.steps("r-1")[0]
    assert (failed.status, failed.attempts, failed.started_at, failed.finished_at) == (StepStatus.FAILED, 1, 10.0, 11.0)
    assert (failed.output, failed.error, failed.input_tokens, failed.output_tokens) == ("partial", {"code": "x"}, 5, 1)
    store.commit([StepStarted("r-1", "s", "agent", 12.0)], claim)
    retry = store.steps("r-1")[0]
    assert (retry.status, retry.attempts, retry.started_at, retry.finished_at) == (StepStatus.RUNNING, 2, 12.0, None)
    assert (retry.output, retry.error) == (None, None)
    assert (retry.input_tokens, retry.output_tokens) == (5, 1)  # tokens stay: they were spent
    store.commit([StepFinished("r-1", "s", "agent", StepStatus.SUCCEEDED, 999.0, 13.0, 0, jtext({"t": 1}),
                               None, 7, 3)], claim)  # fmt: skip
    [done] = store.steps("r-1")
    assert (done.status, done.attempts, done.started_at, done.finished_at) == (StepStatus.SUCCEEDED, 2, 12.0, 13.0)
    assert (done.output, done.error, done.input_tokens, done.output_tokens) == ({"t": 1}, None, 12, 4)


def test_a_resume_continuing_an_attempt_adds_none_and_tokens_add_up(store: RunStore) -> None:
    claim = create(store)
    store.commit([StepStarted("r-1", "s", "agent", 10.0),
                  StepFinished("r-1", "s", "agent", StepStatus.FAILED, 10.0, 11.0, 0, None, None, 4, 2)],
                 claim)  # fmt: skip
    claim = store.claim("r-1", ALIVE)
    store.commit([RunReopened("r-1"), StepStarted("r-1", "s", "agent", 20.0, new_attempt=False)], claim)
    continued = store.steps("r-1")[0]
    assert (continued.status, continued.attempts, continued.started_at) == (StepStatus.RUNNING, 1, 20.0)
    store.commit([StepFinished("r-1", "s", "agent", StepStatus.SUCCEEDED, 20.0, 21.0, 0, jtext("ok"), None, 6, 1)],
                 claim)  # fmt: skip
    [step] = store.steps("r-1")
    assert (step.status, step.attempts, step.input_tokens, step.output_tokens) == (StepStatus.SUCCEEDED, 1, 10, 3)


def test_a_fan_out_item_row_is_made_by_its_finish_alone(store: RunStore) -> None:
    claim = create(store)
    store.commit([StepStarted("r-1", "fan", "agent", 1.0)], claim)
    store.commit(
        [
            StepFinished("r-1", "fan[1]", "agent", StepStatus.SUCCEEDED, 2.0, 3.0, 2, jtext("b"), None, 4, 5),
            StepFinished("r-1", "fan[0]", "agent", StepStatus.FAILED, 1.5, 3.5, 3, None, jtext({"code": "x"})),
        ],
        claim,
    )
    rows = {step.path: step for step in store.steps("r-1")}
    assert [step.path for step in store.steps("r-1")] == ["fan", "fan[1]", "fan[0]"]  # first started / finished
    item = rows["fan[1]"]
    assert (item.kind, item.status, item.attempts, item.started_at, item.finished_at) == (
        "agent", StepStatus.SUCCEEDED, 2, 2.0, 3.0)  # fmt: skip
    assert (item.output, item.input_tokens, item.output_tokens) == ("b", 4, 5)
    assert (rows["fan[0]"].attempts, rows["fan[0]"].error) == (3, {"code": "x"})
    # a resumed run finishing an item again adds its new attempts and tokens
    store.commit([StepFinished("r-1", "fan[0]", "agent", StepStatus.SUCCEEDED, 9.0, 10.0, 1, jtext("a"), None, 1, 1)],
                 claim)  # fmt: skip
    again = {step.path: step for step in store.steps("r-1")}["fan[0]"]
    assert (again.status, again.attempts, again.started_at, again.output, again.error) == (
        StepStatus.SUCCEEDED, 4, 1.5, "a", None)  # fmt: skip


def test_a_skipped_step_gets_a_row_without_a_start(store: RunStore) -> None:
    claim = create(store)
    store.commit([StepStarted("r-1", "b", "agent", 1.0), StepStarted("r-1", "a", "tool", 1.0),
                  StepFinished("r-1", "skipped", "agent", StepStatus.SKIPPED, 2.0, 2.0, 0)], claim)  # fmt: skip
    steps = store.steps("r-1")
    assert [step.path for step in steps] == ["b", "a", "skipped"]
    skipped = steps[2]
    assert (skipped.kind, skipped.status, skipped.attempts, skipped.started_at, skipped.finished_at) == (
        "agent", StepStatus.SKIPPED, 0, 2.0, 2.0)  # fmt: skip
    assert store.steps("missing") == []


def test_steps_keep_their_first_start_order_over_retries(store: RunStore) -> None:
    claim = create(store)
    store.commit([StepStarted("r-1", "b", "agent", 1.0), StepStarted("r-1", "a", "agent", 1.0)], claim)
    store.commit([StepStarted("r-1", "b", "agent", 2.0), StepStarted("r-1", "c", "agent", 2.0)], claim)
    assert [step.path for step in store.steps("r-1")] == ["b", "a", "c"]


# -- calls, events, state, cache -------------------------------------------------------------------------------------


def test_a_call_is_looked_up_and_replaced_when_recorded_again(store: RunStore) -> None:
    claim = create(store)
    assert store.lookup_call("r-1", "s/llm#0") is None
    store.commit([CallDone("r-1", "s/llm#0", "d1", jtext({"content": "hi", "usage": {"in": 3}}), 5.0, masked=True)],
                 claim)  # fmt: skip
    call = store.lookup_call("r-1", "s/llm#0")
    # a call keeps the token of the claim it was committed under
    assert call == CallRecord("r-1", "s/llm#0", "d1", {"content": "hi", "usage": {"in": 3}}, 5.0, True, claim.token)
    store.commit([CallDone("r-1", "s/llm#0", "d2", jtext({"content": "forced"}), 6.0)], claim)
    forced = CallRecord("r-1", "s/llm#0", "d2", {"content": "forced"}, 6.0, claim_token=claim.token)
    assert store.lookup_call("r-1", "s/llm#0") == forced
    assert store.lookup_call("r-2", "s/llm#0") is None


def test_events_are_logged_once_each_in_order(store: RunStore) -> None:
    claim_1, claim_2 = create(store), create(store, "r-2")
    store.commit([EventLogged("r-1", "approved", jtext({"by": "ann"}), "review", 1.0)], claim_1)
    store.commit([EventLogged("r-2", "noise", None, "system", 2.0)], claim_2)
    store.commit([EventLogged("r-1", "done", jtext([1, 2]), "system", 3.0),
                  EventLogged("r-1", "done", jtext([1, 2]), "system", 3.0)], claim_1)  # fmt: skip
    events = store.events("r-1")
    assert [(e.run_id, e.name, e.data, e.source, e.at) for e in events] == [
        ("r-1", "approved", {"by": "ann"}, "review", 1.0),
        ("r-1", "done", [1, 2], "system", 3.0),
        ("r-1", "done", [1, 2], "system", 3.0),  # two writes, two events: a store never merges them
    ]
    assert events[0].seq < events[1].seq < events[2].seq
    assert [e.data for e in store.events("r-2")] == [None]


def test_state_changes_are_logged_in_order(store: RunStore) -> None:
    claim = create(store)
    store.commit([StateChanged("r-1", "plan", jtext(["count", "notes"]), jtext({"count": 1, "notes": ["a"]}), 1.0)],
                 claim)  # fmt: skip
    store.commit([StateChanged("r-1", "refine#2", jtext(["count"]), jtext({"count": 2}), 2.0)], claim)
    changes = store.state_changes("r-1")
    assert [(c.run_id, c.step, c.keys, c.values, c.at) for c in changes] == [
        ("r-1", "plan", ["count", "notes"], {"count": 1, "notes": ["a"]}, 1.0),
        ("r-1", "refine#2", ["count"], {"count": 2}, 2.0),
    ]
    assert changes[0].seq < changes[1].seq
    assert store.state_changes("r-2") == []


def test_attempts_are_read_in_the_order_they_started(store: RunStore) -> None:
    claim = create(store)
    store.commit([AttemptEnded("r-1", "b", 1, StepStatus.FAILED, 2.0, 3.0, jtext({"type": "Timeout"}), 1.5),
                  AttemptEnded("r-1", "a", 1, StepStatus.SUCCEEDED, 1.0, 4.0)], claim)  # fmt: skip
    store.commit([AttemptEnded("r-1", "b", 2, StepStatus.SUCCEEDED, 4.5, 5.0)], claim)
    assert store.attempts("r-1") == [
        AttemptRecord("r-1", "a", 1, StepStatus.SUCCEEDED, 1.0, 4.0),
        AttemptRecord("r-1", "b", 1, StepStatus.FAILED, 2.0, 3.0, {"type": "Timeout"}, 1.5),
        AttemptRecord("r-1", "b", 2, StepStatus.SUCCEEDED, 4.5, 5.0),
    ]
    assert store.attempts("r-2") == []


def test_the_transcript_is_read_whole_or_for_a_step_and_what_runs_inside_it(store: RunStore) -> None:
    claim = create(store)
    paths = ["ask", "ask/inner", "ask[2]", "asked", "other"]
    store.commit([Exchanged("r-1", path, f"{path}/llm#0", 1, "model", float(i), 0.5, jtext({"prompt": path}),
                            jtext({"content": "ok"}) if i % 2 == 0 else None,
                            None if i % 2 == 0 else jtext({"type": "Refused"}))
                  for i, path in enumerate(paths)], claim)  # fmt: skip
    everything = store.exchanges("r-1")
    assert [e.path for e in everything] == paths
    assert everything[0] == ExchangeRecord(everything[0].seq, "r-1", "ask", "ask/llm#0", 1, "model", 0.0, 0.5,
                                           {"prompt": "ask"}, {"content": "ok"}, None)  # fmt: skip
    assert (everything[1].response, everything[1].error) == (None, {"type": "Refused"})
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    assert [e.path for e in store.exchanges("r-1", "ask")] == ["ask", "ask/inner", "ask[2]"]  # not "asked"
    assert store.exchanges("r-1", "missing") == [] and store.exchanges("r-2") == []


def test_a_call_row_keeps_its_transcript_entry_in_order_and_a_call_recorded_again_keeps_the_earlier_one(
    store: RunStore,
) -> None:
    """A model call's entry kept in its journal row (CallDone.transcript) reads back as any entry, its response the
    call's result, in the order the recorder noted entries when calls ended at the same instant (a virtual clock).
    Recording the key again (a call re-run) replaces the result but keeps the earlier entry in the transcript."""
    claim = create(store)
    asked = jtext({"messages": [{"role": "user", "content": "hi"}]})
    answer = jtext({"content": "first"})
    failed = Exchanged("r-1", "ask", "ask/llm#0", 1, "model", 10.0, 0.5, asked, None, jtext({"type": "Down"}), 1)
    first = Exchanged("r-1", "ask", "ask/llm#0", 2, "model", 10.0, 0.5, asked, answer, None, 2)
    tool = Exchanged("r-1", "ask", "ask/turn#1/tool:t.get#0", 2, "tool", 10.5, 0.0, jtext({"tool": "get"}),
                     jtext({"value": 1}), None, 3)  # fmt: skip
    store.commit([failed, CallDone("r-1", "ask/llm#0", "d1", answer, 10.5, transcript=first), tool], claim)
    entries = store.exchanges("r-1")
    assert [(e.seq, e.kind, e.attempt) for e in entries] == [(1, "model", 1), (2, "model", 2), (3, "tool", 2)]
    sent = {"messages": [{"role": "user", "content": "hi"}]}
    assert entries[1] == ExchangeRecord(2, "r-1", "ask", "ask/llm#0", 2, "model", 10.0, 0.5, sent, {"content": "first"})
    again = jtext({"content": "second"})
    second = Exchanged("r-1", "ask", "ask/llm#0", 3, "model", 20.0, 1.0, asked, again, None, 4)
    store.commit([CallDone("r-1", "ask/llm#0", "d2", again, 21.0, transcript=second)], claim)
    entries = store.exchanges("r-1")
    assert [(e.kind, e.attempt, e.response) for e in entries] == [
        ("model", 1, None), ("model", 2, {"content": "first"}), ("tool", 2, {"value": 1}),
        ("model", 3, {"content": "second"})]  # fmt: skip
    recorded = store.lookup_call("r-1", "ask/llm#0")
    assert recorded is not None and recorded.result == {"content": "second"}
    store.commit([CallDone("r-1", "ask/llm#0", "d3", jtext({"content": "third"}), 30.0), EventLogged(
        "r-1", "e", None, "test", 30.0)], claim)  # fmt: skip
    assert [e.response for e in store.exchanges("r-1")][-1] == {"content": "second"}  # kept; "third" has no entry
    assert [e.seq for e in store.exchanges("r-1", "ask")] == [1, 2, 3, 4]


def test_the_cache_needs_no_claim_and_keeps_the_latest_entry(store_factory: StoreFactory, store: RunStore) -> None:
    assert store.cache_get("d1") is None
    store.commit([CacheStored("d1", jtext({"content": "cached"}), 1.0)], None)
    assert store_factory.open().cache_get("d1") == {"content": "cached"}
    store.commit([CacheStored("d1", jtext({"content": "newer"}), 2.0)], None)
    assert store.cache_get("d1") == {"content": "newer"}


def test_text_round_trips_unchanged(store: RunStore) -> None:
    claim = create(store)
    text = 'ünïcödé ✓ 日本 \U0001f600 "quoted" \\ back\nline'
    store.commit([StepStarted("r-1", text, "agent", 1.0),
                  CallDone("r-1", text, text, jtext({"content": text}), 1.0),
                  EventLogged("r-1", text, jtext(text), text, 1.0)], claim)  # fmt: skip
    assert [step.path for step in store.steps("r-1")] == [text]
    call = store.lookup_call("r-1", text)
    assert call is not None and (call.request_digest, call.result) == (text, {"content": text})
    [event] = store.events("r-1")
    assert (event.name, event.data, event.source) == (text, text, text)
