"""SqliteRunStore: every RunStore method round-trips, the durability contract holds across processes,
grouped writes commit by the documented rule, and secrets never reach the file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flowctl.interpreter.persistence.sqlite_store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SqliteRunStore,
    default_store_path,
    new_run_id,
    this_process,
)
from flowctl.interpreter.persistence.store import (
    CallRecord,
    RunRecord,
    RunStatus,
    RunStore,
    StepStatus,
)
from flowctl.interpreter.persistence.store_errors import StoreError
from flowctl.interpreter.redact import Redactor

SECRET = "sk-test-1234567890"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "runs.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteRunStore]:
    with SqliteRunStore(db, redactor=Redactor()) as opened:
        yield opened


def make_run(store: RunStore, run_id: str = "r-1", **fields: Any) -> RunRecord:
    base = RunRecord(run_id, "demo", "demo.yaml", RunStatus.RUNNING, 1000.0, inputs={"topic": "x"})
    record = replace(base, **fields)
    store.create_run(record)
    # a running run is stamped with the process that runs it (so `resume` can refuse a live run)
    return replace(record, owner=this_process()) if record.status is RunStatus.RUNNING else record


def committed(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """What another process would see: a separate connection reads only committed data."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def run_script(db: Path, body: str) -> subprocess.Popen[str]:
    script = (
        "import sys, time\n"
        "from flowctl.interpreter.redact import Redactor\n"
        "from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore\n"
        "from flowctl.interpreter.persistence.store import StepStatus\n"
        f"store = SqliteRunStore({str(db)!r}, redactor=Redactor(), max_delay=60)\n" + body
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- opening ---------------------------------------------------------------------------------------


def test_store_implements_the_port_and_creates_its_folder(store: SqliteRunStore, db: Path) -> None:
    assert isinstance(store, RunStore)
    assert db.is_file()
    assert store.schema_version == SCHEMA_VERSION
    assert committed(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert committed(db, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_an_existing_store_keeps_its_runs(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor()) as first:
        record = make_run(first)
    with SqliteRunStore(db, redactor=Redactor()) as second:
        assert second.get_run("r-1") == record
        assert second.schema_version == SCHEMA_VERSION


def test_a_store_from_a_newer_flowctl_is_refused(db: Path) -> None:
    SqliteRunStore(db, redactor=Redactor()).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer flowctl"):
        SqliteRunStore(db, redactor=Redactor())


def test_default_store_path(tmp_path: Path) -> None:
    assert default_store_path(tmp_path) == tmp_path / ".flowctl" / "runs.db"


def test_run_ids_are_unique_sortable_and_documented_format() -> None:
    ids = [new_run_id() for _ in range(200)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    prefix, date, clock, suffix = ids[0].split("-")
    assert (prefix, len(date), len(clock), len(suffix)) == ("r", 8, 6, 6)
    int(suffix, 16)


# -- runs ------------------------------------------------------------------------------------------


def test_run_round_trip(store: SqliteRunStore) -> None:
    record = make_run(
        store,
        parent_id=None,
        inputs={"topic": "ünïcode", "n": [1, 2.5, None, True]},
        source_digest="abc",
        input_tokens=3,
        output_tokens=4,
        cost=0.25,
    )
    assert store.get_run("r-1") == record
    assert store.get_run("missing") is None


def test_finish_run_records_outcome_and_totals(store: SqliteRunStore) -> None:
    make_run(store)
    store.finish_run(
        "r-1",
        RunStatus.FAILED,
        outputs={"partial": 1},
        error={"code": "step-failed", "message": "boom"},
        input_tokens=10,
        output_tokens=20,
        cost=1.5,
    )
    run = store.get_run("r-1")
    assert run is not None
    assert (run.status, run.outputs, run.error) == (
        RunStatus.FAILED,
        {"partial": 1},
        {"code": "step-failed", "message": "boom"},
    )
    assert (run.input_tokens, run.output_tokens, run.cost) == (10, 20, 1.5)
    assert run.finished_at is not None
    with pytest.raises(KeyError):
        store.finish_run("missing", RunStatus.SUCCEEDED)


def test_reopen_run_marks_it_running_again(store: SqliteRunStore) -> None:
    make_run(store)
    store.finish_run("r-1", RunStatus.CANCELLED, error={"code": "cancelled"})
    store.reopen_run("r-1")
    run = store.get_run("r-1")
    assert run is not None
    assert (run.status, run.finished_at, run.error) == (RunStatus.RUNNING, None, None)
    with pytest.raises(KeyError):
        store.reopen_run("missing")


def test_list_runs_newest_first_with_limit(store: SqliteRunStore) -> None:
    for index, started in enumerate([30.0, 10.0, 20.0]):
        make_run(store, f"r-{index}", started_at=started)
    assert [run.run_id for run in store.list_runs()] == ["r-0", "r-2", "r-1"]
    assert [run.run_id for run in store.list_runs(limit=2)] == ["r-0", "r-2"]


def test_child_runs_by_parent(store: SqliteRunStore) -> None:
    make_run(store, "parent")
    make_run(store, "child-b", parent_id="parent", started_at=2000.0)
    make_run(store, "child-a", parent_id="parent", started_at=1500.0)
    make_run(store, "other")
    assert [run.run_id for run in store.child_runs("parent")] == ["child-a", "child-b"]
    assert store.child_runs("other") == []


# -- steps -----------------------------------------------------------------------------------------


def test_steps_track_status_attempts_output_and_tokens(store: SqliteRunStore) -> None:
    make_run(store)
    store.step_started("r-1", "summary", "agent", 1)
    store.step_finished("r-1", "summary", StepStatus.FAILED, error={"code": "x"}, input_tokens=5)
    store.step_started("r-1", "summary", "agent", 2)
    running = store.steps("r-1")[0]
    assert (running.status, running.attempts, running.error, running.finished_at) == (
        StepStatus.RUNNING,
        2,
        None,
        None,
    )
    store.step_finished("r-1", "summary", StepStatus.SUCCEEDED, output={"text": "hi"}, input_tokens=7, output_tokens=3)
    [step] = store.steps("r-1")
    assert (step.kind, step.status, step.attempts, step.output) == (
        "agent",
        StepStatus.SUCCEEDED,
        2,
        {"text": "hi"},
    )
    assert (step.input_tokens, step.output_tokens) == (12, 3)
    assert step.finished_at is not None and step.finished_at >= step.started_at


def test_steps_keep_first_start_order_and_accept_unstarted_skips(store: SqliteRunStore) -> None:
    make_run(store)
    store.step_started("r-1", "b", "agent", 1)
    store.step_started("r-1", "a", "tool", 1)
    store.step_started("r-1", "b", "agent", 2)
    store.step_finished("r-1", "skipped/one", StepStatus.SKIPPED)
    steps = store.steps("r-1")
    assert [step.path for step in steps] == ["b", "a", "skipped/one"]
    assert (steps[2].kind, steps[2].attempts, steps[2].status) == ("", 0, StepStatus.SKIPPED)
    assert store.steps("missing") == []


# -- calls, events, signals, state, cache ----------------------------------------------------------


def test_record_and_lookup_call(store: SqliteRunStore) -> None:
    make_run(store)
    assert store.lookup_call("r-1", "summary/llm#0") is None
    store.record_call("r-1", "summary/llm#0", "digest-1", {"content": "hello", "usage": {"in": 3}})
    call = store.lookup_call("r-1", "summary/llm#0")
    assert isinstance(call, CallRecord)
    assert (call.run_id, call.key, call.request_digest, call.result) == (
        "r-1",
        "summary/llm#0",
        "digest-1",
        {"content": "hello", "usage": {"in": 3}},
    )
    store.record_call("r-1", "summary/llm#0", "digest-2", {"content": "forced re-run"})
    again = store.lookup_call("r-1", "summary/llm#0")
    assert again is not None and again.result == {"content": "forced re-run"}


def test_events_in_order_with_increasing_seq(store: SqliteRunStore) -> None:
    make_run(store)
    make_run(store, "r-2")
    store.record_event("r-1", "approved", {"by": "ann"}, "review")
    store.record_event("r-2", "noise", None, "system")
    store.record_event("r-1", "done", [1, 2], "system")
    events = store.events("r-1")
    assert [(e.run_id, e.name, e.data, e.source) for e in events] == [
        ("r-1", "approved", {"by": "ann"}, "review"),
        ("r-1", "done", [1, 2], "system"),
    ]
    assert events[0].seq < events[1].seq


def test_take_signals_after_seq(store: SqliteRunStore) -> None:
    make_run(store)
    make_run(store, "r-2")
    first = store.send_signal("r-1", "approve", {"ok": True})
    store.send_signal("r-2", "other", None)
    second = store.send_signal("r-1", "note", "text")
    taken = store.take_signals("r-1", 0)
    assert [(s.seq, s.name, s.data, s.source) for s in taken] == [
        (first, "approve", {"ok": True}, "signal"),
        (second, "note", "text", "signal"),
    ]
    assert [s.seq for s in store.take_signals("r-1", first)] == [second]
    assert store.take_signals("r-1", second) == []
    with pytest.raises(KeyError):
        store.send_signal("missing", "x", None)


def test_state_changes_round_trip(store: SqliteRunStore) -> None:
    make_run(store)
    store.record_state_change("r-1", "plan", {"count": 1, "notes": ["a"]})
    store.record_state_change("r-1", "refine#2", {"count": 2})
    changes = store.state_changes("r-1")
    assert [(c.step, c.keys, c.values) for c in changes] == [
        ("plan", ["count", "notes"], {"count": 1, "notes": ["a"]}),
        ("refine#2", ["count"], {"count": 2}),
    ]
    assert changes[0].seq < changes[1].seq


def test_cache_get_and_put(store: SqliteRunStore) -> None:
    assert store.cache_get("d1") is None
    store.cache_put("d1", {"content": "cached"})
    assert store.cache_get("d1") == {"content": "cached"}
    store.cache_put("d1", {"content": "newer"})
    assert store.cache_get("d1") == {"content": "newer"}


# -- group commit ----------------------------------------------------------------------------------


def test_grouped_writes_wait_in_memory_until_flush(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor(), max_delay=60) as store:
        make_run(store)
        store.step_started("r-1", "a", "agent", 1)
        store.record_event("r-1", "e", None, "system")
        assert committed(db, "SELECT count(*) FROM steps") == [(0,)]
        assert committed(db, "SELECT count(*) FROM events") == [(0,)]
        store.flush()
        assert committed(db, "SELECT count(*) FROM steps") == [(1,)]
        assert committed(db, "SELECT count(*) FROM events") == [(1,)]


def test_a_read_sees_the_grouped_writes_of_its_table(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor(), max_delay=60) as store:
        make_run(store)
        store.step_started("r-1", "a", "agent", 1)
        store.record_call("r-1", "a/llm#0", "d", {"content": "x"}, durable=False)
        assert [step.path for step in store.steps("r-1")] == ["a"]
        recorded = store.lookup_call("r-1", "a/llm#0")
        assert recorded is not None and recorded.result == {"content": "x"}


def test_record_call_commits_pending_writes(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor(), max_delay=60) as store:
        make_run(store)
        store.step_started("r-1", "a", "agent", 1)
        store.record_call("r-1", "a/llm#0", "d", {"content": "x"})
        assert committed(db, "SELECT count(*) FROM steps") == [(1,)]
        assert committed(db, "SELECT count(*) FROM calls") == [(1,)]


def wait_until_committed(db: Path, sql: str, expected: list[tuple[Any, ...]]) -> None:
    deadline = time.monotonic() + 60  # a safety net: returns as soon as the writer has committed
    while committed(db, sql) != expected:
        assert time.monotonic() < deadline, f"never committed: {sql} is {committed(db, sql)}, not {expected}"
        time.sleep(0.01)


def test_a_full_batch_is_committed_by_the_writer_thread(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor(), max_pending=3, max_delay=60) as store:
        make_run(store)
        for index in range(2):
            store.step_started("r-1", f"s{index}", "agent", 1)
        store.record_call("r-1", "s0/llm#0", "d", {"content": "x"}, durable=False)  # another table: its own batch
        time.sleep(0.05)
        assert committed(db, "SELECT count(*) FROM steps") == [(0,)]
        store.step_started("r-1", "s2", "agent", 1)
        wait_until_committed(db, "SELECT count(*) FROM steps", [(3,)])
        assert committed(db, "SELECT count(*) FROM calls") == [(0,)]


def test_batches_are_written_in_order_and_many_rows_to_a_statement(db: Path) -> None:
    # 2,500 rows of one step table through batches of 1,000 (written by the writer thread, as 1,000-row statements)
    # and a flush (the rest: power-of-two statements); a finished row after its started row in another batch
    with SqliteRunStore(db, redactor=Redactor(), max_pending=1000, max_delay=60) as store:
        make_run(store)
        for index in range(2500):
            store.step_started("r-1", f"s{index}", "agent", 1)
        store.step_finished("r-1", "s0", StepStatus.SUCCEEDED, output="done", input_tokens=2)
        store.step_started("r-1", "s1", "agent", 2)
        store.flush()
        rows = committed(db, "SELECT path, status, attempts, output, input_tokens FROM steps ORDER BY seq")
        assert len(rows) == 2500
        assert rows[0] == ("s0", "succeeded", 1, '"done"', 2)
        assert rows[1] == ("s1", "running", 2, None, 0)
        assert [row[0] for row in rows] == [f"s{index}" for index in range(2500)]


def test_queued_writes_of_one_step_keep_their_order(db: Path) -> None:
    # started, finished, then a retry's started: all queued in one group; the row must end as the retry left it
    with SqliteRunStore(db, redactor=Redactor(), max_delay=60) as store:
        make_run(store)
        store.step_started("r-1", "a", "agent", 1)
        store.step_finished("r-1", "a", StepStatus.FAILED, error={"code": "x"}, input_tokens=3)
        store.step_started("r-1", "a", "agent", 2)
        store.record_call("r-1", "a/llm#0", "d", {"content": "x"}, durable=False)
        [step] = store.steps("r-1")
        assert (step.status, step.attempts, step.error, step.input_tokens) == (StepStatus.RUNNING, 2, None, 3)
        store.flush()
        assert committed(db, "SELECT status, attempts, input_tokens FROM steps") == [("running", 2, 3)]


def test_queued_writes_leave_the_file_to_other_writers_until_the_commit(db: Path) -> None:
    # Grouped writes wait in memory: another process can write (`flowctl signal`) while they are queued.
    with SqliteRunStore(db, redactor=Redactor(), max_delay=60) as store:
        make_run(store)
        store.step_started("r-1", "a", "agent", 1)
        with sqlite3.connect(db, timeout=0) as other:
            other.execute("INSERT INTO signals (run_id, name, data, at) VALUES ('r-1', 'go', NULL, 0)")
        assert [signal.name for signal in store.take_signals("r-1", 0)] == ["go"]  # polling does not lock either
        with sqlite3.connect(db, timeout=0) as other:
            other.execute("INSERT INTO signals (run_id, name, data, at) VALUES ('r-1', 'again', NULL, 0)")
        assert [step.path for step in store.steps("r-1")] == ["a"]


def test_idle_group_is_committed_after_max_delay(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor(), max_delay=0.05) as store:
        make_run(store)
        store.step_started("r-1", "a", "agent", 1)
        deadline = time.monotonic() + 60  # a safety net: returns as soon as the flusher has committed
        while committed(db, "SELECT count(*) FROM steps") != [(1,)]:
            assert time.monotonic() < deadline, "the flusher never committed the idle group"
            time.sleep(0.01)


def test_a_failed_commit_loses_no_grouped_row(db: Path) -> None:
    # the durable write fails (its run does not exist) after the grouped rows were written into its transaction:
    # they are rolled back with it and put back in line, to be committed once (by the writer thread, which may
    # start late on a busy machine and take them at once, or by the next flush): none is lost or written twice
    with SqliteRunStore(db, redactor=Redactor(), max_delay=60) as store:
        make_run(store)
        store.step_started("r-1", "a", "agent", 1)
        store.record_call("r-1", "a/llm#0", "d", {"content": "x"}, durable=False)
        with pytest.raises(sqlite3.IntegrityError):
            store.record_call("no-such-run", "b/llm#0", "d", {"content": "y"})
        store.flush()
        assert committed(db, "SELECT path FROM steps") == [("a",)]
        assert committed(db, "SELECT key FROM calls") == [("a/llm#0",)]


def test_close_commits_pending_writes(db: Path) -> None:
    store = SqliteRunStore(db, redactor=Redactor(), max_delay=60)
    make_run(store)
    store.step_started("r-1", "a", "agent", 1)
    store.close()
    store.close()
    assert committed(db, "SELECT path FROM steps") == [("a",)]


# -- across processes ------------------------------------------------------------------------------


def test_recorded_call_survives_sigkill_and_the_file_stays_sound(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor()) as store:
        make_run(store)
    child = run_script(
        db,
        "store.record_call('r-1', 'a/llm#0', 'digest', {'content': 'paid for'})\n"
        "store.step_started('r-1', 'after', 'agent', 1)\n"
        "print('recorded', flush=True)\n"
        "time.sleep(30)\n",
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "recorded"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert committed(db, "PRAGMA integrity_check") == [("ok",)]
    with SqliteRunStore(db, redactor=Redactor()) as fresh:
        call = fresh.lookup_call("r-1", "a/llm#0")
        assert call is not None and call.result == {"content": "paid for"}
        assert fresh.steps("r-1") == []  # the grouped write was never committed: lost, not corrupt
        fresh.step_started("r-1", "after", "agent", 1)  # the killed writer's lock is gone


def test_signal_from_another_process_reaches_an_open_store(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor()) as store:
        make_run(store)
        store.step_started("r-1", "wait", "wait", 1)  # an open group holds the write lock
        sender = run_script(db, "print(store.send_signal('r-1', 'approve', {'by': 'ann'}))\n")
        out, err = sender.communicate(timeout=10)
        assert sender.returncode == 0, err
        [taken] = store.take_signals("r-1", 0)
        assert (taken.seq, taken.name, taken.data) == (int(out), "approve", {"by": "ann"})


# -- redaction -------------------------------------------------------------------------------------


class Opaque:
    """A value JSON cannot encode; its str() carries the secret."""

    def __str__(self) -> str:
        return f"<client key={SECRET}>"


def every_text_value(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [
            value
            for table in tables
            for row in conn.execute(f'SELECT * FROM "{table}"')
            for value in row
            if isinstance(value, str)
        ]


def test_secrets_from_the_environment_never_reach_the_file(db: Path) -> None:
    redactor = Redactor.from_env({"OPENAI_API_KEY": SECRET, "HOME": "/root"})
    with SqliteRunStore(db, redactor=redactor) as store:
        make_run(store, inputs={"prompt": f"use {SECRET}", SECRET: [SECRET]})
        store.step_started("r-1", "a", "agent", 1)
        store.step_finished("r-1", "a", StepStatus.FAILED, output=Opaque(), error={"message": f"401 for {SECRET}"})
        store.record_call("r-1", "a/llm#0", "d", {"content": SECRET, "raw": Opaque()})
        store.record_event("r-1", "leak", {"header": f"Bearer {SECRET}"}, "a")
        store.send_signal("r-1", "sig", [SECRET])
        store.record_state_change("r-1", "a", {SECRET: SECRET})
        store.cache_put("digest", {"content": SECRET})
        store.finish_run("r-1", RunStatus.FAILED, outputs={"o": SECRET}, error={"e": SECRET})
        call = store.lookup_call("r-1", "a/llm#0")
        assert call is not None and call.result == {"content": "***", "raw": "<client key=***>"}
    texts = every_text_value(db)
    assert not [text for text in texts if SECRET in text]
    assert sum("***" in text for text in texts) >= 9


def test_secrets_in_inputs_are_stored_as_placeholders_that_restore_from_the_environment(db: Path) -> None:
    from flowctl.interpreter.redact import restore_inputs

    env = {"OPENAI_API_KEY": SECRET}
    inputs = {"path": f"{SECRET}/report.txt", "n": 3}
    with SqliteRunStore(db, redactor=Redactor.from_env(env)) as store:
        make_run(store, inputs=inputs)
        stored = store.get_run("r-1")
    assert stored is not None and stored.inputs == {"path": "${OPENAI_API_KEY}/report.txt", "n": 3}
    assert stored.input_secrets is not None and SECRET not in json.dumps(stored.input_secrets)
    assert restore_inputs(stored.inputs, stored.input_secrets, env) == inputs
    assert not [text for text in every_text_value(db) if SECRET in text]


def test_finishing_a_run_clears_its_owner_and_reopening_takes_it(store: SqliteRunStore) -> None:
    make_run(store)
    store.finish_run("r-1", RunStatus.FAILED)
    assert store.get_run("r-1").owner is None  # type: ignore[union-attr]
    store.reopen_run("r-1")
    assert store.get_run("r-1").owner == this_process()  # type: ignore[union-attr]


def test_a_version_1_store_is_upgraded_in_place(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO runs (run_id, pipeline, file, status, started_at, inputs) VALUES ('r-old', 'p', 'p.yaml', "
            "'failed', 1.0, '{}')"
        )
    with SqliteRunStore(db, redactor=Redactor()) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.get_run("r-old")
        assert old is not None and old.owner is None and old.status is RunStatus.FAILED
        assert old.input_secrets is None  # inputs stored before v4 restore as they are


def test_only_one_process_can_claim_a_run_for_resume(db: Path) -> None:
    with SqliteRunStore(db, redactor=Redactor()) as store:
        make_run(store)
        store.finish_run("r-1", RunStatus.FAILED)
        store.reopen_run("r-1")  # this (live) process claims it, as `flowctl resume` does
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from flowctl.interpreter.redact import Redactor\n"
                "from flowctl.interpreter.persistence.sqlite_store import RunBusy, SqliteRunStore\n"
                f"store = SqliteRunStore({str(db)!r}, redactor=Redactor())\n"
                "try:\n    store.reopen_run('r-1')\nexcept RunBusy as exc:\n    print('busy:', exc); sys.exit(3)\n",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.returncode == 3, other.stderr
        assert "is still running (process" in other.stdout
        assert store.get_run("r-1").owner == this_process()  # type: ignore[union-attr]
