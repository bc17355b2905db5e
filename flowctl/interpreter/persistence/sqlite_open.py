"""Opening a run store's SQLite file as a command needs it (see `store_errors.StoreAccess`), and bringing it to the
current schema. Every way this can fail is a `StoreError` naming the file and what to do.

Kept apart from `sqlite_store`, which is about reading and writing an open store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flowctl.interpreter.persistence.store_errors import (
    StoreAccess,
    cannot_read_shared,
    foreign_database,
    from_exception,
    newer_schema,
    stat_problem,
)

Migrations = tuple[tuple[str, ...], ...]


def open_connection(
    path: Path | str, access: StoreAccess, migrations: Migrations, busy_timeout_ms: int
) -> tuple[sqlite3.Connection, StoreAccess]:
    """A connection to a store at the schema version `len(migrations)`, and the access it has: "read" becomes
    "write" when an older file must be upgraded. `path` ":memory:" is an in-memory store."""
    if isinstance(path, Path) and access != "create":
        problem = stat_problem(path)
        if problem is not None:
            raise problem
    latest = len(migrations)
    conn: sqlite3.Connection | None = None
    upgrading_read_only = False
    try:
        conn = _connect(path, access, busy_timeout_ms)
        version = _version(conn)
        if version > latest:
            raise newer_schema(path, version, latest)
        if version < latest and access == "read":  # an upgrade writes, so it needs write access
            conn.close()
            access, upgrading_read_only = "write", True
            conn = _connect(path, access, busy_timeout_ms)
        _migrate(conn, path, migrations)
        return conn, access
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            conn.close()
        error = from_exception(exc, path, access)
        if error is None:
            raise
        if upgrading_read_only:
            error.problem = f"written by an older flowctl, and upgrading it needs write access: {error.problem}"
        raise error from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _connect(path: Path | str, access: StoreAccess, busy_timeout_ms: int) -> sqlite3.Connection:
    """One autocommit connection; transactions are explicit so group commit is the store's to steer."""
    if not isinstance(path, Path):
        return _configure(str(path), False, access, busy_timeout_ms)
    if access == "create":
        path.parent.mkdir(parents=True, exist_ok=True)
        return _configure(str(path), False, access, busy_timeout_ms)
    # never create the file: SQLite's URI modes `rw` and `ro`
    uri = f"{path.absolute().as_uri()}?mode={'ro' if access == 'read' else 'rw'}"
    try:
        return _configure(uri, True, access, busy_timeout_ms)
    except sqlite3.OperationalError as exc:
        # A WAL store on a read-only (or full) file system cannot be read the usual way: SQLite must create or grow
        # FILE-shm. With no FILE-wal beside it, or an empty one, every committed row is in the file itself, which is
        # then read as immutable.
        wal = path.with_name(path.name + "-wal")
        if access != "read" or not cannot_read_shared(exc) or (wal.exists() and wal.stat().st_size):
            raise
        return _configure(uri + "&immutable=1", True, access, busy_timeout_ms)


def _configure(target: str, uri: bool, access: StoreAccess, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(
        target,
        timeout=busy_timeout_ms / 1000,
        isolation_level=None,
        check_same_thread=False,
        uri=uri,
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        if access != "read":  # a read-only connection cannot set it (a store is in WAL mode already)
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header: a non-database fails
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path | str, migrations: Migrations) -> None:
    """Bring the file to the latest schema; safe when several processes open a new file at once.

    The write lock is taken only when an upgrade is due, so opening a current file to read never waits for a running
    interpreter. `migrations[i]` upgrades a file from user_version i to i + 1.
    """
    latest = len(migrations)
    if _version(conn) == latest:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _version(conn)
        if version > latest:  # another process upgraded it since we looked
            raise newer_schema(path, version, latest)
        if version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
            raise foreign_database(path)  # another program's database: adding our tables would spoil it
        for statements in migrations[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {latest}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


__all__ = ["Migrations", "open_connection"]
