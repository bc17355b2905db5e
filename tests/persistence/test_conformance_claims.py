"""Claims and fencing, liveness and durability, for every backend: who may write a run tree, when a run whose
writer is gone may be taken over, that a writer which lost its claim writes nothing, that two resumes of one run
never both win, and that a commit which returned survives its process being killed.

Other processes are real ones (worker.py), killed with SIGKILL; an owner on another host is judged by its
heartbeat against the reading handle's lease (0: gone at once; a huge one: alive)."""

from __future__ import annotations

import pytest

from flowctl.interpreter.persistence.store import (
    CallDone,
    Claim,
    EventLogged,
    Liveness,
    RunFinished,
    RunReopened,
    RunStarted,
    RunStatus,
    RunStore,
    StepStarted,
)
from flowctl.interpreter.persistence.store_errors import ClaimLost, RunBusy
from tests.persistence.backends import StoreFactory
from tests.persistence.helpers import ALIVE, DEAD, ELSEWHERE, create, finish, jtext, kill, read_line, spawn, tell

FOREVER = 1e9  # a lease no heartbeat outlives


def a_batch(run_id: str = "r-1") -> list[StepStarted | CallDone | EventLogged]:
    return [
        StepStarted(run_id, "late", "agent", 5.0),
        CallDone(run_id, "late/llm#0", "d", jtext({"content": "stale"}), 5.0),
        EventLogged(run_id, "late", None, "system", 5.0),
    ]


def assert_nothing_of_a_batch(store: RunStore, run_id: str = "r-1") -> None:
    assert "late" not in [step.path for step in store.steps(run_id)]
    assert store.lookup_call(run_id, "late/llm#0") is None
    assert "late" not in [event.name for event in store.events(run_id)]


def test_a_live_owners_run_cannot_be_claimed(store: RunStore) -> None:
    claim = create(store, owner=ALIVE)
    assert store.liveness("r-1") == Liveness(ALIVE, True)
    with pytest.raises(RunBusy):
        store.claim("r-1", ELSEWHERE)
    store.commit(a_batch(), claim)  # the holder goes on writing
    run = store.get_run("r-1")
    assert run is not None and run.owner == ALIVE


def test_an_unknown_run_or_a_child_run_cannot_be_claimed(store: RunStore) -> None:
    claim = create(store)
    store.commit([RunStarted("r-1/c", "r-1", "child", "demo.yaml", 1.0, "{}", "")], claim)
    with pytest.raises(KeyError):
        store.claim("missing", ALIVE)
    with pytest.raises(KeyError):
        store.claim("r-1/c", ALIVE)  # a child is written under its root's claim


def test_a_run_whose_process_was_killed_is_taken_over(store_factory: StoreFactory, store: RunStore) -> None:
    holder = spawn(store_factory, "create", "r-1")
    try:
        assert read_line(holder) == "claimed"
        owner = store.liveness("r-1").owner
        assert owner is not None and owner != ALIVE
        assert store.liveness("r-1") == Liveness(owner, True)
        with pytest.raises(RunBusy):
            store.claim("r-1", ALIVE)
    finally:
        kill(holder)
    assert store.liveness("r-1") == Liveness(owner, False)
    claim = store.claim("r-1", ALIVE)
    assert (claim.run_id, claim.owner) == ("r-1", ALIVE)
    assert store.liveness("r-1") == Liveness(ALIVE, True)


def test_an_owner_whose_process_does_not_exist_is_gone(store: RunStore) -> None:
    old = create(store, owner=DEAD)
    assert store.liveness("r-1") == Liveness(DEAD, False)
    new = store.claim("r-1", ALIVE)
    assert new.token > old.token
    run = store.get_run("r-1")
    assert run is not None and (run.owner, run.status) == (ALIVE, RunStatus.RUNNING)


def test_after_a_takeover_the_old_claim_writes_nothing(store_factory: StoreFactory, store: RunStore) -> None:
    old = create(store, owner=DEAD)
    store.commit([StepStarted("r-1", "early", "agent", 1.0)], old)
    new = store_factory.open().claim("r-1", ALIVE)
    with pytest.raises(ClaimLost) as lost:
        store.commit([*a_batch(), RunFinished("r-1", RunStatus.FAILED, 9.0, None, None, 0, 0, 0.0)], old)
    assert (lost.value.run_id, lost.value.owner) == ("r-1", ALIVE)
    assert_nothing_of_a_batch(store)
    run = store.get_run("r-1")
    assert run is not None and (run.status, run.owner) == (RunStatus.RUNNING, ALIVE)
    with pytest.raises(ClaimLost):  # and keeps being refused
        store.commit([], old)
    store.commit([RunReopened("r-1"), *a_batch()], new)  # the new owner writes
    assert [step.path for step in store.steps("r-1")] == ["early", "late"]


def test_the_roots_claim_covers_its_child_runs(store_factory: StoreFactory, store: RunStore) -> None:
    old = create(store, owner=DEAD)
    store.commit([RunStarted("r-1/c", "r-1", "child", "demo.yaml", 1.0, "{}", ""),
                  StepStarted("r-1/c", "inner", "agent", 1.0)], old)  # fmt: skip
    assert store.liveness("r-1/c") == store.liveness("r-1") == Liveness(DEAD, False)
    new = store_factory.open().claim("r-1", ALIVE)
    assert store.liveness("r-1/c") == Liveness(ALIVE, True)
    with pytest.raises(ClaimLost):
        store.commit([*a_batch("r-1/c"), RunFinished("r-1/c", RunStatus.SUCCEEDED, 9.0, None, None, 0, 0, 0.0)], old)
    assert_nothing_of_a_batch(store, "r-1/c")
    child = store.get_run("r-1/c")
    assert child is not None and child.status is RunStatus.RUNNING
    store.commit(a_batch("r-1/c"), new)
    assert [step.path for step in store.steps("r-1/c")] == ["inner", "late"]


