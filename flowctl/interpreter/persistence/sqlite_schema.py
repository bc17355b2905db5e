"""The SQLite store's schema: tables, migrations, and the grouped statements that write a commit's rows.

`MIGRATIONS[i]` upgrades a file from `PRAGMA user_version` i to i + 1 (sqlite_open.py applies them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from flowctl.interpreter.persistence.rows import (
    CALL_COLUMNS,
    CALL_UPDATE,
    EXCHANGE_COLUMNS,
    RUN_COLUMNS,
    attempt_row,
    cache_row,
    call_row,
    event_row,
    exchange_row,
    state_row,
    step_finished_row,
    step_started_row,
)
from flowctl.interpreter.persistence.store import (
    AttemptEnded,
    CacheStored,
    CallDone,
    EventLogged,
    Exchanged,
    StateChanged,
    StepFinished,
    StepStarted,
)

SCHEMA_VERSION = 7

_SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        parent_id TEXT REFERENCES runs (run_id) ON DELETE SET NULL,
        pipeline TEXT NOT NULL,
        file TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        inputs TEXT NOT NULL,
        outputs TEXT,
        error TEXT,
        source_digest TEXT NOT NULL DEFAULT '',
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at)",
    "CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_id)",
    """CREATE TABLE IF NOT EXISTS steps (
        seq INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        output TEXT,
        error TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        UNIQUE (run_id, path)
    )""",
    """CREATE TABLE IF NOT EXISTS calls (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        request_digest TEXT NOT NULL,
        result TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (run_id, key)
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        data TEXT,
        source TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS signals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        data TEXT,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS signals_by_run ON signals (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS state_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step TEXT NOT NULL,
        keys TEXT NOT NULL,
        "values" TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS state_changes_by_run ON state_changes (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS cache (
        digest TEXT PRIMARY KEY,
        result TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
)

# MIGRATIONS[i] upgrades a file from user_version i to i + 1.
# v2: the process that runs a run ("host:pid"), so `flowctl resume` can refuse a run that is still alive.
_SCHEMA_V2 = ("ALTER TABLE runs ADD COLUMN owner TEXT",)
# v3: call results that redaction altered are flagged, so a resume re-executes them instead of replaying the mask.
_SCHEMA_V3 = ("ALTER TABLE calls ADD COLUMN redacted INTEGER NOT NULL DEFAULT 0",)
# v4: secrets masked in a run's inputs are placeholders naming their variables; this column says which, with a
# salted hash of each value, so `flowctl resume` restores them from the environment.
_SCHEMA_V4 = ("ALTER TABLE runs ADD COLUMN input_secrets TEXT",)
# v5: claims with fencing (a token that grows with each claim, a heartbeat for owners on other hosts); calls and step
# outcomes stamped with the claim they were committed under; signals numbered per run in commit order (a counter on
# the run row, taken under SQLite's write lock).
_SCHEMA_V5 = (
    "ALTER TABLE calls ADD COLUMN claim_token INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE steps ADD COLUMN claim_token INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN claim_token INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN heartbeat_at REAL",
    "ALTER TABLE runs ADD COLUMN signals_sent INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE signals ADD COLUMN position INTEGER NOT NULL DEFAULT 0",
    "UPDATE signals SET position = seq",
    "UPDATE runs SET signals_sent = COALESCE((SELECT MAX(seq) FROM signals WHERE signals.run_id = runs.run_id), 0)",
    "CREATE UNIQUE INDEX IF NOT EXISTS signals_by_position ON signals (run_id, position)",
)
# v6: transcripts — each attempt of a step, and each call as it happened (what was sent, what came back); the
# fixture a scripted run answered from, so that its resume stays offline.
_SCHEMA_V6 = (
    "ALTER TABLE runs ADD COLUMN scripted TEXT",
    """CREATE TABLE IF NOT EXISTS attempts (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        error TEXT,
        retry_in REAL,
        PRIMARY KEY (run_id, path, attempt)
    )""",
    """CREATE TABLE IF NOT EXISTS exchanges (
        seq INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        key TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL,
        elapsed REAL NOT NULL,
        request TEXT NOT NULL,
        response TEXT,
        error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS exchanges_by_run ON exchanges (run_id, path, seq)",
)
# v7: the transcript entry of a model call kept in its call row (CallDone.transcript): one row a call instead of two,
# which is most of what transcripts cost a fan-out. A row written again (a call re-run) moves the entry it held to
# `exchanges` first, so the earlier answer stays in the transcript. Entries from both tables are read in one order:
# when the call ended, then `ordinal`, the order the recorder noted them in (rows.py).
_SCHEMA_V7 = (
    "ALTER TABLE calls ADD COLUMN path TEXT",
    "ALTER TABLE calls ADD COLUMN attempt INTEGER",
    "ALTER TABLE calls ADD COLUMN started_at REAL",
    "ALTER TABLE calls ADD COLUMN elapsed REAL",
    "ALTER TABLE calls ADD COLUMN request TEXT",
    "ALTER TABLE calls ADD COLUMN ordinal INTEGER",
    "ALTER TABLE exchanges ADD COLUMN ordinal INTEGER",
    """CREATE TRIGGER IF NOT EXISTS calls_keep_transcript BEFORE UPDATE ON calls WHEN old.request IS NOT NULL
    BEGIN
        INSERT INTO exchanges (run_id, path, key, attempt, kind, started_at, elapsed, request, response, ordinal)
        VALUES (old.run_id, old.path, old.key, old.attempt, 'model', old.started_at, old.elapsed, old.request,
                old.result, old.ordinal);
    END""",
)
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _SCHEMA_V1,
    _SCHEMA_V2,
    _SCHEMA_V3,
    _SCHEMA_V4,
    _SCHEMA_V5,
    _SCHEMA_V6,
    _SCHEMA_V7,
)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (one per table): a dataclass hash costs ~0.3 µs
class Insert:
    """The one grouped INSERT of a table. A commit writes a table's rows many to a statement (`INSERT … VALUES (…),
    (…), … ON CONFLICT …`): one SQLite call for a batch, during which SQLite runs without the GIL."""

    table: str
    head: str  # INSERT INTO table (columns)
    row: str  # (?, ?, …) — the parameters of one row
    tail: str = ""  # ON CONFLICT …

    @property
    def params(self) -> int:
        return self.row.count("?")

    def sql(self, rows: int) -> str:
        return _multi_row_sql(self, rows)


@functools.lru_cache(maxsize=64)
def _multi_row_sql(insert: Insert, rows: int) -> str:
    return f"{insert.head} VALUES {', '.join([insert.row] * rows)} {insert.tail}"


# Both step writes are this one upsert, so a table's rows are always one statement, in the order they were made (a
# step's finished row updates its started row). A started row (status 'running') restarts the step's clock and
# clears the previous attempt's outcome; a finished row keeps the start of the row it finishes, or makes the row
# (a fan-out item, written once; a skipped step). Attempts and tokens add up over retries and resumes.
STEP_ROW = Insert(
    "steps",
    "INSERT INTO steps (run_id, path, kind, status, attempts, started_at, finished_at, output, error, "
    "input_tokens, output_tokens, claim_token)",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (run_id, path) DO UPDATE SET
        kind = excluded.kind, status = excluded.status, attempts = steps.attempts + excluded.attempts,
        started_at = CASE WHEN excluded.status = 'running' THEN excluded.started_at ELSE steps.started_at END,
        finished_at = excluded.finished_at, output = excluded.output, error = excluded.error,
        input_tokens = steps.input_tokens + excluded.input_tokens,
        output_tokens = steps.output_tokens + excluded.output_tokens, claim_token = excluded.claim_token""",
)
CALL_ROW = Insert("calls", f"INSERT INTO calls ({CALL_COLUMNS})", f"({', '.join('?' * 13)})", CALL_UPDATE)
EVENT_ROW = Insert("events", "INSERT INTO events (run_id, name, data, source, at)", "(?, ?, ?, ?, ?)")
STATE_ROW = Insert("state_changes", 'INSERT INTO state_changes (run_id, step, keys, "values", at)', "(?, ?, ?, ?, ?)")
CACHE_ROW = Insert(
    "cache",
    "INSERT INTO cache (digest, result, created_at)",
    "(?, ?, ?)",
    "ON CONFLICT (digest) DO UPDATE SET result = excluded.result, created_at = excluded.created_at",
)

ATTEMPT_ROW = Insert(
    "attempts",
    "INSERT INTO attempts (run_id, path, attempt, status, started_at, finished_at, error, retry_in)",
    "(?, ?, ?, ?, ?, ?, ?, ?)",
    """ON CONFLICT (run_id, path, attempt) DO UPDATE SET status = excluded.status, started_at = excluded.started_at,
        finished_at = excluded.finished_at, error = excluded.error, retry_in = excluded.retry_in""",
)
EXCHANGE_ROW = Insert("exchanges", f"INSERT INTO exchanges ({EXCHANGE_COLUMNS})", f"({', '.join('?' * 11)})")

INSERT_RUN = f"INSERT INTO runs ({RUN_COLUMNS}, claim_token, heartbeat_at) VALUES ({', '.join('?' * 19)})"
INSERT_CHILD = """INSERT INTO runs (run_id, parent_id, pipeline, file, status, started_at, inputs, source_digest)
                  VALUES (?, ?, ?, ?, 'running', ?, ?, ?)
                  ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL, outputs = NULL,
                  error = NULL"""
REOPEN_RUN = "UPDATE runs SET status = 'running', finished_at = NULL, outputs = NULL, error = NULL WHERE run_id = ?"
FINISH_RUN = """UPDATE runs SET status = ?, finished_at = ?, outputs = ?, error = ?, input_tokens = ?,
                output_tokens = ?, cost = ?, owner = CASE WHEN parent_id IS NULL THEN NULL ELSE owner END
                WHERE run_id = ?"""
FENCE = "SELECT claim_token, owner, heartbeat_at FROM runs WHERE run_id = ?"
# One call row, written only while the claim holds (0 rows otherwise): a single statement SQLite commits on its own.
FENCED_CALL = f"""INSERT INTO calls ({CALL_COLUMNS})
    SELECT {", ".join("?" * 13)} WHERE (SELECT claim_token FROM runs WHERE run_id = ?) = ?
    {CALL_UPDATE}"""
HEARTBEAT = "UPDATE runs SET heartbeat_at = ? WHERE run_id = ?"


# Each write type as the grouped row of its table (rows.py; runs are written one statement each, first).
ROWS: dict[type, tuple[Insert, Any]] = {
    StepStarted: (STEP_ROW, step_started_row),
    StepFinished: (STEP_ROW, step_finished_row),
    CallDone: (CALL_ROW, call_row),
    EventLogged: (EVENT_ROW, event_row),
    StateChanged: (STATE_ROW, state_row),
    CacheStored: (CACHE_ROW, cache_row),
    AttemptEnded: (ATTEMPT_ROW, attempt_row),
    Exchanged: (EXCHANGE_ROW, exchange_row),
}
