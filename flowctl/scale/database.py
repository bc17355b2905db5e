"""The scale package's PostgreSQL side: which URL names the queue's database, connections, and the tables this
package owns (submitted sources by digest, submitted runs, workers, shared slots), created and migrated in place
together with procrastinate's schema, under an advisory lock so that workers starting together migrate once.

Versioned like the SQLite store's schema: `flowctl_scale_meta.version` says which migrations ran; a database
migrated by a newer flowctl than this one is refused rather than written.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from flowctl.interpreter.persistence.store_errors import StoreError

SCHEMA_VERSION = 1
_LOCK = 0x666C6F77  # the advisory lock migrations hold ("flow")

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE flowctl_scale_blobs (
        digest text PRIMARY KEY,
        body bytea NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE flowctl_scale_runs (
        run_id text PRIMARY KEY,
        source text NOT NULL,            -- the digest of the submission's manifest (a blob)
        inputs jsonb NOT NULL,
        flowctl_version text NOT NULL,   -- the flowctl that submitted the run
        journal_format integer NOT NULL, -- the journal format it will be recorded in
        job_id bigint,
        submitted_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE flowctl_scale_workers (
        name text PRIMARY KEY,
        owner text NOT NULL,             -- the owner its claims carry
        concurrency integer NOT NULL,
        lease double precision NOT NULL,
        flowctl_version text NOT NULL,
        state text NOT NULL,             -- running, draining, stopped
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        holding jsonb NOT NULL DEFAULT '[]'
    );
    CREATE TABLE flowctl_scale_slots (
        cap text NOT NULL,               -- e.g. model:gpt, server:search
        slot integer NOT NULL,
        holder text,
        expires_at timestamptz,
        PRIMARY KEY (cap, slot)
    );
    """,
}


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and re.match(r"(?i)postgres(ql)?(\+[a-z0-9_]+)?://", str(url)) is not None


def conninfo(url: str) -> str:
    """What libpq accepts: `postgresql+psycopg://…` (SQLAlchemy's spelling) without its driver part."""
    return re.sub(r"(?i)^postgres(ql)?(\+[a-z0-9_]+)?://", "postgresql://", url)


def shown(url: str) -> str:
    """The URL without its password and options, for messages."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url.split("?", 1)[0])


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection in autocommit mode; a `StoreError` naming the database when it cannot be reached."""
    try:
        return psycopg.connect(conninfo(url), autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(
            shown(url), f"cannot connect: {str(exc).strip()}", "check the URL and that the server runs"
        ) from None


async def connect_async(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(
            shown(url), f"cannot connect: {str(exc).strip()}", "check the URL and that the server runs"
        ) from None


def migrate(conn: psycopg.Connection[Any], queue_schema: str) -> None:
    """Create or bring up to date this package's tables and the queue's (procrastinate's `queue_schema` SQL)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone() == (None,):
            conn.execute(queue_schema)  # type: ignore[arg-type]  # procrastinate's own schema text
        conn.execute("CREATE TABLE IF NOT EXISTS flowctl_scale_meta (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM flowctl_scale_meta").fetchone()
        current = row[0] if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                "flowctl_scale_meta",
                f"the queue's tables are at version {current}, newer than this flowctl knows ({SCHEMA_VERSION})",
                "upgrade flowctl on this host",
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            conn.execute(_MIGRATIONS[version])  # type: ignore[arg-type]
            conn.execute("INSERT INTO flowctl_scale_meta (version) VALUES (%s)", (version,))
