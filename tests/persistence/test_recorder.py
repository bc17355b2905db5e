"""The recorder's contract, on every backend: secrets never reach the store, `durable()` is group commit (many
waiters share few commits, a lone waiter commits at once), what was made durable survives a kill while what was
only queued is lost, and a lost claim stops every later write. Commits are counted by a wrapping store that hands
everything on to the real one."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from flowctl.interpreter.persistence.recorder import BACKGROUND_CHUNK, Recorder
from flowctl.interpreter.persistence.store import Claim, RunRecord, RunStatus, RunStore, StepStatus, Write
from flowctl.interpreter.persistence.store_errors import ClaimLost
from flowctl.interpreter.redact import MASK, Redactor, redactor_for
from tests.persistence.backends import StoreFactory
from tests.persistence.helpers import ALIVE, DEAD, kill, poll, read_line, root_record, spawn

SECRET = "sk-conformance-0123456789abcdef"
ENV = {"OPENAI_API_KEY": SECRET, "HOME": "/root", "LANG": "C.UTF-8"}
TASKS = 200


class CountingStore:
    """A RunStore that hands every call on to `inner` and counts the commits and the writes they carry."""

    def __init__(self, inner: RunStore) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        self.inner.commit(writes, claim)
        self.batches.append(len(writes))

    def create_run(self, record: RunRecord, inputs: str, input_secrets: str | None, owner: str) -> Claim:
        return self.inner.create_run(record, inputs, input_secrets, owner)

    def __getattr__(self, name: str) -> Any:  # every read, claim, release, signal: the real store's
        return getattr(self.inner, name)


def recorder_on(store: RunStore, redactor: Redactor | None = None, owner: str = ALIVE) -> Recorder:
    """A recorder without background commits: every commit is one a test caused."""
    return Recorder(store, redactor if redactor is not None else Redactor(), owner, background_delay=None)


# -- group commit ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_many_concurrent_waiters_share_few_commits(store_factory: StoreFactory) -> None:
    counting = CountingStore(store_factory.open())
    recorder = recorder_on(counting)
    recorder.start_root(root_record())
    assert isinstance(counting, RunStore)
    other = store_factory.open()

    async def call(index: int) -> None:
        recorder.step_started("r-1", f"fan[{index}]", "agent")
        recorder.call_done("r-1", f"fan[{index}]/llm#0", "d", {"content": str(index)})
        await recorder.durable()
        assert other.lookup_call("r-1", f"fan[{index}]/llm#0") is not None  # durable on return

    async with anyio.create_task_group() as tasks:
        for index in range(TASKS):
            tasks.start_soon(call, index)
    # a group commit takes the account (the step rows) along: the loop writes it between its calls' commits
    assert sum(counting.batches) == 2 * TASKS
    assert len(counting.batches) <= 2, counting.batches  # ready tasks queue before the first waiter commits
    assert len(store_factory.open().steps("r-1")) == TASKS


@pytest.mark.anyio
async def test_a_lone_waiter_commits_at_once_and_nothing_waits_without_writes(store_factory: StoreFactory) -> None:
    counting = CountingStore(store_factory.open())
    recorder = recorder_on(counting)
    recorder.start_root(root_record())
    await recorder.durable()
    assert counting.batches == []  # nothing queued: no commit
    recorder.step_started("r-1", "a", "agent")
    recorder.call_done("r-1", "a/llm#0", "d", {"content": "x"})
    other = store_factory.open()
    assert other.lookup_call("r-1", "a/llm#0") is None  # queued: in memory only
    await recorder.durable()
    assert counting.batches == [1]  # the call; its step's row is the account's, which trails the journal
    assert other.lookup_call("r-1", "a/llm#0") is not None
    await recorder.durable()
    assert counting.batches == [1]
    recorder.commit()
    assert [step.path for step in other.steps("r-1")] == ["a"]


@pytest.mark.anyio
async def test_finishing_the_root_commits_everything_before_it(store_factory: StoreFactory) -> None:
    recorder = recorder_on(store_factory.open())
    recorder.start_root(root_record())
    recorder.step_started("r-1", "a", "agent")
    recorder.event("r-1", "done", {"n": 1}, "a")
    recorder.run_finished("r-1", RunStatus.SUCCEEDED, outputs={"o": 1}, input_tokens=3)
    other = store_factory.open()
    run = other.get_run("r-1")
    assert run is not None and (run.status, run.outputs, run.input_tokens, run.owner) == (
        RunStatus.SUCCEEDED, {"o": 1}, 3, None)  # fmt: skip
    assert [step.path for step in other.steps("r-1")] == ["a"]
    assert [event.name for event in other.events("r-1")] == ["done"]


def test_the_background_commit_shows_rows_nothing_waits_for(store_factory: StoreFactory) -> None:
    recorder = Recorder(store_factory.open(), Redactor(), ALIVE)  # background commits on (the default)
    recorder.start_root(root_record())
    try:
        recorder.step_started("r-1", "a", "agent")
        recorder.event("r-1", "started", None, "a")
        other = store_factory.open()  # `flowctl show` in another terminal
        poll(lambda: other.steps("r-1") and other.events("r-1"), what="the background commit")
    finally:
        recorder.close()


@pytest.mark.anyio
async def test_waiters_and_the_background_commit_write_each_write_once_in_order(store_factory: StoreFactory) -> None:
    recorder = Recorder(store_factory.open(), Redactor(), ALIVE, background_delay=0.0005)
    recorder.start_root(root_record())

    async def work(index: int) -> None:
        for turn in range(3):
            recorder.event("r-1", f"{index}.{turn}", None, "system")
            if turn == 1:
                recorder.call_done("r-1", f"s{index}/llm#0", "d", {"n": index})
                await recorder.durable()
            await anyio.lowlevel.checkpoint()

    try:
        async with anyio.create_task_group() as tasks:
            for index in range(TASKS):
                tasks.start_soon(work, index)
        recorder.run_finished("r-1", RunStatus.SUCCEEDED)
    finally:
        recorder.close()
    names = [event.name for event in store_factory.open().events("r-1")]
    assert sorted(names) == sorted(f"{index}.{turn}" for index in range(TASKS) for turn in range(3))  # each once
    for index in (0, TASKS // 2, TASKS - 1):  # each task's events in the order it logged them
        assert [name for name in names if name.startswith(f"{index}.")] == [f"{index}.{turn}" for turn in range(3)]


class GatedStore(CountingStore):
    """A CountingStore whose commits of more than one write wait until the test opens the gate: a background commit
    caught in the middle."""

    def __init__(self, inner: RunStore) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        if len(writes) > 1:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        super().commit(writes, claim)


@pytest.mark.anyio
async def test_a_journal_commit_goes_between_the_chunks_of_a_background_commit(store_factory: StoreFactory) -> None:
    """The background writes a long account in transactions of BACKGROUND_CHUNK writes; a call's commit that comes
    meanwhile waits for one of them at most, not for all."""
    store = GatedStore(store_factory.open())
    recorder = Recorder(store, Redactor(), ALIVE, background_delay=0.001)
    recorder.start_root(root_record())
    try:
        for index in range(3 * BACKGROUND_CHUNK):
            recorder.event("r-1", f"e{index}", None, "system")
        assert store.entered.wait(30)  # the background is inside its first chunk
        recorder.call_done("r-1", "a/llm#0", "d", {"n": 1})

        def open_when_the_call_waits() -> None:
            poll(lambda: recorder._journal_waiting, what="the call's commit waiting for the lock")
            store.gate.set()

        threading.Thread(target=open_when_the_call_waits, daemon=True).start()
        await recorder.durable(alone=True)
        # one chunk, then the call; the background may have committed its next chunk by the time a commit made in a
        # thread (PostgreSQL) hands control back to the loop
        assert store.batches[:2] == [BACKGROUND_CHUNK, 1], store.batches
        assert store_factory.open().lookup_call("r-1", "a/llm#0") is not None
    finally:
        store.gate.set()
        recorder.run_finished("r-1", RunStatus.SUCCEEDED)
        recorder.close()
    assert len(store_factory.open().events("r-1")) == 3 * BACKGROUND_CHUNK


def test_what_was_durable_survives_a_kill_and_what_was_queued_is_lost(store_factory: StoreFactory) -> None:
    writer = spawn(store_factory, "recorder", "r-1")
    try:
        assert read_line(writer) == "committed"
    finally:
        kill(writer)
    store = store_factory.open()
    call = store.lookup_call("r-1", "a/llm#0")
    assert call is not None and call.result == {"content": "paid for"}
    assert store.steps("r-1") == [] and store.events("r-1") == []  # queued, never committed: lost, not corrupt
    assert store.liveness("r-1").alive is False


@pytest.mark.anyio
async def test_a_lost_claim_stops_every_later_write(store_factory: StoreFactory) -> None:
    store = store_factory.open()
    recorder = recorder_on(store, owner=DEAD)  # an owner others may take the run from
    recorder.start_root(root_record())
    recorder.step_started("r-1", "a", "agent")
    recorder.commit()  # before the takeover: stays
    store_factory.open().claim("r-1", ALIVE)
    recorder.call_done("r-1", "a/llm#0", "d", {"content": "x"})
    with pytest.raises(ClaimLost):
        await recorder.durable()
    recorder.event("r-1", "after", None, "a")  # dropped
    recorder.step_finished("r-1", "a", "agent", StepStatus.SUCCEEDED, 1.0, 0, output="late")
    with pytest.raises(ClaimLost):
        recorder.commit()
    with pytest.raises(ClaimLost):
        recorder.run_finished("r-1", RunStatus.SUCCEEDED)
    recorder.abandon()  # gives nothing up: the claim is the new owner's
    other = store_factory.open()
    assert [(step.path, step.status, step.output) for step in other.steps("r-1")] == [("a", StepStatus.RUNNING, None)]
    assert other.events("r-1") == []
    assert other.lookup_call("r-1", "a/llm#0") is None
    run = other.get_run("r-1")
    assert run is not None and (run.status, run.owner) == (RunStatus.RUNNING, ALIVE)


@pytest.mark.anyio
async def test_a_refused_resume_leaves_the_run_as_it_was(store_factory: StoreFactory) -> None:
    first = recorder_on(store_factory.open(), owner=DEAD)
    first.start_root(root_record())
    first.run_finished("r-1", RunStatus.FAILED, error={"code": "x"})
    resumed = recorder_on(store_factory.open())
    resumed.resume_root("r-1")
    resumed.step_started("r-1", "a", "agent")
    assert not resumed.committed_any
    resumed.abandon()
    run = store_factory.open().get_run("r-1")
    assert run is not None and (run.status, run.error, run.owner) == (RunStatus.FAILED, {"code": "x"}, None)
    again = recorder_on(store_factory.open())
    again.resume_root("r-1")
    again.step_started("r-1", "a", "agent")
    await again.durable()
    again.commit()
    assert again.committed_any
    run = store_factory.open().get_run("r-1")
    assert run is not None and (run.status, run.error, run.owner) == (RunStatus.RUNNING, None, ALIVE)


def test_a_resume_commits_and_heartbeats_in_the_background_once_it_goes_on(store_factory: StoreFactory) -> None:
    """A resume holds its writes back while it replays; once it does work of its own that may last (a wait), the
    background commits start: the run shows running again, and an idle claim keeps its heartbeat."""
    first = recorder_on(store_factory.open(), owner=DEAD)
    first.start_root(root_record())
    first.run_finished("r-1", RunStatus.CANCELLED)
    store = CountingStore(store_factory.open(lease=0.3))  # a heartbeat every 0.1 s
    resumed = Recorder(store, Redactor(), ALIVE, background_delay=0.01)
    try:
        resumed.resume_root("r-1")
        resumed.step_started("r-1", "approval", "wait", new_attempt=False)
        assert store.batches == [] and not resumed.committed_any  # replaying: a refusal would leave it as it was
        resumed.going_on()
        poll(lambda: 0 in store.batches, what="an empty commit (a heartbeat) after the held writes")
        assert store.batches[0] == 2  # the reopened run and the step's row, then heartbeats
    finally:
        resumed.close()
    run = store_factory.open().get_run("r-1")
    assert run is not None and run.status is RunStatus.RUNNING
    assert [(step.path, step.status) for step in store_factory.open().steps("r-1")] == [
        ("approval", StepStatus.RUNNING)
    ]


# -- redaction -------------------------------------------------------------------------------------------------------


class Opaque:
    """A value JSON cannot encode; its str() carries the secret."""

    def __str__(self) -> str:
        return f"<client key={SECRET}>"


@pytest.mark.anyio
async def test_a_secret_never_reaches_the_store(store_factory: StoreFactory) -> None:
    redactor = redactor_for([], ENV)
    assert redactor  # OPENAI_API_KEY looks secret
    store = store_factory.open()
    recorder = recorder_on(store, redactor)
    record = root_record()
    record.inputs = {"prompt": f"use {SECRET} please", "n": 3}
    recorder.start_root(record)
    recorder.child_started("r-1/c", "r-1", "child", "demo.yaml", 1.0, {"key": SECRET}, "d")
    recorder.step_started("r-1", "a", "agent")
    recorder.step_finished("r-1", "a", "agent", StepStatus.FAILED, 1.0, 0, output=Opaque(),
                           error={"message": f"401 for {SECRET}"})  # fmt: skip
    recorder.step_finished("r-1", "b", "agent", StepStatus.SUCCEEDED, 1.0, 1, output=f"said {SECRET}")
    recorder.call_done("r-1", "a/llm#0", "d", {"content": SECRET, "raw": Opaque()})
    recorder.call_done("r-1", "a/llm#1", "d", f'{{"content": "json text with {SECRET}"}}')
    recorder.call_done("r-1", "a/llm#2", "d", {"content": "nothing to hide"})
    recorder.event("r-1", f"named {SECRET}", {"header": f"Bearer {SECRET}"}, "a")
    recorder.state_changed("r-1", "a", {SECRET: SECRET, "plain": 1})
    recorder.cache_put("digest", {"content": SECRET})
    await recorder.durable()
    recorder.run_finished("r-1/c", RunStatus.SUCCEEDED, outputs={"o": SECRET}, durable=False)
    recorder.run_finished("r-1", RunStatus.FAILED, outputs={"o": SECRET}, error={"e": SECRET})

    assert SECRET.encode() not in store_factory.persisted()
    run = store.get_run("r-1")
    assert run is not None
    assert run.inputs == {"prompt": "use ${OPENAI_API_KEY} please", "n": 3}  # a placeholder that restores
    assert run.input_secrets is not None and "OPENAI_API_KEY" in str(run.input_secrets)
    assert (run.outputs, run.error) == ({"o": MASK}, {"e": MASK})
    steps = {step.path: step for step in store.steps("r-1")}
    assert (steps["a"].output, steps["a"].error, steps["b"].output) == (
        f"<client key={MASK}>", {"message": f"401 for {MASK}"}, f"said {MASK}")  # fmt: skip
    masked = [store.lookup_call("r-1", f"a/llm#{index}") for index in range(3)]
    assert [(call.result, call.masked) for call in masked if call is not None] == [
        ({"content": MASK, "raw": f"<client key={MASK}>"}, True),  # altered: a resume must ask again
        ({"content": f"json text with {MASK}"}, True),
        ({"content": "nothing to hide"}, False),
    ]
    [event] = store.events("r-1")
    assert (event.name, event.data) == (f"named {MASK}", {"header": f"Bearer {MASK}"})
    [change] = store.state_changes("r-1")
    assert (change.keys, change.values) == ([MASK, "plain"], {MASK: MASK, "plain": 1})
    assert store.cache_get("digest") == {"content": MASK}
    child = store.get_run("r-1/c")
    assert child is not None and (child.inputs, child.outputs) == ({"key": MASK}, {"o": MASK})


@pytest.mark.anyio
async def test_a_tool_request_holding_a_secret_is_not_stored_and_is_asked_again(store_factory: StoreFactory) -> None:
    # a tool call's request digest is its request as JSON text (engine/agent.py): a secret in its arguments (an input
    # such as `${GH_TOKEN}/report.txt`, used live by the run) must not reach the store through it
    store = store_factory.open()
    recorder = recorder_on(store, redactor_for([], ENV))
    recorder.start_root(root_record())
    digest = f'{{"arguments": {{"path": "{SECRET}/report.txt"}}, "server": "files", "tool": "read"}}'
    recorder.call_done("r-1", "a/tool:files.read#0", digest, {"content": "the report"})
    await recorder.durable()
    assert SECRET.encode() not in store_factory.persisted()
    call = store.lookup_call("r-1", "a/tool:files.read#0")
    assert call is not None and call.request_digest == digest.replace(SECRET, MASK)
    assert call.masked  # what was stored is not the request: a resume makes the call again rather than refuse


@pytest.mark.anyio
async def test_without_secrets_call_results_are_kept_as_given(store_factory: StoreFactory) -> None:
    store = store_factory.open()
    recorder = recorder_on(store, redactor_for([], {"HOME": "/root"}))
    recorder.start_root(root_record())
    recorder.call_done("r-1", "a/llm#0", "d", '{"content": "x", "n": 1}')
    await recorder.durable()
    call = store.lookup_call("r-1", "a/llm#0")
    assert call is not None and (call.result, call.masked) == ({"content": "x", "n": 1}, False)
