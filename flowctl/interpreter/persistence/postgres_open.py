"""Opening a PostgreSQL run store: reading its URL (libpq's options and flowctl's), connecting once to say at once
what is wrong, bringing the database to the current schema, and saying a server's error as a `StoreError` — never
with the password.

Kept apart from `postgres_store`, which is about reading and writing an open store.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import psycopg

from flowctl.interpreter.persistence import postgres_schema as schema
from flowctl.interpreter.persistence.locate import mask_url
from flowctl.interpreter.persistence.store_errors import StoreAccess, StoreError, missing_store, newer_schema

CONNECT_TIMEOUT = 10  # seconds, unless the URL says (`?connect_timeout=`)
SCHEMA_LOCK = 0x666C6F77  # the advisory lock migrations take ("flow")
OPTIONS = ("lease", "pool_size")  # the URL's options that are flowctl's, not libpq's
_HAS_RUNS = (
    "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'runs'"
)


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The libpq URL (without flowctl's options, `postgres+driver://` as `postgresql://`) and flowctl's options."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.lower().startswith("postgres"):
        raise ValueError(f"not a PostgreSQL URL: {mask_url(url)}")
    base, _, query = rest.partition("?")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in OPTIONS:
            ours[key] = value
        else:
            theirs.append((key, value))
    # percent-encoded as libpq reads them: `+` would stay a plus sign (`?options=-c%20x%3Dy` must keep its space)
    return f"postgresql://{base}" + (f"?{urlencode(theirs, quote_via=quote)}" if theirs else ""), ours


def positive_option(options: dict[str, str], name: str, default: float, url: str) -> float:
    """flowctl's option `name` from the URL (`?lease=15`), or `default`; a StoreError unless a positive number."""
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise StoreError(url, f"?{name}={text} is not a positive number", f"write e.g. ?{name}={int(default)}")
    return value


def connect_extra(conninfo: str) -> dict[str, Any]:
    """What every connection adds to the URL: a connect timeout, unless the URL sets its own."""
    return {} if "connect_timeout" in conninfo else {"connect_timeout": CONNECT_TIMEOUT}


def prepare(conninfo: str, url: str, access: StoreAccess) -> int:
    """Connect once — a pool would retry in the background, and say nothing of why — and bring the database to the
    current schema; its schema version. `url`: the URL as it may be shown."""
    scrub = secret_scrubber(conninfo)
    try:
        with psycopg.connect(conninfo, autocommit=True, **connect_extra(conninfo)) as conn:
            return migrate(conn, url, access)
    except _UpgradeRefused as refused:
        error = store_error(refused.cause, url, scrub)
        error.problem = f"written by an older flowctl, and upgrading it needs its tables' owner: {error.problem}"
        error.advice = "run any flowctl command against it once as the user that owns its tables"
        raise error from None
    except psycopg.Error as exc:
        raise store_error(exc, url, scrub) from None


class _UpgradeRefused(Exception):
    """The server refused to upgrade an older store to this user (`cause`), which may only read it."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


def migrate(conn: psycopg.Connection[Any], url: str, access: StoreAccess) -> int:
    """Bring the database to the latest schema; safe when several processes open a new database at once (the
    advisory lock, then a second look). `access` "write" or "read" never creates a store where none is."""
    latest = schema.SCHEMA_VERSION
    version = schema_version(conn)
    if version == latest:
        return version
    if version > latest:
        raise newer_schema(url, version, latest)
    if version == 0 and access != "create":
        raise missing_store(url)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        version = schema_version(conn)  # another process may have upgraded it meanwhile
        if version > latest:
            raise newer_schema(url, version, latest)
        if version == 0 and conn.execute(_HAS_RUNS).fetchone() != (0,):
            raise StoreError(
                url,
                "the database has a table `runs` that is not a flowctl run store's",
                "name another database, or a schema of its own (`?options=-csearch_path%3Dflowctl`)",
            )
        try:
            for statements in schema.MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement.encode())
        except psycopg.errors.InsufficientPrivilege as exc:
            if version == 0:
                raise
            raise _UpgradeRefused(exc) from None
        conn.execute(f"DELETE FROM {schema.VERSION_TABLE}")
        conn.execute(f"INSERT INTO {schema.VERSION_TABLE} (version) VALUES (%s)", (latest,))
    return latest


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The database's schema version: 0 when it holds no run store. (Read from the table itself, not the catalog
    cache, which may not yet know of a table another process has just created.)"""
    try:
        with conn.transaction():  # a savepoint when in a transaction, so that a missing table spoils nothing
            row = conn.execute(f"SELECT max(version) FROM {schema.VERSION_TABLE}").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row and row[0] is not None else 0


def secret_scrubber(conninfo: str) -> Callable[[str], str]:
    """A function that removes the URL's password from a text (a server's error may quote its connection string)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        password = None
    if not password:
        return lambda text: text
    secret = str(password)
    return lambda text: text.replace(secret, "***")


def store_error(exc: psycopg.Error, url: str, scrub: Callable[[str], str], run_id: str | None = None) -> StoreError:
    """A server's or connection's error as a StoreError: what went wrong (the server's words, without the password)
    and what to do, by its SQLSTATE."""
    text = str(exc).strip()
    said = scrub(text.splitlines()[0] if text else type(exc).__name__)
    state = exc.sqlstate or (_connect_state(said) if isinstance(exc, psycopg.OperationalError) else "")
    if state == "3D000":
        problem, advice = f"no such database ({said})", "create it (createdb NAME), or name another database"
    elif state in ("28P01", "28000"):
        problem, advice = f"the server refused the login ({said})", "check the user and its password (PGPASSWORD)"
    elif state == "42501":
        problem, advice = f"permission denied ({said})", "grant this user CREATE on the schema, or use another database"
    elif state == "25006":
        problem, advice = f"the server is read-only ({said})", "point --store at the primary server"
    elif state.startswith("53"):
        problem, advice = f"the server is out of resources ({said})", "free disk space or connections on it, then retry"
    elif not state or state.startswith(("08", "57")):
        problem, advice = (
            f"cannot reach the server ({said})",
            "check that it runs and the URL's host and port",
        )
    else:
        problem, advice = f"the server reported an error ({said})", "check the server's log"
    return StoreError(url, problem, advice, run_id=run_id)


def _connect_state(said: str) -> str:
    """The SQLSTATE of a failed login, from libpq's words (it gives none): a missing database, a refused user."""
    if re.search(r'database ".*" does not exist', said):
        return "3D000"
    if re.search(r"password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist", said):
        return "28000"
    return ""


__all__ = ["positive_option", "prepare", "schema_version", "split_url", "store_error"]
