"""Where a run store is: `open_store(url)` picks and opens the store a path or URL names, and `default_store_path` is
where a project's runs live when nothing names one (`.flowctl/runs.db` in the working directory).

What `url` may be (the forms `--store` and `FLOWCTL_STORE` accept; SQLAlchemy's SQLite URLs mean the same here):

- a path: `runs.db`, `../shared/runs.db`, `/var/lib/flowctl/runs.db` (a `pathlib.Path` is always a path);
- `sqlite:///relative/path` (three slashes: relative to the working directory) or `sqlite:////absolute/path` (four);
- `:memory:` or `sqlite:///:memory:`: a store in memory, gone when it is closed;
- `postgresql://user@host:port/database` (or `postgres://`, `postgresql+psycopg://`): a PostgreSQL database, shared by
  processes on many hosts (postgres_store.py; needs the `postgres` extra). Its query may hold libpq's options
  (`sslmode=require`, …) and flowctl's: `lease=SECONDS`, `pool_size=N`. Keep the password out of it (PGPASSWORD or
  ~/.pgpass); one written there is never shown: errors and hints print the URL with `***` for it.

`sqlite://` and `sqlite:///`, which SQLAlchemy reads as in memory, are refused: they are what `sqlite:///$DB` becomes
when `DB` is unset, and a run journaled in memory is lost.

The path in a URL is taken as written: no `%`-decoding, no `~`. A value is read as a URL only when it starts with
`sqlite:` or `postgres…:` or has the form `scheme://…`; anything else is a path (so `C:\\runs.db` and `a:b.db` are
paths). Every other URL, and a `sqlite:` URL of another shape (`sqlite:runs.db`, a host, `?options`), is a
`StoreError` naming the accepted forms, which the CLI prints as one line (exit 2).

Kept free of sqlite3 and our errors at import (~10 ms): the CLI imports this for every command.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from flowctl.interpreter.persistence.postgres_store import PostgresRunStore
    from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
    from flowctl.interpreter.persistence.store_errors import StoreAccess, StoreError

    OpenedStore: TypeAlias = SqliteRunStore | PostgresRunStore  # each a RunStore and a context manager

STORE_ENV = "FLOWCTL_STORE"
MEMORY = ":memory:"
ACCEPTED = (
    "use a file path, sqlite:///relative/path, sqlite:////absolute/path, :memory: or postgresql://user@host/database"
)

# patterns, compiled (and cached by `re`) when first used: not at import
_URL = r"(?s)(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>.*)"
_POSTGRES = r"(?i)postgres(ql)?(\+[A-Za-z0-9_]+)?"
_PASSWORD = r"(?P<user>//[^/@:]*):[^/@]*@"
_PASSWORD_OPTION = r"(?i)(?P<key>[?&]password=)[^&#]*"


def default_store_path(cwd: Path | None = None) -> Path:
    """Where a project's runs live: `<cwd>/.flowctl/runs.db`."""
    return (cwd if cwd is not None else Path.cwd()) / ".flowctl" / "runs.db"


def is_postgres(url: str | os.PathLike[str]) -> bool:
    """Whether `url` names a PostgreSQL store (`postgresql://…`, `postgres://…`, `postgresql+driver://…`)."""
    if isinstance(url, os.PathLike):
        return False
    match = re.fullmatch(_URL, url)
    return match is not None and re.fullmatch(_POSTGRES, match["scheme"]) is not None and match["rest"][:2] == "//"


def mask_url(url: str) -> str:
    """`url` as it may be shown: its password (`user:PASSWORD@`, `?password=`) replaced by `***`."""
    return re.sub(_PASSWORD_OPTION, r"\g<key>***", re.sub(_PASSWORD, r"\g<user>:***@", url, count=1))


def sqlite_location(url: str | os.PathLike[str]) -> Path | str:
    """The SQLite file `url` names, or ":memory:"; a `StoreError` for a URL of any other form (see the module)."""
    if isinstance(url, os.PathLike):
        return Path(url)
    if url == MEMORY:
        return MEMORY
    if not url:
        raise _refused(repr(url), "an empty store location")
    match = re.fullmatch(_URL, url)
    if match is None:
        return Path(url)
    scheme, rest = match["scheme"], match["rest"]
    if re.fullmatch(_POSTGRES, scheme):
        if rest.startswith("//"):
            raise _refused(mask_url(url), "a PostgreSQL database, not an SQLite file")
        raise _refused(mask_url(url), "a PostgreSQL URL starts postgresql:// (postgresql://user@host/database)")
    if scheme.lower() != "sqlite":
        if not rest.startswith("//"):
            return Path(url)  # `a:b.db`, `C:\runs.db`: a path with a colon in it
        raise _refused(url, f"flowctl has no {scheme}:// run stores")
    if not rest.startswith("//"):
        raise _refused(url, f"an SQLite URL starts sqlite:/// (sqlite:///{rest} for the path {rest})")
    if "?" in rest or "#" in rest:
        raise _refused(url, "options in a store URL (?…) are not supported")
    if not rest.startswith("///"):  # `sqlite://` (SQLAlchemy's in-memory store) too: `sqlite://$UNSET` looks the same
        problem = "names no file" if rest == "//" else "names a host; an SQLite store is a local file"
        raise _refused(url, problem)
    database = rest[3:]
    if not database:
        raise _refused(url, "names no file")
    if database == MEMORY:
        return MEMORY
    return Path(database)


def _refused(url: str, problem: str) -> StoreError:
    from flowctl.interpreter.persistence.store_errors import StoreError

    return StoreError(url, problem, ACCEPTED)


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, …: the store names the problem when it opens the file
        return False


def open_store(url: str | os.PathLike[str], *, access: StoreAccess = "create") -> OpenedStore:
    """The run store `url` names (a path or URL, see the module), opened for `access`: "create" makes the file and
    its folder (or a database's tables) if need be; "write" and "read" need an existing store and never create one
    ("read" only reads).

    Raises `StoreError` for a URL it does not accept and for a store that cannot be used; close the store when done.
    """
    if is_postgres(url):
        return _open_postgres(str(url), access)
    location = sqlite_location(url)
    if isinstance(location, Path) and _is_folder(location):  # SQLite would call it a disk error, or worse
        from flowctl.interpreter.persistence.store_errors import StoreError

        raise StoreError(location, "a folder, not a file", f"name a file in it ({location / 'runs.db'})")
    from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore  # sqlite3: only when a store is opened

    return SqliteRunStore(location, access=access)


def _open_postgres(url: str, access: StoreAccess) -> PostgresRunStore:
    """psycopg is imported here, only when a PostgreSQL store is opened (it is an optional extra)."""
    try:
        from flowctl.interpreter.persistence.postgres_store import PostgresRunStore
    except ImportError as exc:
        from flowctl.interpreter.persistence.store_errors import StoreError

        raise StoreError(
            mask_url(url),
            f"PostgreSQL stores need psycopg, which is not installed ({exc.name or exc})",
            "pip install 'flowctl-agents[postgres]'",
        ) from None
    return PostgresRunStore(url, access=access)


__all__ = [
    "ACCEPTED",
    "MEMORY",
    "STORE_ENV",
    "default_store_path",
    "is_postgres",
    "mask_url",
    "open_store",
    "sqlite_location",
]
