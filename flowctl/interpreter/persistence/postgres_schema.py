"""The PostgreSQL store's schema: tables, the functions that fence a commit, versioned migrations, and the statements
that write a commit's rows.

`MIGRATIONS[i]` upgrades a database from schema version i to i + 1 (the one row of `flowctl_schema`; postgres_store.py
applies them under an advisory lock, so several processes opening a new database at once upgrade it once). The
tables mirror the SQLite store's (sqlite_schema.py) at its version 7, with PostgreSQL's types: JSON values stay text
(byte for byte what the recorder wrote), times are seconds since the epoch as double precision, ids and paths compare
byte-wise (`COLLATE "C"`, as SQLite does). Foreign keys are checked at commit (deferred), so the order of a batch's
writes never trips them and a row of an unknown run still undoes its whole commit.

Claims are judged by the server's clock (`heartbeat_at` is its `clock_timestamp()`), so hosts whose clocks disagree
still agree on how old a heartbeat is.
"""

from __future__ import annotations

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

# SQLSTATEs our functions raise (a class of our own: no PostgreSQL error has it)
CLAIM_LOST = "FL001"  # the commit's claim is no longer current (DETAIL: who holds the run now; HINT: the run)
UNKNOWN_RUN = "FL002"  # a run write names a run the store does not have (DETAIL: its id)

VERSION_TABLE = "flowctl_schema"
NOW = "extract(epoch FROM clock_timestamp())"  # the server's clock, in seconds

_ID = 'TEXT COLLATE "C" NOT NULL'
_FK = "REFERENCES runs (run_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED"

_SCHEMA_V1 = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)",
    f"""CREATE TABLE runs (
        run_id {_ID} PRIMARY KEY,
        parent_id TEXT COLLATE "C" REFERENCES runs (run_id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED,
        pipeline TEXT NOT NULL,
        file TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        inputs TEXT NOT NULL,
        outputs TEXT,
        error TEXT,
        source_digest TEXT NOT NULL DEFAULT '',
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cost DOUBLE PRECISION NOT NULL DEFAULT 0,
        owner TEXT,
        input_secrets TEXT,
        scripted TEXT,
        claim_token BIGINT NOT NULL DEFAULT 0,
        heartbeat_at DOUBLE PRECISION,
        signals_sent BIGINT NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX runs_by_start ON runs (started_at)",
    "CREATE INDEX runs_by_parent ON runs (parent_id)",
    f"""CREATE TABLE steps (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id {_ID} {_FK},
        path {_ID},
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        output TEXT,
        error TEXT,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        claim_token BIGINT NOT NULL DEFAULT 0,
        UNIQUE (run_id, path)
    )""",
    f"""CREATE TABLE calls (
        run_id {_ID} {_FK},
        key {_ID},
        request_digest TEXT NOT NULL,
        result TEXT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        redacted BOOLEAN NOT NULL DEFAULT FALSE,
        claim_token BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, key)
    )""",
    f"""CREATE TABLE events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id {_ID} {_FK},
        name TEXT NOT NULL,
        data TEXT,
        source TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX events_by_run ON events (run_id, seq)",
    f"""CREATE TABLE signals (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id {_ID} {_FK},
        position BIGINT NOT NULL,
        name TEXT NOT NULL,
        data TEXT,
        at DOUBLE PRECISION NOT NULL,
        UNIQUE (run_id, position)
    )""",
    f"""CREATE TABLE state_changes (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id {_ID} {_FK},
        step TEXT NOT NULL,
        keys TEXT NOT NULL,
        "values" TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX state_changes_by_run ON state_changes (run_id, seq)",
    """CREATE TABLE cache (
        digest TEXT COLLATE "C" PRIMARY KEY,
        result TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    f"""CREATE TABLE attempts (
        run_id {_ID} {_FK},
        path {_ID},
        attempt BIGINT NOT NULL,
        status TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL,
        error TEXT,
        retry_in DOUBLE PRECISION,
        PRIMARY KEY (run_id, path, attempt)
    )""",
    f"""CREATE TABLE exchanges (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id {_ID} {_FK},
        path {_ID},
        key TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        kind TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        elapsed DOUBLE PRECISION NOT NULL,
        request TEXT NOT NULL,
        response TEXT,
        error TEXT
    )""",
    "CREATE INDEX exchanges_by_run ON exchanges (run_id, path, seq)",
    # The fence of every commit under a claim: the root run's row locked until the commit ends (a claim waits for
    # it), its token checked, its heartbeat refreshed when older than `gap` seconds. Raises CLAIM_LOST otherwise.
    f"""CREATE FUNCTION flowctl_fence(p_run TEXT, p_token BIGINT, p_gap DOUBLE PRECISION) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
        found_token BIGINT;
        found_owner TEXT;
        beat DOUBLE PRECISION;
        now_s DOUBLE PRECISION := {NOW};
    BEGIN
        SELECT claim_token, owner, heartbeat_at INTO found_token, found_owner, beat
            FROM runs WHERE run_id = p_run FOR UPDATE;
        IF NOT FOUND OR found_token <> p_token THEN
            RAISE EXCEPTION 'the claim of run % is no longer current', p_run
                USING ERRCODE = '{CLAIM_LOST}', DETAIL = COALESCE(found_owner, ''), HINT = p_run;
        END IF;
        IF beat IS NULL OR now_s - beat > p_gap THEN
            UPDATE runs SET heartbeat_at = now_s WHERE run_id = p_run;
        END IF;
    END $$""",
    f"""CREATE FUNCTION flowctl_finish_run(p_run TEXT, p_status TEXT, p_finished DOUBLE PRECISION, p_outputs TEXT,
        p_error TEXT, p_in BIGINT, p_out BIGINT, p_cost DOUBLE PRECISION) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE runs SET status = p_status, finished_at = p_finished, outputs = p_outputs, error = p_error,
            input_tokens = p_in, output_tokens = p_out, cost = p_cost,
            owner = CASE WHEN parent_id IS NULL THEN NULL ELSE owner END
            WHERE run_id = p_run;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown run %', p_run USING ERRCODE = '{UNKNOWN_RUN}', DETAIL = p_run;
        END IF;
    END $$""",
    f"""CREATE FUNCTION flowctl_reopen_run(p_run TEXT) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE runs SET status = 'running', finished_at = NULL, outputs = NULL, error = NULL WHERE run_id = p_run;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown run %', p_run USING ERRCODE = '{UNKNOWN_RUN}', DETAIL = p_run;
        END IF;
    END $$""",
)