def test_a_released_run_is_left_as_it_was_and_can_be_claimed_again(store: RunStore) -> None:
    first = create(store, owner=DEAD)
    store.commit([RunFinished("r-1", RunStatus.FAILED, 9.0, None, jtext({"code": "x"}), 1, 2, 0.5)], first)
    resumed = store.claim("r-1", ALIVE)
    store.release(resumed)  # a refused resume: nothing was committed
    run = store.get_run("r-1")
    assert run is not None
    assert (run.status, run.error, run.finished_at, run.owner) == (RunStatus.FAILED, {"code": "x"}, 9.0, None)
    assert store.liveness("r-1") == Liveness(None, False)
    again = store.claim("r-1", ELSEWHERE)  # released: nobody holds it, even though this process is alive
    assert again.token > resumed.token > first.token
    with pytest.raises(ClaimLost):
        store.commit(a_batch(), resumed)
    assert_nothing_of_a_batch(store)


def test_a_running_run_released_is_free_to_claim(store: RunStore) -> None:
    claim = create(store, owner=ALIVE)
    store.release(claim)
    assert store.liveness("r-1") == Liveness(None, False)
    run = store.get_run("r-1")
    assert run is not None and (run.status, run.owner) == (RunStatus.RUNNING, None)
    assert store.claim("r-1", ELSEWHERE).owner == ELSEWHERE


def test_claim_tokens_grow_with_every_claim(store: RunStore) -> None:
    tokens = [create(store, owner=DEAD).token]
    for _ in range(3):
        claim = store.claim("r-1", DEAD)  # a dead owner: each claim takes it over again
        tokens.append(claim.token)
    assert tokens == sorted(set(tokens))


def test_another_hosts_owner_is_alive_while_its_heartbeat_is_younger_than_the_lease(
    store_factory: StoreFactory,
) -> None:
    writer = store_factory.open()
    claim = create(writer, owner=ELSEWHERE)
    writer.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)  # a commit is a heartbeat
    patient, impatient = store_factory.open(lease=FOREVER), store_factory.open(lease=0)
    assert patient.liveness("r-1") == Liveness(ELSEWHERE, True)
    with pytest.raises(RunBusy):
        patient.claim("r-1", ALIVE)
    assert impatient.liveness("r-1") == Liveness(ELSEWHERE, False)
    taken = impatient.claim("r-1", ALIVE)
    with pytest.raises(ClaimLost):
        writer.commit(a_batch(), claim)
    assert_nothing_of_a_batch(writer)
    assert patient.liveness("r-1") == Liveness(ALIVE, True)
    impatient.commit(a_batch(), taken)


def test_finishing_the_root_gives_the_claim_up(store: RunStore) -> None:
    claim = create(store, owner=ALIVE)
    store.commit([RunFinished("r-1", RunStatus.SUCCEEDED, 9.0, "{}", None, 0, 0, 0.0)], claim)
    assert store.liveness("r-1") == Liveness(None, False)
    assert store.claim("r-1", ELSEWHERE).owner == ELSEWHERE  # a finished run may be resumed by anyone


def test_two_processes_resuming_one_dead_run_at_once_one_wins(store_factory: StoreFactory, store: RunStore) -> None:
    create(store, owner=DEAD)
    racers = [spawn(store_factory, "claim", "r-1") for _ in range(2)]
    try:
        assert [read_line(racer) for racer in racers] == ["ready", "ready"]
        for racer in racers:
            tell(racer, "go")
        said = sorted(read_line(racer) for racer in racers)
        assert said == ["busy", "claimed"]  # the winner is alive (it waits) while the other tries
        owner = store.liveness("r-1").owner
        assert owner is not None and owner not in (DEAD, ALIVE)
    finally:
        for racer in racers:
            finish(racer)


def test_a_commit_that_returned_survives_its_process_being_killed(store_factory: StoreFactory) -> None:
    writer = spawn(store_factory, "commit", "r-1")
    try:
        assert read_line(writer) == "committed"
    finally:
        kill(writer)
    fresh = store_factory.open()
    call = fresh.lookup_call("r-1", "a/llm#0")
    assert call is not None and call.result == {"content": "paid for"}
    assert [step.path for step in fresh.steps("r-1")] == ["a"]
    run = fresh.get_run("r-1")
    assert run is not None and run.status is RunStatus.RUNNING
    assert fresh.liveness("r-1").alive is False
    claim: Claim = fresh.claim("r-1", ALIVE)  # the killed writer left nothing locked
    fresh.commit(a_batch(), claim)


def test_a_released_claim_writes_nothing_more(store: RunStore) -> None:
    claim = create(store)
    store.release(claim)
    with pytest.raises(ClaimLost):
        store.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)
    assert store.steps("r-1") == []


def test_a_claim_writes_only_its_own_run_tree(store: RunStore) -> None:
    mine, theirs = create(store, "r-1"), create(store, "r-2")
    with pytest.raises(ValueError, match="claim of its run tree"):
        store.commit([StepStarted("r-2", "a", "agent", 1.0)], mine)
    with pytest.raises(ValueError, match="claim of its run tree"):
        store.commit([StepStarted("r-1x", "a", "agent", 1.0)], mine)  # a prefix of the id is not its tree
    with pytest.raises(ValueError, match="claim of its run tree"):
        store.commit([StepStarted("r-1", "a", "agent", 1.0)], None)  # only cache entries need no claim
    store.commit([StepStarted("r-2", "a", "agent", 1.0)], theirs)
    assert store.steps("r-1") == [] and [s.path for s in store.steps("r-2")] == ["a"]
