"""The run-store backends the conformance suite runs against, by name.

A `StoreFactory` stands for one fresh, empty store: `open()` gives a new handle on it each time (several handles on
one store stand for separate processes), `spec` is what a subprocess needs to open its own handle (`open_spec`),
`cli` names the store to the `flowctl` commands, and `persisted()` returns everything the store keeps, as bytes (to
prove that a secret never reached it).

Adding a backend is one more entry in `BACKENDS` (a function making a factory for a fresh database from the test's
tmp_path and request) and one more case in `open_spec`. The PostgreSQL backend takes a fresh database on the tests'
private server from the `pg_url` fixture (tests/conftest.py); where PostgreSQL is not installed its cases are skipped
(an error with FLOWCTL_REQUIRE_PG=1, as in CI).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStore


def open_spec(spec: dict[str, Any], *, lease: float | None = None) -> RunStore:
    """A new handle on the store `spec` describes. `lease`: how long another host's owner counts as alive without a
    commit (None: the backend's default)."""
    if spec["backend"] == "sqlite":
        if lease is None:
            return SqliteRunStore(Path(spec["path"]))
        return SqliteRunStore(Path(spec["path"]), lease=lease)
    if spec["backend"] == "postgresql":
        from flowctl.interpreter.persistence.postgres_store import PostgresRunStore

        return PostgresRunStore(spec["url"], lease=lease)
    raise ValueError(f"unknown store backend {spec['backend']!r}")


@dataclass
class StoreFactory:
    backend: str
    spec: dict[str, Any]  # JSON-able: a subprocess opens its own handle from it (open_spec)
    cli: list[str]  # the options naming this store on flowctl's command line
    persisted: Callable[[], bytes]  # everything the store keeps, as bytes
    _handles: list[RunStore] = field(default_factory=list)

    def open(self, *, lease: float | None = None) -> RunStore:
        store = open_spec(self.spec, lease=lease)
        self._handles.append(store)
        return store

    @property
    def spec_json(self) -> str:
        return json.dumps(self.spec)

    def close(self) -> None:
        for store in self._handles:
            store.close()
        self._handles.clear()


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest | None = None) -> StoreFactory:
    path = tmp_path / "store" / "runs.db"

    def persisted() -> bytes:  # the database and its write-ahead log (commits not yet checkpointed live there)
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(file.read_bytes() for file in files if file.exists())

    return StoreFactory("sqlite", {"backend": "sqlite", "path": str(path)}, ["--store", str(path)], persisted)


POSTGRES_TABLES = ("runs", "steps", "calls", "events", "signals", "state_changes", "cache", "attempts", "exchanges")


def _postgresql(tmp_path: Path, request: pytest.FixtureRequest | None = None) -> StoreFactory:
    assert request is not None, "the PostgreSQL backend needs the test's request (for the pg_url fixture)"
    url: str = request.getfixturevalue("pg_url")  # a fresh database on the private server (skips without one)

    def persisted() -> bytes:  # every row of every table, as text
        import psycopg

        found: list[str] = []
        with psycopg.connect(url) as conn:
            for table in POSTGRES_TABLES:
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (True,):
                    found.extend(repr(row) for row in conn.execute(f"SELECT * FROM {table}"))
        return "\n".join(found).encode("utf-8", "backslashreplace")

    return StoreFactory("postgresql", {"backend": "postgresql", "url": url}, ["--store", url], persisted)


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], StoreFactory]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}