# v2: the transcript entry of a model call kept in its call row, as in the SQLite store's v7 (sqlite_schema.py
# says why); a row written again moves the entry it held to `exchanges` first.
_SCHEMA_V2 = (
    """ALTER TABLE calls ADD COLUMN path TEXT COLLATE "C", ADD COLUMN attempt BIGINT,
        ADD COLUMN started_at DOUBLE PRECISION, ADD COLUMN elapsed DOUBLE PRECISION, ADD COLUMN request TEXT,
        ADD COLUMN ordinal BIGINT""",
    "ALTER TABLE exchanges ADD COLUMN ordinal BIGINT",
    """CREATE FUNCTION flowctl_keep_call_transcript() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO exchanges (run_id, path, key, attempt, kind, started_at, elapsed, request, response, ordinal)
            VALUES (OLD.run_id, OLD.path, OLD.key, OLD.attempt, 'model', OLD.started_at, OLD.elapsed, OLD.request,
                    OLD.result, OLD.ordinal);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER calls_keep_transcript BEFORE UPDATE ON calls FOR EACH ROW WHEN (OLD.request IS NOT NULL)
        EXECUTE FUNCTION flowctl_keep_call_transcript()""",
)

# MIGRATIONS[i] upgrades a database from schema version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(MIGRATIONS)

INSERT_RUN = f"""INSERT INTO runs ({RUN_COLUMNS}, claim_token, heartbeat_at)
    VALUES ({", ".join(["%s"] * 18)}, {NOW})"""
INSERT_CHILD = """INSERT INTO runs (run_id, parent_id, pipeline, file, status, started_at, inputs, source_digest)
    VALUES (%s, %s, %s, %s, 'running', %s, %s, %s)
    ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL, outputs = NULL, error = NULL"""
FINISH_RUN = "SELECT flowctl_finish_run(%s, %s, %s, %s, %s, %s, %s, %s)"
REOPEN_RUN = "SELECT flowctl_reopen_run(%s)"
FENCE = "SELECT flowctl_fence(%s, %s, %s)"
# (owner, token, heartbeat age by the server's clock, parent) of a run, its row locked for a claim
CLAIM_ROW = f"""SELECT owner, claim_token, {NOW} - heartbeat_at AS age, parent_id FROM runs WHERE run_id = %s
    FOR UPDATE"""
