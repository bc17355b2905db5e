"""What only the SQLite store does (the port's contract is tests/persistence, run against it too): the file, its
folder, WAL and schema version; upgrades from every older schema (v4 → v5 numbers the signals and starts claims);
values SQLite cannot bind as they are (lone surrogates, integers past 64 bits); many rows to a statement; the file
sound after a killed writer; refusing what is not a usable store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from flowctl.interpreter.persistence.sqlite_store import MAX_ROWS_PER_STATEMENT, SqliteRunStore
from flowctl.interpreter.persistence.store import (
    CallDone,
    EventLogged,
    Exchanged,
    RunFinished,
    RunRecord,
    RunStarted,
    RunStatus,
    RunStore,
    StepFinished,
    StepStarted,
    StepStatus,
)
from flowctl.interpreter.persistence.store_errors import ClaimLost, StoreError
from tests.persistence.backends import BACKENDS
from tests.persistence.helpers import ALIVE, DEAD, create, kill, read_line, spawn


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "runs.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteRunStore]:
    with SqliteRunStore(db) as opened:
        yield opened


def committed(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """What another process would see: a separate connection reads only committed data."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


# -- opening ---------------------------------------------------------------------------------------------------------


def test_the_store_implements_the_port_and_creates_its_folder(store: SqliteRunStore, db: Path) -> None:
    assert isinstance(store, RunStore)
    assert db.is_file()
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    assert committed(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert committed(db, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_an_existing_store_keeps_its_runs(db: Path) -> None:
    with SqliteRunStore(db) as first:
        create(first)
    with SqliteRunStore(db, access="write") as second:
        run = second.get_run("r-1")
        assert run is not None and (run.pipeline, run.owner) == ("demo", ALIVE)
        assert second.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("access", ["read", "write"])
def test_a_command_that_needs_a_store_creates_none(db: Path, access: str) -> None:
    with pytest.raises(StoreError, match="no run store here"):
        SqliteRunStore(db, access=access)  # type: ignore[arg-type]
    assert not db.exists() and not db.parent.exists()


def test_a_store_from_a_newer_flowctl_is_refused(db: Path) -> None:
    SqliteRunStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer flowctl"):
        SqliteRunStore(db)


def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_is(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError) as refused:
        SqliteRunStore(db)
    assert refused.value.path == str(db)
    assert db.read_bytes() == b"not a database at all" * 100


def test_another_programs_database_is_refused_and_left_untouched(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE theirs (x)")
    with pytest.raises(StoreError, match="not a flowctl run store"):
        SqliteRunStore(db)
    assert committed(db, "SELECT name FROM sqlite_master") == [("theirs",)]
    assert committed(db, "PRAGMA user_version") == [(0,)]


def test_the_conformance_suite_runs_against_this_store() -> None:
    assert "sqlite" in BACKENDS


# -- upgrades --------------------------------------------------------------------------------------------------------


def old_store(db: Path, version: int) -> sqlite3.Connection:
    """A file as flowctl left it at schema `version`."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    for statements in MIGRATIONS[:version]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def test_a_version_1_store_is_upgraded_in_place(db: Path) -> None:
    with old_store(db, 1) as conn:
        conn.execute("INSERT INTO runs (run_id, pipeline, file, status, started_at, inputs) VALUES ('r-old', 'p', "
                     "'p.yaml', 'failed', 1.0, '{}')")  # fmt: skip
    conn.close()
    with SqliteRunStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.get_run("r-old")
        assert old is not None and (old.owner, old.status, old.input_secrets) == (None, RunStatus.FAILED, None)
        claim = store.claim("r-old", ALIVE)  # an old run resumes under a claim like any other
        store.commit([StepStarted("r-old", "a", "agent", 2.0)], claim)


def test_a_version_4_store_numbers_its_signals_and_claims_its_runs(db: Path) -> None:
    with old_store(db, 4) as conn:
        for run_id in ("r-a", "r-b"):
            conn.execute(
                "INSERT INTO runs (run_id, pipeline, file, status, started_at, inputs, owner) "
                "VALUES (?, 'p', 'p.yaml', 'running', 1.0, '{}', ?)",
                (run_id, DEAD),
            )
        for run_id, name in [("r-a", "one"), ("r-b", "other"), ("r-a", "two")]:
            conn.execute("INSERT INTO signals (run_id, name, data, at) VALUES (?, ?, 'null', 1.0)", (run_id, name))
    conn.close()
    with SqliteRunStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        before = [(s.position, s.name) for s in store.signals("r-a")]
        assert [name for _, name in before] == ["one", "two"]
        assert before[0][0] < before[1][0]
        assert store.send_signal("r-a", "three", None) > before[1][0]  # numbered after the old ones
        assert [s.name for s in store.signals("r-a", after=before[1][0])] == ["three"]
        assert [s.name for s in store.signals("r-b")] == ["other"]
        assert store.liveness("r-a").alive is False  # the old owner's process is gone
        first = store.claim("r-a", ALIVE)
        second = store.claim("r-a", ALIVE)
        assert 0 < first.token < second.token


def test_a_version_6_transcript_reads_as_before_and_goes_on_in_call_rows(db: Path) -> None:
    """Schema 7 keeps the common model call's entry in its call row: a file's earlier entries (all in `exchanges`,
    without the order the recorder noted them in) read as they did, and new ones merge with them by time."""
    with old_store(db, 6) as conn:
        conn.execute("INSERT INTO runs (run_id, pipeline, file, status, started_at, inputs, owner) "
                     "VALUES ('r-1', 'p', 'p.yaml', 'running', 1.0, '{}', ?)", (DEAD,))  # fmt: skip
        for key, end in (("a/llm#0", 2.0), ("a/llm#1", 2.0), ("b/llm#0", 5.0)):  # a tie: stored order
            conn.execute("INSERT INTO exchanges (run_id, path, key, attempt, kind, started_at, elapsed, request, "
                         "response) VALUES ('r-1', ?, ?, 1, 'model', ?, 0.0, '{}', '\"old\"')",
                         (key[0], key, end))  # fmt: skip
    conn.close()
    with SqliteRunStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        claim = store.claim("r-1", ALIVE)
        new = Exchanged("r-1", "c", "c/llm#0", 1, "model", 3.0, 0.5, "{}", '"new"', None, 1)
        store.commit([CallDone("r-1", "c/llm#0", "d", '"new"', 3.5, transcript=new)], claim)
        assert [(e.seq, e.key, e.response) for e in store.exchanges("r-1")] == [
            (1, "a/llm#0", "old"), (2, "a/llm#1", "old"), (3, "c/llm#0", "new"), (4, "b/llm#0", "old")]  # fmt: skip


def test_a_kept_entry_re_recorded_by_a_flowctl_from_before_schema_7_is_read_once(db: Path) -> None:
    """A process of an older flowctl that opened the file before another upgraded it records calls as it always did
    (the journal's columns, and an exchanges row of its own): the entry the call row kept is moved, and the row's
    stale copy, which that upsert left behind with the new result, is not read again."""
    with SqliteRunStore(db) as store:
        claim = create(store)
        first = Exchanged("r-1", "a", "a/llm#0", 1, "model", 1.0, 1.0, '{"n": 1}', '"first"', None, 1)
        store.commit([CallDone("r-1", "a/llm#0", "d1", '"first"', 2.0, transcript=first)], claim)
    with sqlite3.connect(db) as conn:  # what schema 6's CALL_ROW and EXCHANGE_ROW wrote
        conn.execute("""INSERT INTO calls (run_id, key, request_digest, result, recorded_at, redacted, claim_token)
            VALUES ('r-1', 'a/llm#0', 'd2', '"second"', 4.0, 0, ?) ON CONFLICT (run_id, key) DO UPDATE SET
            request_digest = excluded.request_digest, result = excluded.result, recorded_at = excluded.recorded_at,
            redacted = excluded.redacted, claim_token = excluded.claim_token""", (claim.token,))  # fmt: skip
        conn.execute("""INSERT INTO exchanges (run_id, path, key, attempt, kind, started_at, elapsed, request, response)
            VALUES ('r-1', 'a', 'a/llm#0', 2, 'model', 3.0, 1.0, '{"n": 2}', '"second"')""")  # fmt: skip
    conn.close()
    with SqliteRunStore(db, access="read") as store:
        assert [(e.request, e.response) for e in store.exchanges("r-1")] == [({"n": 1}, "first"), ({"n": 2}, "second")]


# -- values SQLite cannot bind as they are ---------------------------------------------------------------------------


def test_lone_surrogates_are_stored_as_json_escapes_and_read_back(store: SqliteRunStore) -> None:
    claim = create(store)
    lone = "bad \udc80 byte"
    text = json.dumps({"content": lone}, ensure_ascii=False)  # as the recorder encodes: the surrogate as it is
    store.commit([CallDone("r-1", "a/llm#0", "d", text, 1.0), EventLogged("r-1", "e", json.dumps(lone,
                  ensure_ascii=False), "a", 1.0)], claim)  # fmt: skip
    call = store.lookup_call("r-1", "a/llm#0")
    assert call is not None and call.result == {"content": lone}
    assert [event.data for event in store.events("r-1")] == [lone]


def test_integers_past_64_bits_are_stored_as_floats(store: SqliteRunStore) -> None:
    claim = create(store)
    huge = 2**70
    store.commit(
        [
            StepStarted("r-1", "a", "agent", 1.0),
            StepFinished("r-1", "a", "agent", StepStatus.SUCCEEDED, 1.0, 2.0, 0, None, None, huge, 10**400),
            RunFinished("r-1", RunStatus.SUCCEEDED, 3.0, None, None, huge, 1, 0.0),
        ],
        claim,
    )
    [step] = store.steps("r-1")
    assert step.input_tokens == float(huge) and step.output_tokens == float("inf")
    run = store.get_run("r-1")
    assert run is not None and run.input_tokens == float(huge)


# -- statements and the file -----------------------------------------------------------------------------------------


def test_a_large_batch_is_written_in_order_many_rows_to_a_statement(store: SqliteRunStore, db: Path) -> None:
    claim = create(store)
    count = 2 * MAX_ROWS_PER_STATEMENT + 477  # full statements, then power-of-two ones
    writes: list[StepStarted | StepFinished] = [StepStarted("r-1", f"s{index}", "agent", 1.0) for index in range(count)]
    writes.append(StepFinished("r-1", "s0", "agent", StepStatus.SUCCEEDED, 1.0, 2.0, 0, '"done"', None, 2))
    writes.append(StepStarted("r-1", "s1", "agent", 3.0))
    store.commit(writes, claim)
    rows = committed(db, "SELECT path, status, attempts, output, input_tokens FROM steps ORDER BY seq")
    assert [row[0] for row in rows] == [f"s{index}" for index in range(count)]
    assert rows[0] == ("s0", "succeeded", 1, '"done"', 2)
    assert rows[1] == ("s1", "running", 2, None, 0)


def test_between_commits_the_file_is_free_for_other_writers(store: SqliteRunStore, db: Path) -> None:
    claim = create(store)
    store.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)
    with sqlite3.connect(db, timeout=0) as other:  # no wait: nobody may hold the write lock now
        other.execute("UPDATE runs SET pipeline = pipeline WHERE run_id = 'r-1'")
    assert store.send_signal("r-1", "go", None) == 1


def test_a_killed_writer_leaves_a_sound_file_that_others_write(tmp_path: Path) -> None:
    factory = BACKENDS["sqlite"](tmp_path)
    writer = spawn(factory, "commit", "r-1")
    try:
        assert read_line(writer) == "committed"
    finally:
        kill(writer)
    db = Path(factory.spec["path"])
    assert committed(db, "PRAGMA integrity_check") == [("ok",)]
    with SqliteRunStore(db) as fresh:
        claim = fresh.claim("r-1", ALIVE)
        fresh.commit([StepStarted("r-1", "after", "agent", 2.0)], claim)
        assert [step.path for step in fresh.steps("r-1")] == ["a", "after"]


def test_a_read_only_handle_reads_but_never_writes(store: SqliteRunStore, db: Path) -> None:
    claim = create(store)
    store.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)
    with SqliteRunStore(db, access="read") as reader:
        assert [step.path for step in reader.steps("r-1")] == ["a"]
        with pytest.raises(StoreError):
            reader.send_signal("r-1", "go", None)
    assert store.signals("r-1") == []


def test_an_in_memory_store_works_for_one_process() -> None:
    with SqliteRunStore(":memory:") as memory:
        claim = memory.create_run(RunRecord("r-1", "p", "p.yaml", RunStatus.RUNNING, 1.0), "{}", None, ALIVE)
        memory.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)
        assert [step.path for step in memory.steps("r-1")] == ["a"]


def _calls_table(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM calls ORDER BY run_id, key").fetchall()


def kept_call(digest: str, answer: str, *, attempt: int, at: float) -> CallDone:
    """A model call of step `t` with its transcript entry kept in its row (numbered by its attempt)."""
    entry = Exchanged("r-1", "t", "t/llm#0", attempt, "model", at - 1.0, 0.5, '{"messages": []}', answer, None, attempt)
    return CallDone("r-1", "t/llm#0", digest, answer, at, transcript=entry)


def test_a_lone_call_commits_in_one_statement_exactly_as_the_general_path_does(tmp_path: Path) -> None:
    """A chain commits one call per model call through a one-statement fast path (FENCED_CALL); a store whose
    heartbeat is always due (lease 0) takes the general path (begin, fence, insert, commit) for the same commits.
    Both must leave the same rows and refuse a lost claim alike."""
    fast, plain = SqliteRunStore(tmp_path / "fast.db"), SqliteRunStore(tmp_path / "plain.db", lease=0)
    calls = [
        CallDone("r-1", "a/llm#0", "d1", '{"content": "one"}', 1.0),
        CallDone("r-1", "b/tool:calc.add#0", "d2", '{"text": "3", "is_error": false}', 2.0, masked=True),
        CallDone("r-1", "a/llm#0", "d3", '{"content": "forced"}', 3.0),  # recorded again: replaced
        CallDone("r-1/child", "c/llm#0", "d4", '{"content": "half \\ud800 a pair"}', 4.0),
        kept_call("d7", '{"content": "kept"}', attempt=1, at=7.0),
        kept_call("d8", '{"content": "again"}', attempt=2, at=8.0),  # recorded again: the first entry moves
    ]
    for store in (fast, plain):
        claim = create(store, owner=DEAD)
        store.commit([RunStarted("r-1/child", "r-1", "child", "c.yaml", 1.0, "{}", "")], claim)
        for call in calls:
            store.commit([call], claim)
        taken = store.claim("r-1", ALIVE)
        with pytest.raises(ClaimLost):
            store.commit([CallDone("r-1", "late/llm#0", "d5", "{}", 5.0)], claim)
        with pytest.raises(ValueError, match="claim of its run tree"):
            store.commit([CallDone("r-2", "x/llm#0", "d6", "{}", 6.0)], taken)
    assert _calls_table(tmp_path / "fast.db") == _calls_table(tmp_path / "plain.db")
    assert fast.lookup_call("r-1", "a/llm#0") == plain.lookup_call("r-1", "a/llm#0")
    assert [e.response for e in fast.exchanges("r-1")] == [{"content": "kept"}, {"content": "again"}]
    assert fast.exchanges("r-1") == plain.exchanges("r-1")
    fast.close()
    plain.close()