TAKE_CLAIM = f"UPDATE runs SET owner = %s, claim_token = %s, heartbeat_at = {NOW} WHERE run_id = %s"
# the token moves on too, so that nothing more commits under the released claim
RELEASE = "UPDATE runs SET owner = NULL, claim_token = claim_token + 1 WHERE run_id = %s AND claim_token = %s"
LIVENESS = f"SELECT owner, {NOW} - heartbeat_at AS age FROM runs WHERE run_id = %s"
NEXT_SIGNAL = "UPDATE runs SET signals_sent = signals_sent + 1 WHERE run_id = %s RETURNING signals_sent"
INSERT_SIGNAL = "INSERT INTO signals (run_id, position, name, data, at) VALUES (%s, %s, %s, %s, %s)"
# A committed signal wakes the run it is for at once (LISTEN on SIGNAL_CHANNEL, the run id as the payload): sent in
# the signal's transaction, so it is delivered when, and only if, the signal commits.
SIGNAL_CHANNEL = "flowctl_signals"
NOTIFY_SIGNAL = f"SELECT pg_notify('{SIGNAL_CHANNEL}', %s)"
LISTEN_SIGNALS = f"LISTEN {SIGNAL_CHANNEL}"

# Both step writes are this one upsert (sqlite_schema.STEP_ROW says why). Each row is its own statement (a batch is
# executed row by row in one round trip): PostgreSQL refuses one statement that touches a row twice, and a batch may
# hold a step's start and its finish.
STEP_ROW = """INSERT INTO steps (run_id, path, kind, status, attempts, started_at, finished_at, output, error,
        input_tokens, output_tokens, claim_token) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (run_id, path) DO UPDATE SET
        kind = excluded.kind, status = excluded.status, attempts = steps.attempts + excluded.attempts,
        started_at = CASE WHEN excluded.status = 'running' THEN excluded.started_at ELSE steps.started_at END,
        finished_at = excluded.finished_at, output = excluded.output, error = excluded.error,
        input_tokens = steps.input_tokens + excluded.input_tokens,
        output_tokens = steps.output_tokens + excluded.output_tokens, claim_token = excluded.claim_token"""
CALL_ROW = f"""INSERT INTO calls ({CALL_COLUMNS}) VALUES ({", ".join(["%s"] * 13)})
    {CALL_UPDATE}"""
# A commit of one call row (what a chain commits per model call) as one statement, fenced inside it: no BEGIN and
# COMMIT messages, no pipeline, a third of the client's CPU time. Its parameters: the fence's, then CALL_ROW's.
FENCED_CALL = f"""WITH fence AS (SELECT flowctl_fence(%s, %s, %s))
    INSERT INTO calls ({CALL_COLUMNS}) SELECT {", ".join(["%s"] * 13)} FROM fence
    {CALL_UPDATE}"""
EVENT_ROW = "INSERT INTO events (run_id, name, data, source, at) VALUES (%s, %s, %s, %s, %s)"
STATE_ROW = 'INSERT INTO state_changes (run_id, step, keys, "values", at) VALUES (%s, %s, %s, %s, %s)'
CACHE_ROW = """INSERT INTO cache (digest, result, created_at) VALUES (%s, %s, %s)
    ON CONFLICT (digest) DO UPDATE SET result = excluded.result, created_at = excluded.created_at"""
ATTEMPT_ROW = """INSERT INTO attempts (run_id, path, attempt, status, started_at, finished_at, error, retry_in)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (run_id, path, attempt) DO UPDATE SET status = excluded.status, started_at = excluded.started_at,
        finished_at = excluded.finished_at, error = excluded.error, retry_in = excluded.retry_in"""
EXCHANGE_ROW = f"""INSERT INTO exchanges ({EXCHANGE_COLUMNS}) VALUES ({", ".join(["%s"] * 11)})"""


# Each write type as the grouped row of its table (rows.py; runs are written one statement each, first).
ROWS: dict[type, tuple[str, Any]] = {
    StepStarted: (STEP_ROW, step_started_row),
    StepFinished: (STEP_ROW, step_finished_row),
    CallDone: (CALL_ROW, call_row),
    EventLogged: (EVENT_ROW, event_row),
    StateChanged: (STATE_ROW, state_row),
    CacheStored: (CACHE_ROW, cache_row),
    AttemptEnded: (ATTEMPT_ROW, attempt_row),
    Exchanged: (EXCHANGE_ROW, exchange_row),
}
